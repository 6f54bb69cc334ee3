"""Deterministic workflow code only: no I/O, no I/O imports."""

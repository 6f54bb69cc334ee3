"""Baton's HTTP API."""

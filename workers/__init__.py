"""Baton's processes: the worker, the API server, the embedded default and the `baton` command."""

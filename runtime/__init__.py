"""What both the API and the worker stand on: Baton's settings, the routing config as a process loads it, and the
Temporal connection. `api/` and `workers/` import this package; it imports neither."""

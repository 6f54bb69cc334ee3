"""Performance benchmarks: scripts that print one JSON object each (targets live here, never in tests)."""

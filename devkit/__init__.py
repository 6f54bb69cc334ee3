"""What the tests and the benchmarks share: free loopback ports and the Temporal servers from the installed
packages (nothing downloads). Not part of the installed `baton`: both run from a checkout (`python -m pytest`,
`python -m bench.<name>`), where this package is importable."""

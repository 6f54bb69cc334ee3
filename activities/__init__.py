"""Baton's side effects: everything that touches the network, clocks or secrets runs here, never in a workflow."""

"""One module per step of the window."""

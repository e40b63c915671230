"""Command-line interface: `helix plan|evaluate|simulate|serve|profile|bench`."""

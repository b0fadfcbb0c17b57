"""The `dupwatch` command: one module per command group."""

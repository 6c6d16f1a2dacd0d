"""The command line: ``gated`` (main), and one module per command group."""

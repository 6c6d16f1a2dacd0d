"""gated: the gate that checks every time."""

__version__ = "0.1.0"

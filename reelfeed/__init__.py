"""reelfeed: the composition root (settings, command line, local stack)."""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""gligen-rt: an optimized runtime for GLIGEN."""

__version__ = "0.1.0"

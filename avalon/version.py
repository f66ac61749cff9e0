"""Avalon's version, in a module of its own so that what keys on it (the kernel cache, checkpoints)
depends on this one line rather than on the package's whole namespace."""
__version__ = "0.1.0"

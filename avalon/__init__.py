"""Avalon: a deep-learning compiler toolkit. See README.md and ../shared/DESIGN.md."""
from . import ir

__version__ = "0.1.0"

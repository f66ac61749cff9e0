"""The numpy backend: runs a final graph on the reference interpreter (`avalon.ir.interpret`).

The rules it runs are the reference semantics of the ops, which live in `avalon.ir` beside their
declarations; this package only adapts them to the backend interface of `av.compile`.
"""
from .backend import NumpyBackend, NumpyExecutable

__all__ = ["NumpyBackend", "NumpyExecutable"]

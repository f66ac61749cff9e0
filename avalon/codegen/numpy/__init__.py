"""The numpy backend: generated straight-line numpy code per compiled graph (`GeneratedExecutable`),
differential-tested against the reference interpreter (`avalon.ir.interpret`), which
`NumpyExecutable` runs.

Reference semantics live in `avalon.ir` beside the op declarations; this package adds fast numpy
formulations (`ops.EMITTERS`, `kernels`) and falls back to a reference rule for any other op.
"""
from .backend import GeneratedExecutable, NumpyBackend, NumpyExecutable

__all__ = ["GeneratedExecutable", "NumpyBackend", "NumpyExecutable"]

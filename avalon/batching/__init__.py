"""Batching (vmap) as a transformation of the IR.

`rules.BATCH` holds one batching rule per primitive; `batch_graph` turns a graph of one example into
a graph of many. This package is the IR transform only: the user-facing `av.vmap`, which traces,
caches and runs, is the compile driver's (`avalon.compiler.vmap`).
"""
from .rules import BATCH
from .transform import RANDOMNESS, BatchingError, batch_graph

__all__ = ["BATCH", "RANDOMNESS", "BatchingError", "batch_graph"]

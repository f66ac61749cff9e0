"""torch.distributed.nn: differentiable collectives (`all_gather`, `all_reduce`); see `.functional`."""
from __future__ import annotations

from . import functional
from .functional import all_gather, all_reduce

__all__ = ["all_gather", "all_reduce", "functional"]

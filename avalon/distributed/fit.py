"""What `av.fit` does differently under a process group, and its checkpoints (see `avalon.train`).

Like torch's DistributedSampler + DistributedDataParallel (a custom loop does the first three points
with `broadcast_parameters`, `avalon.utils.data.DistributedSampler` and `all_reduce(grads)`):
- rank 0's parameters and buffers are broadcast first, so every rank starts from the same model;
- every epoch, all ranks draw the same permutation (rank 0's seed, broadcast), pad it by wrapping
  around to a multiple of the world size and take every world-size-th sample from their rank on:
  rank r's batch i and the other ranks' batch i together are exactly batch i of one process with
  `batch_size * world_size`, so n ranks with batch b follow the same trajectory as one with n*b;
- gradients are averaged inside the compiled step (`all_reduce` ops, bucketed by the
  `bucket-all-reduce` pass), every rank applies the same update;
- batch norm normalizes with each rank's own batch and keeps per-rank running statistics (no
  broadcast of buffers after the first, i.e. `broadcast_buffers=False`), unless the model was
  converted with `nn.SyncBatchNorm.convert_sync_batchnorm`: then every batch norm normalizes with
  the global batch's statistics (an `all_reduce` op per layer in the compiled step, and its vjp in
  the backward), so the running statistics stay equal across ranks and n ranks with batch b follow
  one process with n*b for batch norm too;
- each epoch's loss is the mean over all ranks' samples (one collective per epoch), so every
  rank returns the same history.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from avalon.passes import DEFAULT_PIPELINE
from avalon.passes.bucket import DEFAULT_BUCKET_BYTES
from avalon.random import generator

from .checkpoint import load, save
from .group import all_gather_array, broadcast_arrays, collective, is_initialized, rank, world_size


class FitGroup:
    """This process's place in a group of more than one (`create` returns None otherwise)."""

    def __init__(self, rank: int, size: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.rank, self.size, self.bucket_bytes = rank, size, bucket_bytes

    @classmethod
    def create(cls) -> FitGroup | None:
        if not is_initialized() or world_size() == 1:
            return None
        return cls(rank(), world_size())

    def pipeline(self) -> str:
        """The default pipeline with the gradient buckets made before fusion."""
        passes = DEFAULT_PIPELINE.split(",")
        at = next((i for i, p in enumerate(passes) if p.startswith("fuse")), len(passes))
        passes.insert(at, f"bucket-all-reduce{{bytes={self.bucket_bytes}}}")
        return ",".join(passes)

    def broadcast_state(self, model: Any) -> None:
        from . import broadcast_parameters
        broadcast_parameters(model, src=0)

    def shared_seed(self, seed: int) -> int:
        return int(broadcast_arrays([np.asarray([seed], dtype=np.int64)])[0][0])

    def shard_size(self, n: int) -> int:
        return math.ceil(n / self.size)

    def shard(self, order: np.ndarray) -> np.ndarray:
        """This rank's samples of one epoch's order (padded by wrapping around, as torch does)."""
        total = self.shard_size(len(order)) * self.size
        padded = np.concatenate([order, np.resize(order, total - len(order))]) if total > len(order) else order
        return padded[self.rank::self.size]

    def mean_loss(self, total: float, count: int) -> float:
        hook = collective()
        both = hook.all_reduce_array(np.asarray([total, count], dtype=np.float64), "sum", "world")
        return float(both[0] / both[1])


# -- checkpoints: the model, the optimizer and the data position -----------------------------------

def _rng_state() -> np.ndarray:
    """Avalon's global generator (initializers, dropout seeds) as bytes in an i32 array. Each rank's
    is saved and restored on resume, so dropout masks continue as in an uninterrupted run."""
    raw = json.dumps(generator().bit_generator.state).encode()
    return np.frombuffer(raw, dtype=np.uint8).astype(np.int32)


def save_progress(path: str, model: Any, optimizer: Any, epoch: int, seed: int, history: list[float]) -> None:
    rngs = all_gather_array(_rng_state())  # every rank's generator: rank 0 writes them all
    extra = {"fit.epoch": np.asarray(epoch, dtype=np.int64), "fit.seed": np.asarray(seed, dtype=np.int64),
             "fit.history": np.asarray(history, dtype=np.float64)}
    extra.update({f"fit.rng.{r}": a for r, a in enumerate(rngs)})
    save(model, path, optimizer, extra=extra)


def resume_progress(path: str, model: Any, optimizer: Any) -> tuple[int, int, list[float]]:
    """Load what `save_progress` wrote; returns (epochs done, seed, history so far)."""
    extra = load(path, model, optimizer)
    missing = [k for k in ("fit.epoch", "fit.seed", "fit.history", "fit.rng.0") if k not in extra]
    if missing:
        raise KeyError(f"{path}: not a checkpoint written by fit (no {', '.join(missing)})")
    saved = sum(1 for k in extra if k.startswith("fit.rng."))
    rng = extra[f"fit.rng.{rank() % saved}"]  # (another world size: the generators of the ranks saved)
    generator().bit_generator.state = json.loads(bytes(rng.astype(np.uint8)).decode())
    return int(extra["fit.epoch"]), int(extra["fit.seed"]), [float(h) for h in extra["fit.history"]]

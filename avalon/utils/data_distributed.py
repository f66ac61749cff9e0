"""`avalon.utils.data.distributed`: torch.utils.data.distributed's `DistributedSampler`, which gives
each process of a data-parallel group its own part of a dataset, for custom loops over
`avalon.utils.data.DataLoader` (`av.fit` shards by itself, see `avalon.distributed.fit`).

Its indices are torch's: every replica gets `num_samples` indices, the dataset padded by repeating
its indices from the start (or its tail dropped with `drop_last=True`) to a multiple of the number
of replicas, and rank r takes every num_replicas-th index from position r. With `shuffle=True` the
order is a permutation drawn from a numpy generator seeded with `seed + epoch` (`set_epoch` at every
epoch, as with torch), the same on every process, so the ranks' parts never overlap; it is not
torch's permutation (torch's generator is not on Avalon's path), and a given seed repeats it.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import TypeVar

import numpy as np

from .data import Dataset, Sampler

T_co = TypeVar("T_co", covariant=True)


def _group_default(what: str) -> tuple[int, int]:
    """(world size, rank) of the initialized group; (1, 0) in a process started alone. Under a
    launcher's WORLD_SIZE > 1 with no group yet, every rank would silently read the whole dataset:
    an error instead (torch raises there too)."""
    from avalon.distributed.group import is_initialized, rank, world_size
    if is_initialized():
        return world_size(), rank()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise RuntimeError(f"DistributedSampler: {what} not given and no process group is initialized, but "
                           f"WORLD_SIZE={os.environ['WORLD_SIZE']}; call avalon.distributed.init() first, or pass "
                           f"num_replicas and rank")
    return 1, 0


class DistributedSampler(Sampler[T_co]):
    """torch's DistributedSampler (see the module's docstring). `num_replicas` and `rank` default to
    the initialized process group's (1 and 0 in a process started alone)."""

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        if num_replicas is None or rank is None:
            size, me = _group_default("num_replicas" if num_replicas is None else "rank")
            num_replicas = size if num_replicas is None else num_replicas
            rank = me if rank is None else rank
        for name, v in (("num_replicas", num_replicas), ("rank", rank), ("seed", seed)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"DistributedSampler: {name} must be an int, got {type(v).__name__} ({v!r})")
        if num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be at least 1, got {num_replicas}")
        if rank >= num_replicas or rank < 0:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]")
        self.dataset = dataset
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self.drop_last = bool(drop_last)
        n = len(dataset)  # type: ignore[arg-type]
        if self.drop_last and n % self.num_replicas != 0:
            self.num_samples = math.ceil((n - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.shuffle = bool(shuffle)
        self.seed = int(seed)

    def _order(self, n: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng((self.seed + self.epoch) % 2**64).permutation(n)

    def __iter__(self) -> Iterator[T_co]:
        n = len(self.dataset)  # type: ignore[arg-type]
        indices = self._order(n)
        if not self.drop_last:
            pad = self.total_size - n
            if pad > 0:  # repeat from the start, as many times as needed (a dataset smaller than the group)
                indices = np.concatenate([indices, np.resize(indices, pad)])
        else:
            indices = indices[:self.total_size]
        if len(indices) != self.total_size:
            raise RuntimeError(f"DistributedSampler: {len(indices)} indices for a total size of {self.total_size}: "
                               f"the dataset's length changed (now {n}) after the sampler was made")
        return iter(indices[self.rank:self.total_size:self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Set before each epoch's iterator is made: with `shuffle=True` each epoch has its own
        order (seeded with `seed + epoch`), the same on every process."""
        self.epoch = epoch


__all__ = ["DistributedSampler"]

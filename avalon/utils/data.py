"""`avalon.utils.data`: torch.utils.data's datasets, samplers and `DataLoader`, under torch's names,
so `from torch.utils.data import DataLoader, TensorDataset` ports by renaming the import.

Batches are concrete `av.Tensor`s collated as torch collates (tuples become lists, dicts stay dicts,
Python floats become float64, ints int64; numpy arrays keep their dtype, with the integer types
Avalon lacks widened: uint16 to int32, uint32/uint64 to int64). Shuffling draws from Avalon's
seeded generator (`av.manual_seed`), read when an epoch starts, so a seeded run repeats its order.

Loading runs in the calling process. `num_workers > 0` is accepted for ported code and runs
in-process too (said once on the `avalon.data` log channel): Avalon's data are numpy arrays in
memory, and the compiled step, not Python-side loading, is where the time goes.

`DistributedSampler` (torch.utils.data.distributed's, also importable as `avalon.utils.data.distributed`)
gives each process of a data-parallel group its part of the dataset.

A compiled step (`av.compile`) is traced once per input signature, so every full batch reuses one
trace; a smaller last batch traces once more, which `drop_last=True` avoids.
"""
from __future__ import annotations

import bisect
import collections.abc
import copy
import itertools
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from .. import ops
from .. import random as _rng
from ..channels import get_logger
from ..device import CPU
from ..tensor import Tensor, as_array

T_co = TypeVar("T_co", covariant=True)
_noted: set[str] = set()


def _note_once(key: str, message: str) -> None:
    if key not in _noted:
        _noted.add(key)
        get_logger("data").warning(message)


def _checked(generator: Any) -> Any:
    """`generator` if it is None, an av.Generator (torch.Generator's stand-in) or a numpy Generator;
    anything else (a torch.Generator) is refused."""
    if generator is None or isinstance(generator, (np.random.Generator, _rng.Generator)):
        return generator
    raise TypeError(f"generator: expected None, an av.Generator or a numpy Generator (np.random.default_rng(seed)), "
                    f"got {type(generator).__name__}; Avalon's loaders draw from av.manual_seed's generator by default")


def _generator(generator: Any) -> np.random.Generator:
    """The numpy generator to draw from: the given one's, or Avalon's global one, looked up now so that
    `av.manual_seed` (or `g.manual_seed`) between epochs takes effect."""
    return _rng.generator() if _checked(generator) is None else _rng.as_numpy(generator)


# -- datasets -------------------------------------------------------------------------------------

class Dataset(Generic[T_co]):
    """A map-style dataset: `__getitem__(index)` and, for samplers, `__len__`."""

    def __getitem__(self, index: Any) -> T_co:
        raise NotImplementedError("Subclasses of Dataset should implement __getitem__.")

    def __add__(self, other: Dataset[T_co]) -> ConcatDataset[T_co]:
        return ConcatDataset([self, other])


class IterableDataset(Dataset[T_co]):
    """A dataset that is a stream: `__iter__` yields the samples (no indices, so no shuffling)."""

    def __iter__(self) -> Iterator[T_co]:
        raise NotImplementedError("Subclasses of IterableDataset should implement __iter__.")

    def __add__(self, other: Dataset[T_co]) -> ChainDataset:
        return ChainDataset([self, other])


class TensorDataset(Dataset[tuple]):
    """Samples are the i-th rows of each tensor (all of one length in dim 0): `(x[i], y[i])`.
    Tensors, numpy arrays and torch tensors are taken; rows are read from the stored data, so a
    loader's batch is one indexed read per tensor."""

    def __init__(self, *tensors: Any) -> None:
        if not tensors:
            raise ValueError("TensorDataset: needs at least one tensor")
        if any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("Size mismatch between tensors")
        self.tensors = tuple(t if isinstance(t, (Tensor, np.ndarray)) else Tensor(as_array(t)) for t in tensors)

    def __getitem__(self, index: Any) -> tuple:
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])


class Subset(Dataset[T_co]):
    """The samples of `dataset` at `indices`, in that order."""

    def __init__(self, dataset: Dataset[T_co], indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, list):
            return self.dataset[[self.indices[i] for i in idx]]
        return self.dataset[self.indices[idx]]

    def __getitems__(self, indices: list[int]) -> list:
        """A batch's samples (the loader asks for them together)."""
        inner = getattr(self.dataset, "__getitems__", None)
        if callable(inner):
            return inner([self.indices[i] for i in indices])
        return [self.dataset[self.indices[i]] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)


class ConcatDataset(Dataset[T_co]):
    """Several datasets one after another; `cumulative_sizes[i]` is where dataset i ends."""

    def __init__(self, datasets: Iterable[Dataset]) -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise AssertionError("datasets should not be an empty iterable")
        for d in self.datasets:
            if isinstance(d, IterableDataset):
                raise AssertionError("ConcatDataset does not support IterableDataset")
        self.cumulative_sizes = list(itertools.accumulate(len(d) for d in self.datasets))

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, idx: int) -> T_co:
        if idx < 0:
            if -idx > len(self):
                raise ValueError("absolute value of index should not exceed dataset length")
            idx = len(self) + idx
        which = bisect.bisect_right(self.cumulative_sizes, idx)
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][idx - start]


class ChainDataset(IterableDataset):
    """Several iterable datasets streamed one after another."""

    def __init__(self, datasets: Iterable[Dataset]) -> None:
        self.datasets = datasets

    def __iter__(self) -> Iterator:
        for d in self.datasets:
            yield from d

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)


def random_split(dataset: Dataset[T_co], lengths: Sequence[int | float],
                 generator: Any = None) -> list[Subset[T_co]]:
    """Split into non-overlapping random `Subset`s of the given lengths, or fractions summing to 1
    (each floor(frac * n), the remainder handed out one by one from the first, as in torch). The
    permutation comes from Avalon's seeded generator unless a numpy `generator` is given."""
    n = len(dataset)  # type: ignore[arg-type]
    if math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        sizes = []
        for i, frac in enumerate(lengths):
            if frac < 0 or frac > 1:
                raise ValueError(f"Fraction at index {i} is not between 0 and 1")
            sizes.append(math.floor(n * frac))
        for i in range(n - sum(sizes)):
            sizes[i % len(sizes)] += 1
        for i, s in enumerate(sizes):
            if s == 0:
                warnings.warn(f"Length of split at index {i} is 0. This might result in an empty dataset.",
                              stacklevel=2)
        lengths = sizes
    if sum(lengths) != n:
        raise ValueError("Sum of input lengths does not equal the length of the input dataset!")
    perm = _generator(generator).permutation(n).tolist()
    out, at = [], 0
    for length in lengths:
        out.append(Subset(dataset, perm[at:at + int(length)]))
        at += int(length)
    return out


# -- samplers -------------------------------------------------------------------------------------

class Sampler(Generic[T_co]):
    """Yields the indices (or, for a batch sampler, the lists of indices) a loader reads."""

    def __init__(self, data_source: Any = None) -> None:
        pass

    def __iter__(self) -> Iterator[T_co]:
        raise NotImplementedError


class SequentialSampler(Sampler[int]):
    """0, 1, ..., len(data_source) - 1."""

    def __init__(self, data_source: Any) -> None:
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


class RandomSampler(Sampler[int]):
    """A random permutation per pass (or `num_samples` draws with replacement), from Avalon's
    seeded generator or the numpy `generator` given."""

    def __init__(self, data_source: Any, replacement: bool = False, num_samples: int | None = None,
                 generator: Any = None) -> None:
        self.data_source = data_source
        self.replacement = replacement
        self._num_samples = num_samples
        self.generator = _checked(generator)
        if not isinstance(replacement, bool):
            raise TypeError(f"replacement should be a boolean value, but got replacement={replacement}")
        if not isinstance(self.num_samples, int) or self.num_samples <= 0:
            raise ValueError(f"num_samples should be a positive integer value, but got num_samples={self.num_samples}")

    @property
    def num_samples(self) -> int:
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __iter__(self) -> Iterator[int]:
        g, n = _generator(self.generator), len(self.data_source)
        if self.replacement:
            yield from g.integers(0, n, self.num_samples).tolist()
            return
        for _ in range(self.num_samples // n):
            yield from g.permutation(n).tolist()
        yield from g.permutation(n)[:self.num_samples % n].tolist()

    def __len__(self) -> int:
        return self.num_samples


class SubsetRandomSampler(Sampler[int]):
    """The given indices in a random order each pass."""

    def __init__(self, indices: Sequence[int], generator: Any = None) -> None:
        self.indices = indices
        self.generator = _checked(generator)

    def __iter__(self) -> Iterator[int]:
        for i in _generator(self.generator).permutation(len(self.indices)).tolist():
            yield self.indices[i]

    def __len__(self) -> int:
        return len(self.indices)


class WeightedRandomSampler(Sampler[int]):
    """`num_samples` indices drawn in proportion to `weights` (with replacement by default)."""

    def __init__(self, weights: Sequence[float], num_samples: int, replacement: bool = True,
                 generator: Any = None) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"num_samples should be a positive integer value, but got num_samples={num_samples}")
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement should be a boolean value, but got replacement={replacement}")
        w = np.asarray(as_array(weights), np.float64)
        if w.ndim != 1:
            raise ValueError(f"weights should be a 1d sequence but given weights have shape {tuple(w.shape)}")
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError("WeightedRandomSampler: weights must be finite, non-negative and not all zero")
        if not replacement and num_samples > int((w > 0).sum()):
            raise ValueError("WeightedRandomSampler: cannot draw more samples than non-zero weights without "
                             "replacement")
        self.weights, self.num_samples, self.replacement = w, int(num_samples), replacement
        self.generator = _checked(generator)

    def __iter__(self) -> Iterator[int]:
        g = _generator(self.generator)
        yield from g.choice(len(self.weights), self.num_samples, self.replacement, self.weights / self.weights.sum()
                            ).tolist()

    def __len__(self) -> int:
        return self.num_samples


class BatchSampler(Sampler[list[int]]):
    """Lists of `batch_size` indices from `sampler`; the last shorter one dropped if `drop_last`."""

    def __init__(self, sampler: Iterable[int], batch_size: int, drop_last: bool) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last should be a boolean value, but got drop_last={drop_last}")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self) -> Iterator[list[int]]:
        it = iter(self.sampler)
        while batch := list(itertools.islice(it, self.batch_size)):
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


# -- collation ------------------------------------------------------------------------------------

_WIDER = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64, np.dtype(np.uint64): np.int64}
"""numpy integer dtypes Avalon has no twin of, and the one each batch widens to (uint8, int8 and
int16 arrays, torchvision's images and audio, keep their dtype as in torch)."""


def _array_tensor(a: np.ndarray) -> Tensor:
    """A Tensor of a numpy array, sharing it when Avalon has its dtype (torch.as_tensor), else widened."""
    if a.dtype in _WIDER:
        a = a.astype(_WIDER[a.dtype])
    elif a.dtype.kind in "OSUV":
        raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; "
                        f"found {a.dtype}")
    return ops.as_tensor(np.asarray(a, order="C"))  # (np.ascontiguousarray makes a 0-d array 1-d)


def _stack(batch: Sequence[Tensor]) -> Tensor:
    """torch.stack of one batch's tensors: one numpy stack for concrete CPU tensors."""
    for i, t in enumerate(batch[1:], 1):
        if t.shape != batch[0].shape:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got {list(batch[0].shape)} at "
                               f"entry 0 and {list(t.shape)} at entry {i}")
    if all(not t.is_traced and t.device == CPU for t in batch) and len({t.dtype for t in batch}) == 1:
        return Tensor._wrap(np.stack([t.numpy() for t in batch]), batch[0].dtype, CPU)
    return ops.stack(list(batch))


def default_collate(batch: Sequence[Any]) -> Any:
    """torch's default_collate: a list of samples into one batch. Tensors, numpy arrays and torch
    tensors stack into a Tensor; Python floats give float64, ints int64, bools bool; strings stay a
    list; dicts, namedtuples and sequences collate field by field (a tuple becomes a list)."""
    elem = batch[0]
    if isinstance(elem, Tensor):
        return _stack(batch)
    if isinstance(elem, np.ndarray):
        if elem.dtype.kind in "OSUV":
            raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; "
                            f"found {elem.dtype}")
        return _array_tensor(np.stack(batch))
    if isinstance(elem, (np.bool_, np.number)):
        return _array_tensor(np.asarray(batch))
    if hasattr(elem, "detach") and hasattr(elem, "cpu"):  # torch tensors from a ported dataset: their values
        return _array_tensor(np.stack([as_array(t) for t in batch]))
    if isinstance(elem, float):
        return Tensor(np.asarray(batch, np.float64))
    if isinstance(elem, int):  # bool too: torch.tensor([True, False]) is a bool tensor
        if any(isinstance(b, float) for b in batch):  # torch.tensor([1, 2.5]): the default float dtype
            return Tensor(np.asarray(batch, np.float64), dtype=ops.get_default_dtype())
        return Tensor(np.asarray(batch, np.bool_ if all(isinstance(b, bool) for b in batch) else np.int64))
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        fields = {key: default_collate([d[key] for d in batch]) for key in elem}
        return _same_kind(elem, fields)
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # a namedtuple
        return type(elem)(*(default_collate(list(s)) for s in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        if any(len(e) != len(elem) for e in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        return [default_collate(list(s)) for s in zip(*batch)]
    raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; found "
                    f"{type(elem)}")


def _same_kind(elem: collections.abc.Mapping, fields: dict) -> Any:
    """The collated mapping as the sample's own mapping type where it can be rebuilt (torch's rule)."""
    try:
        if isinstance(elem, collections.abc.MutableMapping):
            clone = copy.copy(elem)
            clone.update(fields)
            return clone
        return type(elem)(fields)
    except TypeError:
        return fields


def default_convert(data: Any) -> Any:
    """torch's default_convert (the loader's collate without batching): numpy arrays and numbers
    inside `data` become Tensors, the containers stay (a tuple becomes a list)."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, np.ndarray):
        return data if data.dtype.kind in "OSUV" else _array_tensor(data)
    if isinstance(data, (np.bool_, np.number)):
        return _array_tensor(np.asarray(data))
    if isinstance(data, collections.abc.Mapping):
        return _same_kind(data, {k: default_convert(v) for k, v in data.items()})
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, (str, bytes)):
        return [default_convert(d) for d in data]
    return data


def get_worker_info() -> None:
    """torch's worker information: None, since Avalon's loaders run in the calling process."""
    return None


# -- the loader -----------------------------------------------------------------------------------

class DataLoader(Generic[T_co]):
    """torch's DataLoader: batches of `dataset` (map-style or iterable) by `batch_size`, in order or
    shuffled (`shuffle=True`: Avalon's seeded generator, or the numpy `generator`), the last short
    batch kept unless `drop_last`; `sampler` / `batch_sampler` replace the built-in ones and
    `collate_fn` the default collation. `batch_size=None` yields single samples, converted.

    A compiled training step traces once for the full batches' shapes; a shorter last batch traces
    it once more (a second signature), which `drop_last=True` avoids. `num_workers`,
    `pin_memory`, `timeout`, `prefetch_factor` and `persistent_workers` are accepted; loading runs
    in-process (see the module's docs), calling `worker_init_fn(0)` once per pass when given."""

    def __init__(self, dataset: Dataset[T_co], batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler: Any = None, batch_sampler: Any = None, num_workers: int = 0,
                 collate_fn: Callable[[list], Any] | None = None, pin_memory: bool = False, drop_last: bool = False,
                 timeout: float = 0, worker_init_fn: Callable[[int], None] | None = None,
                 multiprocessing_context: Any = None, generator: Any = None, *, prefetch_factor: int | None = None,
                 persistent_workers: bool = False, pin_memory_device: str = "", in_order: bool = True) -> None:
        if num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to disable multiprocessing.")
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError("prefetch_factor option could only be specified in multiprocessing.let num_workers > 0 "
                             "to enable multiprocessing, otherwise set prefetch_factor to None.")
        if num_workers == 0 and persistent_workers:
            raise ValueError("persistent_workers option needs num_workers > 0")
        self.dataset = dataset
        self.num_workers, self.pin_memory, self.timeout = num_workers, pin_memory, timeout
        self.worker_init_fn, self.generator = worker_init_fn, generator
        self.prefetch_factor, self.persistent_workers = prefetch_factor, persistent_workers
        self._iterable = isinstance(dataset, IterableDataset)
        if self._iterable:
            if shuffle not in (None, False):
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified shuffle option, but got "
                                 f"shuffle={shuffle}")
            if sampler is not None:
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified sampler option, but got "
                                 f"sampler={sampler}")
            if batch_sampler is not None:
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified batch_sampler option, but "
                                 f"got batch_sampler={batch_sampler}")
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, and "
                                 "drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None and drop_last:
            raise ValueError("batch_size=None option disables auto-batching and is mutually exclusive with drop_last")
        if sampler is None and not self._iterable:
            sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        if batch_size is not None and batch_sampler is None and not self._iterable:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.batch_size, self.drop_last = batch_size, bool(drop_last)
        self.sampler, self.batch_sampler = sampler, batch_sampler
        self._auto_collation = batch_sampler is not None or (self._iterable and batch_size is not None)
        self.collate_fn = collate_fn if collate_fn is not None else (
            default_collate if self._auto_collation else default_convert)

    def __iter__(self) -> Iterator[Any]:
        if self.num_workers > 0:
            _note_once("workers", f"DataLoader(num_workers={self.num_workers}): Avalon loads in the calling process; "
                                  "the batches are the same")
            if self.worker_init_fn is not None:
                self.worker_init_fn(0)
        if self._iterable:
            return self._iter_stream()
        if self.batch_sampler is None:
            return (self.collate_fn(self.dataset[i]) for i in self.sampler)
        return (self._fetch(indices) for indices in self.batch_sampler)

    def _fetch(self, indices: list[int]) -> Any:
        """One batch of a map-style dataset; a TensorDataset's with the default collation is one
        indexed read per tensor (the same values as stacking its rows)."""
        ds = self.dataset
        if (type(ds) is TensorDataset and self.collate_fn is default_collate
                and all(isinstance(t, np.ndarray) or (not t.is_traced and t.device == CPU) for t in ds.tensors)):
            idx = np.asarray(indices, np.int64)
            return [_array_tensor(t[idx]) if isinstance(t, np.ndarray) else Tensor._wrap(t.numpy()[idx], t.dtype, CPU)
                    for t in ds.tensors]
        many = getattr(ds, "__getitems__", None)
        samples = many(indices) if callable(many) else [ds[i] for i in indices]
        return self.collate_fn(samples)

    def _iter_stream(self) -> Iterator[Any]:
        it = iter(self.dataset)
        if self.batch_size is None:
            yield from (self.collate_fn(s) for s in it)
            return
        while batch := list(itertools.islice(it, self.batch_size)):
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield self.collate_fn(batch)

    def __len__(self) -> int:
        if self._iterable:
            n = len(self.dataset)  # type: ignore[arg-type]
            if self.batch_size is None:
                return n
            return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return len(self.batch_sampler if self.batch_sampler is not None else self.sampler)


# torch.utils.data.distributed, importable under torch's path (`avalon.utils.data.distributed`, as
# `os.path` is) although this is a module; its sampler is also here, as in torch.utils.data
from . import data_distributed as distributed  # noqa: E402
from .data_distributed import DistributedSampler  # noqa: E402

sys.modules[__name__ + ".distributed"] = distributed
for _sub in ("dataloader", "dataset", "sampler"):  # torch's submodule paths (`...data.sampler import ...`)
    sys.modules[f"{__name__}.{_sub}"] = sys.modules[__name__]


class StackDataset(Dataset):
    """torch's StackDataset: datasets of one length side by side; an item is the tuple (positional)
    or the dict (keyword) of theirs."""

    def __init__(self, *args: Dataset, **kwargs: Dataset) -> None:
        if args and kwargs:
            raise ValueError("Supported either ``tuple``- (via ``args``) or``dict``- (via ``kwargs``) like "
                             "input/output, but both types are given.")
        parts = list(args) or list(kwargs.values())
        if not parts:
            raise ValueError("At least one dataset should be passed")
        self._length = len(parts[0])
        if any(len(d) != self._length for d in parts):
            raise ValueError("Size mismatch between datasets")
        self.datasets: Any = args if args else kwargs

    def __getitem__(self, index: int) -> Any:
        if isinstance(self.datasets, dict):
            return {k: d[index] for k, d in self.datasets.items()}
        return tuple(d[index] for d in self.datasets)

    def __len__(self) -> int:
        return self._length

__all__ = ["BatchSampler", "ChainDataset", "ConcatDataset", "DataLoader", "Dataset", "DistributedSampler",
           "IterableDataset", "RandomSampler", "Sampler", "SequentialSampler", "StackDataset", "Subset",
           "SubsetRandomSampler", "TensorDataset", "WeightedRandomSampler", "default_collate", "default_convert",
           "get_worker_info", "random_split"]

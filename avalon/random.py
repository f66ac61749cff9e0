"""Avalon's random state: parameter initialization, dropout seeds, and `av.Generator` streams.

`av.manual_seed(n)` makes runs repeatable. Random ops in the IR take an explicit seed operand; in
a traced function the seed comes from one extra graph input (`rng_seed`) that every call of the
compiled function feeds afresh, so dropout masks differ from step to step as they do eagerly.

Eagerly, each random op draws its seed from the current generator: `default_generator` (what
`av.manual_seed` seeds), or the `av.Generator` a call names (`av.rand(3, generator=g)`,
`av.randperm(n, generator=g)`, `DataLoader(..., generator=g)`, `random_split(..., generator=g)`,
`nn.init.*_(..., generator=g)`), so one generator seeded alike repeats its draws whatever else draws
in between, as torch's do. The streams are Avalon's (numpy's PCG64 feeding Avalon's seeded random
ops), not torch's: the same seed gives the same values in Avalon, not torch's values. Inside a traced
function a generator cannot be used: the compiled function's random ops draw from its per-call seed
input, not from a Python object (an error says so).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from .ir import dtypes as dt

_TORCH_DEFAULT_SEED = 67280421310721  # torch.Generator().initial_seed()


class RandomGenerator:
    """`av.Generator` (torch.Generator): an independent random stream with `manual_seed`, `seed`, `initial_seed`,
    `get_state` / `set_state`. A new one starts at torch's default seed (67280421310721), so two new
    generators draw alike. It also draws like a numpy Generator (`g.normal(...)`, `g.permutation(n)`:
    numpy's methods), which is how Avalon's host-side code (initializers, data loaders) uses it."""

    def __init__(self, device: Any = "cpu", *, seed: int | None = None) -> None:
        self.device = device
        self.manual_seed(_TORCH_DEFAULT_SEED if seed is None else seed)

    def manual_seed(self, seed: int) -> Generator:
        """Restart the stream from `seed` (any int; negative ones wrap modulo 2**64, as torch's);
        returns the generator, as torch's does."""
        seed = int(seed) % (1 << 64)
        self._initial = seed
        self._np = np.random.default_rng(seed)
        return self

    def seed(self) -> int:
        """Seed from the operating system's entropy; returns the seed (63 bits)."""
        s = int(np.random.SeedSequence().entropy) % (1 << 63)
        self.manual_seed(s)
        return s

    def initial_seed(self) -> int:
        return self._initial

    def get_state(self) -> Any:
        """The stream's position as an int64 Tensor (opaque, for `set_state`: torch's is a ByteTensor)."""
        from .tensor import Tensor
        st = self._np.bit_generator.state
        words = []
        for v in (st["state"]["state"], st["state"]["inc"]):
            words += [v & ((1 << 64) - 1), v >> 64]
        words += [st["has_uint32"], st["uinteger"], self._initial]
        return Tensor(np.array(words, dtype=np.uint64).view(np.int64), dtype=dt.int64)

    def set_state(self, new_state: Any) -> Generator:
        """Go back to a position `get_state` returned."""
        from .tensor import as_array
        w = np.asarray(as_array(new_state)).astype(np.int64).reshape(-1)
        if w.shape != (7,):
            raise ValueError(f"Generator.set_state: expected the 7-word state get_state() returns, got shape "
                             f"{tuple(np.shape(as_array(new_state)))}")
        u = [int(x) for x in w.view(np.uint64)]
        gen = np.random.Generator(np.random.PCG64())
        gen.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": u[0] | (u[1] << 64),
                                                                       "inc": u[2] | (u[3] << 64)},
                                   "has_uint32": u[4], "uinteger": u[5]}
        self._np, self._initial = gen, u[6]
        return self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._np, name)  # numpy's drawing methods

    def __repr__(self) -> str:
        return f"<avalon.Generator device={self.device!s} initial_seed={self._initial}>"


Generator = RandomGenerator
"""torch's name (the class is named apart from the code generator's `Generator`)."""

default_generator = Generator(seed=int(np.random.SeedSequence().entropy) % (1 << 63))
"""What `av.manual_seed` seeds and random ops draw from (seeded from entropy at import, as before)."""
_current: list[Generator] = [default_generator]


def manual_seed(seed: int) -> Generator:
    """torch.manual_seed: restart the default generator from `seed`; returns it (as torch does)."""
    return default_generator.manual_seed(seed)


def get_rng_state() -> Any:
    """torch.get_rng_state: the default generator's position, for `set_rng_state` (a checkpoint's
    "rng_state", so that a resumed run draws the dropout masks the uninterrupted one would). An int64
    Tensor of Avalon's stream, where torch's is a ByteTensor of its own."""
    return default_generator.get_state()


def set_rng_state(new_state: Any) -> None:
    """torch.set_rng_state: put the default generator back where `get_rng_state` found it."""
    default_generator.set_state(new_state)


def generator() -> np.random.Generator:
    """The numpy generator that initializers and data loaders draw from (the current one's)."""
    return _current[-1]._np


def fresh_seed() -> int:
    return int(generator().integers(0, 2**62))


def next_seed():
    """A seed for one random op: a Python int eagerly, a traced i64 scalar inside a trace."""
    from .trace import current_trace
    t = current_trace()
    if t is None:
        return fresh_seed()
    return t.seed()


def as_numpy(gen: Any, fn: str = "generator") -> np.random.Generator | None:
    """A `generator=` argument as the numpy Generator to draw from (None: the current one)."""
    if gen is None or isinstance(gen, np.random.Generator):
        return gen
    if isinstance(gen, Generator):
        return gen._np
    what = f"{type(gen).__module__}.{type(gen).__name__}".removeprefix("builtins.").replace("torch._C.", "torch.")
    raise TypeError(f"{fn}: argument 'generator' must be an av.Generator (torch.Generator's stand-in) or a numpy "
                    f"Generator, got {what}")


@contextlib.contextmanager
def using(gen: Any, fn: str = "a random function") -> Iterator[None]:
    """Random ops inside draw their seeds from `gen` (an av.Generator or numpy Generator; None: no
    change). Not inside a trace: a compiled function's random ops draw from its seed input."""
    if gen is None:
        yield
        return
    from .trace import current_trace
    if current_trace() is not None:
        raise NotImplementedError(f"{fn}: generator= cannot be used inside a traced or compiled function (its "
                                  "random ops draw from the per-call seed input); seed with av.manual_seed "
                                  "outside it, or draw the values outside and pass them in")
    g = gen if isinstance(gen, Generator) else _wrap_numpy(as_numpy(gen, fn))
    _current.append(g)
    try:
        yield
    finally:
        _current.pop()


def _wrap_numpy(gen: np.random.Generator) -> Generator:
    g = Generator.__new__(Generator)
    g.device, g._np, g._initial = "cpu", gen, 0
    return g


def randperm(n: int, *, generator: Any = None, **kwargs: Any) -> Any:
    """torch.randperm, with `generator=` (see `avalon.ops.randperm` for the rest)."""
    from .ops import randperm as _randperm
    with using(generator, "randperm"):
        return _randperm(n, **kwargs)


def multinomial(input: Any, num_samples: int, replacement: bool = False, *, generator: Any = None,
                **kwargs: Any) -> Any:
    """torch.multinomial, with `generator=` (see `avalon.ops.multinomial` for the rest)."""
    from .ops import multinomial as _multinomial
    with using(generator, "multinomial"):
        return _multinomial(input, num_samples, replacement, **kwargs)

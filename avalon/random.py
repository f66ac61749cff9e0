"""Avalon's global random state: parameter initialization and dropout seeds.

`av.manual_seed(n)` makes runs repeatable. Random ops in the IR take an explicit seed operand; in
a traced function the seed comes from one extra graph input (`rng_seed`) that every call of the
compiled function feeds afresh, so dropout masks differ from step to step as they do eagerly.
"""
from __future__ import annotations

import numpy as np

_gen = np.random.default_rng()


def manual_seed(seed: int) -> None:
    global _gen
    _gen = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    """The generator that initializers use."""
    return _gen


def fresh_seed() -> int:
    return int(_gen.integers(0, 2**62))


def next_seed():
    """A seed for one random op: a Python int eagerly, a traced i64 scalar inside a trace."""
    from .trace import current_trace
    t = current_trace()
    if t is None:
        return fresh_seed()
    return t.seed()

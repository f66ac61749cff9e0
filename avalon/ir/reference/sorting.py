"""Reference rules of `sort` and `argsort`: torch.sort's order, stable in both directions.

The order: numbers ascending (descending), nan after every number (before, when descending), equal
elements (-0.0 and 0.0 among them) in their original order. numpy's stable argsort already puts nan
last and keeps ties in order; descending is the stable ascending argsort of the axis reversed, read
backwards (ties then come out by ascending original position, and nan first).
"""
from __future__ import annotations

import numpy as np

from .core import rule


def stable_order(x: np.ndarray, axis: int, descending: bool) -> np.ndarray:
    """The i64 positions that sort `x` along `axis` as torch.sort(stable=True) does."""
    ax = axis % x.ndim
    if not descending:
        return np.argsort(x, axis=ax, kind="stable").astype(np.int64)
    n = x.shape[ax]
    rev = np.flip(x, ax)
    return (n - 1 - np.flip(np.argsort(rev, axis=ax, kind="stable"), ax)).astype(np.int64)


@rule("argsort")
def _argsort(attrs: dict, x: np.ndarray) -> np.ndarray:
    return stable_order(x, attrs["axis"], attrs["descending"])


@rule("sort")
def _sort(attrs: dict, x: np.ndarray) -> np.ndarray:
    """The operand's own elements at the sorted positions (exact: -0.0 and nan payloads kept)."""
    return np.take_along_axis(x, stable_order(x, attrs["axis"], attrs["descending"]), attrs["axis"] % x.ndim)

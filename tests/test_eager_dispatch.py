"""Eager calls reuse the result type inferred for an (op, operand types, attributes) signature
(`avalon.ops.core._signature`) instead of building an IR op per call. These check that the cache
tells apart what `==` and `hash` do not (0.0 and -0.0, 1 and True and 1.0, NaN), that errors are
never cached, that unhashable attributes still work, and that the cache stays bounded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import avalon as av
from avalon.ir import ShapeError
from avalon.ops import core


def test_negative_zero_is_not_served_the_positive_zero_entry() -> None:
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        av.full((3,), first)
        got = av.full((3,), second).numpy()
        assert np.array_equal(np.signbit(got), np.signbit(np.full(3, second, np.float32)))


def test_one_true_and_one_point_zero_keep_their_own_result_types() -> None:
    x = av.tensor(np.arange(4, dtype=np.int32))
    tx = torch.arange(4, dtype=torch.int32)
    for v in (1, True, 1.0, np.float64(1.0), np.int64(1), 1, True):
        got, want = x + v, tx + v
        assert got.numpy().dtype == want.numpy().dtype, v
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_nan_fill_values_hit_one_entry_and_stay_nan() -> None:
    core._EAGER_TYPES.clear()
    for _ in range(3):
        assert np.isnan(av.full((2,), float("nan")).numpy()).all()
    assert sum(1 for k in core._EAGER_TYPES if k[0] == "constant") == 1


def test_a_shape_error_is_raised_again_with_the_users_line() -> None:
    a, b = av.ones(2, 3), av.ones(4, 5)
    for _ in range(2):
        with pytest.raises((ShapeError, RuntimeError), match="test_eager_dispatch.py"):
            a @ b


def test_the_cache_holds_signatures_not_values() -> None:
    rng = np.random.default_rng(0)
    x = av.tensor(rng.standard_normal((3, 4)).astype(np.float32))
    for _ in range(3):
        y = rng.standard_normal((3, 4)).astype(np.float32)
        np.testing.assert_array_equal((x * av.tensor(y)).numpy(), x.numpy() * y)


def test_the_cache_is_bounded_by_clearing() -> None:
    x = av.tensor(np.ones(2, np.float32))
    for i in range(5000):  # a float operand that changes every call makes a new constant signature
        x * (i + 0.5)
    assert len(core._EAGER_TYPES) <= 4096


def test_attributes_that_cannot_be_keys_bypass_the_cache() -> None:
    assert core._frozen(np.arange(3)) is None
    assert core._frozen([1, np.arange(2)]) is None
    assert core._frozen([1, 2]) != core._frozen((1, 2))
    assert core._frozen(0.0) != core._frozen(-0.0)
    assert core._frozen(1) != core._frozen(True)
    assert core._frozen(float("nan")) == core._frozen(float("nan"))

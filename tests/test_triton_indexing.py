"""The index algebra behind the Triton emitters: simplification must keep values exact.

Every simplified index is checked against brute-force numpy evaluation of the same mapping over all
live lanes; the simplifications are also checked to produce the plain forms the kernels rely on.
"""
import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from avalon.codegen.triton.indexing import (
    Affine,
    IndexVar,
    broadcast_index,
    delinearize,
    index_key,
    linearize,
    reshape_index,
    row_major,
    transpose_index,
)


def evaluate(a: Affine, env: dict[str, np.ndarray]) -> np.ndarray:
    """Evaluate an Affine with Python semantics over the variables in `env` (values >= 0 here)."""
    return np.asarray(eval(str(a) if a.terms else str(a.const), {}, dict(env)))


shapes = st.lists(st.integers(1, 5), min_size=0, max_size=4).map(tuple)


@given(shapes, st.data())
def test_reshape_chain_maps_to_the_same_flat_offset(shape, data):
    n = int(np.prod(shape))
    x = IndexVar.base("x", n)
    env = {"x": np.arange(n)}
    other = data.draw(st.permutations(list(shape))).copy() if shape else []
    idx = delinearize(Affine.of(x), shape)
    back = reshape_index(reshape_index(idx, shape, tuple(other)), tuple(other), shape)
    flat = linearize(back, row_major(shape), shape)
    assert str(flat) == ("x" if n > 1 else "0")
    for d, a in enumerate(back):
        want = (np.arange(n) // row_major(shape)[d]) % shape[d] if shape[d] > 1 else np.zeros(n, int)
        np.testing.assert_array_equal(np.broadcast_to(evaluate(a, env), (n,)), want)


def test_transpose_and_broadcast_give_strided_reads():
    x = IndexVar.base("x", 12)
    idx = delinearize(Affine.of(x), (3, 4))  # result of transposing a (4, 3) value
    src = transpose_index(idx, (1, 0))
    assert str(linearize(src, row_major((4, 3)))) in ("x % 4 * 3 + x // 4", "x // 4 + x % 4 * 3")
    b = broadcast_index(idx, (4,), (3, 4))  # a bias of shape (4,) broadcast over rows
    assert str(linearize(b, (1,))) == "x % 4"
    b1 = broadcast_index(idx, (3, 1), (3, 4))  # a per-row value
    assert str(linearize(b1, (1, 1), (3, 1))) == "x // 4"


def test_row_index_is_recognised_through_keepdims_and_reshape():
    x = IndexVar.base("xindex", 6)
    rows = delinearize(Affine.of(x), (2, 3))
    keep = rows + (Affine(), Affine())  # the (2, 3, 1, 1) keepdims result at its canonical index
    assert index_key(reshape_index(keep, (2, 3, 1, 1), (2, 3))) == index_key(rows)


@given(st.integers(1, 40), st.integers(1, 9), st.integers(1, 9), st.integers(0, 3), st.integers(1, 3))
def test_floordiv_mod_is_exact(bound, d, m, c, mul):
    x = IndexVar.base("x", bound)
    a = Affine.of(x).scale(mul) + c
    env = {"x": np.arange(bound)}
    vals = np.arange(bound) * mul + c
    for mm in (None, m):
        got = evaluate(a.floordiv_mod(d, mm), env)
        want = vals // d if mm is None else (vals // d) % mm
        np.testing.assert_array_equal(np.broadcast_to(got, vals.shape), want)


def test_mixed_terms_split_exactly():
    x, y = IndexVar.base("x", 6), IndexVar.base("y", 4)
    a = Affine.of(x).scale(4) + Affine.of(y)  # x * 4 + y with y < 4
    assert str(a.floordiv_mod(4, None)) == "x"
    assert str(a.floordiv_mod(1, 4)) == "y"
    env = {"x": np.arange(6)[:, None], "y": np.arange(4)[None, :]}
    for d, m in itertools.product((1, 2, 3, 4, 8), (None, 2, 3, 5)):
        got = evaluate(a.floordiv_mod(d, m), env)
        vals = env["x"] * 4 + env["y"]
        want = vals // d if m is None else (vals // d) % m
        np.testing.assert_array_equal(np.broadcast_to(got, want.shape), want)


def test_tap_and_channel_of_a_blocked_contraction_index_are_exact():
    """`kq * C + kc` (a K tile inside one tap of C channels): the tap's row and column come out as
    expressions of the scalar `kq` alone, and every split stays exact."""
    kq, kc = IndexVar.base("kq", 9), IndexVar.base("kc", 64)
    a = Affine.of(kq).scale(64) + Affine.of(kc)
    ki, kj, c = delinearize(a, (3, 3, 64))
    assert (str(ki), str(kj), str(c)) == ("kq // 3", "kq % 3", "kc")
    env = {"kq": np.arange(9)[:, None], "kc": np.arange(64)[None, :]}
    vals = env["kq"] * 64 + env["kc"]
    for d, m in itertools.product((1, 2, 16, 32, 64, 128, 192, 320), (None, 2, 3, 5, 64)):
        got = evaluate(a.floordiv_mod(d, m), env)
        want = vals // d if m is None else (vals // d) % m
        np.testing.assert_array_equal(np.broadcast_to(got, want.shape), want, err_msg=f"d={d} m={m}")


@given(st.integers(1, 12), st.sampled_from([2, 4, 6, 16]), st.integers(1, 16), st.integers(1, 3), st.integers(0, 5),
       st.integers(1, 200), st.sampled_from([None, 2, 3, 7]))
def test_two_level_index_divides_exactly(qb, g, rb, mul, c, d, m):
    q, r = IndexVar.base("q", qb), IndexVar.base("r", min(rb, g))
    a = Affine.of(q).scale(g * mul) + Affine.of(r) + c
    env = {"q": np.arange(qb)[:, None], "r": np.arange(min(rb, g))[None, :]}
    vals = env["q"] * g * mul + env["r"] + c
    got = evaluate(a.floordiv_mod(d, m), env)
    want = vals // d if m is None else (vals // d) % m
    np.testing.assert_array_equal(np.broadcast_to(got, want.shape), want)

"""torch's scatter reductions under `import avalon as av` (index_add, scatter_reduce, index_put,
index_copy, index_fill, bincount, `x[idx] = v`), against torch on random inputs: values and dtypes
eagerly and inside `av.compile` (numpy backend), gradients against torch.autograd in float64,
including torch's rule for tied maxima of amax/amin."""
import numpy as np
import pytest
import torch
from helpers import T, check_like_torch
from helpers import same as _same

import avalon as av


def same(a, b, tol=1e-9):
    _same(a, b, tol)


def check(f, *arrays, tol=1e-9, **kw):
    check_like_torch(f, *arrays, tol=tol, **kw)


RNG = np.random.default_rng(0)


@pytest.mark.parametrize("reduce", ["sum", "prod", "mean", "amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False])
def test_scatter_reduce_values_and_gradients_match_torch(reduce, include_self):
    x = RNG.standard_normal((4, 5))
    src = RNG.standard_normal((6, 3))
    idx = RNG.integers(0, 4, (6, 3))  # narrower than x in dim 1: the rest of x is untouched
    check(lambda lib, x, i, s: lib.scatter_reduce(x, 0, i, s, reduce, include_self=include_self), x, idx, src)
    check(lambda lib, x, i, s: lib.scatter_reduce(x, 1, i, s, reduce, include_self=include_self),
          x.T.copy(), idx.T.copy(), src.T.copy())
    wide = RNG.standard_normal((7, 4))  # a source larger than the index: its first index.shape elements count
    check(lambda lib, x, i, s: lib.scatter_reduce(x, 0, i, s, reduce, include_self=include_self), x, idx, wide,
          grad=False)


@pytest.mark.parametrize("reduce", ["amax", "amin", "prod"])
@pytest.mark.parametrize("include_self", [True, False])
def test_ties_and_zeros_get_torchs_gradients(reduce, include_self):
    """Small integers make many ties, between sources and with the input (torch counts a tying input
    in the split even with include_self=False, and gives it nothing), and zeros in products."""
    x = RNG.integers(-2, 3, (3, 4)).astype(np.float64)
    src = RNG.integers(-2, 3, (8, 4)).astype(np.float64)
    idx = RNG.integers(0, 3, (8, 4))
    check(lambda lib, x, i, s: lib.scatter_reduce(x, 0, i, s, reduce, include_self=include_self), x, idx, src)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32])
@pytest.mark.parametrize("reduce", ["sum", "prod", "mean", "amax", "amin"])
def test_scatter_reduce_dtypes(dtype, reduce):
    x = RNG.integers(-5, 6, (3, 4)).astype(dtype)
    src = RNG.integers(-5, 6, (5, 4)).astype(dtype)
    idx = RNG.integers(0, 3, (5, 4))
    for inc in (True, False):  # integer means floor, as in torch
        check(lambda lib, x, i, s, inc=inc: lib.scatter_reduce(x, 0, i, s, reduce, include_self=inc), x, idx, src,
              grad=False, tol=1e-6)


@pytest.mark.filterwarnings("ignore:The reduce argument of torch.scatter")
def test_scatter_multiply_is_prod():
    x, src, idx = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4)), RNG.integers(0, 3, (3, 4))
    check(lambda lib, x, i, s: x.scatter(0, i, s, reduce="multiply"), x, idx, src, grad=False)


def test_index_add_gnn_message_passing():
    """Sum of messages over incoming edges, the core of a graph network layer, and its gradients."""
    nodes, edges, feat = 6, 15, 4
    h = RNG.standard_normal((nodes, feat))
    w = RNG.standard_normal((feat, feat))
    src, dst = RNG.integers(0, nodes, edges), RNG.integers(0, nodes, edges)

    def layer(lib, h, w, s, d):
        msg = (h @ w)[s]  # gather source features per edge
        agg = lib.index_add(lib.zeros_like(h), 0, d, msg)
        return lib.tanh(agg + h)
    check(layer, h, w, src, dst)
    check(lambda lib, x, i, s: lib.index_add(x, 1, i, s, alpha=0.5), h, np.array([3, 0, 3]),
          RNG.standard_normal((nodes, 3)))
    check(lambda lib, x, i, s: lib.index_add(x, 1, i, s), RNG.integers(0, 9, (2, 3)), np.array([2, 2]),
          RNG.integers(0, 9, (2, 2)), grad=False)


def test_index_copy_fill_put_match_torch():
    x = RNG.standard_normal((5, 3))
    check(lambda lib, x, i, s: lib.index_copy(x, 0, i, s), x, np.array([4, 0, 2]), RNG.standard_normal((3, 3)))
    check(lambda lib, x, i: lib.index_fill(x, 1, i, -1.5), x, np.array([-1, 0]))
    check(lambda lib, x, i, v: lib.index_fill(x, 0, i, v), x, np.array([1, 3]), np.array(2.5))
    for acc in (False, True):
        check(lambda lib, x, i, v, acc=acc: lib.index_put(x, (i,), v, accumulate=acc), x, np.array([3, -1, 1, 0]),
              RNG.standard_normal((4, 3)))
        check(lambda lib, x, i, j, v, acc=acc: lib.index_put(x, (i, j), v, accumulate=acc), x, np.array([[4], [1]]),
              np.array([0, 2, 1]), RNG.standard_normal((2, 3)))
    # repeated indices: accumulate adds all; without, the last wins (torch's CPU)
    dup = np.array([1, 1, 3, 1])
    check(lambda lib, x, i, v: lib.index_put(x, (i,), v, accumulate=True), x, dup, RNG.standard_normal((4, 3)))
    check(lambda lib, x, i, v: lib.index_put(x, (i,), v), x, dup, RNG.standard_normal((4, 3)), grad=False)
    mask = RNG.random((5, 3)) < 0.4
    same(av.index_put(av.tensor(x), (av.tensor(mask),), av.tensor(np.array(7.0)), accumulate=True),  # (f64, as T's)
         T(x).index_put((T(mask),), T(7.0), accumulate=True))


def test_tensor_methods_and_in_place_forms():
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    src = RNG.standard_normal((3, 3)).astype(np.float32)
    i = np.array([0, 3, 0])
    a, t = av.tensor(x), T(x)
    same(a.index_add(0, av.tensor(i), av.tensor(src), alpha=2), t.index_add(0, T(i), T(src), alpha=2), 1e-6)
    same(a.scatter_reduce(0, av.tensor(i[:, None]), av.tensor(src[:, :1]), "amax"),
         t.scatter_reduce(0, T(i[:, None]), T(src[:, :1]), "amax"))
    same(a.index_fill(1, av.tensor([2]), 0.5), t.index_fill(1, T([2]), 0.5))
    same(a.index_copy(0, av.tensor([1, 2, 0]), av.tensor(src)), t.index_copy(0, T([1, 2, 0]), T(src)))
    same(a.index_put((av.tensor(i),), av.tensor(src), accumulate=True), t.index_put((T(i),), T(src), accumulate=True),
         1e-6)
    same(av.tensor(i).bincount(), T(i).bincount())
    alias = a
    a.index_add_(0, av.tensor(i), av.tensor(src))
    t.index_add_(0, T(i), T(src))
    same(alias, t, 1e-6)
    a.index_put_((av.tensor([1]),), av.tensor(9.0), accumulate=True)
    t.index_put_((T([1]),), T(np.float32(9.0)), accumulate=True)
    a.scatter_reduce_(0, av.tensor(i[:, None]), av.tensor(src[:, :1]), "sum", include_self=False)
    t.scatter_reduce_(0, T(i[:, None]), T(src[:, :1]), "sum", include_self=False)
    col = np.full((4, 1), 2.5, np.float32)
    a.index_fill_(0, av.tensor([2]), -1.0).index_copy_(1, av.tensor([0]), av.tensor(col))
    t.index_fill_(0, T([2]), -1.0).index_copy_(1, T([0]), T(col))
    same(alias, t, 1e-6)

    def step(w, i, s):  # in place inside a compiled function: the caller's tensor changes
        w.index_add_(0, i, s)
        return w.sum()
    w = av.zeros(4, 3)
    av.compile(step, backend="numpy")(w, av.tensor(i), av.tensor(src))
    same(w, torch.zeros(4, 3).index_add_(0, T(i), T(src)), 1e-6)


def test_bincount():
    x = RNG.integers(0, 7, 20)
    wts = RNG.standard_normal(20)
    same(av.bincount(av.tensor(x)), torch.bincount(T(x)))
    same(av.bincount(av.tensor(x), minlength=10), torch.bincount(T(x), minlength=10))
    same(av.bincount(av.tensor(x), av.tensor(wts.astype(np.float32))), torch.bincount(T(x), T(wts.astype(np.float32))),
         1e-5)
    same(av.bincount(av.tensor(x), av.tensor(wts)), torch.bincount(T(x), T(wts)))
    same(av.bincount(av.tensor(np.zeros(0, np.int64))), torch.bincount(T(np.zeros(0, np.int64))))
    f = av.compile(lambda x, w: av.bincount(x, w, minlength=7), backend="numpy")
    same(f(x, wts), torch.bincount(T(x), T(wts), minlength=7))
    g = av.grad(lambda w, x: (av.bincount(x, w, minlength=7) ** 2).sum())(wts, x)
    same(g, 2 * np.bincount(x, wts)[x])
    with pytest.raises(ValueError, match="minlength"):
        av.compile(lambda x: av.bincount(x), backend="numpy")(x)
    with pytest.raises(RuntimeError, match="non-negative"):
        av.bincount(av.tensor([1, -1]))


def test_setitem_with_integer_arrays_matches_torch():
    x = RNG.standard_normal((4, 5, 3))
    cases = [
        (lambda L: L.tensor([0, 2]), 1.5),
        (lambda L: (L.tensor([0, 2]), L.tensor([1, 3])), np.arange(6.0).reshape(2, 3)),
        (lambda L: (L.tensor([[0, 2], [1, 3]]), 1), np.arange(3.0)),
        (lambda L: ([3, 0], slice(None), slice(None)), np.arange(3.0)),
    ]
    for index, value in cases:
        a, t = av.tensor(x), T(x)
        a[index(av)] = av.tensor(value) if isinstance(value, np.ndarray) else value
        t[index(torch)] = T(value) if isinstance(value, np.ndarray) else value
        same(a, t)

    def zero_rows(a, i):
        a = a * 1.0
        a[i] = 0.0
        return (a * a).sum()
    i = np.array([1, 3])
    ta = T(x).requires_grad_()
    tb = ta * 1.0
    tb[T(i)] = 0.0
    (tb * tb).sum().backward()
    same(av.grad(zero_rows)(x, i), ta.grad)
    same(av.compile(zero_rows, backend="numpy")(x, i), (tb * tb).sum())


def test_errors_name_the_problem():
    x = av.zeros(3, 2)
    with pytest.raises(IndexError, match="full slices beside them"):
        x[1:, [0, 1]] = 1.0  # (x[:, [0, 1]] = 1.0 is torch's: test_port_programs_21.py)
    with pytest.raises(IndexError, match="out of bounds"):
        av.index_add(x, 0, av.tensor([3]), av.ones(1, 2))
    with pytest.raises(ValueError, match="reduce argument"):
        av.scatter_reduce(x, 0, av.tensor([[0, 1]]), av.ones(1, 2), "add")  # ('max' is torch's amax)
    with pytest.raises(ValueError, match="shape"):
        av.index_add(x, 0, av.tensor([0, 1]), av.ones(3, 2))

"""Common PyTorch-user mistakes get torch's exception type and a message naming the op, the values
and the user's line, at the earliest point; nothing fails silently (a dim out of range used to wrap
modulo ndim, a wrong target shape to broadcast, an int division by zero to give 0). torch is the
oracle for the exception types, and valid (negative) dims must keep working everywhere."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given
from hypothesis import strategies as st

import avalon as av
import avalon.nn.functional as F
from avalon import nn

HERE = "test_user_errors.py"


def a2() -> av.Tensor:
    return av.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))


def t2() -> torch.Tensor:
    return torch.arange(6, dtype=torch.float32).reshape(2, 3)


def torch_error(fn: Callable[[], Any]) -> type[BaseException] | None:
    """The type of the exception torch raises for the same mistake (None: it raises none)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any exception type is the answer
        return type(e)
    return None


def raises_like_torch(fn: Callable[[], Any], torch_fn: Callable[[], Any] | None, match: str,
                      at: Callable | None = None) -> BaseException:
    """`fn` raises an instance of torch's exception type for `torch_fn` whose message matches `match`
    and names this file and the line the mistake is on (the first line of `at`, by default of `fn`)."""
    want = torch_error(torch_fn) if torch_fn is not None else Exception
    assert want is not None, "torch raises no error here"
    with pytest.raises(want, match=match) as ei:
        fn()
    assert f"{HERE}:{(at or fn).__code__.co_firstlineno}:" in str(ei.value), str(ei.value)
    return ei.value


# -- 1. dims out of range: torch's IndexError, named and located, never wrapped modulo ndim --------------

IDX = np.zeros((2, 3), np.int64)
def out_of_range(lo: int, hi: int, got: int) -> str:
    """torch's message for dim `got` outside [lo, hi], as a regex."""
    return rf"Dimension out of range \(expected to be in range of \[{lo}, {hi}\], but got {got}\)"


OUT2 = out_of_range(-2, 1, 2)

DIM_CASES: list[tuple[str, str, Callable[[], Any], Callable[[], Any]]] = [
    ("cat", OUT2, lambda: av.cat([a2(), a2()], dim=2), lambda: torch.cat([t2(), t2()], dim=2)),
    ("concat", OUT2, lambda: av.ops.concat([a2(), a2()], 2), lambda: torch.cat([t2(), t2()], dim=2)),
    ("stack", out_of_range(-3, 2, 3), lambda: av.stack([a2(), a2()], dim=3),
     lambda: torch.stack([t2(), t2()], dim=3)),
    ("transpose", OUT2, lambda: a2().transpose(0, 2), lambda: t2().transpose(0, 2)),
    ("unsqueeze", out_of_range(-3, 2, 3), lambda: a2().unsqueeze(3), lambda: t2().unsqueeze(3)),
    ("unsqueeze", out_of_range(-3, 2, -4), lambda: av.unsqueeze(a2(), -4), lambda: t2().unsqueeze(-4)),
    ("squeeze", OUT2, lambda: a2().squeeze(2), lambda: t2().squeeze(2)),
    ("flatten", OUT2, lambda: a2().flatten(1, 2), lambda: t2().flatten(1, 2)),
    ("permute", OUT2, lambda: a2().permute(0, 2), lambda: t2().permute(0, 2)),
    ("argmax", OUT2, lambda: a2().argmax(dim=2), lambda: t2().argmax(dim=2)),
    ("argmin", out_of_range(-2, 1, -3), lambda: a2().argmin(dim=-3), lambda: t2().argmin(dim=-3)),
    ("cumsum", OUT2, lambda: av.cumsum(a2(), dim=2), lambda: torch.cumsum(t2(), dim=2)),
    ("cumprod", OUT2, lambda: av.cumprod(a2(), 2), lambda: torch.cumprod(t2(), 2)),
    ("sum", OUT2, lambda: a2().sum(dim=2), lambda: t2().sum(dim=2)),
    ("mean", OUT2, lambda: a2().mean(dim=(0, 2)), lambda: t2().mean(dim=(0, 2))),
    ("var", OUT2, lambda: a2().var(2), lambda: t2().var(2)),
    ("std", OUT2, lambda: av.std(a2(), 2), lambda: torch.std(t2(), 2)),
    ("max", OUT2, lambda: a2().max(dim=2), lambda: t2().max(dim=2)),
    ("min", OUT2, lambda: av.min(a2(), 2), lambda: torch.min(t2(), 2)),
    ("amax", OUT2, lambda: av.amax(a2(), 2), lambda: torch.amax(t2(), 2)),
    ("amin", OUT2, lambda: av.amin(a2(), dim=2), lambda: torch.amin(t2(), dim=2)),
    ("logsumexp", OUT2, lambda: av.logsumexp(a2(), dim=2), lambda: torch.logsumexp(t2(), dim=2)),
    ("prod", OUT2, lambda: av.prod(a2(), 2), lambda: torch.prod(t2(), 2)),
    ("any", OUT2, lambda: av.any(a2(), 2), lambda: torch.any(t2(), 2)),
    ("all", OUT2, lambda: av.all(a2(), 2), lambda: torch.all(t2(), 2)),
    ("norm", OUT2, lambda: a2().norm(dim=2), lambda: t2().norm(dim=2)),
    ("softmax", OUT2, lambda: F.softmax(a2(), dim=2), lambda: TF.softmax(t2(), dim=2)),
    ("softmax", OUT2, lambda: av.softmax(a2(), 2), lambda: torch.softmax(t2(), 2)),
    ("log_softmax", out_of_range(-2, 1, -3), lambda: F.log_softmax(a2(), dim=-3), lambda: TF.log_softmax(t2(), dim=-3)),
    ("softmin", OUT2, lambda: F.softmin(a2(), dim=2), lambda: TF.softmin(t2(), dim=2)),
    ("sort", OUT2, lambda: av.sort(a2(), 2), lambda: torch.sort(t2(), 2)),
    ("topk", OUT2, lambda: av.topk(a2(), 1, dim=2), lambda: torch.topk(t2(), 1, dim=2)),
    ("gather", OUT2, lambda: av.gather(a2(), 2, IDX), lambda: torch.gather(t2(), 2, torch.tensor(IDX))),
    ("scatter", OUT2, lambda: av.scatter(a2(), 2, IDX, a2()), lambda: torch.scatter(t2(), 2, torch.tensor(IDX), t2())),
    ("flip", OUT2, lambda: av.flip(a2(), (2,)), lambda: torch.flip(t2(), (2,))),
    ("roll", OUT2, lambda: av.roll(a2(), 1, 2), lambda: torch.roll(t2(), 1, 2)),
    ("index_select", OUT2, lambda: av.index_select(a2(), 2, np.zeros(1, np.int64)),
     lambda: torch.index_select(t2(), 2, torch.zeros(1, dtype=torch.int64))),
    ("narrow", OUT2, lambda: av.narrow(a2(), 2, 0, 1), lambda: torch.narrow(t2(), 2, 0, 1)),
    ("chunk", OUT2, lambda: a2().chunk(2, dim=2), lambda: t2().chunk(2, dim=2)),
    ("split", OUT2, lambda: av.split(a2(), 1, 2), lambda: torch.split(t2(), 1, 2)),
    ("unbind", OUT2, lambda: av.unbind(a2(), 2), lambda: torch.unbind(t2(), 2)),
    ("movedim", OUT2, lambda: av.movedim(a2(), 2, 0), lambda: torch.movedim(t2(), 2, 0)),
    ("diagonal", OUT2, lambda: av.diagonal(a2(), 0, 0, 2), lambda: torch.diagonal(t2(), 0, 0, 2)),
    ("take", OUT2, lambda: av.ops.take(a2(), np.zeros(1, np.int64), 2), None),
    ("normalize", OUT2, lambda: F.normalize(a2(), dim=2), lambda: TF.normalize(t2(), dim=2)),
    ("glu", OUT2, lambda: F.glu(a2(), dim=2), lambda: TF.glu(t2(), dim=2)),
    ("cosine_similarity", OUT2, lambda: F.cosine_similarity(a2(), a2(), dim=2),
     lambda: TF.cosine_similarity(t2(), t2(), dim=2)),
    ("unflatten", OUT2, lambda: nn.Unflatten(2, (1, 3))(a2()), lambda: torch.nn.Unflatten(2, (1, 3))(t2())),
]


@pytest.mark.parametrize("op,match,fn,torch_fn", DIM_CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(DIM_CASES)])
def test_dim_out_of_range_is_torchs_index_error(op: str, match: str, fn: Callable, torch_fn: Callable | None) -> None:
    e = raises_like_torch(fn, torch_fn, f"{op}: {match}")
    assert isinstance(e, IndexError)


def test_dim_out_of_range_while_tracing_names_the_line() -> None:
    x = np.ones((2, 3), np.float32)
    f = lambda x: x.transpose(0, 2)  # noqa: E731
    with pytest.raises(IndexError, match=f"{HERE}:{f.__code__.co_firstlineno}: transpose: Dimension out of range"):
        av.trace(f, x)
    with pytest.raises(IndexError, match="cat: Dimension out of range"):
        av.compile(lambda x: av.cat([x, x], dim=2), backend="numpy")(x)


def test_zero_dim_tensors_take_dims_minus_one_and_zero() -> None:
    s = av.tensor(np.float32(3.0))
    for d in (0, -1):
        assert s.sum(d).shape == () and s.unsqueeze(d).shape == (1,) and F.softmax(s, d).shape == ()
    assert av.unsqueeze(s, 0).shape == (1,)
    raises_like_torch(lambda: s.sum(1), lambda: torch.tensor(3.0).sum(1), r"range of \[-1, 0\], but got 1")
    raises_like_torch(lambda: s.unsqueeze(2), lambda: torch.tensor(3.0).unsqueeze(2), r"range of \[-1, 0\]")


@pytest.mark.parametrize("fn,torch_fn,match", [
    (lambda: a2().sum((0, 0)), lambda: t2().sum((0, 0)), "sum: dim 0 appears multiple times in the list of dims"),
    (lambda: a2().permute(0, 0), lambda: t2().permute(0, 0), "permute: duplicate dims are not allowed"),
    (lambda: a2().permute(0), lambda: t2().permute(0), r"input.dim\(\) = 2 is not equal to len\(dims\) = 1"),
    (lambda: a2().flatten(1, 0), lambda: t2().flatten(1, 0), "flatten: start_dim .* cannot come after end_dim"),
    (lambda: av.flip(a2(), (0, 0)), lambda: torch.flip(t2(), (0, 0)), "flip: dim 0 appears multiple times"),
    (lambda: av.stack([a2(), a2()[:1]]), lambda: torch.stack([t2(), t2()[:1]]), "stack: expects each tensor to be "
                                                                                   "equal size"),
    (lambda: av.cat([a2(), a2()[:, :2]]), lambda: torch.cat([t2(), t2()[:, :2]]),
     "cat: Sizes of tensors must match except in dimension 0. Expected size 3 but got size 2 for tensor number 1"),
    (lambda: av.cat([a2(), a2()[0]]), lambda: torch.cat([t2(), t2()[0]]),
     "cat: Tensors must have same number of dimensions: got 2 and 1"),
    (lambda: nn.Unflatten(1, (2, 2))(a2()), lambda: torch.nn.Unflatten(1, (2, 2))(t2()),
     r"unflatten: Provided sizes \[2, 2\] don't multiply up to the size of dim 1 \(3\)"),
])
def test_dims_that_do_not_fit_are_runtime_errors(fn: Callable, torch_fn: Callable, match: str) -> None:
    e = raises_like_torch(fn, torch_fn, match)
    assert isinstance(e, (RuntimeError, av.ir.ShapeError))  # torch's type, and Avalon's ShapeError as before


@st.composite
def shapes_and_dims(draw: Any) -> tuple[tuple[int, ...], int, int]:
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=4)))
    n = len(shape)
    return shape, draw(st.integers(-n, n - 1)), draw(st.integers(-n, n - 1))


@given(shapes_and_dims(), st.integers(0, 2 ** 31 - 1))
def test_every_dim_in_range_agrees_with_torch(case: tuple, seed: int) -> None:
    """Negative dims count from the end everywhere, as in torch (the checks must not refuse them)."""
    shape, d, e = case
    n = len(shape)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    a, t = av.tensor(x), torch.tensor(x)
    lo, hi = sorted((d % n, e % n))
    lo, hi = lo - n if d < 0 else lo, hi  # a negative start_dim, where that is the one drawn
    checks = [
        (a.sum(d), t.sum(d)), (a.mean((d,)), t.mean((d,))), (av.cumsum(a, d), torch.cumsum(t, d)),
        (a.argmax(d), t.argmax(d)), (a.max(d).values, t.max(d).values), (a.transpose(d, e), t.transpose(d, e)),
        (a.unsqueeze(d), t.unsqueeze(d)), (a.unsqueeze(-n - 1), t.unsqueeze(-n - 1)), (a.unsqueeze(n), t.unsqueeze(n)),
        (a.squeeze(d), t.squeeze(d)), (a.flatten(lo, hi), t.flatten(lo, hi)), (F.softmax(a, d), TF.softmax(t, d)),
        (av.flip(a, d), torch.flip(t, (d,))), (av.cat([a, a], d), torch.cat([t, t], d)),
        (av.stack([a, a], d), torch.stack([t, t], d)), (av.stack([a, a], -n - 1), torch.stack([t, t], -n - 1)),
        (av.sort(a, d).values, torch.sort(t, d).values), (av.roll(a, 1, d), torch.roll(t, 1, d)),
        (av.prod(a, d), torch.prod(t, d)), (a.norm(dim=d), t.norm(dim=d)), (av.logsumexp(a, d), torch.logsumexp(t, d)),
    ]
    if d % n != e % n:
        checks.append((a.sum((d, e)), t.sum((d, e))))
        perm = [p - n if p == d % n else p for p in range(n)]  # one negative entry
        checks.append((a.permute(*perm), t.permute(*perm)))
    for got, want in checks:
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


# -- 2. index errors name the layer or loss and the user's line ----------------------------------------

LOGITS = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


@pytest.mark.parametrize("bad", [3, -1])
def test_cross_entropy_target_out_of_bounds(bad: int) -> None:
    y = np.array([0, bad, 1, 1])
    e = raises_like_torch(lambda: F.cross_entropy(av.tensor(LOGITS), av.tensor(y)),
                          lambda: TF.cross_entropy(torch.tensor(LOGITS), torch.tensor(y)),
                          rf"cross_entropy: Target {bad} is out of bounds")
    assert "[0, 3)" in str(e) and isinstance(e, ValueError)  # a ValueError too, as before
    raises_like_torch(lambda: F.nll_loss(av.tensor(LOGITS), av.tensor(y)),
                      lambda: TF.nll_loss(torch.tensor(LOGITS), torch.tensor(y)), rf"nll_loss: Target {bad} is out")
    raises_like_torch(lambda: nn.CrossEntropyLoss()(av.tensor(LOGITS), av.tensor(y)),
                      lambda: torch.nn.CrossEntropyLoss()(torch.tensor(LOGITS), torch.tensor(y)), "Target")
    x3, y3 = np.zeros((2, 3, 4), np.float32), np.full((2, 4), 3)
    raises_like_torch(lambda: F.cross_entropy(x3, y3), lambda: TF.cross_entropy(torch.tensor(x3), torch.tensor(y3)),
                      "cross_entropy: Target 3 is out of bounds")


def test_ignore_index_is_not_out_of_bounds() -> None:
    for ii, y in ((-100, [0, -100, 1, 2]), (3, [0, 3, 1, 2])):
        got = F.cross_entropy(LOGITS, np.array(y), ignore_index=ii).item()
        want = TF.cross_entropy(torch.tensor(LOGITS), torch.tensor(y), ignore_index=ii).item()
        assert abs(got - want) < 1e-5
        got = F.cross_entropy(LOGITS, np.array(y), ignore_index=ii, label_smoothing=0.1).item()
        want = TF.cross_entropy(torch.tensor(LOGITS), torch.tensor(y), ignore_index=ii, label_smoothing=0.1).item()
        assert abs(got - want) < 1e-5


@pytest.mark.parametrize("n", [5, 2])
def test_class_weight_of_the_wrong_length(n: int) -> None:
    w, y = np.ones(n, np.float32), np.array([0, 1, 2, 2])
    match = rf"weight tensor should be defined either for all 3 classes or no classes but got weight tensor of shape: \[{n}\]"
    raises_like_torch(lambda: F.cross_entropy(LOGITS, y, weight=w),
                      lambda: TF.cross_entropy(torch.tensor(LOGITS), torch.tensor(y), weight=torch.tensor(w)),
                      "cross_entropy: " + match)
    raises_like_torch(lambda: F.nll_loss(LOGITS, y, weight=w),
                      lambda: TF.nll_loss(torch.tensor(LOGITS), torch.tensor(y), weight=torch.tensor(w)),
                      "nll_loss: " + match)


@pytest.mark.parametrize("bad", [10, -1])
def test_embedding_index_out_of_range(bad: int) -> None:
    emb, temb = nn.Embedding(10, 4), torch.nn.Embedding(10, 4)
    ids = np.array([1, bad])
    raises_like_torch(lambda: emb(av.tensor(ids)), lambda: temb(torch.tensor(ids)),
                      rf"Embedding\(10, 4\): index {bad} is out of range \[0, 10\)")
    w = np.zeros((10, 4), np.float32)
    raises_like_torch(lambda: F.embedding(ids, w), lambda: TF.embedding(torch.tensor(ids), torch.tensor(w)),
                      rf"embedding: index {bad} is out of range \[0, 10\)")


def test_eager_reference_errors_carry_the_users_line() -> None:
    """An index error found while running an op eagerly (bind -> the reference rule) names this line."""
    raises_like_torch(lambda: av.ops.one_hot(av.tensor(np.array([0, 5])), 3), None, "one_hot: index 5 is out of range")
    raises_like_torch(lambda: av.ops.take(np.zeros((3, 2), np.float32), av.tensor(np.array([7]))), None,
                      "take: index 7 is out of range")
    raises_like_torch(lambda: a2()[av.tensor(np.array([0, 7]))], lambda: t2()[torch.tensor([0, 7])],
                      "index 7 is out of bounds for dimension 0 with size 2")


# -- 3. regression losses warn about a target that broadcasts -------------------------------------------

@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"])
def test_regression_target_of_another_shape_warns_like_torch(name: str) -> None:
    x, t = np.ones((4, 1), np.float32), np.zeros(4, np.float32)
    with pytest.warns(UserWarning, match=r"Using a target size \(torch.Size\(\[4\]\)\)"):
        getattr(TF, name)(torch.tensor(x), torch.tensor(t))
    with pytest.warns(UserWarning, match=rf"{name}: Using a target size \(\(4,\)\) that is different to the input size "
                                         r"\(\(4, 1\)\)\. This will likely lead to incorrect results due to "
                                         "broadcasting") as rec:
        getattr(F, name)(av.tensor(x), av.tensor(t))
    assert rec[0].filename == __file__  # attributed to the caller's line, so shown once per call site
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(F, name)(av.tensor(x), av.tensor(np.zeros((4, 1), np.float32)))  # same shapes: silent


def test_loss_module_warning_points_at_the_call() -> None:
    with pytest.warns(UserWarning, match="mse_loss: Using a target size") as rec:
        nn.MSELoss()(av.tensor(np.ones((4, 1), np.float32)), av.tensor(np.ones(4, np.float32)))
    assert rec[0].filename == __file__


# -- 4. binary cross-entropy on values outside [0, 1] ------------------------------------------------------

def test_binary_cross_entropy_outside_zero_one() -> None:
    p, t = np.array([-0.5, 1.5, 0.3, 2.0], np.float32), np.array([0.0, 1, 1, 0], np.float32)
    e = raises_like_torch(lambda: F.binary_cross_entropy(av.tensor(p), av.tensor(t)),
                          lambda: TF.binary_cross_entropy(torch.tensor(p), torch.tensor(t)),
                          "binary_cross_entropy: all elements of input should be between 0 and 1")
    assert "binary_cross_entropy_with_logits" in str(e)
    raises_like_torch(lambda: nn.BCELoss()(av.tensor(p), av.tensor(t)),
                      lambda: torch.nn.BCELoss()(torch.tensor(p), torch.tensor(t)), "between 0 and 1")
    q = np.array([0.0, 1.0, 0.3, 0.5], np.float32)  # the bounds themselves are fine
    got = F.binary_cross_entropy(q, t).item()
    assert abs(got - TF.binary_cross_entropy(torch.tensor(q), torch.tensor(t)).item()) < 1e-4
    av.trace(lambda p, t: F.binary_cross_entropy(p, t), p, t)  # traced: values unknown, no check


# -- 5. integer division by zero -----------------------------------------------------------------------------

@pytest.mark.parametrize("op,fn,torch_fn", [
    ("floor_divide", lambda i, z: i // z, lambda i, z: i // z),
    ("remainder", lambda i, z: i % z, lambda i, z: i % z),
    ("fmod", lambda i, z: av.fmod(i, z), lambda i, z: torch.fmod(i, z)),
    ("div", lambda i, z: av.div(i, z, rounding_mode="trunc"), lambda i, z: torch.div(i, z, rounding_mode="trunc")),
])
def test_integer_division_by_zero(op: str, fn: Callable, torch_fn: Callable) -> None:
    i, ti = av.tensor(np.array([1, 2])), torch.tensor([1, 2])
    for z, tz in ((0, 0), (av.tensor(np.array([1, 0])), torch.tensor([1, 0]))):
        e = raises_like_torch(lambda z=z: fn(i, z), lambda tz=tz: torch_fn(ti, tz), f"{op}: ZeroDivisionError", at=fn)
        assert isinstance(e, ZeroDivisionError)
    np.testing.assert_array_equal(fn(i, 2).numpy(), torch_fn(ti, 2).numpy())
    with pytest.raises(ZeroDivisionError):  # a literal zero is known while tracing too
        av.trace(lambda x: fn(x, 0), np.array([1, 2]))
    av.trace(lambda x, y: fn(x, y), np.array([1, 2]), np.array([1, 0]))  # a traced divisor: backend-defined
    f = av.tensor(np.array([1.0, -1.0], np.float32)) // 0  # floats: inf, as torch
    np.testing.assert_array_equal(f.numpy(), (torch.tensor([1.0, -1.0]) // 0).numpy())


# -- 6. cat of one tensor ------------------------------------------------------------------------------------

def test_cat_of_a_tensor_instead_of_a_list() -> None:
    raises_like_torch(lambda: av.cat(a2()), lambda: torch.cat(t2()), r"cat\(\): argument 'tensors' must be a list or "
                                                                       "tuple of tensors, not Tensor")
    raises_like_torch(lambda: av.stack(a2()), lambda: torch.stack(t2()), r"stack\(\): argument 'tensors'")
    raises_like_torch(lambda: av.cat(np.ones((2, 3))), None, "not ndarray")
    assert av.cat((a2(), a2())).shape == (4, 3) and av.cat(x for x in [a2(), a2()]).shape == (4, 3)
    raises_like_torch(lambda: av.cat([av.tensor(np.float32(1.0))]), lambda: torch.cat([torch.tensor(1.0)]),
                      "cat: zero-dimensional tensor")


# -- 7. cross_entropy's arguments swapped, or float targets of the wrong shape ---------------------------------

def test_cross_entropy_arguments_swapped() -> None:
    with pytest.raises(TypeError, match="cross_entropy: input must be floating-point logits, got int64 — are input "
                                        "and target swapped") as ei:  # (torch: NotImplementedError for Long)
        F.cross_entropy(av.tensor(np.array([0, 1])), av.tensor(LOGITS[:2]))
    assert HERE in str(ei.value)
    with pytest.raises(TypeError, match="nll_loss: input must be floating-point log-probabilities, got int64"):
        F.nll_loss(av.tensor(np.array([0, 1])), av.tensor(LOGITS[:2]))


def test_cross_entropy_float_targets_of_the_wrong_shape() -> None:
    t = np.array([0.0, 2.0, 1.0, 1.0], np.float32)
    e = raises_like_torch(lambda: F.cross_entropy(LOGITS, t),
                          lambda: TF.cross_entropy(torch.tensor(LOGITS), torch.tensor(t)),
                          r"cross_entropy: float targets of shape \(4,\) for input of shape \(4, 3\)")
    assert "integer (int64) tensor of shape (4,)" in str(e) and "probability targets must have the input's shape" in str(e)
    assert isinstance(e, ValueError)  # as before


# -- 8. GroupNorm's channels --------------------------------------------------------------------------------

def test_group_norm_channels() -> None:
    x6 = np.zeros((1, 6, 2, 2), np.float32)
    raises_like_torch(lambda: nn.GroupNorm(2, 8)(x6), lambda: torch.nn.GroupNorm(2, 8)(torch.tensor(x6)),
                      r"GroupNorm\(2, 8\): expected input with 8 channels \(dim 1\), got input of shape \(1, 6, 2, 2\)")
    raises_like_torch(lambda: F.group_norm(x6, 4), lambda: TF.group_norm(torch.tensor(x6), 4),
                      "group_norm: Expected number of channels in input to be divisible by num_groups, but got input "
                      r"of shape \(1, 6, 2, 2\) and num_groups=4")
    w = np.ones(8, np.float32)
    raises_like_torch(lambda: F.group_norm(x6, 2, w), lambda: TF.group_norm(torch.tensor(x6), 2, torch.tensor(w)),
                      r"group_norm: Expected weight to be a vector of size equal to the number of channels in input, "
                      r"but got weight of shape \(8,\)")
    with pytest.raises(ValueError, match=r"num_channels \(8\) must be divisible by num_groups \(3\)"):
        nn.GroupNorm(3, 8)
    with pytest.raises(ValueError):
        torch.nn.GroupNorm(3, 8)


# -- 9. a Sequential of something that is not a layer ---------------------------------------------------------

def test_sequential_refuses_non_callables_at_construction() -> None:
    with pytest.raises(TypeError):
        torch.nn.Sequential(torch.nn.Linear(4, 4), "relu")
    raises_like_torch(lambda: nn.Sequential(nn.Linear(4, 4), "relu"), None,
                      r"Sequential: item '1' is a str \('relu'\), which is not a Module subclass")
    seq = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="not a Module subclass"):
        seq.append(3)
    assert nn.Sequential(nn.Linear(4, 2), lambda x: x * 2)(np.ones((1, 4), np.float32)).shape == (1, 2)


# -- 10. interpolate to an empty size ---------------------------------------------------------------------------

def test_interpolate_to_nothing() -> None:
    x = np.ones((1, 1, 4, 4), np.float32)
    raises_like_torch(lambda: F.interpolate(x, scale_factor=0.0), lambda: TF.interpolate(torch.tensor(x),
                                                                                          scale_factor=0.0),
                      r"interpolate: Input and output sizes should be greater than 0, but got input \(H: 4, W: 4\) "
                      r"output \(H: 0, W: 0\)")
    raises_like_torch(lambda: F.interpolate(x, size=(2,)), lambda: TF.interpolate(torch.tensor(x), size=(2,)),
                      "interpolate: Input and output must have the same number of spatial dimensions")
    raises_like_torch(lambda: F.interpolate(x, scale_factor=(2.0,)),
                      lambda: TF.interpolate(torch.tensor(x), scale_factor=(2.0,)),
                      "interpolate: Input and scale_factor must have the same number of spatial dimensions")
    assert F.interpolate(x, scale_factor=0.5).shape == (1, 1, 2, 2)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_an_index_out_of_range_in_generated_code_names_the_users_line(backend):
    """The generated function raises from its own lines; the error carries the source line of
    the op that line computes, as eager code and the Triton backend's errors do."""
    f = av.compile(lambda x, i: F.embedding(i, x).sum() * 2.0, backend=backend)
    with pytest.raises(IndexError, match=r"test_user_errors\.py:\d+: .*index 7 is out of range"):
        f(np.ones((3, 2), np.float32), np.array([0, 7]))

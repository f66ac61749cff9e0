"""Misuses torch refuses that Avalon used to run silently (a wrong shape broadcast, a dtype cast, an
ignored argument, a registration replacing what was there) or refuse with an internal error: each
is now refused at the earliest point, naming the op, the argument and the shapes. torch is the
oracle: every case first checks that torch raises (or warns) too. Complements test_user_errors.py."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import torch_raises

import avalon as av
import avalon.nn.functional as F
from avalon import nn

HERE = "test_silent_failures_2.py"


def refused(fn: Callable[[], Any], torch_fn: Callable[[], Any], match: str, kind: type[BaseException] = Exception,
            located: bool = True) -> BaseException:
    """torch refuses `torch_fn`; Avalon refuses `fn` with a `kind` whose message matches `match` and,
    where `located`, names this file and the line of `fn`."""
    torch_raises(torch_fn)
    with pytest.raises(kind, match=match) as ei:
        fn()
    if located:
        assert f"{HERE}:{fn.__code__.co_firstlineno}:" in str(ei.value), str(ei.value)
    return ei.value


def f32(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def compiled(fn: Callable, *args: Any) -> Any:
    return av.compile(fn, backend="numpy")(*args)


# -- tensor ops -----------------------------------------------------------------------------------------

def test_expand_minus_one_in_a_new_leading_dim() -> None:
    """-1 ("keep this dim") in a dim the tensor does not have used to wrap to a trailing dim: (3, 4)
    expanded to (-1, 3, 4) gave (4, 3, 4)."""
    x = f32(3, 4)
    e = refused(lambda: av.tensor(x).expand(-1, 3, 4), lambda: torch.tensor(x).expand(-1, 3, 4),
                r"expand: the expanded size of the tensor \(-1\) isn't allowed in a leading, non-existing dimension 0")
    assert isinstance(e, RuntimeError)  # torch's type
    with pytest.raises(RuntimeError, match="leading, non-existing dimension"):
        compiled(lambda x: x.expand(-1, 3, 4), x)
    assert av.tensor(x).expand(2, -1, -1).shape == tuple(torch.tensor(x).expand(2, -1, -1).shape) == (2, 3, 4)


def test_index_select_takes_a_vector() -> None:
    """A 2-d index gave a (1, 2, 4) result where torch refuses."""
    x, i = f32(3, 4), np.array([[0, 1]])
    e = refused(lambda: av.index_select(av.tensor(x), 0, av.tensor(i)),
                lambda: torch.index_select(torch.tensor(x), 0, torch.tensor(i)),
                r"index_select\(\): Index is supposed to be a vector .*got shape \(1, 2\)")
    assert isinstance(e, IndexError)
    for i0 in (np.array(1), np.array([1])):  # a 0-d index keeps the dim, as torch's (it used to drop it)
        got, want = av.index_select(av.tensor(x), 0, av.tensor(i0)), torch.index_select(torch.tensor(x), 0,
                                                                                        torch.tensor(i0))
        assert got.shape == tuple(want.shape) == (1, 4)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert compiled(lambda x, i: av.index_select(x, 0, i), x, np.array(2)).shape == (1, 4)


def test_arange_whose_step_points_away_from_end() -> None:
    e = refused(lambda: av.arange(10, 0), lambda: torch.arange(10, 0),
                r"arange: upper bound and larger bound inconsistent with step sign \(start=10, end=0, step=1\)")
    assert isinstance(e, RuntimeError)
    refused(lambda: av.arange(0.0, 1.0, -0.5), lambda: torch.arange(0.0, 1.0, -0.5), "inconsistent with step sign")
    for args in ((5, 5), (5, 0, -1), (0, 1, 0.25)):
        np.testing.assert_array_equal(av.arange(*args).numpy(), torch.arange(*args).numpy())


def test_eye_of_a_negative_size_names_eye() -> None:
    refused(lambda: av.eye(-1), lambda: torch.eye(-1), "eye: n must be greater or equal to 0, got -1")
    refused(lambda: av.eye(2, -3), lambda: torch.eye(2, -3), "eye: m must be greater or equal to 0, got -3")


@pytest.mark.parametrize("name", ["mean", "softmax", "log_softmax", "norm"])
def test_an_integer_dtype_argument_is_refused_not_ignored(name: str) -> None:
    """`dtype=int64` used to truncate the input to integers and then compute in float32 anyway."""
    x = np.array([0.5, 1.5, 2.5], np.float32)
    a, t = av.tensor(x), torch.tensor(x)
    fns = {"mean": (lambda: a.mean(dtype=av.int64), lambda: t.mean(dtype=torch.int64)),
           "softmax": (lambda: F.softmax(a, 0, dtype=av.int64), lambda: TF.softmax(t, 0, dtype=torch.int64)),
           "log_softmax": (lambda: F.log_softmax(a, 0, dtype=av.int64), lambda: TF.log_softmax(t, 0, dtype=torch.int64)),
           "norm": (lambda: av.linalg.vector_norm(a, dtype=av.int64),
                    lambda: torch.linalg.vector_norm(t, dtype=torch.int64))}
    fn, tfn = fns[name]
    refused(fn, tfn, r"dtype.*(floating point|i64)", located=False)
    assert a.mean(dtype=av.float64).dtype == av.float64  # a float dtype is still honoured
    assert abs(a.mean(dtype=av.float64).item() - 1.5) < 1e-12
    assert F.softmax(a, 0, dtype=av.float64).dtype == av.float64


# -- in-place ops and the scatter family: no silent casts ----------------------------------------------

def test_in_place_on_bool_cannot_hold_an_integer_result() -> None:
    """torch: "result type Long can't be cast to the desired output type Bool"; the 2 used to become True."""
    b, i = np.array([True, False]), np.array([2, 0])
    refused(lambda: av.tensor(b).add_(av.tensor(i)), lambda: torch.tensor(b).add_(torch.tensor(i)),
            "Tensor.add_: result type i64 can't be cast to the i1 tensor", TypeError, located=False)
    with pytest.raises(TypeError, match="can't be cast"):
        compiled(lambda b, i: b.add_(i), b, i)
    y = av.tensor(b)
    y |= av.tensor(np.array([False, True]))  # bool results stay allowed, as in torch
    np.testing.assert_array_equal(y.numpy(), [True, True])
    z = av.tensor(np.array([1, 2]))
    z += True  # a bool into an integer tensor too
    np.testing.assert_array_equal(z.numpy(), [2, 3])


@pytest.mark.parametrize("op", ["scatter", "scatter_add", "scatter_reduce", "index_add", "index_copy",
                                "masked_scatter"])
def test_source_of_another_dtype_is_refused(op: str) -> None:
    """torch refuses a source whose dtype differs from the input's; Avalon cast it (float64 into
    float32, or floats into an integer tensor, truncating them)."""
    x, src = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float64)
    idx, row, mask = np.array([[0, 1, 2], [2, 1, 0]]), np.array([1, 0]), np.ones((2, 3), bool)
    calls = {
        "scatter": lambda m, x, s: m.scatter(x, 1, m.tensor(idx), s),
        "scatter_add": lambda m, x, s: m.scatter_add(x, 1, m.tensor(idx), s),
        "scatter_reduce": lambda m, x, s: m.scatter_reduce(x, 1, m.tensor(idx), s, "sum"),
        "index_add": lambda m, x, s: m.index_add(x, 0, m.tensor(row), s),
        "index_copy": lambda m, x, s: m.index_copy(x, 0, m.tensor(row), s),
        "masked_scatter": lambda m, x, s: m.masked_scatter(x, m.tensor(mask), s),
    }
    call = calls[op]
    e = refused(lambda: call(av, av.tensor(x), av.tensor(src)),
                lambda: call(torch, torch.tensor(x), torch.tensor(src)), f"{op}.*(dtype|scalar type)", located=False)
    assert f"{HERE}:" in str(e) and "f32" in str(e) and "f64" in str(e)  # (the line of the call in `calls`)
    xi = np.zeros((2, 3), np.int64)  # floats into an integer tensor: torch refuses too
    refused(lambda: call(av, av.tensor(xi), av.tensor(src)), lambda: call(torch, torch.tensor(xi), torch.tensor(src)),
            f"{op}.*(dtype|scalar type)", located=False)
    got = call(av, av.tensor(x), av.tensor(src.astype(np.float32)))  # the same dtype: as torch
    np.testing.assert_allclose(got.numpy(), call(torch, torch.tensor(x), torch.tensor(src.astype(np.float32))).numpy())


def test_in_place_index_add_on_an_integer_tensor() -> None:
    refused(lambda: av.tensor(np.zeros((2, 3), np.int64)).index_add_(0, av.tensor(np.array([0])), av.tensor(f32(1, 3))),
            lambda: torch.zeros(2, 3, dtype=torch.int64).index_add_(0, torch.tensor([0]), torch.tensor(f32(1, 3))),
            "index_add.*scalar type")


# -- layers ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_bias_must_have_one_entry_per_output_channel(nd: int) -> None:
    """A (1,) bias broadcast one value over every output channel."""
    x, w, b = f32(1, 3, *(6,) * nd), f32(2, 3, *(3,) * nd), f32(1)
    af, tf = getattr(F, f"conv{nd}d"), getattr(TF, f"conv{nd}d")
    e = refused(lambda: af(av.tensor(x), av.tensor(w), av.tensor(b)),
                lambda: tf(torch.tensor(x), torch.tensor(w), torch.tensor(b)),
                rf"conv{nd}d: Given weight of size \[2, 3(, 3)+\], expected bias to be 1-dimensional with 2 elements, "
                r"but got bias of size \[1\] instead")
    assert isinstance(e, RuntimeError)
    with pytest.raises(RuntimeError, match=f"conv{nd}d: .*expected bias"):
        compiled(lambda x, w, b: af(x, w, b), x, w, b)
    got = af(av.tensor(x), av.tensor(w), av.tensor(f32(2)))
    want = tf(torch.tensor(x), torch.tensor(w), torch.tensor(f32(2)))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nd", [1, 3])
def test_conv_channel_errors_name_the_layer_and_the_users_shapes(nd: int) -> None:
    """conv1d/conv3d run as conv2d on reshaped tensors: their channel errors named conv2d and shapes
    such as (1, 3, 1, 10) or (3, 3, 5, 5) that the user never wrote."""
    x = f32(1, 3, *(5,) * nd)
    layer, tlayer = getattr(nn, f"Conv{nd}d")(4, 2, 3), getattr(torch.nn, f"Conv{nd}d")(4, 2, 3)
    shape = ", ".join(map(str, x.shape))
    refused(lambda: layer(av.tensor(x)), lambda: tlayer(torch.tensor(x)),
            rf"conv{nd}d: Given groups=1, weight of size \[2, 4(, 3)+\], expected input\[{shape}\] to have 4 channels, "
            "but got 3 channels instead", RuntimeError, located=False)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_padding_string_is_checked_at_construction(nd: int) -> None:
    torch_raises(lambda: getattr(torch.nn, f"Conv{nd}d")(3, 2, 3, padding="foo"))
    with pytest.raises(ValueError, match=rf"Conv{nd}d: Invalid padding string 'foo', should be one of"):
        getattr(nn, f"Conv{nd}d")(3, 2, 3, padding="foo")
    assert getattr(nn, f"Conv{nd}d")(3, 2, 3, padding="same").padding == "same"


@pytest.mark.parametrize("name,arg", [("layer_norm", "weight"), ("layer_norm", "bias"), ("rms_norm", "weight")])
def test_norm_affine_of_the_wrong_shape(name: str, arg: str) -> None:
    """A (1,) weight or bias broadcast over the normalized dims."""
    x, v = f32(2, 4), f32(1)
    af, tf = getattr(F, name), getattr(TF, name)
    e = refused(lambda: af(av.tensor(x), (4,), **{arg: av.tensor(v)}),
                lambda: tf(torch.tensor(x), (4,), **{arg: torch.tensor(v)}),
                rf"{name}: Expected {arg} to be of same shape as normalized_shape, but got {arg} of shape \[1\] and "
                r"normalized_shape = \[4\]")
    assert isinstance(e, RuntimeError)
    with pytest.raises(RuntimeError, match=f"{name}: Expected {arg}"):
        compiled(lambda x, v: af(x, (4,), **{arg: v}), x, v)
    fine = af(av.tensor(x), (4,), **{arg: av.tensor(f32(4))})
    np.testing.assert_allclose(fine.numpy(), tf(torch.tensor(x), (4,), **{arg: torch.tensor(f32(4))}).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_embedding_from_a_1d_table() -> None:
    """A 1-d table raised a bare IndexError (tuple index out of range) from inside from_pretrained."""
    for cls, tcls in ((nn.Embedding, torch.nn.Embedding), (nn.EmbeddingBag, torch.nn.EmbeddingBag)):
        torch_raises(lambda tcls=tcls: tcls.from_pretrained(torch.ones(3)))
        with pytest.raises(ValueError, match=rf"{cls.__name__}.from_pretrained: Embeddings parameter is expected to "
                                             r"be 2-dimensional .*got shape \(3,\)"):
            cls.from_pretrained(np.ones(3, np.float32))


# -- losses -----------------------------------------------------------------------------------------------------

def test_binary_cross_entropy_target_outside_zero_one() -> None:
    p, t = np.array([0.2, 0.5, 0.9], np.float32), np.array([0.0, 2.0, 1.0], np.float32)
    e = refused(lambda: F.binary_cross_entropy(av.tensor(p), av.tensor(t)),
                lambda: TF.binary_cross_entropy(torch.tensor(p), torch.tensor(t)),
                r"binary_cross_entropy: all elements of target should be between 0 and 1, got 2.0 at index \(1,\)")
    assert isinstance(e, RuntimeError)
    refused(lambda: nn.BCELoss()(av.tensor(p), av.tensor(-t)), lambda: torch.nn.BCELoss()(torch.tensor(p),
                                                                                            torch.tensor(-t)),
            "all elements of target", located=False)
    soft = np.array([0.0, 0.3, 1.0], np.float32)  # soft labels in [0, 1] are fine
    got = F.binary_cross_entropy(av.tensor(p), av.tensor(soft)).item()
    assert abs(got - TF.binary_cross_entropy(torch.tensor(p), torch.tensor(soft)).item()) < 1e-5
    av.trace(lambda p, t: F.binary_cross_entropy(p, t), p, t)  # traced: values unknown, no check


def test_smooth_l1_and_huber_parameters() -> None:
    a, b = f32(4), f32(4) + 1
    refused(lambda: F.smooth_l1_loss(av.tensor(a), av.tensor(b), beta=-1.0),
            lambda: TF.smooth_l1_loss(torch.tensor(a), torch.tensor(b), beta=-1.0),
            "smooth_l1_loss does not support negative values for beta", RuntimeError)
    for delta in (0.0, -1.0):
        refused(lambda delta=delta: F.huber_loss(av.tensor(a), av.tensor(b), delta=delta),
                lambda delta=delta: TF.huber_loss(torch.tensor(a), torch.tensor(b), delta=delta),
                "huber_loss does not support non-positive values for delta", RuntimeError, located=False)
    for beta in (0.0, 0.5):  # beta = 0 is l1, as torch
        got = F.smooth_l1_loss(av.tensor(a), av.tensor(b), beta=beta).item()
        assert abs(got - TF.smooth_l1_loss(torch.tensor(a), torch.tensor(b), beta=beta).item()) < 1e-5


def test_kl_div_mean_warns_like_torch() -> None:
    x, p = np.log(np.full((2, 3), 1 / 3, np.float32)), np.full((2, 3), 1 / 3, np.float32)
    with pytest.warns(UserWarning, match="reduction: 'mean' divides the total loss by both the batch size"):
        TF.kl_div(torch.tensor(x), torch.tensor(p))
    with pytest.warns(UserWarning, match="kl_div: reduction: 'mean' divides the total loss by both the batch size "
                                         "and the support size") as rec:
        F.kl_div(av.tensor(x), av.tensor(p))
    assert rec[0].filename == __file__
    with pytest.warns(UserWarning, match="kl_div: reduction: 'mean'"):
        nn.KLDivLoss()(av.tensor(x), av.tensor(p))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.kl_div(av.tensor(x), av.tensor(p), reduction="batchmean")
        av.kl_div(av.tensor(x), av.tensor(p), 1)  # torch.kl_div's int reduction: torch gives no warning


# -- nn.Module registration ------------------------------------------------------------------------------------

class Mod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("buf", av.zeros(2))


class TMod(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.register_buffer("buf", torch.zeros(2))


@pytest.mark.parametrize("what,call,tcall", [
    ("a submodule", lambda m: m.register_buffer("lin", av.zeros(2)), lambda m: m.register_buffer("lin", torch.zeros(2))),
    ("a parameter", lambda m: m.lin.register_buffer("weight", av.zeros(2, 2)),
     lambda m: m.lin.register_buffer("weight", torch.zeros(2, 2))),
    ("a buffer", lambda m: m.register_parameter("buf", nn.Parameter(av.zeros(2))),
     lambda m: m.register_parameter("buf", torch.nn.Parameter(torch.zeros(2)))),
    ("a submodule", lambda m: m.register_parameter("lin", nn.Parameter(av.zeros(2))),
     lambda m: m.register_parameter("lin", torch.nn.Parameter(torch.zeros(2)))),
    ("a buffer", lambda m: m.add_module("buf", nn.ReLU()), lambda m: m.add_module("buf", torch.nn.ReLU())),
    ("a parameter", lambda m: m.lin.add_module("weight", nn.ReLU()), lambda m: m.lin.add_module("weight", torch.nn.ReLU())),
])
def test_registration_does_not_replace_another_kind(what: str, call: Callable, tcall: Callable) -> None:
    """Registering a name that holds something else silently replaced it: a submodule dropped from
    the model, a trained weight turned into a buffer, a buffer into a trained parameter."""
    assert torch_raises(lambda: tcall(TMod())) is KeyError
    m = Mod()
    before = sorted(nn.named_parameters(m)) if hasattr(nn, "named_parameters") else None
    with pytest.raises(KeyError, match=rf"attribute '\w+' already exists \(as {what} of \w+\)"):
        call(m)
    if before is not None:
        assert sorted(nn.named_parameters(m)) == before  # nothing changed


def test_registration_keeps_working_for_its_own_kind() -> None:
    m = Mod()
    m.register_buffer("buf", av.ones(2))  # re-registering a buffer
    m.register_parameter("extra", nn.Parameter(av.zeros(3)))
    m.register_parameter("extra", nn.Parameter(av.ones(3)))  # and a parameter
    m.add_module("lin", nn.Linear(2, 3))  # and a submodule
    m.add_module("fresh", nn.ReLU())
    m.register_buffer("none", None)
    assert "buf" in m.state_dict() and "extra" in m.state_dict() and m.lin.out_features == 3
    np.testing.assert_array_equal(m.buf.numpy(), [1, 1])


# -- more layers, linear algebra and conversions ---------------------------------------------------------------

@pytest.mark.parametrize("cell", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cell_state_of_another_batch_size(cell: str) -> None:
    """A (1, H) state broadcast over a batch of 2 without a word."""
    x, h = f32(2, 4), f32(1, 8)
    layer, tlayer = getattr(nn, cell)(4, 8), getattr(torch.nn, cell)(4, 8)
    hx, thx = (av.tensor(h), torch.tensor(h))
    if cell == "LSTMCell":
        hx, thx = (av.tensor(f32(2, 8)), hx), (torch.tensor(f32(2, 8)), thx)
    refused(lambda: layer(av.tensor(x), hx), lambda: tlayer(torch.tensor(x), thx),
            rf"{cell}: expected hidden state of shape \(2, 8\) for input batch size 2, got \(1, 8\)", ValueError)
    ok = (av.tensor(f32(2, 8)), av.tensor(f32(2, 8))) if cell == "LSTMCell" else av.tensor(f32(2, 8))
    out = layer(av.tensor(x), ok)
    assert (out[0] if cell == "LSTMCell" else out).shape == (2, 8)
    one = layer(av.tensor(f32(4)), tuple(t[0] for t in ok) if cell == "LSTMCell" else ok[0])  # unbatched
    assert (one[0] if cell == "LSTMCell" else one).shape == (8,)


def test_hardtanh_bounds_the_wrong_way_round() -> None:
    x = f32(5)
    refused(lambda: F.hardtanh(av.tensor(x), 1.0, -1.0), lambda: TF.hardtanh(torch.tensor(x), 1.0, -1.0),
            "hardtanh: min_val cannot be greater than max_val, got min_val=1.0 and max_val=-1.0", ValueError)
    torch_raises(lambda: torch.nn.Hardtanh(1.0, -1.0))
    with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
        nn.Hardtanh(1.0, -1.0)(av.tensor(x))
    np.testing.assert_allclose(F.relu6(av.tensor(x * 8)).numpy(), TF.relu6(torch.tensor(x * 8)).numpy())


def test_avg_pool_divisor_override_zero() -> None:
    """A bare `float division by zero` from inside the pool before."""
    x = f32(1, 1, 4, 4)
    refused(lambda: F.avg_pool2d(av.tensor(x), 2, divisor_override=0),
            lambda: TF.avg_pool2d(torch.tensor(x), 2, divisor_override=0), "avg_pool2d: divisor must be not zero",
            RuntimeError)


def test_cholesky_of_a_matrix_that_is_not_positive_definite() -> None:
    """Eagerly the nans came back silently where torch raises; cholesky_ex still reports it in info."""
    a = np.array([[1.0, 2.0], [2.0, 1.0]], np.float32)
    e = refused(lambda: av.linalg.cholesky(av.tensor(a)), lambda: torch.linalg.cholesky(torch.tensor(a)),
                r"linalg.cholesky: The factorization could not be completed because the input is not positive-definite "
                r"\(the leading minor of order 2 is not positive-definite\)", RuntimeError)
    assert isinstance(e, av.linalg.LinAlgError)
    chol, info = av.linalg.cholesky_ex(av.tensor(a))
    assert int(info.item()) == 1 and np.isnan(chol.numpy()).any()
    with pytest.raises(av.linalg.LinAlgError, match="order 1"):
        av.linalg.cholesky(av.tensor(-np.eye(2, dtype=np.float32)))
    spd = np.array([[4.0, 2.0], [2.0, 3.0]], np.float32)
    np.testing.assert_allclose(av.linalg.cholesky(av.tensor(spd)).numpy(),
                               torch.linalg.cholesky(torch.tensor(spd)).numpy(), rtol=1e-6)
    with pytest.raises(av.linalg.LinAlgError, match="not positive-definite"):  # compiled: a check op on the factor
        compiled(lambda a: av.linalg.cholesky(a), a)


def test_to_with_two_dtypes() -> None:
    """x.to(float64, int64) kept the first and silently dropped the second."""
    x = av.tensor(f32(3))
    torch_raises(lambda: torch.ones(3).to(torch.float64, torch.int64))
    with pytest.raises(TypeError, match="to\\(\\): got two dtypes, f64 and i64"):
        x.to(av.float64, av.int64)
    assert x.to(av.float64, True).dtype == av.float64  # torch's x.to(dtype, non_blocking)
    assert x.to(av.tensor(np.ones(2)), False).dtype == av.float64
    assert x.to("cpu", av.float64).dtype == av.float64


@pytest.mark.parametrize("fn", ["var", "std"])
def test_no_degrees_of_freedom_warns_like_torch(fn: str) -> None:
    x = f32(2)
    with pytest.warns(UserWarning, match="degrees of freedom is <= 0"):
        getattr(torch, fn)(torch.tensor(x), correction=2)
    with pytest.warns(UserWarning, match=rf"{fn}\(\): degrees of freedom is <= 0 \(correction 2 for 2 elements") as rec:
        got = getattr(av, fn)(av.tensor(x), correction=2)
    assert rec[0].filename == __file__ and not np.isfinite(got.item())  # (inf, as torch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(av, fn)(av.tensor(x))  # correction 1 of 2: fine


def test_module_to_an_integer_dtype() -> None:
    """Every float parameter became an integer one (the weights truncated to 0)."""
    torch_raises(lambda: torch.nn.Linear(2, 2).to(torch.int64))
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="nn.Module.to only accepts floating point or complex dtypes, but got desired "
                                        "dtype=i64"):
        lin.to(av.int64)
    assert lin.weight.dtype == av.float32 and lin.to(av.float64).weight.dtype == av.float64


def test_optimizer_step_with_integer_gradients() -> None:
    lin = nn.Linear(2, 2)
    opt = av.optim.SGD(lin.parameters(), lr=0.1)
    w = lin.weight.numpy().copy()
    with pytest.raises(TypeError, match="gradient of 'weight' is an integer or bool tensor \\(i64\\), the parameter f32"):
        opt.step({"weight": av.tensor(np.ones((2, 2), np.int64)), "bias": av.zeros(2)})
    np.testing.assert_array_equal(lin.weight.numpy(), w)  # nothing applied
    opt.step({"weight": av.ones(2, 2), "bias": av.zeros(2)})
    np.testing.assert_allclose(lin.weight.numpy(), w - 0.1, rtol=1e-6)


@pytest.mark.parametrize("name", ["batch_norm", "instance_norm"])
@pytest.mark.parametrize("arg", ["running_mean", "running_var", "weight", "bias"])
def test_per_channel_norm_tensors_of_the_wrong_size(name: str, arg: str) -> None:
    """A (1,) running statistic or affine tensor: a reshape or a state assignment failed naming
    another op (or, for the running statistics in training, after part of the update)."""
    x = f32(4, 3, 5)
    stats = {"running_mean": np.zeros(3, np.float32), "running_var": np.ones(3, np.float32)}
    kw = {**stats, arg: np.ones(1, np.float32)}
    training = {"training": True} if name == "batch_norm" else {"use_input_stats": True}
    af, tf = getattr(F, name), getattr(TF, name)
    refused(lambda: af(av.tensor(x), **{k: av.tensor(v) for k, v in kw.items()}, **training),
            lambda: tf(torch.tensor(x), **{k: torch.tensor(v) for k, v in kw.items()}, **training),
            rf"{name}: {arg} should contain 3 elements not 1 \(input of shape \(4, 3, 5\)", RuntimeError)


@pytest.mark.parametrize("fn", ["triu_indices", "tril_indices"])
def test_triangle_indices_of_a_negative_size(fn: str) -> None:
    """numpy gave no indices: an empty (2, 0) result."""
    for args in ((-1, 3), (3, -1)):
        refused(lambda args=args: getattr(av, fn)(*args), lambda args=args: getattr(torch, fn)(*args),
                f"{fn}: (row|col) must be non-negative, got -1", RuntimeError, located=False)
    assert getattr(av, fn)(0, 0).shape == tuple(getattr(torch, fn)(0, 0).shape) == (2, 0)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_transposed_conv_bias_of_the_wrong_size(nd: int) -> None:
    x, w, b = f32(1, 3, *(4,) * nd), f32(3, 2, *(3,) * nd), f32(1)
    af, tf = getattr(F, f"conv_transpose{nd}d"), getattr(TF, f"conv_transpose{nd}d")
    refused(lambda: af(av.tensor(x), av.tensor(w), av.tensor(b)),
            lambda: tf(torch.tensor(x), torch.tensor(w), torch.tensor(b)),
            rf"conv_transpose{nd}d: Given weight of size \[3, 2(, 3)+\], expected bias to be 1-dimensional with 2 "
            r"elements, but got bias of size \[1\] instead", RuntimeError)
    got = af(av.tensor(x), av.tensor(w), av.tensor(f32(2)))
    np.testing.assert_allclose(got.numpy(), tf(torch.tensor(x), torch.tensor(w), torch.tensor(f32(2))).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_transposed_conv1d_channels_name_conv_transpose1d() -> None:
    refused(lambda: F.conv_transpose1d(av.tensor(f32(1, 4, 5)), av.tensor(f32(3, 2, 3))),
            lambda: TF.conv_transpose1d(torch.tensor(f32(1, 4, 5)), torch.tensor(f32(3, 2, 3))),
            r"conv_transpose1d: Given transposed=1, weight of size \[3, 2, 3\], expected input\[1, 4, 5\] to have 3 "
            "channels, but got 4 channels instead", RuntimeError)


def test_bilinear_bias_and_conv_groups() -> None:
    refused(lambda: F.bilinear(av.tensor(f32(2, 3)), av.tensor(f32(2, 4)), av.tensor(f32(5, 3, 4)), av.tensor(f32(1))),
            lambda: TF.bilinear(torch.tensor(f32(2, 3)), torch.tensor(f32(2, 4)), torch.tensor(f32(5, 3, 4)),
                                torch.tensor(f32(1))),
            r"bilinear: .*expected bias to be 1-dimensional with 5 elements, but got bias of size \[1\]", RuntimeError)
    refused(lambda: F.conv2d(av.tensor(f32(1, 4, 5, 5)), av.tensor(f32(3, 2, 3, 3)), groups=2),
            lambda: TF.conv2d(torch.tensor(f32(1, 4, 5, 5)), torch.tensor(f32(3, 2, 3, 3)), groups=2),
            r"conv2d: Given groups=2, expected weight to be divisible by 2 at dimension 0, but got weight of size "
            r"\[3, 2, 3, 3\] instead", RuntimeError)


@pytest.mark.parametrize("make,tmake", [
    (lambda: nn.ModuleList().append(3), lambda: torch.nn.ModuleList().append(3)),
    (lambda: nn.ModuleList(["relu"]), lambda: torch.nn.ModuleList(["relu"])),
    (lambda: nn.ModuleDict({"a": 3}), lambda: torch.nn.ModuleDict({"a": 3})),
])
def test_module_containers_refuse_what_is_not_a_layer(make: Callable, tmake: Callable) -> None:
    """Accepted before, failing (or not) only when the model ran."""
    assert torch_raises(tmake) is TypeError
    with pytest.raises(TypeError, match=r"Module(List|Dict): item '\w+' is a \w+ \(.*\), which is not a Module subclass"):
        make()


def test_module_containers_keep_plain_class_layers_and_none() -> None:
    class Plain:  # Avalon's layers need no base class
        def __call__(self, x: Any) -> Any:
            return x * 2

    assert len(nn.ModuleList([nn.ReLU(), Plain(), None])) == 3
    assert list(nn.ModuleDict({"a": Plain(), "b": None})) == ["a", "b"]


def test_register_parameter_name_with_a_dot() -> None:
    torch_raises(lambda: torch.nn.Linear(2, 2).register_parameter("a.b", torch.nn.Parameter(torch.zeros(2))))
    for bad in ("a.b", ""):
        with pytest.raises(KeyError, match="register_parameter: parameter name must be a non-empty string"):
            nn.Linear(2, 2).register_parameter(bad, nn.Parameter(av.zeros(2)))

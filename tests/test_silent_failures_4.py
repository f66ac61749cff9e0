"""Silent failures, round 4 (after test_silent_failures_3.py): dtype mismatches torch refuses where
numpy promotes (lerp, cross, cdist, the norms, index_put), integer overflow in av.tensor, bool
subtraction and negation, round of integers with decimals, clamp without bounds, margin-loss
targets, old BatchNorm checkpoints and the rest of torch's Module state API. torch is the oracle."""
from __future__ import annotations

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


def both(fn: Callable[[Any, Any], Any], exc: type[BaseException] | tuple, match: str) -> None:
    """`fn(torch, torch.nn.functional)` raises; `fn(av, avalon.nn.functional)` raises `exc` matching `match`."""
    torch_raises(lambda: fn(torch, TF))
    with pytest.raises(exc, match=match):
        fn(av, F)


def same(fn: Callable[[Any, Any], Any]) -> None:
    """Both run, with equal values and dtypes."""
    want, got = fn(torch, TF), fn(av, F)
    assert repr(got.dtype).replace("av.", "") == str(want.dtype).replace("torch.", ""), (got.dtype, want.dtype)
    np.testing.assert_allclose(got.numpy().astype(np.float64), want.float().numpy().astype(np.float64), rtol=1e-5)


# -- dtype mismatches ------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["end", "weight", "int input"])
def test_lerp_dtypes(form: str) -> None:
    """An f64 end or weight made lerp compute (and return) f64; int inputs computed what torch refuses."""
    calls = {
        "end": lambda L, F: L.lerp(L.ones(3), L.ones(3, dtype=L.float64), 0.5),
        "weight": lambda L, F: L.lerp(L.ones(3), L.ones(3), L.ones(3, dtype=L.float64)),
        "int input": lambda L, F: L.lerp(L.ones(3, dtype=L.int64), L.ones(3, dtype=L.int64), 0.5),
    }
    both(calls[form], (TypeError, NotImplementedError), "lerp")


def test_lerp_what_torch_takes() -> None:
    """A number or a 0-d tensor of another dtype as the weight is fine in torch."""
    same(lambda L, F: L.lerp(L.zeros(3), L.ones(3), 0.25))
    same(lambda L, F: L.lerp(L.zeros(3), L.ones(3), L.tensor(0.75, dtype=L.float64)))


@pytest.mark.parametrize("form", ["cross", "linalg.cross", "cdist", "cdist int"])
def test_cross_and_cdist_want_one_dtype(form: str) -> None:
    calls = {
        "cross": lambda L, F: L.cross(L.ones(2, 3), L.ones(2, 3, dtype=L.float64), dim=1),
        "linalg.cross": lambda L, F: L.linalg.cross(L.ones(2, 3), L.ones(2, 3, dtype=L.float64)),
        "cdist": lambda L, F: L.cdist(L.ones(2, 3), L.ones(2, 3, dtype=L.float64)),
        "cdist int": lambda L, F: L.cdist(L.ones(2, 3, dtype=L.int64), L.ones(2, 3, dtype=L.int64)),
    }
    both(calls[form], TypeError, "same dtype|floating-point")


NORMS = {
    "layer_norm weight": lambda L, F, p: F.layer_norm(L.ones(2, 3), (3,), L.ones(3, dtype=p)),
    "layer_norm bias": lambda L, F, p: F.layer_norm(L.ones(2, 3), (3,), L.ones(3), L.ones(3, dtype=p)),
    "group_norm weight": lambda L, F, p: F.group_norm(L.ones(2, 4, 3), 2, L.ones(4, dtype=p)),
    "batch_norm running_mean": lambda L, F, p: F.batch_norm(L.ones(2, 4), L.zeros(4, dtype=p), L.ones(4)),
    "batch_norm train weight": lambda L, F, p: F.batch_norm(L.ones(2, 4), None, None, L.ones(4, dtype=p),
                                                            training=True),
    "instance_norm weight": lambda L, F, p: F.instance_norm(L.ones(2, 4, 3), weight=L.ones(4, dtype=p),
                                                            bias=L.ones(4, dtype=p)),
    "LayerNorm.double() on f32": lambda L, F, p: L.nn.LayerNorm(3).to(p)(L.ones(2, 3)),
    "BatchNorm1d on f64": lambda L, F, p: L.nn.BatchNorm1d(3)(L.ones(2, 3, dtype=p)),
}


@pytest.mark.parametrize("form", list(NORMS))
def test_norm_parameters_of_another_dtype(form: str) -> None:
    """torch: "mixed dtype (CPU): expect parameter to have scalar type of Float"; Avalon promoted, an
    f32 activation under f64 parameters came out f64."""
    both(lambda L, F: NORMS[form](L, F, L.float64), TypeError, "mixed dtype")


@pytest.mark.parametrize("x_dtype", ["float16", "bfloat16"])
def test_norm_mixed_mode_keeps_the_input_dtype(x_dtype: str) -> None:
    """torch's CPU mixed mode: a half input under float32 parameters is fine, the output half."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    wv = rng.standard_normal(4).astype(np.float32)

    def run(L: Any, F: Any) -> Any:
        xx = L.tensor(x).to(getattr(L, x_dtype))
        w = L.tensor(wv)
        return F.group_norm(xx, 2, w, w) + F.batch_norm(xx, L.zeros(4), L.ones(4), w, w)
    want, got = run(torch, TF), run(av, F)
    assert got.dtype.name == {"float16": "f16", "bfloat16": "bf16"}[x_dtype]
    np.testing.assert_allclose(got.float().numpy(), want.float().numpy(), atol=0.1)


def test_instance_norm_running_mean_dtype_is_free_as_in_torch() -> None:
    same(lambda L, F: F.instance_norm(L.ones(2, 4, 3), L.zeros(4, dtype=L.float64), L.ones(4)))


SETS = {
    "int list": ([0, 1], lambda L: L.ones(2, dtype=L.float64)),
    "int tensor, 0-d value": (lambda L: L.tensor([0, 1]), lambda L: L.tensor(1.0, dtype=L.float64)),
    "int64 value": (lambda L: L.tensor([0, 1]), lambda L: L.ones(2, dtype=L.int64)),
    "bool mask, 2 values": (lambda L: L.tensor([True, False, True, False]), lambda L: L.ones(2, dtype=L.float64)),
}


@pytest.mark.parametrize("form", list(SETS))
def test_advanced_setitem_wants_the_destination_dtype(form: str) -> None:
    """x[idx] = f64 tensor cast in silence; torch: "Index put requires the source and destination dtypes match"."""
    idx, val = SETS[form]

    def run(L: Any, F: Any) -> Any:
        x = L.zeros(4)
        x[idx(L) if callable(idx) else idx] = val(L)
        return x
    both(run, TypeError, "Index put requires the source and destination dtypes match")


def test_index_put_wants_the_destination_dtype() -> None:
    for acc in (False, True):
        both(lambda L, F, a=acc: L.zeros(4).index_put((L.tensor([0, 1]),), L.ones(2, dtype=L.float64), accumulate=a),
             TypeError, "dtypes match")


@pytest.mark.parametrize("form", ["basic index", "slice", "mask, one element", "number"])
def test_setitem_casts_where_torch_does(form: str) -> None:
    """A basic index is a copy_ and one element through a mask is masked_fill: both cast, in torch too."""
    def run(L: Any, F: Any) -> Any:
        x = L.zeros(2, 3)
        if form == "basic index":
            x[0] = L.ones(3, dtype=L.float64)
        elif form == "slice":
            x[:, 1:] = L.ones(2, dtype=L.float64)
        elif form == "mask, one element":
            x[x == 0] = L.tensor(2.0, dtype=L.float64)
        else:
            x[L.tensor([1])] = 5
        return x
    same(run)


# -- values ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["2**63", "2**63 scalar", "uint8 300", "int8 -129", "int32 2**31"])
def test_tensor_refuses_integer_overflow(form: str) -> None:
    """numpy wrapped: av.tensor([2**63]) held -2**63 and av.tensor([300], dtype=uint8) 44."""
    calls = {
        "2**63": lambda L, F: L.tensor([2**63]),
        "2**63 scalar": lambda L, F: L.tensor(2**63),
        "uint8 300": lambda L, F: L.tensor([300], dtype=L.uint8),
        "int8 -129": lambda L, F: L.tensor([1, -129], dtype=L.int8),
        "int32 2**31": lambda L, F: L.tensor([[2**31]], dtype=L.int32),
    }
    both(calls[form], (ValueError, RuntimeError), "overflow|Overflow")


def test_tensor_integer_edges_as_torch() -> None:
    same(lambda L, F: L.tensor([2**63 - 1, -2**63]))
    same(lambda L, F: L.tensor([-1, 255], dtype=L.uint8))  # (uint8 takes negatives: two's complement)
    same(lambda L, F: L.tensor([2**63], dtype=L.float32))


@pytest.mark.parametrize("form", ["-x", "neg", "a - b", "sub", "x - True", "True - x", "x - 1", "1.0 - x",
                                  "x - f32", "subtract"])
def test_bool_subtraction_and_negation(form: str) -> None:
    """-mask gave the mask back and mask - mask computed xor, in silence."""
    calls = {
        "-x": lambda L: -L.tensor([True, False]),
        "neg": lambda L: L.neg(L.tensor([True, False])),
        "a - b": lambda L: L.tensor([True, False]) - L.tensor([True, True]),
        "sub": lambda L: L.sub(L.tensor([True, False]), L.tensor([True, True])),
        "x - True": lambda L: L.tensor([True, False]) - True,
        "True - x": lambda L: True - L.tensor([True, False]),
        "x - 1": lambda L: L.tensor([True, False]) - 1,
        "1.0 - x": lambda L: 1.0 - L.tensor([True, False]),
        "x - f32": lambda L: L.tensor([True, False]) - L.ones(2),
        "subtract": lambda L: L.subtract(L.tensor([True]), L.tensor([False])),
    }
    both(lambda L, F: calls[form](L), RuntimeError, "Subtraction|Negation")


def test_bool_ops_torch_allows() -> None:
    same(lambda L, F: L.tensor([True, False]) + L.tensor([True, True]))
    same(lambda L, F: L.ones(2) - 1)
    same(lambda L, F: ~L.tensor([True, False]))


def test_round_integers_with_decimals() -> None:
    """round(int, decimals=-2) returned the input unchanged."""
    both(lambda L, F: L.round(L.tensor([123, 456]), decimals=-2), NotImplementedError, "round")
    both(lambda L, F: L.round(L.tensor([123]), decimals=1), NotImplementedError, "round")
    both(lambda L, F: L.round(L.tensor([True])), NotImplementedError, "round")
    same(lambda L, F: L.round(L.tensor([123, 456])))
    same(lambda L, F: L.round(L.tensor([1234.5678, -0.125]), decimals=-2))


@pytest.mark.parametrize("form", ["clamp", "clip", "kw", "method", "in place"])
def test_clamp_without_bounds(form: str) -> None:
    calls = {
        "clamp": lambda L: L.clamp(L.ones(3)),
        "clip": lambda L: L.clip(L.ones(3)),
        "kw": lambda L: L.clamp(L.ones(3), min=None, max=None),
        "method": lambda L: L.ones(3).clamp(),
        "in place": lambda L: L.ones(3).clamp_(),
    }
    both(lambda L, F: calls[form](L), RuntimeError, "At least one of 'min' or 'max'")


def test_onnx_clip_without_bounds_is_still_identity() -> None:
    from avalon.onnx import ops_math
    x = av.tensor([1.0, -2.0])

    class Node:
        opset = 13
    np.testing.assert_array_equal(ops_math.clip(Node(), x).numpy(), x.numpy())


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16"])
def test_multi_margin_loss_small_int_targets(dtype: str) -> None:
    """It failed with one_hot's internal message; torch wants Long targets."""
    both(lambda L, F: F.multi_margin_loss(L.ones(2, 3), L.tensor([0, 2], dtype=getattr(L, dtype))),
         TypeError, "expected scalar type Long")
    same(lambda L, F: F.multi_margin_loss(L.tensor([[0.1, 0.5, 0.2], [0.3, 0.0, 0.9]]), L.tensor([0, 2])))


# -- modules ---------------------------------------------------------------------------------------

def test_old_batchnorm_checkpoint_without_num_batches_tracked() -> None:
    """torch fills in num_batches_tracked for a state dict without version metadata (older than 0.4.1);
    Avalon reported it missing."""
    tm = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    tm[1].num_batches_tracked.fill_(5)
    sd = dict(tm.state_dict())
    del sd["1.num_batches_tracked"]
    assert not tm.load_state_dict(sd).missing_keys and int(tm[1].num_batches_tracked) == 5
    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    m[1].num_batches_tracked.fill_(5)
    assert m.load_state_dict(sd).missing_keys == [] and int(m[1].num_batches_tracked) == 5
    np.testing.assert_array_equal(m[1].running_var.numpy(), tm[1].running_var.numpy())
    # with torch's current version metadata the key is required, as in torch
    versioned = tm.state_dict()
    del versioned["1.num_batches_tracked"]
    torch_raises(lambda: tm.load_state_dict(versioned))
    with pytest.raises(Exception, match="num_batches_tracked"):
        m.load_state_dict(versioned)
    assert nn.Linear(2, 3).load_state_dict({"weight": np.ones((3, 2)), "bias": np.ones(3)}).missing_keys == []
    with pytest.raises(Exception, match="Missing key"):
        nn.Linear(2, 3).load_state_dict({"weight": np.ones((3, 2))})


def test_state_dict_prefix_destination_keep_vars() -> None:
    tm, m = torch.nn.Linear(2, 3), nn.Linear(2, 3)
    assert list(m.state_dict(prefix="fc.")) == list(tm.state_dict(prefix="fc.")) == ["fc.weight", "fc.bias"]
    dest: dict = {"x": 1}
    assert m.state_dict(destination=dest, prefix="a.", keep_vars=True) is dest
    assert list(dest) == ["x", "a.weight", "a.bias"]


def test_load_state_dict_assign_keeps_the_checkpoint_dtype() -> None:
    sd = {"weight": torch.ones(3, 2, dtype=torch.float64), "bias": torch.zeros(3, dtype=torch.float64)}
    tm, m = torch.nn.Linear(2, 3), nn.Linear(2, 3)
    tm.load_state_dict(sd, assign=True)
    m.load_state_dict(sd, assign=True)
    assert m.weight.dtype is av.float64 and tm.weight.dtype == torch.float64
    m2 = nn.Linear(2, 3)
    m2.load_state_dict(sd)
    assert m2.weight.dtype is av.float32


def test_get_parameter_and_get_buffer() -> None:
    tm = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    assert m.get_parameter("0.bias") is m[0].bias and m.get_buffer("1.running_mean") is m[1].running_mean
    for bad in (lambda s: s.get_parameter("1.running_mean"), lambda s: s.get_buffer("0.weight"),
                lambda s: s.get_parameter("0.nope"), lambda s: s.get_buffer("1.weight")):
        with pytest.raises(AttributeError) as want:
            bad(tm)
        with pytest.raises(AttributeError) as got:
            bad(m)
        assert str(got.value) == str(want.value)


def test_module_type_casts_every_tensor() -> None:
    """torch's Module.type casts integer buffers too (num_batches_tracked)."""
    want = {k: str(v.dtype).replace("torch.", "") for k, v in torch.nn.BatchNorm1d(3).type(torch.float64)
            .state_dict().items()}
    got = {k: repr(v.dtype).replace("av.", "") for k, v in nn.BatchNorm1d(3).type(av.float64).state_dict().items()}
    assert got == want
    assert nn.Linear(2, 2).type("torch.DoubleTensor").weight.dtype is av.float64


# -- padding and resizing --------------------------------------------------------------------------

def test_pad_amounts_must_be_ints() -> None:
    """pad(x, (1.5, 1)) truncated 1.5 to 1 in silence."""
    both(lambda L, F: F.pad(L.ones(1, 1, 4, 4), (1.5, 1)), TypeError, "must be tuple of ints")
    both(lambda L, F: F.pad(L.ones(1, 1, 4, 4), (True, 1)), TypeError, "must be tuple of ints")
    same(lambda L, F: F.pad(L.ones(1, 1, 4, 4), (np.int64(1), L.tensor(2))))


def test_interpolate_recompute_scale_factor_with_size() -> None:
    """It was ignored; torch: "recompute_scale_factor is not meaningful with an explicit size"."""
    both(lambda L, F: F.interpolate(L.ones(1, 1, 4, 4), size=3, recompute_scale_factor=True), ValueError,
         "recompute_scale_factor is not meaningful")


@pytest.mark.parametrize("form", ["linear bias", "conv1d bias", "conv2d bias", "put"])
def test_bias_and_put_want_one_dtype(form: str) -> None:
    """An f64 bias on an f32 layer made its output f64 (round 3 checked weights, not biases); put cast."""
    calls = {
        "linear bias": lambda L, F: F.linear(L.ones(1, 2), L.ones(3, 2), L.ones(3, dtype=L.float64)),
        "conv1d bias": lambda L, F: F.conv1d(L.ones(1, 1, 4), L.ones(1, 1, 2), L.ones(1, dtype=L.float64)),
        "conv2d bias": lambda L, F: F.conv2d(L.ones(1, 1, 3, 3), L.ones(1, 1, 2, 2), L.ones(1, dtype=L.float64)),
        "put": lambda L, F: L.zeros(4).put(L.tensor([0]), L.ones(1, dtype=L.float64)),
    }
    both(calls[form], TypeError, "same")
    same(lambda L, F: F.linear(L.ones(1, 2), L.ones(3, 2), L.ones(3)))

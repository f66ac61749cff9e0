"""Calls torch refuses, refused here too instead of computing something torch code never sees:
an integer or bool tensor averaged (mean, var, std, softmax, the norms: numpy's promotion ran them in
float32), a fill value outside its dtype (`full((2,), 300, dtype=int8)` held 44), and var/std given
both `unbiased` and `correction`. torch is the oracle: each case raises in both or agrees in value."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import torch_raises

import avalon as av

F = av.nn.functional

REDUCERS = {
    "mean": (lambda m, x: x.mean(), None),
    "mean_dim": (lambda m, x: m.mean(x, 0, keepdim=True), None),
    "var": (lambda m, x: x.var(), None),
    "std": (lambda m, x: m.std(x, 0), None),
    "var_mean": (lambda m, x: m.var_mean(x)[0], None),
    "std_mean": (lambda m, x: m.std_mean(x)[1], None),
    "softmax": (lambda m, x: m.softmax(x, 0), None),
    "log_softmax": (lambda m, x: m.log_softmax(x, -1), None),
    "norm": (lambda m, x: x.norm(), None),
    "vector_norm": (lambda m, x: m.linalg.vector_norm(x), None),
    "layer_norm": (lambda m, x: m.nn.functional.layer_norm(x, (3,)), None),
    "group_norm": (lambda m, x: m.nn.functional.group_norm(x.reshape(1, 3, 1), 1), None),
    "batch_norm": (lambda m, x: m.nn.functional.batch_norm(x.reshape(3, 1), None, None, training=True), None),
}


def _raises(fn) -> bool:
    try:
        fn()
    except (RuntimeError, TypeError, ValueError):
        return True
    return False


@pytest.mark.parametrize("name", sorted(REDUCERS))
@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_fraction_valued_functions_refuse_integer_and_bool_inputs_as_torch(name: str, dtype: str) -> None:
    f, _ = REDUCERS[name]
    a = np.array([3, 1, 2]).astype(dtype)
    assert _raises(lambda: f(torch, torch.tensor(a)))
    with pytest.raises(RuntimeError, match=rf"{name.split('_dim')[0].split('_mean')[0]}.*floating point input"):
        f(av, av.tensor(a))
    with pytest.raises(RuntimeError, match="floating point input"):
        av.compile(lambda x: f(av, x), backend="numpy")(av.tensor(a))
    # the float version runs and agrees (the error is about the dtype, not the function)
    x = np.random.default_rng(0).standard_normal(3)
    got, want = f(av, av.tensor(x)), f(torch, torch.tensor(x))
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-12, atol=1e-12)


def test_dtype_argument_still_averages_integers_as_torch() -> None:
    a = np.array([[3, 1], [2, 7]])
    np.testing.assert_allclose(np.asarray(av.mean(av.tensor(a), dtype=av.float64)),
                               torch.mean(torch.tensor(a), dtype=torch.float64).numpy())
    np.testing.assert_allclose(np.asarray(av.softmax(av.tensor(a), 1, dtype=av.float64)),
                               torch.softmax(torch.tensor(a), 1, dtype=torch.float64).numpy(), rtol=1e-12)
    with pytest.raises(RuntimeError):
        torch.linalg.vector_norm(torch.tensor(a), dtype=torch.float64)  # the norms refuse integers even so
    with pytest.raises(RuntimeError, match="vector_norm.*floating point input"):
        av.linalg.vector_norm(av.tensor(a), dtype=av.float64)


def test_var_and_std_refuse_unbiased_with_correction_as_torch() -> None:
    x = np.random.default_rng(1).standard_normal((3, 4))
    for args, kw in [((), dict(unbiased=True, correction=1)), ((1, True), dict(correction=0)),
                     ((), dict(unbiased=False, correction=0))]:
        with pytest.raises(TypeError):
            torch.var(torch.tensor(x), *args, **kw)
        for fn in (av.var, av.std, av.var_mean, av.std_mean):
            with pytest.raises(TypeError, match="only one of 'unbiased' and 'correction'"):
                fn(av.tensor(x), *args, **kw)
    np.testing.assert_allclose(np.asarray(av.var(av.tensor(x), 1, keepdim=True, correction=0)),
                               torch.var(torch.tensor(x), 1, keepdim=True, correction=0).numpy(), rtol=1e-12)


FILLS = [
    ("full", lambda m, d, v: m.full((2,), v, dtype=d)),
    ("fill_", lambda m, d, v: m.zeros(2, dtype=d).fill_(v)),
    ("new_full", lambda m, d, v: m.zeros(2, dtype=d).new_full((2,), v)),
    ("masked_fill", lambda m, d, v: m.zeros(2, dtype=d).masked_fill(m.tensor([True, False]), v)),
    ("index_fill", lambda m, d, v: m.zeros(3, dtype=d).index_fill(0, m.tensor([1]), v)),
    ("clamp", lambda m, d, v: m.zeros(2, dtype=d).clamp(max=v)),
    ("where", lambda m, d, v: m.where(m.tensor([True, False]), m.zeros(2, dtype=d), v)),
    ("add", lambda m, d, v: m.zeros(2, dtype=d) + v),  # arithmetic wraps in torch: no check
    ("add_", lambda m, d, v: m.ones(2, dtype=d).add_(v)),
]
VALUES = [("int8", 127), ("int8", 300), ("int8", -129), ("uint8", -1), ("uint8", -129), ("uint8", 256),
          ("int32", 2**31), ("int32", 2.5), ("int64", 2**63), ("int64", -(2**63)), ("int16", float("nan")),
          ("float32", 1e300), ("float32", -1e39), ("float32", float("inf")), ("float64", 1e300),
          ("float16", 65504.0), ("float16", 65519.0), ("float16", -7e4), ("float16", 1e6), ("float16", float("-inf")),
          ("bfloat16", 3.3895e38), ("bfloat16", 3.4e38), ("bfloat16", float("nan"))]


@pytest.mark.parametrize("dtype,value", VALUES, ids=[f"{d}-{v}" for d, v in VALUES])
def test_fill_values_out_of_their_dtype_raise_where_torch_raises(dtype: str, value: float) -> None:
    for name, f in FILLS:
        try:
            want = f(torch, getattr(torch, dtype), value)
        except (RuntimeError, TypeError) as e:  # (add_ of a float into an int tensor: another refusal)
            overflow = "overflow" in str(e)
            with pytest.raises(RuntimeError if overflow else (RuntimeError, TypeError),
                               match="without overflow" if overflow else None):
                f(av, getattr(av, dtype), value)
            continue
        got = f(av, getattr(av, dtype), value)
        np.testing.assert_array_equal(np.asarray(got, np.float64 if dtype == "bfloat16" else None),
                                      want.double().numpy() if dtype == "bfloat16" else want.numpy(),
                                      err_msg=f"{name}({dtype}, {value})")


def test_a_fill_value_out_of_range_raises_inside_a_compiled_function_too() -> None:
    step = av.compile(lambda x: x.masked_fill(x > 1, 300), backend="numpy")
    with pytest.raises(RuntimeError, match="i8 without overflow"):
        step(av.tensor(np.array([1, 2, 3], dtype=np.int8)))


SHAPE_MISTAKES = ["x.view(5)", "x.reshape(4)", "x @ x", "x.expand(3, 3)", "m.cat([x, m.ones(3)])", "x + m.ones(4)",
                  "x.view(-1, 4)", "m.stack([x, m.ones(3, 2)])", "x.permute(0, 0)", "x.split([1, 1], 1)",
                  "x.repeat(2)", "m.nn.functional.linear(x, m.ones(4, 2))", "x.unflatten(1, (2, 2))",
                  "m.nn.LSTM(2, 4)(x)", "m.nn.GRU(4, 4, batch_first=True)(x[None])"]


@pytest.mark.parametrize("expr", SHAPE_MISTAKES)
def test_shape_mistakes_raise_a_runtime_error_as_torch(expr: str) -> None:
    """torch raises RuntimeError for shapes that do not fit; ported `except RuntimeError:` fallbacks (try a
    view, then reshape) must see one, so Avalon's ShapeError is a RuntimeError as well as a ValueError."""
    want = torch_raises(lambda: eval(expr, {"x": torch.ones(2, 3), "m": torch}))
    with pytest.raises(want):
        eval(expr, {"x": av.ones(2, 3), "m": av})

"""Round 8 of the silent-failure hunt: the dtypes torch has no kernel for, swept against torch 2.13
(CPU) on seeded random inputs: every function of `avalon.special`, the math functions, the
activations, pooling, norms and contractions of `nn.functional` at bool, integer, f16 and bf16
inputs and with mixed-dtype weights. Where torch raises, Avalon computed (often after promoting to
float32): abs/floor/ceil/trunc/median/nanmedian/kthvalue/trace/argmax/argmin/topk of bool, frac/hypot/
logaddexp/logaddexp2/logcumsumexp/igamma/igammac/special.round of integers, fmod/remainder/
floor_divide/pow of two bools, the Bessel, erfcx, log_ndtr, ndtri, zeta and orthogonal-polynomial
functions of f16/bf16, histogram of f16, arange/linspace with a bool dtype, linspace(steps=2.5),
heaviside of two dtypes, mvlgamma and relu of bool, gelu/silu/elu/selu/celu/leaky_relu/softplus/
hardswish/hardsigmoid/mish/logsigmoid/glu of integers, threshold/max_pool2d/avg_pool2d of bool.
One table (`avalon.ops.dtype_kernels`) now declares what each op refuses, checked on the operands'
promoted dtype. Exception types now match torch's: an integer input to softmax or a norm is
NotImplementedError (was an ArgumentError only), operands of two dtypes to a contraction, a norm's
weight or prelu's a RuntimeError (was a TypeError only). torch is the oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import same_as_torch, torch_raises

import avalon as av
import avalon.nn.functional as AF
import avalon.special as AS

RNG = np.random.default_rng(8)
ARRAYS = dict(
    b=np.array([True, False, True, True]),
    i=np.array([3, -2, 0, 5], dtype=np.int64),
    u8=np.array([3, 2, 0, 5], dtype=np.uint8),
    i8=np.array([3, -2, 0, 5], dtype=np.int8),
    x=RNG.standard_normal(4).astype(np.float32),
    h=RNG.standard_normal(4).astype(np.float16),
    m=np.array([[True, False], [False, True]]),
    im=np.ones((1, 1, 4, 4), dtype=np.int64),
    bm=np.ones((1, 1, 4, 4), dtype=bool),
)


def _run(mod, expr: str):
    env = {k: (torch.from_numpy(v.copy()) if mod is torch else av.tensor(v)) for k, v in ARRAYS.items()}
    env["bf"] = env["x"].to(mod.bfloat16)
    env.update(T=mod, F=torch.nn.functional if mod is torch else AF, S=torch.special if mod is torch else AS)
    return eval(expr, env)  # noqa: S307 - the table's own expressions


RAISE = [
    # round 7's list
    "b.abs()", "T.abs(b)", "b.floor()", "b.ceil()", "b.trunc()", "T.fix(b)", "b.median()", "b.nanmedian()",
    "b.kthvalue(1)", "m.trace()", "b.argmax()", "b.argmin()", "b.topk(2)", "i.frac()", "u8.frac()", "T.frac(b)",
    "T.hypot(i, i)", "T.hypot(u8, i8)", "T.logaddexp(i, i)", "T.logaddexp(b, i)", "T.logaddexp2(i, i)",
    "T.logcumsumexp(i, 0)", "T.logcumsumexp(b, 0)", "T.arange(3, dtype=T.bool)", "T.arange(0, 2, dtype=T.bool)",
    "T.linspace(0, 1, 3, dtype=T.bool)", "T.linspace(0, 1, 2.5)", "T.histogram(h, 3)",
    # math functions
    "T.fmod(b, b)", "T.remainder(b, b)", "T.floor_divide(b, b)", "T.pow(b, b)", "T.igamma(i, i)", "T.igammac(b, i)",
    "T.heaviside(i, x)", "T.heaviside(bf, h)", "T.heaviside(u8, i8)", "T.mvlgamma(b, 2)", "T.relu(b)",
    # torch.special
    "S.round(i)", "S.round(u8)", "S.gammainc(i, i)", "S.gammaincc(b, b)", "S.multigammaln(b, 2)",
    *[f"S.{f}({v})" for f in ("airy_ai", "bessel_j0", "bessel_j1", "bessel_y0", "bessel_y1", "erfcx", "log_ndtr",
                              "modified_bessel_i0", "modified_bessel_k1", "ndtri", "scaled_modified_bessel_k0",
                              "spherical_bessel_j0") for v in ("h", "bf")],
    *[f"S.{f}(h, h)" for f in ("zeta", "chebyshev_polynomial_t", "hermite_polynomial_he", "laguerre_polynomial_l",
                               "legendre_polynomial_p", "shifted_chebyshev_polynomial_w")],
    "S.zeta(i, h)", "S.chebyshev_polynomial_u(bf, bf)",
    "S.softmax(i, 0)", "S.log_softmax(b, 0)",
    # nn.functional: integer and bool inputs, mixed dtypes
    *[f"F.{f}({v})" for f in ("gelu", "silu", "elu", "selu", "celu", "leaky_relu", "softplus", "hardswish",
                              "hardsigmoid", "mish", "logsigmoid") for v in ("im", "bm")],
    "F.glu(im, -1)", "F.relu(bm)", "F.threshold(bm, 0.5, 0)", "F.max_pool2d(bm, 2)", "F.avg_pool2d(bm, 2)",
    "F.softmax(im, -1)", "F.log_softmax(bm, -1)", "F.layer_norm(im, (4,))", "F.batch_norm(im, T.zeros(1), T.ones(1))",
    "F.group_norm(bm, 1)", "F.instance_norm(im)", "F.softmin(im, -1)",
    "F.conv2d(im, T.ones(1, 1, 2, 2))", "F.linear(T.ones(2, 4), T.ones(3, 4, dtype=T.float64))",
    "F.linear(im[0, 0], T.ones(3, 4))", "F.layer_norm(T.ones(2, 4), (4,), T.ones(4, dtype=T.float64))",
    "F.batch_norm(T.ones(2, 3), T.zeros(3, dtype=T.float64), T.ones(3, dtype=T.float64))",
    "F.group_norm(T.ones(2, 4, 3), 2, T.ones(4, dtype=T.float64))", "F.prelu(T.ones(1, 2, 3), T.ones(1, dtype=T.float64))",
]


@pytest.mark.parametrize("expr", RAISE)
def test_raises_as_torch(expr):
    want = torch_raises(lambda: _run(torch, expr))
    with pytest.raises(want):
        _run(av, expr)


AGREE = [
    # what torch does compute stays computed, at torch's dtype
    "T.fmod(b, 1)", "T.remainder(b, 2)", "T.pow(b, 2)", "T.pow(2, b)", "T.pow(b, 2.0)", "i.round()", "T.sign(b)",
    "T.floor(i)", "T.ceil(i)", "T.trunc(i)", "i.abs()", "x.frac()", "T.hypot(i, x)", "T.logaddexp(h, h)",
    "T.logaddexp(i, x)", "T.logcumsumexp(h, 0)", "T.heaviside(b, b)", "T.heaviside(x, x)", "i.argmax()", "h.median()",
    "T.arange(3, dtype=T.int8)", "T.linspace(0, 4, 3, dtype=T.int64)", "T.mvlgamma(i.abs() + 3, 2)",
    "S.bessel_j0(i)", "S.bessel_j0(b)", "S.erfcx(i)", "S.zeta(i, i)", "S.gammainc(i, x)", "S.gammainc(h, h)",
    "S.i0(h)", "S.chebyshev_polynomial_t(x, i)", "S.round(x)", "T.topk(i, 2)", "T.trace(im[0, 0])",
    "F.relu(im)", "F.max_pool2d(im, 2)", "F.threshold(im, 1, 0)", "F.gelu(h)",
]


@pytest.mark.parametrize("expr", AGREE)
def test_values_and_dtypes_match_torch(expr):
    same_as_torch(_run(torch, expr), _run(av, expr))


def test_refusal_holds_compiled():
    """The check reads dtypes only: a traced call refuses as the eager one does, naming the op."""
    with pytest.raises(NotImplementedError, match="hypot"):
        av.compile(lambda a: av.hypot(a, a))(av.tensor(ARRAYS["i"]))
    got = av.compile(lambda a: av.hypot(a, a))(av.tensor(ARRAYS["x"]))
    want = torch.hypot(torch.from_numpy(ARRAYS["x"]), torch.from_numpy(ARRAYS["x"]))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_error_names_the_users_line():
    with pytest.raises(NotImplementedError) as e:
        av.tensor(ARRAYS["b"]).abs()
    assert "abs" in str(e.value) and "'Bool'" in str(e.value) and "test_silent_failures_8.py" in str(e.value)

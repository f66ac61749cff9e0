"""Keyword-argument parity with torch: ported code passes torch's parameter names by keyword
(`x.pow(exponent=2)`, `x.permute(dims=...)`, `torch.sum(input=x, dim=1, keepdim=True)`), and each call
here runs the same code against torch and Avalon and compares the results. The last test runs
benchmarks/kwarg_audit.py over its curated list of common names (COMMON) and fails on any keyword
torch takes there that Avalon's signature lacks."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

import avalon as av  # noqa: E402
import avalon.nn.functional as AF  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

_rng = np.random.default_rng(0)
X = _rng.standard_normal((2, 3, 4)).astype(np.float32)
Y = (_rng.standard_normal((2, 3, 4)) + 3).astype(np.float32)
M = _rng.standard_normal((4, 5)).astype(np.float32)
V = _rng.standard_normal(4).astype(np.float32)
I = np.array([1, 0, 2], dtype=np.int64)

# (id, fn(L, F, x, y, m, v, i)) with L torch or avalon, F its functional module and the inputs L's tensors
CASES = [
    # Tensor methods (the ones a probe found failing first)
    ("Tensor.pow", lambda L, F, x, y, m, v, i: x.pow(exponent=2)),
    ("Tensor.permute", lambda L, F, x, y, m, v, i: x.permute(dims=(0, 2, 1))),
    ("Tensor.reshape", lambda L, F, x, y, m, v, i: x.reshape(shape=(2, -1))),
    ("Tensor.view", lambda L, F, x, y, m, v, i: x.view(size=(4, 6))),
    ("Tensor.expand", lambda L, F, x, y, m, v, i: v.expand(size=(2, 4))),
    ("Tensor.div", lambda L, F, x, y, m, v, i: x.div(other=y)),
    ("Tensor.div_rounding", lambda L, F, x, y, m, v, i: x.div(other=y, rounding_mode="floor")),
    ("Tensor.split", lambda L, F, x, y, m, v, i: x.split(split_size=2, dim=2)),
    ("Tensor.split_sizes", lambda L, F, x, y, m, v, i: x.split(split_size=[1, 3], dim=-1)),
    ("Tensor.unsqueeze", lambda L, F, x, y, m, v, i: x.unsqueeze(dim=0)),
    ("Tensor.repeat", lambda L, F, x, y, m, v, i: v.repeat(repeats=(2, 3))),
    ("Tensor.mul", lambda L, F, x, y, m, v, i: x.mul(other=y)),
    ("Tensor.matmul", lambda L, F, x, y, m, v, i: x.matmul(other=m)),
    ("Tensor.eq", lambda L, F, x, y, m, v, i: x.eq(other=x)),
    ("Tensor.ne", lambda L, F, x, y, m, v, i: x.ne(other=y)),
    ("Tensor.lt", lambda L, F, x, y, m, v, i: x.lt(other=y)),
    ("Tensor.le", lambda L, F, x, y, m, v, i: x.le(other=y)),
    ("Tensor.gt", lambda L, F, x, y, m, v, i: x.gt(other=y)),
    ("Tensor.ge", lambda L, F, x, y, m, v, i: x.ge(other=y)),
    ("Tensor.maximum", lambda L, F, x, y, m, v, i: x.maximum(other=y)),
    ("Tensor.minimum", lambda L, F, x, y, m, v, i: x.minimum(other=y)),
    ("Tensor.max_other", lambda L, F, x, y, m, v, i: x.max(other=y)),
    ("Tensor.min_other", lambda L, F, x, y, m, v, i: x.min(other=y)),
    ("Tensor.max_dim", lambda L, F, x, y, m, v, i: x.max(dim=1, keepdim=True)),
    ("Tensor.sum", lambda L, F, x, y, m, v, i: x.sum(dim=(0, 2), keepdim=True)),
    ("Tensor.swapdims", lambda L, F, x, y, m, v, i: x.swapdims(dim0=0, dim1=2)),
    ("Tensor.broadcast_to", lambda L, F, x, y, m, v, i: v.broadcast_to(size=(3, 4))),
    ("Tensor.vdot", lambda L, F, x, y, m, v, i: v.vdot(other=v)),
    ("Tensor.logical_and", lambda L, F, x, y, m, v, i: (x > 0).logical_and(other=y > 3)),
    ("Tensor.to_tensor", lambda L, F, x, y, m, v, i: x.to(tensor=i)),
    ("Tensor.copy_", lambda L, F, x, y, m, v, i: x.clone().copy_(other=y)),
    ("Tensor.mul_", lambda L, F, x, y, m, v, i: x.clone().mul_(other=y)),
    ("Tensor.pow_", lambda L, F, x, y, m, v, i: x.clone().pow_(exponent=3)),
    ("Tensor.eq_", lambda L, F, x, y, m, v, i: x.clone().eq_(other=x)),
    # av.* / torch.* functions by keyword
    ("pow", lambda L, F, x, y, m, v, i: L.pow(input=x, exponent=2)),
    ("sum", lambda L, F, x, y, m, v, i: L.sum(input=x, dim=1, keepdim=True)),
    ("mean", lambda L, F, x, y, m, v, i: L.mean(input=x, dim=-1)),
    ("max", lambda L, F, x, y, m, v, i: L.max(input=x, dim=2)),
    ("max_other", lambda L, F, x, y, m, v, i: L.max(input=x, other=y)),
    ("min_other", lambda L, F, x, y, m, v, i: L.min(input=x, other=y)),
    ("amax", lambda L, F, x, y, m, v, i: L.amax(input=x, dim=1)),
    ("amin", lambda L, F, x, y, m, v, i: L.amin(input=x, dim=1, keepdim=True)),
    ("argmax", lambda L, F, x, y, m, v, i: L.argmax(input=x, dim=1)),
    ("argmin", lambda L, F, x, y, m, v, i: L.argmin(input=x, dim=2, keepdim=True)),
    ("logsumexp", lambda L, F, x, y, m, v, i: L.logsumexp(input=x, dim=1)),
    ("exp", lambda L, F, x, y, m, v, i: L.exp(input=x)),
    ("log", lambda L, F, x, y, m, v, i: L.log(input=y)),
    ("sqrt", lambda L, F, x, y, m, v, i: L.sqrt(input=y)),
    ("abs", lambda L, F, x, y, m, v, i: L.abs(input=x)),
    ("sigmoid", lambda L, F, x, y, m, v, i: L.sigmoid(input=x)),
    ("tanh", lambda L, F, x, y, m, v, i: L.tanh(input=x)),
    ("sin", lambda L, F, x, y, m, v, i: L.sin(input=x)),
    ("neg", lambda L, F, x, y, m, v, i: L.neg(input=x)),
    ("floor", lambda L, F, x, y, m, v, i: L.floor(input=x)),
    ("mul", lambda L, F, x, y, m, v, i: L.mul(input=x, other=y)),
    ("div", lambda L, F, x, y, m, v, i: L.div(input=x, other=y)),
    ("true_divide", lambda L, F, x, y, m, v, i: L.true_divide(input=x, other=y)),
    ("maximum", lambda L, F, x, y, m, v, i: L.maximum(input=x, other=y)),
    ("minimum", lambda L, F, x, y, m, v, i: L.minimum(input=x, other=y)),
    ("eq", lambda L, F, x, y, m, v, i: L.eq(input=x, other=x)),
    ("gt", lambda L, F, x, y, m, v, i: L.gt(input=x, other=y)),
    ("matmul", lambda L, F, x, y, m, v, i: L.matmul(input=x, other=m)),
    ("where", lambda L, F, x, y, m, v, i: L.where(condition=x > 0, input=x, other=y)),
    ("stack", lambda L, F, x, y, m, v, i: L.stack(tensors=[x, y], dim=1)),
    ("cat", lambda L, F, x, y, m, v, i: L.cat(tensors=[x, y], dim=2)),
    ("concat", lambda L, F, x, y, m, v, i: L.concat(tensors=[x, y], dim=0)),
    ("reshape", lambda L, F, x, y, m, v, i: L.reshape(input=x, shape=(6, 4))),
    ("permute", lambda L, F, x, y, m, v, i: L.permute(input=x, dims=(2, 0, 1))),
    ("transpose", lambda L, F, x, y, m, v, i: L.transpose(input=x, dim0=0, dim1=2)),
    ("squeeze", lambda L, F, x, y, m, v, i: L.squeeze(input=x[:1], dim=0)),
    ("flatten", lambda L, F, x, y, m, v, i: L.flatten(input=x, start_dim=1)),
    ("broadcast_to", lambda L, F, x, y, m, v, i: L.broadcast_to(input=v, size=(3, 4))),
    ("swapdims", lambda L, F, x, y, m, v, i: L.swapdims(input=x, dim0=1, dim1=2)),
    ("split", lambda L, F, x, y, m, v, i: L.split(tensor=x, split_size_or_sections=2, dim=2)),
    ("vdot", lambda L, F, x, y, m, v, i: L.vdot(input=v, other=v)),
    ("logical_or", lambda L, F, x, y, m, v, i: L.logical_or(input=x > 0, other=y > 3)),
    # F.*
    ("F.one_hot", lambda L, F, x, y, m, v, i: F.one_hot(input=i, num_classes=4)),
    ("F.softmax", lambda L, F, x, y, m, v, i: F.softmax(input=x, dim=-1)),
    ("F.linear", lambda L, F, x, y, m, v, i: F.linear(input=x, weight=m.t())),
]


def _np(r):
    if isinstance(r, (tuple, list)):
        return [_np(e) for e in r]
    if isinstance(r, torch.Tensor):
        return r.detach().numpy()
    return np.asarray(r)


def _check(a, t):
    if isinstance(t, list):
        assert isinstance(a, list) and len(a) == len(t)
        for ea, et in zip(a, t):
            _check(ea, et)
        return
    assert a.shape == t.shape
    assert a.dtype == t.dtype, (a.dtype, t.dtype)
    np.testing.assert_allclose(a, t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_torch_keywords_give_torchs_result(fn):
    ins = (X, Y, M, V, I)
    want = fn(torch, TF, *(torch.tensor(a) for a in ins))
    got = fn(av, AF, *(av.tensor(a) for a in ins))
    _check(_np(got), _np(want))


def test_positional_calls_unchanged():
    x, y = av.tensor(X), av.tensor(Y)
    assert x.view(4, 6).shape == x.view((4, 6)).shape == (4, 6)
    assert x.permute(2, 0, 1).shape == x.permute((2, 0, 1)).shape == (4, 2, 3)
    assert x.reshape(6, 4).shape == av.reshape(x, (6, 4)).shape == (6, 4)
    assert av.ones(4).expand(2, 4).shape == av.ones(4).expand((2, 4)).shape == (2, 4)
    assert [p.shape for p in x.split(2, 2)] == [(2, 3, 2), (2, 3, 2)]
    assert x.repeat(1, 2, 1).shape == (2, 6, 4)
    np.testing.assert_allclose(av.max(x, y).numpy(), np.maximum(X, Y))
    np.testing.assert_allclose(av.where(x > 0, x, y).numpy(), np.where(X > 0, X, Y))
    assert x.sum(axis=1, keepdims=True).shape == (2, 1, 4)  # numpy's names stay
    with pytest.raises(TypeError, match="multiple values"):
        x.view(4, 6, size=(4, 6))
    with pytest.raises(TypeError, match="multiple values"):
        x.permute(0, 1, 2, dims=(0, 1, 2))


def test_audit_finds_no_missing_keyword_among_common_names():
    import kwarg_audit
    rows = kwarg_audit.audit_common()
    assert len(rows) >= 150  # the audit saw torch's and Avalon's signatures for the curated names
    assert all(r.torch.overloads for r in rows), [r.name for r in rows if not r.torch.overloads]
    gaps = {f"{r.group}.{r.name}": r.missing for r in rows if r.missing}
    assert not gaps, f"keywords torch takes that Avalon does not: {gaps}"

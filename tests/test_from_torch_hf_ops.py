"""av.from_torch on the ops and call patterns Hugging Face models bring (small torch modules, no
transformers needed): `.to(dtype)` checks, boolean `&`/`|`/`^` masks, advanced indexing with several
and negative indices, scaled_dot_product_attention kept whole (GQA, masks), keyword arguments, and
calls that differ from the example (constants, shapes, dtypes) refused by name. Forward against
torch, gradients against torch autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

import avalon as av
from avalon.interop import UnsupportedOp
from avalon.interop.torch_import import _export


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def _check(module: tnn.Module, *args: torch.Tensor, grads: bool = True) -> av.interop.ImportedModel:
    """Import, then forward vs torch and (float outputs) parameter gradients vs torch autograd."""
    module.eval()
    model = av.from_torch(module, *args)
    xs = [av.tensor(a.numpy()) for a in args]
    ref = module(*args)
    out = model(*xs)
    assert out.shape == tuple(ref.shape) and out.dtype.name == av.tensor(ref.detach().numpy()).dtype.name
    assert _rel(out.numpy().astype(np.float64), ref.detach().numpy().astype(np.float64)) < 1e-5
    if grads:
        w = np.random.default_rng(0).standard_normal(tuple(ref.shape)).astype(np.float32)
        module.zero_grad()
        (ref * torch.from_numpy(w)).sum().backward()
        _, g = av.value_and_grad(lambda m, w, *xs: (m(*xs) * w).sum())(model, av.tensor(w), *xs)
        for n, p in module.named_parameters():
            assert _rel(g[n].numpy(), p.grad.numpy()) < 1e-4, n
    return model


class ToDtype(tnn.Module):
    def forward(self, ids):
        return ids.to(torch.float32) * 2 + ids.to("cpu").to(torch.int32).to(torch.float32)


def test_to_dtype_assert_tensor_metadata_is_a_check():
    _check(ToDtype(), torch.arange(6).reshape(2, 3), grads=False)


class Masks(tnn.Module):
    def forward(self, x):
        a, b = x > 0, x < 0.5
        return torch.where((a & b) | (~a ^ (x > -0.5)), x, torch.zeros_like(x)) + (a & True).float()


def test_boolean_and_or_xor_are_logical_ops():
    _check(Masks(), torch.randn(4, 5), grads=False)


class Gather(tnn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.w = tnn.Parameter(torch.randn(4, 5, 6))

    def forward(self, i, j):
        w = self.w * 1.5
        if self.kind == "adjacent":  # x[i, j]: (B,) -> (B, 6)
            return w[i, j]
        if self.kind == "broadcast":  # i (2, 1) with j (3,) -> (2, 3, 6)
            return w[i[:, None], j]
        if self.kind == "apart":  # non-adjacent: the broadcast dim goes first -> (B, 5)
            return w[i, :, j]
        return w[:, j]  # one index, negative entries: (4, B, 6)


@pytest.mark.parametrize("kind", ["adjacent", "broadcast", "apart", "negative"])
def test_index_with_several_and_negative_indices_forward_and_grad(kind):
    torch.manual_seed(0)
    i, j = torch.tensor([3, -1, 0, 3]), torch.tensor([-5, 2, 4, -5])  # repeats: gradients accumulate
    if kind == "broadcast":
        i, j = torch.tensor([-1, 1]), torch.tensor([0, -2, 0])
    _check(Gather(kind), i, j)


def test_index_with_a_constant_boolean_mask_and_a_run_time_one():
    class Const(tnn.Module):
        def forward(self, x):
            return x[:, torch.tensor([True, False, True])] * 2

    x = torch.randn(2, 3)
    _check(Const(), x, grads=False)

    class FromInput(tnn.Module):
        def forward(self, x, m):
            return x[m]

    with pytest.raises(UnsupportedOp, match="boolean mask whose values are only known at run time"):
        av.from_torch(FromInput(), x, x > 0)


def test_every_unsupported_op_is_reported_at_import_in_one_error(monkeypatch):
    from avalon.interop.aten import ATEN
    for op in ("aten.linalg_lu_factor_ex.default", "aten.linalg_ldl_factor_ex.default"):  # ops without a rule,
        monkeypatch.delitem(ATEN, op, raising=False)  # whichever ops have one

    class Many(tnn.Module):
        def forward(self, x, i):
            z = torch.linalg.lu_factor(torch.diag(x))[0] + torch.linalg.lu_factor(torch.diag(x + 2))[0]
            return z + torch.linalg.ldl_factor(torch.diag(x))[0], torch.linalg.ldl_factor(torch.diag(x + i))[0]

    with pytest.raises(UnsupportedOp) as e:
        av.from_torch(Many(), torch.rand(2) + 1, torch.tensor([1, 2]))
    msg = str(e.value)
    assert "aten.linalg_lu_factor_ex.default x2" in msg and "aten.linalg_ldl_factor_ex.default x2" in msg
    assert "test_from_torch_hf_ops.py" in msg and "torch.linalg.lu_factor(torch.diag(x))" in msg


class Attention(tnn.Module):
    """GQA self-attention (4 query heads, 2 key/value heads) through F.scaled_dot_product_attention."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.q, self.kv = tnn.Linear(16, 16), tnn.Linear(16, 16)

    def forward(self, x, mask):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 4).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, 8).transpose(1, 2).split(4, -1)
        if self.mode == "bool":
            return TF.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        if self.mode == "float":
            return TF.scaled_dot_product_attention(q, k, v, attn_mask=mask.float() * -3.0, scale=0.3, enable_gqa=True)
        return TF.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


@pytest.mark.parametrize("mode", ["bool", "float", "causal"])
def test_sdpa_kept_whole_with_gqa_and_masks(mode):
    torch.manual_seed(0)
    x, mask = torch.randn(2, 5, 16), torch.rand(5, 5) > 0.3
    mask.fill_diagonal_(True)
    ep, _ = _export(Attention(mode).eval(), (x, mask), {})
    assert "aten.scaled_dot_product_attention.default" in {str(n.target) for n in ep.graph.nodes}
    _check(Attention(mode), x, mask)


class DeadRows(tnn.Module):
    """Queries whose every key is masked (ModernBERT's padded queries in its sliding window): torch's op gives
    zeros there (its _safe_softmax), not nan, and no nan reaches the gradients."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.qkv = tnn.Linear(8, 24)

    def forward(self, x, keep):
        q, k, v = self.qkv(x).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
        if self.mode == "float":  # -inf where removed, a finite bias elsewhere (HF's additive masks)
            keep = torch.zeros(keep.shape).masked_fill(~keep, float("-inf")) + 0.5 * keep.float()
        return TF.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None])


@pytest.mark.parametrize("mode", ["bool", "float"])
def test_sdpa_rows_with_every_key_masked_are_zeros_as_torchs(mode):
    torch.manual_seed(0)
    keep = torch.rand(2, 5, 5) > 0.4
    keep[0, 1], keep[1, 3:] = False, False  # three dead rows, one alone and two at the end
    keep[0, 2] = True
    out = _check(DeadRows(mode), torch.randn(2, 5, 8), keep)(*(av.tensor(a.numpy()) for a in
                                                            (torch.randn(2, 5, 8), keep))).numpy()
    assert not np.isnan(out).any() and (out[0, :, 1] == 0).all() and (out[1, :, 3:] == 0).all()


def test_decomposition_failure_is_told_apart_from_capture_failure(monkeypatch):
    def broken(self, *a, **k):
        raise ValueError("Cannot view a tensor")

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", broken)
    with pytest.raises(RuntimeError, match="captured ToDtype, but torch's decomposition.*Cannot view"):
        av.from_torch(ToDtype(), torch.arange(3))


class Masked(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = tnn.Linear(3, 3)

    def forward(self, x, mask=None, scale=1.0):
        return self.lin(x) * mask * scale


def test_keyword_arguments_are_passed_through_and_checked_by_name():
    torch.manual_seed(0)
    m = Masked().eval()
    x, mask, mask2 = torch.randn(2, 3), torch.ones(2, 3), (torch.rand(2, 3) > 0.5).float()
    model = av.from_torch(m, x, kwargs={"mask": mask})
    xa, m2 = av.tensor(x.numpy()), av.tensor(mask2.numpy())
    want = m(x, mask=mask2).detach().numpy()
    assert _rel(model(xa, mask=m2).numpy(), want) < 1e-6
    assert _rel(model(xa, m2).numpy(), want) < 1e-6  # bound like forward: by position too
    assert _rel(model(x=xa, mask=m2).numpy(), want) < 1e-6
    with pytest.raises(TypeError, match="'mask' is None, but was a tensor of shape"):
        model(xa)
    assert _rel(model(xa, mask=m2, scale=1.0).numpy(), want) < 1e-6  # the default torch.export used
    with pytest.raises(TypeError, match="'scale' was not given when the model was imported"):
        model(xa, mask=m2, scale=2.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'other'"):
        model(xa, mask=m2, other=1)


def test_non_tensor_argument_must_equal_the_example():
    m = Masked().eval()
    x, mask = torch.randn(2, 3), torch.ones(2, 3)
    model = av.from_torch(m, x, mask, 3.0)
    xa, ma = av.tensor(x.numpy()), av.tensor(mask.numpy())
    assert _rel(model(xa, ma, 3.0).numpy(), m(x, mask, 3.0).detach().numpy()) < 1e-6
    assert _rel(model(xa, ma, scale=3).numpy(), m(x, mask, 3.0).detach().numpy()) < 1e-6
    with pytest.raises(TypeError, match=r"argument 'scale' is 5.0, but the model was imported with scale=3.0.*"
                                        r"re-import"):
        model(xa, ma, 5.0)


def test_other_shape_or_dtype_than_the_example_is_refused_by_name():
    m = Masked().eval()
    model = av.from_torch(m, torch.randn(2, 3), torch.ones(2, 3))
    ones = av.tensor(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"input 'x' has shape \(5, 3\) and dtype f32, but the model was imported "
                                        r"for shape \(2, 3\) and dtype f32"):
        model(av.tensor(np.ones((5, 3), np.float32)), ones)
    with pytest.raises(TypeError, match=r"input 'mask' has shape \(2, 3\) and dtype f64"):
        model(ones, np.ones((2, 3)))
    with pytest.raises(TypeError, match="imported Masked: too many positional arguments"):
        model(ones, ones, 1.0, 2.0)

    class Star(tnn.Module):
        def forward(self, *xs):
            return xs[0] + xs[-1]

    model = av.from_torch(Star(), torch.ones(2), torch.ones(2))
    with pytest.raises(TypeError, match="takes 2 positional argument"):
        model(ones)
    with pytest.raises(TypeError, match=r"argument 'xs\[1\]' is \[tensor\(2, 3\)\], but was tensor\(2,\)"):
        model(ones, [ones])


class Resize(tnn.Module):
    """F.interpolate in its ATen forms: SegFormer's bilinear decode head (to a size), DETR's nearest mask, a
    scale factor (the source index from the scale, not the sizes: 7 * 1.7 -> 11), align_corners, and the plain
    (non-.vec) overloads called directly, with and without scales (the source index from the scales again).
    Bicubic, nearest-exact, 1-d and 3-d resizes are here too, though torch 2.13 decomposes them before Avalon."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = tnn.Conv2d(3, 4, 1)

    def forward(self, x, v):
        h = self.conv(x)  # (2, 4, 7, 5)
        a = TF.interpolate(h, size=(9, 6), mode="bilinear", align_corners=False)
        b = TF.interpolate(h, scale_factor=1.7, mode="bilinear")[..., :9, :6]
        c = TF.interpolate(h, size=(9, 6), mode="bilinear", align_corners=True)
        d = TF.interpolate(h, size=(9, 6), mode="bicubic") + TF.interpolate(h, size=(9, 6), mode="nearest-exact")
        e = TF.interpolate(h, scale_factor=(1.4, 1.3), mode="nearest")[..., :9, :6]
        f = torch.ops.aten.upsample_bilinear2d(h, [9, 6], False, 1.5, 1.25)
        g = torch.ops.aten.upsample_nearest2d(h, [9, 6]) + torch.ops.aten.upsample_nearest2d(h, [9, 6], 1.5, 1.25)
        m = TF.interpolate((x[:, :1] > 0).float(), size=(9, 6)).to(torch.bool)  # DETR's pixel mask
        one = TF.interpolate(h.flatten(2), size=54, mode="linear").reshape(2, 4, 9, 6)
        tri = TF.interpolate(v * self.conv.weight.sum(), scale_factor=2, mode="trilinear")
        near3 = TF.interpolate(v, size=(3, 4, 4), mode="nearest")
        cube = (tri[:, :, :3, :4, :4] + near3).mean((1, 2, 3, 4))[:, None, None, None]
        return (a + b + c + d + e + f + g + one) * m + cube


def test_upsample_ops_of_f_interpolate():
    torch.manual_seed(0)
    args = (torch.randn(2, 3, 7, 5), torch.randn(2, 1, 2, 3, 3))
    targets = {str(n.target) for n in _export(Resize().eval(), args, {})[0].graph.nodes}
    assert {"aten.upsample_bilinear2d.vec", "aten.upsample_nearest2d.vec", "aten.upsample_nearest2d.default"} <= targets
    _check(Resize(), *args)

"""ONNX import of Einsum, Attention, RotaryEmbedding and the losses, checked against onnxruntime
and torch on random inputs, with gradients through an imported Attention + loss, and a model that
torch.onnx.export writes (Einsum, SoftmaxCrossEntropyLoss, SDPA's decomposition)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper  # noqa: E402

import avalon as av  # noqa: E402
import avalon.onnx  # noqa: E402
from avalon.tensor import Tensor  # noqa: E402
from avalon.trace import trace  # noqa: E402

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _vi(name, shape, t=FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def _model(nodes, inputs, outputs, inits=(), opset=23):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _ort(m, feeds):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _check(m, feeds, rtol=1e-4, atol=1e-5):
    got = avalon.onnx.load(m)(*(Tensor(v) for v in feeds.values()))
    got = got if isinstance(got, tuple) else (got,)
    want = _ort(m, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.numpy(), w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("eq, shapes", [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("ij,kj", [(3, 4), (5, 4)]),  # implicit output: alphabetical
    ("b i d, b j d -> b i j", [(2, 3, 4), (2, 5, 4)]),  # spaces are allowed
])
def test_einsum_matches_onnxruntime(eq, shapes):
    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(len(shapes))]
    m = _model([helper.make_node("Einsum", names, ["y"], equation=eq)],
               [_vi(n, s) for n, s in zip(names, shapes)], [_vi("y", None)], opset=12)
    _check(m, {n: _rand(rng, *s) for n, s in zip(names, shapes)})


def test_attention_gqa_causal_with_past_matches_onnxruntime():
    """3-d inputs, 4 query heads over 2 kv heads, a cache of 5 (the causal frontier moves by it),
    a boolean mask, softcap, all four outputs (mode 3: the probabilities)."""
    rng = np.random.default_rng(1)
    node = helper.make_node("Attention", ["Q", "K", "V", "mask", "pk", "pv"], ["Y", "pk2", "pv2", "qk"],
                            is_causal=1, q_num_heads=4, kv_num_heads=2, qk_matmul_output_mode=3, softcap=3.0)
    feeds = {"Q": _rand(rng, 2, 3, 32), "K": _rand(rng, 2, 3, 16), "V": _rand(rng, 2, 3, 16),
             "mask": rng.random((3, 8)) < 0.8, "pk": _rand(rng, 2, 2, 5, 8), "pv": _rand(rng, 2, 2, 5, 8)}
    ins = [_vi(k, v.shape, TensorProto.BOOL if v.dtype == bool else FLOAT) for k, v in feeds.items()]
    m = _model([node], ins, [_vi(n, None) for n in ("Y", "pk2", "pv2", "qk")])
    _check(m, feeds)


def test_attention_4d_float_mask_and_scale_matches_onnxruntime():
    rng = np.random.default_rng(2)
    node = helper.make_node("Attention", ["Q", "K", "V", "mask"], ["Y"], scale=0.3)
    feeds = {"Q": _rand(rng, 2, 4, 3, 8), "K": _rand(rng, 2, 2, 6, 8), "V": _rand(rng, 2, 2, 6, 5),
             "mask": _rand(rng, 1, 4, 3, 6)}
    _check(_model([node], [_vi(k, v.shape) for k, v in feeds.items()], [_vi("Y", None)]), feeds)


@pytest.mark.parametrize("interleaved, rot_dim", [(0, 0), (1, 0), (0, 4), (1, 4)])
def test_rotary_embedding_matches_onnxruntime(interleaved, rot_dim):
    """(batch, seq, heads * size) input, caches indexed by position_ids, full or partial rotation."""
    rng = np.random.default_rng(3)
    half = (rot_dim or 8) // 2
    node = helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"], interleaved=interleaved,
                            rotary_embedding_dim=rot_dim, num_heads=2)
    feeds = {"x": _rand(rng, 2, 3, 16), "cos": _rand(rng, 10, half), "sin": _rand(rng, 10, half),
             "pos": rng.integers(0, 10, (2, 3)).astype(np.int64)}
    ins = [_vi("x", [2, 3, 16]), _vi("cos", [10, half]), _vi("sin", [10, half]), _vi("pos", [2, 3], INT64)]
    _check(_model([node], ins, [_vi("y", None)]), feeds)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_softmax_cross_entropy_ignore_index_and_weight_match_torch(reduction):
    """N-d form (N, C, d1, d2) with per-class weights; ignored targets lie outside [0, C)."""
    rng = np.random.default_rng(4)
    x, w = _rand(rng, 3, 5, 2, 4), rng.random(5).astype(np.float32) + 0.5
    t = rng.integers(0, 5, (3, 2, 4)).astype(np.int64)
    t[0, 0, :2] = t[2, 1, 3] = -100
    node = helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t", "w"], ["loss", "logp"], reduction=reduction,
                            ignore_index=-100)
    m = _model([node], [_vi("x", x.shape), _vi("t", t.shape, INT64), _vi("w", [5])], [_vi("loss", None),
                                                                                      _vi("logp", None)], opset=13)
    loss, logp = avalon.onnx.load(m)(Tensor(x), Tensor(t), Tensor(w))
    want = torch.nn.functional.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(w),
                                             ignore_index=-100, reduction=reduction)
    np.testing.assert_allclose(loss.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logp.numpy(), torch.log_softmax(torch.from_numpy(x), 1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss.numpy(), _ort(m, {"x": x, "t": t, "w": w})[0], rtol=1e-5, atol=1e-6)


def test_gradients_through_imported_attention_and_loss_match_torch():
    """Projections (initializers, so parameters) -> GQA causal Attention -> SoftmaxCrossEntropyLoss
    with ignore_index: Avalon's gradients of the imported graph equal torch's of the same math."""
    rng = np.random.default_rng(5)
    b, s, e, hq, hkv, d = 2, 4, 6, 4, 2, 3
    ws = {"wq": _rand(rng, e, hq * d), "wk": _rand(rng, e, hkv * d), "wv": _rand(rng, e, hkv * d)}
    nodes = [helper.make_node("MatMul", ["x", w], [w[1]]) for w in ws] + [
        helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1, q_num_heads=hq, kv_num_heads=hkv),
        helper.make_node("Reshape", ["y", "shape"], ["logits"]),
        helper.make_node("SoftmaxCrossEntropyLoss", ["logits", "t"], ["loss"], ignore_index=1)]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in ws.items()]
    inits.append(onnx.numpy_helper.from_array(np.array([b * s, hq * d], np.int64), "shape"))
    m = _model(nodes, [_vi("x", [b, s, e]), _vi("t", [b * s], INT64)], [_vi("loss", [])], inits)
    x, t = _rand(rng, b, s, e), rng.integers(0, hq * d, b * s).astype(np.int64)
    t[:3] = 1
    model = avalon.onnx.load(m)
    loss, grads = av.value_and_grad(lambda mm, x, t: mm(x, t))(model, Tensor(x), Tensor(t))

    tw = {k: torch.tensor(v, requires_grad=True) for k, v in ws.items()}
    tx = torch.from_numpy(x)

    def heads(p, n):
        return p.reshape(b, s, n, d).transpose(1, 2)
    q, k, v = heads(tx @ tw["wq"], hq), heads(tx @ tw["wk"], hkv), heads(tx @ tw["wv"], hkv)
    k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    want = torch.nn.functional.cross_entropy(y.reshape(b * s, -1), torch.from_numpy(t), ignore_index=1)
    want.backward()
    np.testing.assert_allclose(loss.numpy(), want.detach().numpy(), rtol=1e-5)
    assert set(grads) == set(ws)
    for name, g in grads.items():
        assert np.abs(g.numpy()).max() > 0
        np.testing.assert_allclose(g.numpy(), tw[name].grad.numpy(), rtol=1e-4, atol=1e-6)


def test_torch_exported_einsum_sdpa_cross_entropy_matches_torch_and_traces():
    class M(torch.nn.Module):
        def forward(self, q, k, v, t):
            scores = torch.einsum("bhqd,bhkd->bhqk", q, k)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return y, torch.nn.functional.cross_entropy(scores.flatten(0, 2), t)

    g = torch.Generator().manual_seed(6)
    args = [torch.randn(2, 3, 4, 8, generator=g) for _ in range(3)] + [torch.randint(0, 4, (24,), generator=g)]
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(M(), tuple(args), f, dynamo=False, opset_version=17)
    m = onnx.load_from_string(f.getvalue())
    assert {"Einsum", "SoftmaxCrossEntropyLoss"} <= {n.op_type for n in m.graph.node}
    model = avalon.onnx.load(m)
    ins = [Tensor(a.numpy()) for a in args]
    got = model(*ins)
    for a, w in zip(got, M()(*args)):
        np.testing.assert_allclose(a.numpy(), w.numpy(), rtol=1e-4, atol=1e-5)
    text = str(trace(model, *ins))
    assert "matmul" in text or "dot" in text


def test_attention_fully_masked_row_is_zero_and_short_mask_is_padded():
    """onnx's reference: a query row with no attendable key gives 0 (not NaN), and a mask shorter
    than the total kv length counts as False past its end. Mode 0 is the raw QK product (the spec
    and onnxruntime; onnx 1.23's reference applies the softcap there too)."""
    from onnx.reference import ReferenceEvaluator
    rng = np.random.default_rng(7)
    mask = rng.random((3, 5)) < 0.7
    mask[1] = False
    feeds = {"Q": _rand(rng, 1, 2, 3, 4), "K": _rand(rng, 1, 2, 6, 4), "V": _rand(rng, 1, 2, 6, 4), "mask": mask}
    node = helper.make_node("Attention", ["Q", "K", "V", "mask"], ["Y"])
    ins = [_vi(k, v.shape, TensorProto.BOOL if k == "mask" else FLOAT) for k, v in feeds.items()]
    m = _model([node], ins, [_vi("Y", None)])
    got = avalon.onnx.load(m)(*(Tensor(v) for v in feeds.values())).numpy()
    assert np.all(got[:, :, 1] == 0) and np.isfinite(got).all()
    np.testing.assert_allclose(got, ReferenceEvaluator(m).run(None, feeds)[0], rtol=1e-5, atol=1e-6)
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y", "", "", "qk"], softcap=1.0)
    m = _model([node], ins[:3], [_vi("Y", None), _vi("qk", None)])
    feeds.pop("mask")
    _check(m, feeds)


def _lrn(x, size, alpha, beta=0.75, bias=1.0):
    """The spec's window: channels c - floor((size-1)/2) .. c + ceil((size-1)/2)."""
    sq = np.zeros_like(x)
    for c in range(x.shape[1]):
        sq[:, c] = (x[:, max(0, c - (size - 1) // 2):c + size // 2 + 1] ** 2).sum(1)
    return x / (bias + alpha / size * sq) ** beta


_RNG = np.random.default_rng(8)
_X34 = _RNG.standard_normal((3, 4)).astype(np.float32)
_X2533 = _RNG.standard_normal((2, 5, 3, 3)).astype(np.float32)
_REF = None  # onnx's reference evaluator is the oracle


@pytest.mark.parametrize("node, inputs, want", [
    (helper.make_node("CumProd", ["x", "a"], ["y"], exclusive=1, reverse=1), {"x": _X34, "a": np.array(1)}, _REF),
    (helper.make_node("Mod", ["x", "d"], ["y"]), {"x": np.array([-7.5, 7.25, 3.0, -4.0], np.float32),
                                                  "d": np.array([2.0, -3.0, 0.75, 2.0], np.float32)}, _REF),
    (helper.make_node("ReverseSequence", ["x", "n"], ["y"], batch_axis=0, time_axis=1),
     {"x": _RNG.standard_normal((3, 4, 2)).astype(np.float32), "n": np.array([4, 0, 2])}, _REF),
    (helper.make_node("TensorScatter", ["x", "u", "w"], ["y"], mode="circular"),
     {"x": _RNG.standard_normal((2, 2, 5, 3)).astype(np.float32),
      "u": _RNG.standard_normal((2, 2, 3, 3)).astype(np.float32), "w": np.array([3, 1])}, _REF),
    # onnx 1.23's reference LRN loops over the batch axis's range and its LpNormalization p=1
    # forgets the absolute value: the spec's formulas are the oracle there
    (helper.make_node("LRN", ["x"], ["y"], size=4, alpha=0.2), {"x": _X2533}, lambda x: _lrn(x, 4, 0.2)),
    (helper.make_node("LpNormalization", ["x"], ["y"], p=1, axis=0), {"x": _X34},
     lambda x: x / np.abs(x).sum(0, keepdims=True)),
    (helper.make_node("ReduceMin", ["x", "a"], ["y"], keepdims=0), {"x": np.zeros((2, 0, 3), np.int64),
                                                                    "a": np.array([1])},
     lambda x, a: np.full((2, 3), np.iinfo(np.int64).max)),
])
def test_rule_matches_spec(node, inputs, want):
    from onnx.reference import ReferenceEvaluator
    dtypes = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}
    ins = [_vi(k, v.shape, dtypes[v.dtype]) for k, v in inputs.items()]
    m = _model([node], ins, [_vi("y", None)], opset=24)
    want = ReferenceEvaluator(m).run(None, inputs)[0] if want is _REF else want(*inputs.values())
    got = avalon.onnx.load(m)(*(Tensor(v) for v in inputs.values())).numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unique_runs_eagerly_and_names_the_node_when_traced():
    from avalon.onnx import UnsupportedOp
    node = helper.make_node("Unique", ["x"], ["y", "i", "inv", "n"], sorted=0, name="my_unique")
    m = _model([node], [_vi("x", [6])], [_vi(n, None) for n in ("y", "i", "inv", "n")])
    x = np.array([2.5, -1.0, 2.5, 0.5, -1.0, 7.0], np.float32)
    model = avalon.onnx.load(m)
    got = model(Tensor(x))
    for g, w in zip(got, [[2.5, -1.0, 0.5, 7.0], [0, 1, 3, 5], [0, 1, 0, 2, 1, 3], [2, 2, 1, 1]]):
        np.testing.assert_array_equal(g.numpy(), w)
    with pytest.raises(UnsupportedOp, match="my_unique.*Unique.*data-dependent"):
        trace(model, Tensor(x))


@pytest.mark.parametrize("rule", ["gated_delta", "linear"])
def test_linear_attention_gradient_matches_finite_differences(rule):
    """Opset 27's recurrence, unrolled: float64, GQA 2/1 heads, a past state; d(sum of outputs
    weighted)/d(query, key) against central differences."""
    rng = np.random.default_rng(30)
    b, t, hq, hkv, dk, dv = 1, 3, 2, 1, 3, 2
    feeds = {"q": rng.standard_normal((b, t, hq * dk)), "k": rng.standard_normal((b, t, hkv * dk)) * 0.5,
             "v": rng.standard_normal((b, t, hkv * dv)), "s": rng.standard_normal((b, hkv, dk, dv)) * 0.3,
             "g": -rng.random((b, t, hkv)), "beta": rng.random((b, t, hkv))}
    d = TensorProto.DOUBLE
    node = helper.make_node("LinearAttention", list(feeds), ["y", "state"], q_num_heads=hq, kv_num_heads=hkv,
                            update_rule=rule)
    m = _model([node], [_vi(k, list(v.shape), d) for k, v in feeds.items()],
               [_vi("y", None, d), _vi("state", None, d)], opset=27)
    model = avalon.onnx.load(m)
    w = rng.standard_normal((b, t, hq * dv))

    def loss(q, k):
        y, state = model(q, k, *(Tensor(feeds[n]) for n in ("v", "s", "g", "beta")))
        return (y * Tensor(w)).sum() + state.sum()
    gq, gk = av.grad(loss, argnums=(0, 1))(Tensor(feeds["q"]), Tensor(feeds["k"]))
    for g, name in ((gq, "q"), (gk, "k")):
        num = np.zeros_like(feeds[name])
        for idx in np.ndindex(num.shape):
            args = {n: Tensor(feeds[n].copy()) for n in ("q", "k")}
            for sign in (1, -1):
                x = feeds[name].copy()
                x[idx] += sign * 1e-6
                args[name] = Tensor(x)
                num[idx] += sign * float(loss(args["q"], args["k"]).item()) / 2e-6
        np.testing.assert_allclose(g.numpy(), num, rtol=1e-6, atol=1e-7)
    assert "exp" in str(trace(model, *(Tensor(v) for v in feeds.values()))) or rule == "linear"


@pytest.mark.parametrize("op, attrs, shape", [("GlobalLpPool", {"p": 3}, [2, 3, 4, 5]), ("GlobalLpPool", {}, [2, 3, 7]),
                                              ("MeanVarianceNormalization", {}, [2, 3, 4, 5]),
                                              ("MeanVarianceNormalization", {"axes": [1]}, [2, 3, 4]),
                                              ("Shrink", {"lambd": 0.3, "bias": 0.1}, [5, 4])])
def test_small_standard_ops_match_onnxruntime(op, attrs, shape):
    m = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [_vi("x", shape)], [_vi("y", None)], opset=17)
    _check(m, {"x": _rand(np.random.default_rng(40), *shape)})

"""onnxruntime's `com.microsoft` ops (what its transformer optimizer and quantizer write) against
onnxruntime itself, op by op on random inputs, and a BERT after `optimize_model`."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

import avalon.onnx  # noqa: E402
from avalon.onnx import UnsupportedOp  # noqa: E402
from avalon.tensor import Tensor  # noqa: E402
from avalon.trace import trace  # noqa: E402

MS = "com.microsoft"
_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
          np.dtype(np.int64): TensorProto.INT64, np.dtype(np.uint8): TensorProto.UINT8,
          np.dtype(np.int8): TensorProto.INT8}


def _run_both(node, feeds, n_out=1, consts=(), tol=1e-5, out_types=()):
    """One contrib node: its outputs from Avalon and from onnxruntime, compared. `consts` names
    the feeds stored as initializers (weights), the rest are graph inputs."""
    ins = [helper.make_tensor_value_info(k, _TYPES[v.dtype], list(v.shape)) for k, v in feeds.items()
           if k not in consts]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in feeds.items() if k in consts]
    types = list(out_types) + [TensorProto.FLOAT] * n_out
    outs = [helper.make_tensor_value_info(o, t, None) for o, t in zip(node.output[:n_out], types)]
    g = helper.make_graph([node], "g", ins, outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    run = {k: v for k, v in feeds.items() if k not in consts}
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, run)
    got = avalon.onnx.load(m)(*(Tensor(v) for v in run.values()))
    got = got if isinstance(got, tuple) else (got,)
    for g_, w in zip(got, want):
        assert g_.shape == w.shape
        scale = max(1.0, float(np.abs(w).max()))
        assert np.abs(g_.numpy().astype(np.float64) - w).max() <= tol * scale, node.op_type
    return m, got


def _rng(seed):
    return np.random.default_rng(seed)


def _f(r, *shape):
    return r.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_skip_layer_norms_with_all_outputs(op):
    r = _rng(0)
    feeds = {"x": _f(r, 2, 3, 8), "skip": _f(r, 2, 3, 8), "gamma": _f(r, 8)}
    if op == "SkipLayerNormalization":
        feeds["beta"] = _f(r, 8)
    feeds["bias"] = _f(r, 8)
    node = helper.make_node(op, list(feeds), ["y", "mean", "inv", "sum"], domain=MS, epsilon=1e-5)
    _run_both(node, feeds, n_out=1)
    _run_both(helper.make_node(op, list(feeds), ["y", "", "", "sum"], domain=MS, epsilon=1e-5), feeds, n_out=1)


@pytest.mark.parametrize("op, n_in", [("Gelu", 1), ("BiasGelu", 2), ("FastGelu", 2), ("FastGelu", 1),
                                      ("QuickGelu", 1)])
def test_activations(op, n_in):
    r = _rng(1)
    feeds = {"x": _f(r, 2, 4, 6) * 2}
    if n_in > 1:
        feeds["b"] = _f(r, 6)
    if n_in > 2:
        feeds["s"] = _f(r, 2, 4, 6)
    _run_both(helper.make_node(op, list(feeds), ["y"], domain=MS), feeds)


def test_bias_add_which_onnxruntime_runs_only_on_gpus():
    r = _rng(8)
    x, b, skip = _f(r, 2, 4, 6), _f(r, 6), _f(r, 2, 4, 6)
    node = helper.make_node("BiasAdd", ["x", "b", "s"], ["y"], domain=MS)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
                                        for k, v in (("x", x), ("b", b), ("s", skip))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    np.testing.assert_allclose(avalon.onnx.load(m)(x, b, skip).numpy(), x + b + skip, rtol=1e-6)


def test_fused_matmul_and_simplified_layer_norm():
    r = _rng(2)
    feeds = {"a": _f(r, 2, 5, 3), "b": _f(r, 2, 4, 5)}
    _run_both(helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain=MS, transA=1, transB=1, alpha=0.5), feeds)
    feeds = {"x": _f(r, 2, 3, 8), "g": _f(r, 3, 8)}
    _run_both(helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], axis=1, epsilon=1e-5), feeds)


def test_embed_layer_normalization_with_mask():
    r = _rng(3)
    feeds = {"ids": r.integers(0, 20, (2, 6)).astype(np.int32), "seg": r.integers(0, 2, (2, 6)).astype(np.int32),
             "word": _f(r, 20, 8), "pos": _f(r, 16, 8), "segw": _f(r, 2, 8), "gamma": _f(r, 8), "beta": _f(r, 8),
             "mask": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.int32)}
    node = helper.make_node("EmbedLayerNormalization", list(feeds), ["y", "mask_index", "sum"], domain=MS,
                            epsilon=1e-12)
    _run_both(node, feeds, n_out=3, consts=("word", "pos", "segw", "gamma", "beta"),
              out_types=(TensorProto.FLOAT, TensorProto.INT32, TensorProto.FLOAT))


@pytest.mark.parametrize("mask_kind", [None, "raw", "lengths", "3d"])
@pytest.mark.parametrize("unidirectional", [0, 1])
def test_attention_with_merged_qkv_weights(mask_kind, unidirectional):
    r = _rng(4)
    b, s, d, n = 2, 5, 8, 2
    feeds = {"x": _f(r, b, s, d), "w": _f(r, d, 3 * d) * 0.5, "bias": _f(r, 3 * d)}
    if mask_kind == "raw":
        feeds["mask"] = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    elif mask_kind == "lengths":
        feeds["mask"] = np.array([3, 5], np.int32)
    elif mask_kind == "3d":
        feeds["mask"] = (r.random((b, s, s)) < 0.8).astype(np.int32)
        feeds["mask"][:, :, 0] = 1
    node = helper.make_node("Attention", list(feeds), ["y"], domain=MS, num_heads=n, unidirectional=unidirectional)
    m, _ = _run_both(node, feeds, consts=("w", "bias"))
    text = str(trace(avalon.onnx.load(m), *(Tensor(v) for k, v in feeds.items() if k not in ("w", "bias"))))
    assert "softmax" in text or "exp" in text


def test_attention_with_past_and_present():
    r = _rng(5)
    b, s, d, n, p = 1, 2, 8, 2, 3
    feeds = {"x": _f(r, b, s, d), "w": _f(r, d, 3 * d) * 0.5, "bias": _f(r, 3 * d),
             "mask": np.ones((b, p + s), np.int32), "past": _f(r, 2, b, n, p, d // n)}
    node = helper.make_node("Attention", list(feeds), ["y", "present"], domain=MS, num_heads=n, unidirectional=1)
    _run_both(node, feeds, n_out=2, consts=("w", "bias"))


@pytest.mark.parametrize("form", ["separate", "bnsh_kv", "packed_qkv", "past"])
def test_multi_head_attention(form):
    r = _rng(6)
    b, s, l, n, h = 2, 3, 4, 2, 4
    if form == "separate":
        feeds = {"q": _f(r, b, s, n * h), "k": _f(r, b, l, n * h), "v": _f(r, b, l, n * h), "bias": _f(r, 3 * n * h),
                 "mask": np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.int32)}
        ins = list(feeds)
    elif form == "bnsh_kv":
        feeds = {"q": _f(r, b, s, n * h), "k": _f(r, b, n, l, h), "v": _f(r, b, n, l, h)}
        ins = list(feeds)
    elif form == "packed_qkv":  # onnxruntime's CPU kernel lacks it: checked against the separate form
        packed = _f(r, b, s, n, 3, h)
        feeds = {k: np.ascontiguousarray(packed[:, :, :, i].reshape(b, s, n * h)) for i, k in enumerate("qkv")}
        ins = list(feeds)
    else:
        feeds = {"q": _f(r, b, 1, n * h), "k": _f(r, b, 1, n * h), "v": _f(r, b, 1, n * h),
                 "pk": _f(r, b, n, l, h), "pv": _f(r, b, n, l, h)}
        ins = ["q", "k", "v", "", "", "", "pk", "pv"]
    outs = ["y", "pk_out", "pv_out"] if form == "past" else ["y"]
    _, got = _run_both(helper.make_node("MultiHeadAttention", ins, outs, domain=MS, num_heads=n), feeds,
                       n_out=len(outs))
    if form == "packed_qkv":
        node = helper.make_node("MultiHeadAttention", ["p"], ["y"], domain=MS, num_heads=n)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("p", TensorProto.FLOAT, list(packed.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
        np.testing.assert_allclose(avalon.onnx.load(m)(packed).numpy(), got[0].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_with_position_ids_or_an_offset(interleaved):
    r = _rng(7)
    b, s, n, h = 2, 3, 2, 8
    cos, sin = np.cos(r.random((10, h // 2))).astype(np.float32), np.sin(r.random((10, h // 2))).astype(np.float32)
    for pos in (r.integers(0, 10, (b, s)).astype(np.int64), np.array([4], np.int64)):
        feeds = {"x": _f(r, b, s, n * h), "pos": pos, "cos": cos, "sin": sin}
        _run_both(helper.make_node("RotaryEmbedding", list(feeds), ["y"], domain=MS, num_heads=n,
                                   interleaved=interleaved), feeds)


def test_unknown_contrib_op_is_named_with_its_domain():
    node = helper.make_node("BeamSearch", ["x"], ["y"], domain=MS, name="beams")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(UnsupportedOp, match="'beams': op BeamSearch of domain 'com.microsoft' is not supported"):
        avalon.onnx.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                             helper.make_opsetid(MS, 1)]))


def test_bert_after_onnxruntimes_transformer_optimizer(tmp_path):
    """torch.onnx's default exporter, then optimize_model (SkipLayerNormalization fusions)."""
    pytest.importorskip("onnxscript")
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from onnxruntime.transformers.optimizer import optimize_model
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    bert = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    torch.onnx.export(bert, (ids,), kwargs={"attention_mask": mask}, dynamo=True, verbose=False).save(
        str(tmp_path / "bert.onnx"))
    opt = optimize_model(str(tmp_path / "bert.onnx"), model_type="bert", num_heads=2, hidden_size=16)
    opt.save_model_to_file(str(tmp_path / "opt.onnx"))
    fused = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node if n.domain == MS}
    assert fused, "the optimizer fused nothing: this test no longer covers a contrib op"
    got = avalon.onnx.load(str(tmp_path / "opt.onnx"))(ids.numpy(), mask.numpy())
    got = got[0] if isinstance(got, tuple) else got
    want = bert(ids, attention_mask=mask).last_hidden_state.detach().numpy()
    assert np.abs(got.numpy() - want).max() <= 1e-5 * np.abs(want).max()


class _Weights:
    """Two matmuls (K = 72: the last 32-wide block is padded) for the weight-only quantizer."""

    @staticmethod
    def export(path):
        torch = pytest.importorskip("torch")

        class M(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.a = torch.nn.Parameter(torch.randn(72, 48) * 0.1)
                self.b = torch.nn.Parameter(torch.randn(48, 32) * 0.1)

            def forward(self, x):
                return torch.relu(x @ self.a) @ self.b
        torch.manual_seed(0)
        m = M().eval()
        torch.onnx.export(m, (torch.randn(2, 3, 72),), str(path), opset_version=17, dynamo=False, input_names=["x"])
        return m


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matmul_nbits_from_onnxruntimes_weight_only_quantizer(tmp_path, bits, symmetric):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    m = _Weights.export(tmp_path / "f.onnx")
    q = MatMulNBitsQuantizer(onnx.load(str(tmp_path / "f.onnx")), block_size=32, is_symmetric=symmetric, bits=bits)
    q.process()
    q.model.save_model_to_file(str(tmp_path / "q.onnx"))
    assert "MatMulNBits" in {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    x = _f(_rng(9), 2, 3, 72)
    want = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = avalon.onnx.load(str(tmp_path / "q.onnx"))(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    if bits == 8:  # and it is still the float model, up to 8-bit rounding
        import torch
        assert np.abs(got - m(torch.from_numpy(x)).detach().numpy()).max() <= 0.05 * np.abs(want).max()


def test_qoperator_static_quantization_matches_onnxruntime(tmp_path):
    """quantize_static's QOperator format: QLinearConv, QGemm, QLinearAdd/Mul/Sigmoid/LeakyRelu,
    QLinearAveragePool, QLinearConcat and QLinearSoftmax between QuantizeLinear and DequantizeLinear."""
    torch = pytest.importorskip("torch")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x):
            y = torch.relu(self.c1(x))
            z = torch.nn.functional.avg_pool2d(torch.sigmoid(self.c2(y)) * y + y, 2)
            z = torch.cat([z, torch.nn.functional.leaky_relu(z, 0.1)], 1)
            return torch.softmax(self.fc(z.mean((2, 3))[:, :8]), -1)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": torch.randn(2, 3, 8, 8).numpy()} for _ in range(3)])

        def get_next(self):
            return next(self.batches, None)
    torch.manual_seed(0)
    m = M().eval()
    x = torch.randn(2, 3, 8, 8)
    torch.onnx.export(m, (x,), str(tmp_path / "f.onnx"), opset_version=17, dynamo=False, input_names=["x"])
    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QOperator)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert {"QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearConcat", "QLinearSoftmax"} <= ops
    want = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    got = avalon.onnx.load(str(tmp_path / "q.onnx"))(x.numpy()).numpy()
    # a value on a rounding boundary may round the other way after a differently ordered float sum
    assert np.abs(got - want[0]).max() <= 0.02 * np.abs(want[0]).max()


def test_integer_matmuls_with_float_results():
    r = _rng(10)
    feeds = {"a": _f(r, 2, 3, 8), "b": r.integers(-128, 128, (8, 5)).astype(np.int8),
             "bs": np.array(0.02, np.float32), "bz": np.array(3, np.int8), "bias": _f(r, 5)}
    _run_both(helper.make_node("DynamicQuantizeMatMul", list(feeds), ["y"], domain=MS), feeds)
    feeds = {"a": r.integers(0, 256, (3, 8)).astype(np.uint8), "b": r.integers(-128, 128, (8, 5)).astype(np.int8),
             "as": np.array(0.1, np.float32), "bs": r.uniform(0.01, 0.03, 5).astype(np.float32),
             "az": np.array(128, np.uint8)}
    _run_both(helper.make_node("MatMulIntegerToFloat", list(feeds), ["y"], domain=MS), feeds)


def _gqa_feeds(r, b, s, p, hq, hkv, h, seqlens, total, rotary):
    feeds = {"q": _f(r, b, s, hq * h), "k": _f(r, b, s, hkv * h), "v": _f(r, b, s, hkv * h),
             "pk": _f(r, b, hkv, p, h), "pv": _f(r, b, hkv, p, h), "sk": np.array(seqlens, np.int32),
             "tot": np.array(total, np.int32)}
    if rotary:
        angles = r.random((32, h // 2)) * 3
        feeds["cos"], feeds["sin"] = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    return feeds


@pytest.mark.parametrize("case", ["prompt_padded", "decode_ragged", "decode_rotary_window", "prompt_rotary_softcap",
                                  "chunk_after_past"])
def test_group_query_attention_as_onnxruntime_genai_calls_it(case):
    """A right-padded first prompt (rows past a sequence's length are unspecified, compared only
    where valid), and decode steps whose batch rows hold different numbers of past tokens."""
    r = _rng(11)
    hq, hkv, h = 4, 2, 16  # onnxruntime's rotary wants head sizes in multiples of 16
    attrs = {"num_heads": hq, "kv_num_heads": hkv}
    if case == "prompt_padded":
        feeds, valid = _gqa_feeds(r, 2, 4, 0, hq, hkv, h, [3, 1], 4, False), [4, 2]
    elif case == "decode_ragged":
        feeds, valid = _gqa_feeds(r, 2, 1, 5, hq, hkv, h, [5, 3], 6, False), [1, 1]
    elif case == "decode_rotary_window":
        feeds, valid = _gqa_feeds(r, 2, 1, 6, hq, hkv, h, [6, 4], 7, True), [1, 1]
        attrs.update(do_rotary=1, local_window_size=3, rotary_interleaved=1)
    elif case == "chunk_after_past":
        feeds, valid = _gqa_feeds(r, 1, 3, 4, hq, hkv, h, [6], 7, True), [3]
        attrs.update(do_rotary=1)
    else:
        feeds, valid = _gqa_feeds(r, 1, 5, 0, hq, hkv, h, [4], 5, True), [5]
        attrs.update(do_rotary=1, softcap=2.0)
    node = helper.make_node("GroupQueryAttention", list(feeds), ["y", "pk_out", "pv_out"], domain=MS, **attrs)
    ins = [helper.make_tensor_value_info(k, _TYPES[v.dtype], list(v.shape)) for k, v in feeds.items()]
    g = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                             for o in node.output])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = [x.numpy() for x in avalon.onnx.load(m)(*feeds.values())]
    for i, n in enumerate(valid):
        np.testing.assert_allclose(got[0][i, :n], want[0][i, :n], rtol=1e-5, atol=1e-5)
    seqlens = feeds["sk"]
    for g_, w in zip(got[1:], want[1:]):
        assert g_.shape == w.shape
        for i, n in enumerate(seqlens + 1):
            np.testing.assert_allclose(g_[i, :, :n], w[i, :, :n], rtol=1e-6, atol=1e-6)

"""ONNX models from before opset 13 (brought up by onnx's version converter) and quantized models
(onnxruntime's quantizer's output, and the integer ops one by one) against torch, onnxruntime and
onnx's reference implementation on random inputs."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import avalon.onnx  # noqa: E402
from avalon.onnx import UnsupportedOp  # noqa: E402
from avalon.tensor import Tensor  # noqa: E402
from avalon.trace import trace  # noqa: E402


class _Net(torch.nn.Module):
    """Ops whose ONNX form changed at or before opset 13: Split and Squeeze/Unsqueeze (attributes
    became inputs), Clip (attributes became inputs at 11), Softmax (2-d coercion before 13)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.fc = torch.nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.nn.functional.avg_pool2d(y, 2).flatten(1)
        y = self.fc(y).unsqueeze(1).squeeze(1)
        a, b = y.split([2, 3], dim=1)
        return torch.softmax(torch.cat([b, a.clamp(-0.5, 0.5)], 1), -1)


def _export(m: torch.nn.Module, x: torch.Tensor, opset: int) -> onnx.ModelProto:
    import io
    f = io.BytesIO()
    torch.onnx.export(m, (x,), f, opset_version=opset, dynamo=False, input_names=["x"])
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("opset", [9, 11, 12])
def test_old_opset_torch_export_matches_torch(opset):
    torch.manual_seed(opset)
    m = _Net().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 8, 8)
    model = _export(m, x, opset)
    assert model.opset_import[0].version == opset
    got = avalon.onnx.load(model)(Tensor(x.numpy())).numpy()
    want = m(x).detach().numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_opset_11_softmax_keeps_its_2d_coercion():
    """Before opset 13 Softmax(axis=1) of a 3-d tensor normalizes over dims 1 and 2 together
    (onnxruntime is the oracle: onnx 1.23's reference evaluator applies opset 13's rule here)."""
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    got = avalon.onnx.load(m)(Tensor(x)).numpy()
    np.testing.assert_allclose(got.reshape(2, 12).sum(1), [1.0, 1.0], rtol=1e-6)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_an_unknown_op_in_an_old_model_is_named():
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="mystery")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(UnsupportedOp, match="'mystery'.*Frobnicate is not an ONNX op.*opset 9"):
        avalon.onnx.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)]))


class _Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = torch.nn.Linear(8 * 6 * 6, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


@pytest.mark.parametrize("kind", ["dynamic", "qdq"])
def test_onnxruntime_quantized_models_match_onnxruntime(tmp_path, kind):
    """quantize_dynamic writes DynamicQuantizeLinear, ConvInteger and MatMulInteger; the static QDQ
    format QuantizeLinear/DequantizeLinear pairs around float ops."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    torch.manual_seed(0)
    m = _Small().eval()
    x = torch.randn(3, 3, 6, 6)
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    src.write_bytes(_export(m, x, 17).SerializeToString())
    if kind == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    else:
        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{"x": torch.randn(3, 3, 6, 6).numpy()} for _ in range(3)])

            def get_next(self):
                return next(self.batches, None)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ)
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert ({"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} if kind == "dynamic"
            else {"QuantizeLinear", "DequantizeLinear"}) <= ops
    want = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    model = avalon.onnx.load(str(dst))
    got = model(Tensor(x.numpy())).numpy()
    # a value on a rounding boundary may round the other way after a differently ordered float sum
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
    assert np.abs(got - want).mean() <= 1e-4 * np.abs(want).max()
    # and it is still the float model, up to quantization error
    assert np.abs(got - m(x).detach().numpy()).max() <= 0.25 * np.abs(want).max()
    assert "conv2d" in str(trace(model, Tensor(x.numpy())))


def _check(nodes, inputs, outputs, feeds, opset=21):
    g = helper.make_graph(nodes, "g", inputs, outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    got = avalon.onnx.load(m)(*(Tensor(v) for v in feeds.values()))
    got = got if isinstance(got, tuple) else (got,)
    for g_, w in zip(got, ReferenceEvaluator(m).run(None, feeds)):
        assert g_.numpy().dtype == w.dtype
        np.testing.assert_array_equal(g_.numpy(), w)


def _vi(name, ty, shape):
    return helper.make_tensor_value_info(name, ty, shape)


def test_matmul_integer_with_per_row_and_per_column_zero_points():
    rng = np.random.default_rng(2)
    feeds = {"a": rng.integers(0, 256, (2, 3, 5), dtype=np.uint8), "b": rng.integers(-128, 128, (5, 4), dtype=np.int8),
             "az": rng.integers(0, 256, (2, 3, 1), dtype=np.uint8), "bz": rng.integers(-128, 128, (4,), dtype=np.int8)}
    _check([helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])],
           [_vi("a", TensorProto.UINT8, [2, 3, 5]), _vi("b", TensorProto.INT8, [5, 4]),
            _vi("az", TensorProto.UINT8, [2, 3, 1]), _vi("bz", TensorProto.INT8, [4])],
           [_vi("y", TensorProto.INT32, [2, 3, 4])], feeds)


def test_conv_integer_and_qlinear_conv_per_channel():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 2, 5, 5), dtype=np.uint8)
    w = rng.integers(-128, 128, (3, 2, 3, 3), dtype=np.int8)
    _check([helper.make_node("ConvInteger", ["x", "w", "xz"], ["y"], pads=[1, 0, 1, 2], strides=[2, 1])],
           [_vi("x", TensorProto.UINT8, [1, 2, 5, 5]), _vi("w", TensorProto.INT8, [3, 2, 3, 3]),
            _vi("xz", TensorProto.UINT8, [])],
           [_vi("y", TensorProto.INT32, None)], {"x": x, "w": w, "xz": np.array(7, np.uint8)})
    feeds = {"x": x, "xs": np.array(0.02, np.float32), "xz": np.array(120, np.uint8), "w": w,
             "ws": rng.uniform(0.001, 0.01, 3).astype(np.float32), "wz": np.zeros(3, np.int8),
             "ys": np.array(0.15, np.float32), "yz": np.array(5, np.int8),
             "b": rng.integers(-500, 500, 3).astype(np.int32)}
    ty = {"x": TensorProto.UINT8, "w": TensorProto.INT8, "xz": TensorProto.UINT8, "wz": TensorProto.INT8,
          "yz": TensorProto.INT8, "b": TensorProto.INT32}
    _check([helper.make_node("QLinearConv", list(feeds), ["y"], pads=[1, 1, 1, 1])],
           [_vi(k, ty.get(k, TensorProto.FLOAT), list(v.shape)) for k, v in feeds.items()],
           [_vi("y", TensorProto.INT8, None)], feeds)


def test_dynamic_quantize_linear_of_an_all_positive_input():
    x = np.random.default_rng(4).uniform(0.5, 3.0, (3, 7)).astype(np.float32)
    _check([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], [_vi("x", TensorProto.FLOAT, [3, 7])],
           [_vi("y", TensorProto.UINT8, [3, 7]), _vi("s", TensorProto.FLOAT, []), _vi("z", TensorProto.UINT8, [])],
           {"x": x})


def test_bfloat16_models_export_and_load_back():
    """bf16 (ml_dtypes arrays in onnx, float32-held in Avalon) in initializers, inputs and outputs."""
    import ml_dtypes

    import avalon as av
    av.manual_seed(0)
    m = av.nn.Sequential(av.nn.Linear(4, 3), av.nn.ReLU(), av.nn.Linear(3, 2)).to(av.bfloat16)
    x = av.randn(5, 4).to(av.bfloat16)
    proto = avalon.onnx.export(m, None, x)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.BFLOAT16
    assert {i.data_type for i in proto.graph.initializer if i.name.endswith("weight")} == {TensorProto.BFLOAT16}
    back = avalon.onnx.load(proto)
    y = back(x)
    assert y.dtype is av.bfloat16
    np.testing.assert_array_equal(y.numpy(), m(x).numpy())
    raw = np.random.default_rng(5).standard_normal((5, 4)).astype(ml_dtypes.bfloat16)
    t = av.tensor(raw)
    assert t.dtype is av.bfloat16
    np.testing.assert_array_equal(t.numpy(), raw.astype(np.float32))
    out = avalon.onnx.backend.prepare(proto).run([raw])[0]
    assert out.dtype == ml_dtypes.bfloat16


def test_avalon_onnx_backend_is_an_attribute_before_any_import():
    """`avalon.onnx.backend` is loaded on first use; its lazy `__getattr__` recursed forever."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import avalon.onnx as o; print(o.backend.__name__)"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "avalon.onnx.backend", out.stderr[-500:]

"""avalon.onnx.export checked by onnx.checker and onnxruntime, load checked against torch and
onnxruntime, bad input met by one clear error, and the command line."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import avalon as av  # noqa: E402
import avalon.onnx  # noqa: E402
from avalon.tree import named_tensors  # noqa: E402
from avalon.zoo.lenet import LeNet  # noqa: E402


def _ort(path, feeds):
    return ort.InferenceSession(str(path)).run(None, feeds)


def test_export_model_runs_in_onnxruntime_with_state_dict_initializers(tmp_path):
    m = LeNet()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    proto = avalon.onnx.export(m, tmp_path / "m.onnx", x)
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.initializer][:2] == ["conv1.weight", "conv1.bias"]
    assert [i.name for i in proto.graph.input] == ["x"]
    (y,) = _ort(tmp_path / "m.onnx", {"x": x})
    assert np.allclose(y, m(av.tensor(x)).numpy(), atol=1e-5)


def test_export_fused_graph_inlines_regions(tmp_path):
    m = LeNet()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    g = av.trace(m, av.tensor(x))
    av.passes.PassManager.parse(av.passes.DEFAULT_PIPELINE).run(g)
    assert any(op.name == "fusion" for op in g.ops)
    proto = avalon.onnx.export(g, tmp_path / "f.onnx")
    state = {n: t.numpy() for n, t in named_tensors(m)}
    feeds = {i.name: state.get(i.name, x) for i in proto.graph.input}
    assert np.allclose(_ort(tmp_path / "f.onnx", feeds)[0], m(av.tensor(x)).numpy(), atol=1e-5)


def test_export_functions_covering_many_primitives(tmp_path):
    def f(a, b, idx):
        s = av.nn.functional.softmax(a @ b, -1) + av.cumsum(a, 1)[:, :3]
        t = av.where(a[:, :3] > 0, av.sqrt(av.abs(s)), av.exp(-s)) * av.nn.functional.one_hot(idx, 3)
        u = av.nn.functional.pad(av.cat([t, a[:, :3].T.T], 1), (1, 2)) - av.max(a, 1, keepdim=True).values
        return av.nn.functional.gelu(u).sum(0), av.argmax(a, 1), av.rsqrt(av.mean(a * a, 1) + 1.0)

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    idx = np.array([0, 2, 1, 2])
    proto = avalon.onnx.export(f, tmp_path / "f.onnx", a, b, idx)
    names = [i.name for i in proto.graph.input]
    got = _ort(tmp_path / "f.onnx", dict(zip(names, (a, b, idx))))
    want = f(av.tensor(a), av.tensor(b), av.tensor(idx))
    for g_, w in zip(got, want):
        assert np.allclose(g_, w.numpy(), rtol=1e-5, atol=1e-5)


def test_export_table_covers_every_primitive():
    from avalon.ir.registry import TABLES
    from avalon.onnx.export_rules import missing_exports
    assert missing_exports() == [] and not TABLES["onnx_export"].unknown()
    r = subprocess.run([sys.executable, "-m", "avalon.cli", "ops", "--missing"], capture_output=True, text=True)
    assert "no ONNX export mapping" not in r.stdout


def test_load_keeps_initializer_names_and_matches_onnxruntime(tmp_path):
    m = LeNet()
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    avalon.onnx.export(m, tmp_path / "m.onnx", x)
    loaded = avalon.onnx.load(tmp_path / "m.onnx")
    assert [n for n, _ in av.nn.named_parameters(loaded)] == [n for n, _ in av.nn.named_parameters(m)]
    (ref,) = _ort(tmp_path / "m.onnx", {"x": x})
    assert np.allclose(loaded(av.tensor(x)).numpy(), ref, atol=1e-5)
    assert np.allclose(av.compile(loaded)(av.tensor(x)).numpy(), ref, atol=1e-5)
    _, grads = av.value_and_grad(lambda mm, x: mm(x).sum())(loaded, av.tensor(x))
    assert set(grads) == {n for n, _ in av.nn.named_parameters(m)}


def test_load_torch_exported_onnx_matches_torch(tmp_path):
    import torch
    import torch.nn as tnn
    torch.manual_seed(0)
    module = tnn.Sequential(tnn.Conv2d(3, 8, 3, 2, 1), tnn.BatchNorm2d(8), tnn.Hardswish(), tnn.MaxPool2d(2),
                            tnn.Flatten(), tnn.Linear(8 * 4 * 4, 6), tnn.LayerNorm(6), tnn.GELU()).eval()
    lstm = tnn.LSTM(6, 5, batch_first=True)
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "t.onnx"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17)
        torch.onnx.export(lstm, (torch.randn(2, 4, 6),), str(tmp_path / "l.onnx"), dynamo=False, opset_version=17)
    got = avalon.onnx.load(path)(av.tensor(x.numpy())).numpy()
    assert np.allclose(got, module(x).detach().numpy(), atol=1e-5)
    s = torch.randn(2, 4, 6)
    out = avalon.onnx.load(tmp_path / "l.onnx")(av.tensor(s.numpy()))
    assert np.allclose(out[0].numpy(), lstm(s)[0].detach().numpy(), atol=1e-5)


def test_bad_files_give_one_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage\xff\xff")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        avalon.onnx.load(bad)
    avalon.onnx.export(LeNet(), tmp_path / "m.onnx", np.zeros((1, 1, 28, 28), np.float32))
    data = (tmp_path / "m.onnx").read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        avalon.onnx.load(tmp_path / "t.onnx")


def _relu_model(opset, dims):
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    return helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])


def test_old_opset_and_dynamic_dims(tmp_path):
    old = avalon.onnx.load(_relu_model(9, [2]))  # brought to opset 13 by onnx's version converter
    np.testing.assert_array_equal(old(np.array([-1.5, 2.0], np.float32)).numpy(), [0.0, 2.0])
    m = avalon.onnx.load(_relu_model(17, ["batch", 3]))
    with pytest.raises(ValueError, match="'x' has a dynamic dimension"):
        m.example_inputs()
    assert m.example_inputs(shapes={"x": (4, 3)})[0].shape == (4, 3)
    onnx.save(_relu_model(17, ["batch", 3]), tmp_path / "d.onnx")
    r = subprocess.run([sys.executable, "-m", "avalon.cli", "import", str(tmp_path / "d.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "dynamic dimension" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "avalon.cli", "import", str(tmp_path / "d.onnx"), "--input", "x=4x3"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "relu" in r.stdout and "tensor<4x3xf32>" in r.stdout


def test_cli_import_and_export_roundtrip(tmp_path):
    avalon.onnx.export(LeNet(), tmp_path / "m.onnx", np.zeros((2, 1, 28, 28), np.float32))
    r = subprocess.run([sys.executable, "-m", "avalon.cli", "import", str(tmp_path / "m.onnx")],
                       capture_output=True, text=True, check=True)
    assert "conv2d" in r.stdout and "%conv1.weight" in r.stdout
    (tmp_path / "m.avalon").write_text(r.stdout)
    subprocess.run([sys.executable, "-m", "avalon.cli", "export", str(tmp_path / "m.avalon"), "--to", "onnx",
                    "-o", str(tmp_path / "back.onnx")], check=True)
    back = onnx.load(str(tmp_path / "back.onnx"))
    assert [i.name for i in back.graph.input][0] == "conv1.weight" and not back.graph.initializer[:0]
    onnx.checker.check_model(back)


def test_cli_import_names_arguments_after_inputs_and_initializers(tmp_path):
    """`avalon import` names function arguments as the model does (not %arg0...), sanitized so the
    IR parser reads the text back."""
    from onnx import TensorProto, helper, numpy_helper

    from avalon.ir import parse
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "fc/W:0")
    nodes = [helper.make_node("MatMul", ["input.1", "fc/W:0"], ["h"]),
             helper.make_node("Add", ["h", "7"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [2, 3]),
                                       helper.make_tensor_value_info("7", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "n.onnx")
    r = subprocess.run([sys.executable, "-m", "avalon.cli", "import", str(tmp_path / "n.onnx")],
                       capture_output=True, text=True, check=True)
    assert "func @forward(%fc_W_0: tensor<3x4xf32>, %input.1: tensor<2x3xf32>, %_7: tensor<2x4xf32>)" in r.stdout
    assert "%arg" not in r.stdout
    assert [v.name for v in parse(r.stdout).inputs] == ["fc_W_0", "input.1", "_7"]


def test_inputs_are_checked_against_the_declared_types_as_onnxruntime_does():
    """A float64 array for a float32 input ran the model in float64, a wrong fixed size failed inside a
    node, and a batch of 1 broadcast against a batch of 4 named alike: each is now refused at the input,
    naming it and what the model declares."""
    from onnx import TensorProto as TP
    from onnx import helper as h

    g = h.make_graph([h.make_node("Mul", ["x", "m"], ["y"])], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["batch", 3]),
                      h.make_tensor_value_info("m", TP.FLOAT, ["batch", 3])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["batch", 3])])
    model = avalon.onnx.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    x, m = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x, m).numpy(), x * m)
    with pytest.raises(TypeError, match=r"'x' is float64, the model declares float32 \(shape \('batch', 3\)\)"):
        model(x.astype(np.float64), m)
    with pytest.raises(TypeError, match=r"'m' has shape \(5, 4\), the model declares \('batch', 3\)"):
        model(x, np.ones((5, 4), np.float32))
    with pytest.raises(TypeError, match=r"'m' has shape \(5, 3, 1\)"):
        model(x, m[..., None])
    with pytest.raises(TypeError, match=r"'m' dimension 0 \('batch'\) is 1, but input 'x' dimension 0 \('batch'\) is 5"):
        model(x, m[:1])

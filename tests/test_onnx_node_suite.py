"""onnx's own node-test suite against avalon.onnx.backend: every case in the checked-in expected-pass
list must pass (a regression fails here). The whole suite takes ~20 s on the numpy reference;
`python benchmarks/onnx_node_suite.py` prints the pass / unsupported / fail counts."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from onnx_node_suite import EXPECTED, classify, node_cases  # noqa: E402


def test_every_expected_node_case_passes():
    expected = set(EXPECTED.read_text().split())
    assert len(expected) > 700
    cases = dict(node_cases())
    assert expected <= set(cases), f"cases vanished from onnx's suite: {sorted(expected - set(cases))[:5]}"
    broken = {}
    for name in sorted(expected):
        kind, detail = classify(cases[name])
        if kind != "pass":
            broken[name] = f"{kind}: {detail[:160]}"
    assert not broken, "\n".join(f"{k}: {v}" for k, v in broken.items())


def test_unsupported_is_raised_by_prepare_and_names_node_and_op():
    import onnx
    from onnx import helper

    import avalon.onnx.backend as backend
    from avalon.onnx import UnsupportedOp
    node = helper.make_node("StringSplit", ["x"], ["y", "n"], name="my_split")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.STRING, [2])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.STRING, [2, None]),
                           helper.make_tensor_value_info("n", onnx.TensorProto.INT64, [2])])
    with pytest.raises(UnsupportedOp, match="my_split.*StringSplit") as e:
        backend.prepare(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]))
    assert isinstance(e.value, NotImplementedError)
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")

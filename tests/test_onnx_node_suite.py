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
    node = helper.make_node("Det", ["x"], ["y"], name="my_det")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])])
    with pytest.raises(UnsupportedOp, match="my_det.*Det") as e:
        backend.prepare(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert isinstance(e.value, NotImplementedError)
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")

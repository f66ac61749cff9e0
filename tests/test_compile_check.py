"""Check mode: every fused group on the backend vs its unfused reference; a wrong group is named."""
import logging

import numpy as np
import pytest

import avalon as av
from avalon.codegen.numpy import NumpyBackend, NumpyExecutable
from avalon.compiler import CheckError
from avalon.compiler.check import compare
from avalon.compiler.testing import group_chains
from avalon.ir import REFERENCE, Interpreter
from avalon.passes import PassManager


def f(x, y):
    return av.ops.relu(x + y) * av.ops.exp(x)


def _args(rng, n=3):
    return rng.standard_normal((n, 4)).astype(np.float32), rng.standard_normal((n, 4)).astype(np.float32)


def _pipeline():
    return PassManager(["canonicalize", group_chains])


class OffByAThousandth(Interpreter):
    """A backend whose kernel for one group is slightly wrong (a miscompiled kernel)."""

    def run_op(self, op, args):
        out = super().run_op(op, args)
        if op.attrs.get("name") == "fused_exp_1":
            out = [o + np.float32(1e-3) for o in out]
        return out


class BuggyBackend(NumpyBackend):
    name = "buggy"

    def compile(self, graph):
        return NumpyExecutable(graph, OffByAThousandth)


def test_correct_groups_pass_and_are_logged(rng, caplog):
    c = av.compile(f, pipeline=_pipeline(), check=True)
    x, y = _args(rng)
    with caplog.at_level(logging.DEBUG, logger="avalon.check"):
        out = c(x, y)
    np.testing.assert_allclose(out.numpy(), np.maximum(x + y, 0) * np.exp(x), rtol=1e-6)
    assert "@fused_add_relu_0 ok" in caplog.text and "@fused_exp_1 ok" in caplog.text


def test_a_wrong_group_kernel_is_named_with_its_errors(rng):
    x, y = _args(rng)
    quiet = av.compile(f, backend=BuggyBackend(), pipeline=_pipeline())
    assert not np.allclose(quiet(x, y).numpy(), f(x, y).numpy(), rtol=1e-6, atol=0)  # wrong, silently
    c = av.compile(f, backend=BuggyBackend(), pipeline=_pipeline(), check=True)
    with pytest.raises(CheckError, match=r"fused group @fused_exp_1 \(output #0, tensor<3x4xf32>\) differs") as e:
        c(x, y)
    err = e.value
    assert err.group == "fused_exp_1" and err.output == 0
    assert err.max_abs == pytest.approx(1e-3, rel=1e-2)
    assert err.max_rel == pytest.approx(1e-3 / np.exp(x).max(), rel=1e-2)
    assert "max abs error 0.001" in str(err) and "func @fused_exp_1" in str(err)  # the group's ops, to read


def test_check_mode_from_the_environment(rng, monkeypatch):
    monkeypatch.setenv("AVALON_CHECK", "1")
    c = av.compile(f, backend=BuggyBackend(), pipeline=_pipeline())
    assert c.check
    with pytest.raises(CheckError, match="fused_exp_1"):
        c(*_args(rng))
    monkeypatch.setenv("AVALON_CHECK", "0")
    assert not av.compile(f).check


def test_a_wrong_reference_rule_shows_against_triton_kernels(rng, monkeypatch):
    pytest.importorskip("triton")
    try:
        import avalon.codegen.triton  # noqa: F401
    except ImportError as e:
        pytest.skip(f"Triton backend not importable: {e}")
    x, y = _args(rng, n=8)
    c = av.compile(f, backend="triton", pipeline=_pipeline(), check=True)
    np.testing.assert_allclose(c(x, y).numpy(), f(x, y).numpy(), rtol=1e-5)  # kernels agree with the reference
    monkeypatch.setitem(REFERENCE, "exp", lambda attrs, a: np.exp(a) * 1.01)
    with pytest.raises(CheckError, match="@fused_exp_1") as e:
        c(x, y)
    assert e.value.max_rel == pytest.approx(0.01 / 1.01, rel=1e-3)


def test_compare_handles_nans_infs_and_integers():
    a = np.array([1.0, np.nan, np.inf, -np.inf], np.float32)
    assert compare(a.copy(), a)[2]
    assert not compare(np.array([1.0, 0.0, np.inf, -np.inf], np.float32), a)[2]  # a NaN went missing
    assert not compare(np.array([1.0, np.nan, -np.inf, -np.inf], np.float32), a)[2]
    assert compare(np.array([3, 4]), np.array([3, 4]))[2]
    assert compare(np.array([3, 5]), np.array([3, 4]))[:3] == (1.0, 0.25, False)
    assert not compare(np.zeros((2, 2)), np.zeros(4))[2]
    big = np.array([1000.0, 1.0], np.float32)
    assert compare(big + np.float32(1e-3), big)[2]  # within rtol of the largest magnitude

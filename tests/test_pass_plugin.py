"""The example plugin (examples/passes/fuse_silu.py): loads like `avalon opt --plugin` loads it,
defines its op and registers its pass, rewrites both operand orders, and keeps results unchanged."""
import os
import subprocess
import sys

import pytest

import avalon.ir as ir
import avalon.passes as ps
from avalon.passes.testing import assert_rewrites

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(ROOT, "examples", "passes", "fuse_silu.py")

BEFORE = """
func @f(%x: tensor<2x8xf32>, %y: tensor<2x8xf32>) -> (tensor<2x8xf32>, tensor<2x8xf32>) {
  %0 = sigmoid %x : tensor<2x8xf32>
  %1 = mul %x, %0 : tensor<2x8xf32>
  %2 = sigmoid %y : tensor<2x8xf32>
  %3 = mul %2, %y : tensor<2x8xf32>
  %4 = mul %2, %x : tensor<2x8xf32>
  %5 = add %3, %4 : tensor<2x8xf32>
  return %1, %5
}"""

AFTER = """
func @f(%x: tensor<2x8xf32>, %y: tensor<2x8xf32>) -> (tensor<2x8xf32>, tensor<2x8xf32>) {
  %0 = silu %x : tensor<2x8xf32>
  %1 = sigmoid %y : tensor<2x8xf32>
  %2 = silu %y : tensor<2x8xf32>
  %3 = mul %1, %x : tensor<2x8xf32>
  %4 = add %2, %3 : tensor<2x8xf32>
  return %0, %4
}"""


@pytest.fixture
def plugin():
    """Load the plugin, and afterwards forget its op, rules and pass so other tests see the stock registry."""
    from avalon.cli import load_plugin
    from avalon.codegen.triton.lowering import LOWERING
    from avalon.ir import REFERENCE
    from avalon.mlir import LINALG, SCALAR
    had_op = "silu" in ir.OPS
    saved = dict(ps.PASSES)
    load_plugin(PLUGIN)
    yield
    ps.PASSES.clear()
    ps.PASSES.update(saved)
    sys.modules.pop("avalon_plugin_fuse_silu", None)
    if not had_op:
        for table in (ir.OPS, REFERENCE, LOWERING, LINALG, SCALAR):
            table.pop("silu", None)


def test_plugin_registers_and_rewrites(plugin):
    assert "fuse-silu" in ps.PASSES and "silu" in ir.OPS
    assert ps.get_pass("fuse-silu").doc.startswith("Rewrite x * sigmoid(x) into silu(x)")
    assert_rewrites("fuse-silu", BEFORE, AFTER, changed=True)


def test_plugin_through_the_command_line(tmp_path):
    src = tmp_path / "in.ir"
    src.write_text(BEFORE)
    out = subprocess.run([sys.executable, "-m", "avalon.cli", "opt", str(src), "-p", "fuse-silu,dce",
                          "--plugin", PLUGIN, "--verify-each"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("silu %") == 2

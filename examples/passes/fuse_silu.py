"""A user pass as a plugin: fuse `x * sigmoid(x)` (SiLU, also called swish) into one `silu` op.

    avalon opt model.ir -p fuse-silu,dce --plugin examples/passes/fuse_silu.py

Importing this file defines the op (with its numpy reference and Triton rules, so both backends run
it) and registers the pass. See docs/writing-a-pass.md.
"""
import avalon.ir as ir
from avalon.codegen.triton.lowering import LOWERING, ElementwiseLowering
from avalon.ir import REFERENCE
from avalon.mlir import LINALG, SCALAR, elementwise
from avalon.passes import P, Rule, Var, apply_patterns, register

if "silu" not in ir.OPS:
    ir.define_op("silu", 1, lambda ts, attrs: [ir.TensorType(ts[0].shape, ts[0].dtype)],
                 traits={"elementwise", "pure"}, doc="x * sigmoid(x)")
    REFERENCE["silu"] = lambda attrs, x: x * REFERENCE["sigmoid"](attrs, x)
    LOWERING["silu"] = ElementwiseLowering("elementwise", "{0} * tl.sigmoid({0})")
    # MLIR (linalg, IREE): the scalar body of the op's linalg.generic, from the sigmoid's
    SCALAR["silu"] = lambda e, attrs, xs, out: e.arith("arith.mulf", xs[0], SCALAR["sigmoid"](e, attrs, xs, out))
    LINALG["silu"] = elementwise

x = Var("x", where=lambda v: v.dtype.is_float)
SILU = Rule(P.mul(x, P.sigmoid(x)), P.silu(x))  # mul is commutative: sigmoid(x) * x matches too


@register("fuse-silu")
def fuse_silu(graph: ir.Graph) -> bool:
    """Rewrite x * sigmoid(x) into silu(x): one op to lower, and x is read once."""
    return apply_patterns(graph, [SILU])

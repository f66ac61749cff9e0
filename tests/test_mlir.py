"""`avalon.mlir.to_mlir`: the avalon dialect parses in upstream MLIR and xDSL and round-trips
through both; the linalg lowering of every registered op verifies with upstream dialects only.
Parsing only (no IREE compile): IREE runs are in test_iree.py."""
from __future__ import annotations

import functools
import io
import re

import pytest
from mlir_samples import sample

from avalon.ir import OPS
from avalon.ir.registry import TABLES
from avalon.mlir import LINALG, to_mlir

ir = pytest.importorskip("iree.compiler.ir", reason="needs the mlir extra: pip install -e '.[mlir]'")
xdsl_parser = pytest.importorskip("xdsl.parser", reason="needs the mlir extra: pip install -e '.[mlir]'")

UPSTREAM = {"func", "arith", "math", "tensor", "linalg", "cf"}
NAMES = sorted(OPS)
LINALG_EXEMPT = set(TABLES["linalg"].exempt)  # inlined before any backend or lowering sees a graph
FACTORIZATIONS = sorted(n for n in NAMES if "factorization" in OPS[n].traits)  # no upstream MLIR op: refused


def mlir_parse(text: str, unregistered: bool):
    ctx = ir.Context()
    ctx.allow_unregistered_dialects = unregistered
    m = ir.Module.parse(text, ctx)
    assert m.operation.verify()
    return m


def generic(m) -> str:
    return m.operation.get_asm(print_generic_op_form=True)


@functools.cache
def xdsl_context():
    from xdsl.context import Context
    from xdsl.dialects import get_all_dialects
    ctx = Context(allow_unregistered=True)
    for name, factory in get_all_dialects().items():
        ctx.register_dialect(name, factory)
    return ctx


def xdsl_roundtrip(text: str) -> str:
    """Parse with xDSL (unregistered ops allowed) and print its generic form."""
    from xdsl.printer import Printer
    module = xdsl_parser.Parser(xdsl_context(), text).parse_module()
    out = io.StringIO()
    Printer(stream=out, print_generic_format=True).print_op(module)
    return out.getvalue()


def op_names(m) -> list[str]:
    names = []

    def walk(op):
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    names.append(inner.operation.name)
                    walk(inner.operation)
    walk(m.operation)
    return names


@pytest.mark.parametrize("name", NAMES)
def test_avalon_dialect_round_trips_through_upstream_mlir_and_xdsl(name):
    g = sample(name)
    text = to_mlir(g, "avalon")
    m = mlir_parse(text, unregistered=True)
    ours = [n for n in op_names(m) if n.startswith("avalon.")]
    want = [f"avalon.{op.name}" for op in g.walk()]
    assert [n for n in ours if n != "avalon.yield"] == want
    once = generic(m)
    # upstream's generic print -> xDSL -> xDSL's generic print -> upstream: the same module
    assert generic(mlir_parse(xdsl_roundtrip(once), unregistered=True)) == once
    assert generic(mlir_parse(xdsl_roundtrip(text), unregistered=True)) == once


def test_avalon_dialect_spells_attributes_locations_names_and_regions():
    text = to_mlir(sample("conv2d"), "avalon")
    assert '"avalon.conv2d"(%arg0, %arg1) {stride = array<i64: 2, 1>, padding = array<i64: 1, 2>, ' in text
    assert 'groups = 2 : i64} : (tensor<2x4x7x8xf32>, tensor<6x2x3x2xf32>) -> tensor<2x6x4x10xf32>' in text
    assert 'loc("model.py":7:0)' in text and '{avalon.name = "x0"}' in text
    m = mlir_parse(text, unregistered=True)
    conv = next(op for op in m.body.operations[0].regions[0].blocks[0].operations if op.operation.name == "avalon.conv2d")
    assert list(ir.DenseI64ArrayAttr(conv.attributes["stride"])) == [2, 1]
    fused = to_mlir(sample("fusion"), "avalon")
    assert re.search(r"\"avalon.fusion\"\(%arg1, %arg0\) \(\{\n\s+\^bb0\(", fused)
    assert '"avalon.yield"' in fused and 'name = "fused_add_relu_0"' in fused
    consts = to_mlir(sample("constant"), "avalon")
    assert "value = 0x7FF8000000000000 : f64" in consts  # nan survives as a hex float
    assert 'dense<"0x' in consts  # a dense constant's data, exact


@pytest.mark.parametrize("name", [n for n in NAMES if n not in LINALG_EXEMPT and n not in FACTORIZATIONS])
def test_linalg_lowering_of_every_op_verifies_with_upstream_dialects_only(name):
    m = mlir_parse(to_mlir(sample(name), "linalg"), unregistered=False)
    dialects = {n.split(".")[0] for n in op_names(m)}
    assert dialects <= UPSTREAM, dialects - UPSTREAM


@pytest.mark.parametrize("name", FACTORIZATIONS)
def test_factorizations_are_refused_by_the_linalg_lowering_naming_the_op_and_the_line(name):
    from avalon.mlir.linalg import LoweringError
    with pytest.raises(LoweringError, match=rf"op '{name}' \(from model.py:7\) is a LAPACK factorization"):
        to_mlir(sample(name), "linalg")


def test_linalg_uses_named_ops_and_one_generic_per_elementwise_group():
    assert "linalg.conv_2d_ngchw_gfchw" in to_mlir(sample("conv2d"), "linalg")  # groups=2
    assert "linalg.conv_2d_nchw_fchw" in to_mlir(sample("conv2d"), "linalg")  # groups=1
    mm = to_mlir(sample("matmul"), "linalg")
    assert "linalg.batch_matmul" in mm and "linalg.matmul " in mm
    assert "linalg.pooling_nchw_max" in to_mlir(sample("max_pool2d"), "linalg")
    fused = mlir_parse(to_mlir(sample("fusion"), "linalg"), unregistered=False)
    top = [n for n in op_names(fused) if n == "linalg.generic"]
    assert len(top) == 1  # add, relu, mul and the bias broadcast: one generic
    assert "tensor.collapse_shape" not in to_mlir(sample("fusion"), "linalg")  # the bias is read through its map


def test_the_linalg_table_is_registered_and_reports_a_new_op():
    from avalon.ir import define_op
    from avalon.ir.registry import TABLES
    t = TABLES["linalg"]
    assert t.table is LINALG and t.required and t.missing() == []
    define_op("twice_mlir_", 1, lambda ts, a: [ts[0]], traits={"elementwise", "pure"})
    try:
        assert t.missing() == ["twice_mlir_"]
        with pytest.raises(NotImplementedError, match="'twice_mlir_' has no linalg lowering"):
            to_mlir(_one_op_graph("twice_mlir_"), "linalg")
    finally:
        OPS.pop("twice_mlir_")


def _one_op_graph(name):
    from avalon.ir import Builder, Graph, TensorType
    g = Graph("f")
    x = g.add_input(TensorType((2,), "f32"), "x")
    g.set_outputs([Builder(g)(name, x)])
    return g


def test_unknown_dialect_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dialect 'tosa'; choose one of avalon, linalg"):
        to_mlir(sample("add"), "tosa")


def test_zero_size_constants_print_as_dense_empty_in_both_dialects():
    """`dense<[[]]> : tensor<0x3xf32>` is invalid upstream (that nesting is the 1x0 shape); `dense<>`
    fits every zero-element shape."""
    from avalon.ir import parse
    g = parse("""func @f(%x: tensor<0x3xf32>) -> (tensor<0x2xf32>, tensor<2x0x3xi64>, tensor<0xi1>, tensor<3xf32>) {
  %0 = constant {value = dense<[]>, shape = [0, 2]} : tensor<0x2xf32>
  %1 = constant {value = dense<[]>, shape = [2, 0, 3], dtype = i64} : tensor<2x0x3xi64>
  %2 = constant {value = dense<[]>, shape = [0], dtype = i1} : tensor<0xi1>
  %3 = exp %x : tensor<0x3xf32>
  %4 = sum %3 {axes = [0]} : tensor<3xf32>
  return %0, %1, %2, %4
}""")
    for dialect in ("avalon", "linalg"):
        text = to_mlir(g, dialect)
        assert "dense<> : tensor<0x2xf32>" in text and "dense<> : tensor<2x0x3xi64>" in text, text
        assert "dense<> : tensor<0xi1>" in text and "[]" not in text
        mlir_parse(text, unregistered=dialect == "avalon")
        xdsl_roundtrip(text)


def test_float_literals_without_a_decimal_point_parse_upstream():
    """Python writes some f64 values with no '.' (1e-05: layer_norm's eps in an f64 graph); MLIR
    lexes `1e-05` as the integer 1 then `e`, so every f64 layer_norm failed in iree-compile."""
    from avalon.ir import dtypes as dt
    from avalon.ir import parse
    from avalon.mlir.text import scalar
    values = (1e-05, 1e16, -2e-300, 5e-324, 1.5, -3.0)
    consts = "\n".join(f"  %c{i} = constant {{value = {v!r}, shape = [3], dtype = f64}} : tensor<3xf64>"
                       for i, v in enumerate(values))
    adds = "\n".join(f"  %a{i} = add %{'x' if i == 0 else f'a{i - 1}'}, %c{i} : tensor<3xf64>" for i in range(len(values)))
    g = parse(f"func @f(%x: tensor<3xf64>) -> (tensor<3xf64>) {{\n{consts}\n{adds}\n  return %a{len(values) - 1}\n}}")
    for v in values:
        text = scalar(v, dt.float64)
        assert "." in text and float(text) == v, (v, text)
    for dialect in ("avalon", "linalg"):
        text = to_mlir(g, dialect)
        assert "1.0e-05" in text and "1.0e+16" in text and "5.0e-324" in text, text
        mlir_parse(text, unregistered=dialect == "avalon")
        xdsl_roundtrip(text)

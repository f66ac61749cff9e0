"""Printer, parser and verifier: text round-trips, errors name line/column or the op."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import avalon as av
from avalon import ir, ops

LENET_LIKE = """\
func @forward(%x: tensor<2x1x8x8xf32>, %conv1.weight: tensor<3x1x3x3xf32>, %conv1.bias: tensor<3xf32>) -> (tensor<2x3x3x3xf32>) {
  %0 = conv2d %x, %conv1.weight : tensor<2x3x6x6xf32>
  %1 = broadcast %conv1.bias {shape = [2, 6, 6, 3]} : tensor<2x6x6x3xf32>
  %2 = transpose %1 {perm = [0, 3, 1, 2]} : tensor<2x3x6x6xf32>
  %3 = fusion @fused_add_relu_0(%0, %2) : tensor<2x3x6x6xf32> {
    ^bb0(%arg0: tensor<2x3x6x6xf32>, %arg1: tensor<2x3x6x6xf32>):
    %4 = add %arg0, %arg1 : tensor<2x3x6x6xf32>
    %5 = relu %4 : tensor<2x3x6x6xf32>
    yield %5
  }
  %6 = max_pool2d %3 {kernel = [2, 2], stride = [2, 2]} : tensor<2x3x3x3xf32>
  return %6
}
"""


def test_parse_print_identity_and_names():
    g = ir.parse(LENET_LIKE)
    ir.verify(g)
    assert str(g) == LENET_LIKE
    assert [v.name for v in g.inputs] == ["x", "conv1.weight", "conv1.bias"]
    assert [op.name for op in g.ops] == ["conv2d", "broadcast", "transpose", "fusion", "max_pool2d"]
    assert [op.name for op in g.ops[3].regions[0].ops] == ["add", "relu"]


def test_locations_round_trip():
    g = av.trace(lambda x: (x * 2.0).exp(), np.ones((2, 2), np.float32))
    text = ir.print_graph(g, locations=True)
    assert 'loc("' in text and "test_ir_text.py" in text
    assert ir.print_graph(ir.parse(text), locations=True) == text
    assert "loc(" not in str(g)


@pytest.mark.parametrize("edit, message, line", [
    (("%4 = add %arg0, %arg1", "%4 = add %arg0, %zz"), "use of undefined value %zz", 7),
    (("tensor<2x1x8x8xf32>", "tensor<2x1x8x8xq8>"), "unknown element type 'q8'", 1),
    (("{perm = [0, 3, 1, 2]}", "{perm = [0, 3, 1, 2]"), "expected ',' or '}'", 4),
    (("%6 = max_pool2d", "%6 = max_pool3d"), "unknown op 'max_pool3d'", 11),
    (("{kernel = [2, 2]", "{kernal = [2, 2]"), "has no attribute 'kernal'", 11),
    (("  return %6\n", ""), "block ends without 'return'", 12),
])
def test_parse_errors_name_line_and_column(edit, message, line):
    with pytest.raises(ir.ParseError) as e:
        ir.parse(LENET_LIKE.replace(*edit))
    assert message in str(e.value)
    assert e.value.line == line and e.value.col >= 1


def test_parse_error_column():
    with pytest.raises(ir.ParseError) as e:
        ir.parse("func @f(%x: tensor<2xf32>) -> (tensor<2xf32>) {\n  %0 = exp %y : tensor<2xf32>\n  return %0\n}\n")
    assert (e.value.line, e.value.col) == (2, 12)


def test_text_that_reads_but_does_not_verify_is_located():
    """A hand edit's type mismatch points at its line and column, like a typo (MLIR's parser too)."""
    text = ("func @f(%x: tensor<2xf32>, %y: tensor<2xf64>) -> (tensor<2xf32>) {\n"
            "  %0 = exp %x : tensor<2xf32>\n  %1 = add %0, %y : tensor<2xf32>\n  return %1\n}\n")
    with pytest.raises(ir.ParseError, match=r"^src\.avalon:3:8: 'add' op .*dtypes differ") as e:
        ir.parse(text, source="src.avalon")
    assert isinstance(e.value, ir.VerifyError) and e.value.op.name == "add"
    with pytest.raises(ir.VerifyError, match="expects 1 operand"):
        ir.parse(text.replace("exp %x :", "exp %x, %x :"))


def test_regions_only_on_ops_that_take_one():
    """A region on `exp` would be run by the interpreter instead of exp: rejected in the text and
    by the verifier for graphs built in Python."""
    text = ("func @f(%x: tensor<4xf32>) -> (tensor<4xf32>) {\n  %0 = exp %x : tensor<4xf32> {\n"
            "  ^bb0(%a: tensor<4xf32>):\n    %1 = neg %a : tensor<4xf32>\n    yield %1\n  }\n  return %0\n}\n")
    with pytest.raises(ir.ParseError, match="'exp' takes no region") as e:
        ir.parse(text)
    assert e.value.line == 2
    g = ir.parse(text.replace(" {\n  ^bb0(%a: tensor<4xf32>):\n    %1 = neg %a : tensor<4xf32>\n    yield %1\n  }", ""))
    g.ops[0].add_region(ir.parse("func @g(%a: tensor<4xf32>) -> (tensor<4xf32>) {\n  return %a\n}\n").body)
    with pytest.raises(ir.VerifyError, match="has 1 region.* 'exp' takes none"):
        ir.verify(g)


def test_dynamic_dimensions_say_so():
    with pytest.raises(ir.ParseError, match="dynamic dimensions are not supported"):
        ir.parse("func @f(%x: tensor<?x4xf32>) -> (tensor<?x4xf32>) {\n  return %x\n}\n")


def test_verify_names_the_op():
    g = ir.parse(LENET_LIKE)
    relu = g.ops[3].regions[0].ops[1]
    relu.results[0].type = ir.TensorType((2, 3), "f32")
    with pytest.raises(ir.VerifyError, match=r"'relu' op `%5 = relu %4`: result #0 has type tensor<2x3xf32>"):
        ir.verify(g)


def test_verify_use_before_definition():
    g = ir.parse("func @f(%x: tensor<2xf32>) -> (tensor<2xf32>) {\n  %0 = exp %x : tensor<2xf32>\n"
                 "  %1 = neg %0 : tensor<2xf32>\n  return %1\n}\n")
    g.body.reorder(g.ops[::-1])  # neg now reads %0 before exp defines it
    with pytest.raises(ir.VerifyError, match="'neg'.*used before it is defined"):
        ir.verify(g)


def test_verify_wrong_operand_count_and_type():
    g = ir.parse("func @f(%x: tensor<2xf32>, %y: tensor<3xf32>) -> (tensor<2xf32>) {\n"
                 "  %0 = exp %x : tensor<2xf32>\n  return %0\n}\n")
    op = g.ops[0]
    op.set_operands([g.inputs[0], g.inputs[0]])
    with pytest.raises(ir.VerifyError, match="expects 1 operand"):
        ir.verify(g)
    g2 = ir.parse("func @f(%x: tensor<2xf32>, %y: tensor<3xf32>) -> (tensor<2xf32>) {\n"
                  "  %0 = add %x, %x : tensor<2xf32>\n  return %0\n}\n")
    g2.ops[0].set_operand(1, g2.inputs[1])
    with pytest.raises(ir.VerifyError, match="operand shapes differ"):
        ir.verify(g2)


# -- property: every traced graph round-trips ------------------------------------------------

UNARY = ["exp", "tanh", "sigmoid", "relu", "neg", "abs"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]


@st.composite
def programs(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    steps = draw(st.lists(st.tuples(st.sampled_from(["unary", "binary", "scalar", "sum", "reshape", "transpose",
                                                     "matmul", "compare", "slice", "concat", "max"]),
                                    st.sampled_from(UNARY), st.sampled_from(BINARY), st.integers(0, 2)),
                          min_size=1, max_size=8))
    return shape, steps


def _run_program(shape, steps):
    def fn(x, y):
        vals = [x, y]
        for kind, un, bi, k in steps:
            a = vals[-1]
            b = vals[k % len(vals)]
            if kind == "unary":
                out = getattr(ops, un)(a)
            elif kind == "binary":
                out = getattr(ops, bi)(a, b if b.shape == a.shape else a)
            elif kind == "scalar":
                out = a * 0.5 + 1.25
            elif kind == "sum":
                out = a.sum(axis=k % a.ndim, keepdims=bool(k % 2)) if a.ndim else a
            elif kind == "max":
                out = a.max(axis=-1, keepdims=True) if a.ndim else a
            elif kind == "reshape":
                out = a.reshape(-1)
            elif kind == "transpose":
                out = a.T
            elif kind == "matmul":
                # an outer product squares the size: at most 64 elements in (five in a row from 3
                # elements asked numpy for 3^32 and took a CI machine's 24 GiB)
                out = a.reshape(-1, 1) @ a.reshape(1, -1) if a.ndim and math.prod(a.shape) <= 64 else a
            elif kind == "compare":
                out = ops.where(a > 0.0, a, -a)
            elif kind == "slice":
                out = a[..., :1] if a.ndim else a
            else:
                out = ops.concat([a, a], axis=0) if a.ndim else a
            vals.append(out)
        return vals[-1], vals[len(vals) // 2]
    return fn


@given(programs())
def test_traced_graphs_round_trip(prog):
    shape, steps = prog
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(shape).astype(np.float32)
    g = av.trace(_run_program(shape, steps), x, y)
    ir.verify(g)
    text = str(g)
    g2 = ir.parse(text)
    assert str(g2) == text
    ir.verify(g2)
    for a, b in zip(av.interpret(g, x, y), av.interpret(g2, x, y)):
        np.testing.assert_array_equal(a, b)
    loc_text = ir.print_graph(g, locations=True)
    assert ir.print_graph(ir.parse(loc_text), locations=True) == loc_text


def test_attribute_values_round_trip():
    g = ir.Graph("f")
    x = g.add_input(ir.TensorType((2, 3), "f32"), "x")
    b = ir.Builder(g)
    c1 = b.constant(float("inf"), shape=[2, 3])
    c2 = b.constant(1e-08, shape=[2, 3])
    c3 = b.constant(np.arange(6, dtype=np.float32).reshape(2, 3) / 7, shape=[2, 3])
    p = b("pad", x, low=[0, 1], high=[1, 0], value=-0.5)
    i = b.constant(3, dtype="i64")
    g.set_outputs([b("add", b("add", c1, c2), b("add", c3, x)), p, i])
    ir.verify(g)
    text = str(g)
    assert str(ir.parse(text)) == text
    out = av.interpret(ir.parse(text), np.ones((2, 3), np.float32))
    np.testing.assert_allclose(out[0][0, 1:], np.inf)

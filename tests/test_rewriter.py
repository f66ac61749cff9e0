"""The pattern rewriter: declarative rules, imperative patterns, the Rewriter API and the driver."""
import logging

import numpy as np
import pytest

import avalon.ir as ir
from avalon.passes import Const, P, Pat, RewritePattern, Rewriter, Rule, Var, apply_patterns, match, pattern
from avalon.passes.rewriter import splat_value, walk_blocks

x, y = Var("x"), Var("y")


def rewrite(text, *patterns, **kw):
    g = ir.parse(text)
    changed = apply_patterns(g, patterns, **kw)
    ir.verify(g)
    return g, changed


def body(g):
    return [(op.name, op.attrs.get("perm")) if "perm" in op.attrs else op.name for op in g.ops]


UNARY = """
func @f(%a: tensor<3xf32>, %b: tensor<3xf32>) -> (tensor<3xf32>) {
  %0 = sigmoid %a : tensor<3xf32>
  %1 = mul %0, %a : tensor<3xf32>
  %2 = sub %b, %1 : tensor<3xf32>
  return %2
}"""


def test_rule_matches_commutative_ops_in_both_orders_and_builds_its_right_side():
    g, changed = rewrite(UNARY, Rule(P.mul(x, P.sigmoid(x)), P.tanh(x)))
    assert changed and body(g) == ["tanh", "sub"]  # the dead sigmoid went too
    assert g.ops[0].operands[0] is g.inputs[0]


def test_non_commutative_ops_match_one_order_only():
    g, changed = rewrite(UNARY, Rule(P.sub(P.mul(x, y), x), x))
    assert not changed
    g, changed = rewrite(UNARY, Rule(P.sub(y, P.mul(x, P.sigmoid(x))), y))
    assert changed and g.outputs[0] is g.inputs[1]


def test_a_variable_used_twice_must_bind_one_value():
    text = """
    func @f(%a: tensor<3xf32>, %b: tensor<3xf32>) -> (tensor<3xf32>, tensor<3xf32>) {
      %0 = maximum %a, %b : tensor<3xf32>
      %1 = maximum %a, %a : tensor<3xf32>
      return %0, %1
    }"""
    g, _ = rewrite(text, Rule(P.maximum(x, x), x))
    assert body(g) == ["maximum"] and g.outputs[1] is g.inputs[0]


def test_constants_by_value_by_name_and_by_predicate():
    text = """
    func @f(%a: tensor<3xf32>) -> (tensor<3xf32>, tensor<3xf32>, tensor<3xf32>) {
      %two = constant {value = 2.0, shape = [3]} : tensor<3xf32>
      %d = constant {value = dense<[1.0, 2.0, 3.0]>, shape = [3]} : tensor<3xf32>
      %n = constant {value = dense<[-1.0, 2.0, 3.0]>, shape = [3]} : tensor<3xf32>
      %0 = mul %a, %two : tensor<3xf32>
      %1 = pow %a, %d : tensor<3xf32>
      %2 = pow %a, %n : tensor<3xf32>
      return %0, %1, %2
    }"""
    times_two = Rule(P.mul(x, Const(2.0)), P.add(x, x))
    positive_pow = Rule(P.pow(x, Const(name="c", where=lambda a: (a > 0).all())),
                        lambda m, rw: rw.build("exp", m["x"]) if m.const("c") is not None else None)
    g, _ = rewrite(text, times_two, positive_pow)
    assert body(g) == ["constant", "add", "exp", "pow"]


def test_attribute_patterns_and_attributes_from_the_match():
    text = """
    func @f(%a: tensor<2x3xf32>) -> (tensor<3x2xf32>, tensor<6xf32>) {
      %0 = transpose %a {perm = [1, 0]} : tensor<3x2xf32>
      %1 = reshape %a {shape = [6]} : tensor<6xf32>
      %2 = exp %1 : tensor<6xf32>
      return %0, %2
    }"""
    swap = Rule(P.transpose(x, perm=[1, 0]), P.neg(P.transpose(P.neg(x), perm=[1, 0])))
    flat = Rule(P.exp(P.reshape(x, shape=lambda s: len(s) == 1)),
                P.reshape(P.exp(x), shape=lambda m: list(m.root.result.shape)))
    g, _ = rewrite(text, flat)
    assert body(g) == [("transpose", [1, 0]), "exp", "reshape"]
    assert match(P.transpose(x, perm=[1, 0]), g.ops[0])["x"] is g.inputs[0]
    assert match(P.transpose(x, perm=[0, 1]), g.ops[0]) is None
    assert swap.match_and_rewrite(g.ops[1], Rewriter()) is False  # wrong op: no match, nothing done


def test_where_conditions_and_type_guards():
    text = """
    func @f(%a: tensor<3xf32>, %i: tensor<3xi32>) -> (tensor<3xf32>, tensor<3xi32>) {
      %0 = abs %a : tensor<3xf32>
      %1 = abs %i : tensor<3xi32>
      return %0, %1
    }"""
    floats_only = Rule(P.abs(x), P.relu(x), where=lambda m: m["x"].dtype.is_float)
    g, _ = rewrite(text, floats_only)
    assert body(g) == ["relu", "abs"]
    # a right side of another type is never substituted, and what was built for it is undone
    to_bool = Rule(P.abs(x), lambda m, rw: rw.build("gt", m["x"], m["x"]))
    g, changed = rewrite(text, to_bool)
    assert not changed and body(g) == ["abs", "abs"]


def test_rules_print_readably():
    r = Rule(P.mul(x, 1.0), x)
    assert r.label == "mul(x, 1.0) -> x"
    assert repr(Pat("add", x, Const(name="c"))) == "add(x, c)"


def test_imperative_pattern_by_trait_and_the_rewriter_api():
    @pattern(traits=("elementwise",))
    def double_unary(op, rw: Rewriter) -> bool:
        """Wrap every unary elementwise op on a graph input in neg(neg(.)) -- once."""
        if len(op.operands) != 1 or op.operands[0].op is not None or op.name == "neg":
            return False
        if any(u.name == "neg" for u in op.result.users):
            return False  # done already: a pattern that always says True never lets the driver stop
        rw.set_insertion_point(after=op)
        n1 = rw.build("neg", op.result)
        n2 = rw.build("neg", n1)
        for use_op, i in list(op.result.uses):
            if use_op is not n1.op:
                rw.set_operand(use_op, i, n2)
        return True

    text = """
    func @f(%a: tensor<3xf32>) -> (tensor<3xf32>) {
      %0 = exp %a : tensor<3xf32>
      %1 = add %0, %0 : tensor<3xf32>
      return %1
    }"""
    g, _ = rewrite(text, double_unary)
    assert body(g) == ["exp", "neg", "neg", "add"]
    assert double_unary.label == "double_unary"


def test_replace_op_and_erase_op_keep_use_lists_right():
    g = ir.parse(UNARY)
    sig, mul, sub = g.ops
    rw = Rewriter()
    rw.set_insertion_point(before=mul)
    t = rw.build("tanh", g.inputs[0])
    rw.replace_op(mul, t)
    assert sub.operands[1] is t and t.op.loc is None
    rw.erase_op(sig)
    ir.verify(g)
    assert [op.name for op in g.ops] == ["tanh", "sub"]
    with pytest.raises(ValueError, match="cannot replace a value of type"):
        rw.replace_op(sub, rw.constant(1.0, ir.TensorType((4,), "f32")))
    with pytest.raises(ValueError, match="still has 1 use"):
        rw.erase_op(t.op)


def test_constants_are_splats_when_they_can_be():
    g = ir.parse(UNARY)
    rw = Rewriter()
    rw.set_insertion_point(before=g.ops[0])
    t = ir.TensorType((3,), "f32")
    assert splat_value(rw.constant(np.full(3, 2.5), t)) == 2.5
    assert rw.constant(np.array([0.0, -0.0, 0.0]), t).op.attrs["value"].tolist() == [0.0, -0.0, 0.0]
    assert rw.constant(True, ir.TensorType((3,), "i1")).op.attrs["value"] is True


def test_driver_reaches_a_fixpoint_across_chains():
    text = """
    func @f(%a: tensor<3xf32>) -> (tensor<3xf32>) {
      %0 = neg %a : tensor<3xf32>
      %1 = neg %0 : tensor<3xf32>
      %2 = neg %1 : tensor<3xf32>
      %3 = neg %2 : tensor<3xf32>
      %4 = neg %3 : tensor<3xf32>
      return %4
    }"""
    g, changed = rewrite(text, Rule(P.neg(P.neg(x)), x))
    assert changed and body(g) == ["neg"]


def test_driver_stops_on_patterns_that_never_settle(caplog):
    class Churn(RewritePattern):
        ops = ("exp",)

        def match_and_rewrite(self, op, rw):
            rw.replace_op(op, rw.build("exp", op.operands[0]))
            return True

    with caplog.at_level(logging.WARNING, logger="avalon.rewrite"):
        g, changed = rewrite(UNARY.replace("sigmoid", "exp"), Churn(), max_iterations=3, max_rewrites=20)
    assert changed and body(g) == ["exp", "mul", "sub"]
    assert any("did not converge" in r.getMessage() for r in caplog.records)


def test_dead_ops_stay_when_asked():
    text = UNARY.replace("%2 = sub %b, %1", "%2 = sub %b, %a")
    g, changed = rewrite(text, erase_dead=False)
    assert not changed and len(g.ops) == 3
    g, changed = rewrite(text)
    assert changed and body(g) == ["sub"]


def test_patterns_run_inside_regions():
    text = """
    func @f(%a: tensor<3xf32>) -> (tensor<3xf32>) {
      %0 = fusion @g(%a) : tensor<3xf32> {
        ^bb0(%p: tensor<3xf32>):
        %1 = neg %p : tensor<3xf32>
        %2 = neg %1 : tensor<3xf32>
        %3 = exp %2 : tensor<3xf32>
        yield %3
      }
      return %0
    }"""
    g, _ = rewrite(text, Rule(P.neg(P.neg(x)), x))
    region = g.ops[0].regions[0]
    assert [op.name for op in region.ops] == ["exp"] and region.ops[0].operands[0] is region.args[0]
    assert len(list(walk_blocks(g))) == 2

"""Graphviz export: every op a node, edges labelled with tensor types, fused groups as clusters."""
import re

import numpy as np

import avalon as av
import avalon.ir as ir

FUSED = """
func @f(%x: tensor<2x3xf32>, %y: tensor<2x3xf32>) -> (tensor<2x3xf32>, tensor<3x2xf32, layout = [1, 0]>) {
  %0 = mul %x, %y : tensor<2x3xf32>
  %1 = fusion @fused_add_relu_0(%0, %y) : tensor<2x3xf32> {
    ^bb0(%a: tensor<2x3xf32>, %b: tensor<2x3xf32>):
    %2 = add %a, %b : tensor<2x3xf32>
    %3 = relu %2 : tensor<2x3xf32>
    yield %3
  }
  %4 = neg %1 : tensor<2x3xf32>
  %5 = transpose %4 {perm = [1, 0]} : tensor<3x2xf32, layout = [1, 0]>
  return %4, %5
}
"""


def _nodes(dot: str) -> dict[str, str]:
    return dict(re.findall(r'^\s*(n\d+) \[label="([^"]*)"', dot, re.M))


def _edges(dot: str) -> list[tuple[str, str, str]]:
    return re.findall(r'^\s*(n\d+) -> (n\d+) \[label="([^"]*)"\];', dot, re.M)


def test_fused_group_is_a_cluster_listing_its_inner_ops():
    dot = ir.to_dot(ir.parse(FUSED))
    assert dot.startswith('digraph "f" {') and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    cluster = re.search(r"subgraph cluster_fused_add_relu_0\w* \{(.*?)\n  \}", dot, re.S)
    assert cluster is not None, dot
    body = cluster.group(1)
    assert 'label="%1 = fusion @fused_add_relu_0"' in body
    assert '"%2 = add"' in body and '"%3 = relu"' in body
    assert "mul" not in body and "neg" not in body  # only the group's own ops
    assert "->" not in body  # edges are drawn outside, so clusters hold just their ops


def test_edges_follow_the_dataflow_through_the_group_and_carry_types():
    dot = ir.to_dot(ir.parse(FUSED))
    names = _nodes(dot)
    by_label = {v: k for k, v in names.items()}
    edges = {(names[a], names[b], t) for a, b, t in _edges(dot)}
    assert ("%x", "%0 = mul", "2x3xf32") in edges
    assert ("%0 = mul", "%2 = add", "2x3xf32") in edges   # into the group: to the op reading the argument
    assert ("%y", "%2 = add", "2x3xf32") in edges
    assert ("%2 = add", "%3 = relu", "2x3xf32") in edges
    assert ("%3 = relu", "%4 = neg", "2x3xf32") in edges  # out of the group: from the yielded value
    assert ("%5 = transpose", "return #1", "3x2xf32, layout = [1, 0]") in edges
    assert "return #0" in by_label and "%x" in by_label


def test_traced_model_exports_every_op():
    def f(x, w):
        return av.ops.relu(x @ w).sum()

    g = av.trace(f, np.ones((2, 3), np.float32), np.ones((3, 4), np.float32))
    dot = ir.to_dot(g)
    assert len(_nodes(dot)) == len(g.inputs) + len(list(g.walk())) + len(g.outputs)
    assert "cluster" not in dot

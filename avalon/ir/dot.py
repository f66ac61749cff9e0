"""Graphviz DOT export: `to_dot(graph)` draws the dataflow of a graph for `dot -Tsvg`.

Each op is a box named like its text-IR line (`%3 = conv2d`), graph inputs and outputs are ellipses,
and every edge is labelled with the tensor type it carries (layout included). A fused group
(an op with a region, such as `fusion @fused_add_relu_0`) is drawn as a `subgraph cluster_*`
holding its inner ops, wired straight to the ops outside it: that is the picture of what one
generated kernel computes, which is what people reading fusion decisions want to see.
"""
from __future__ import annotations

import json

from .core import Block, Graph, Op, Value
from .printer import Namer, name_values
from .registry import OPS


def _q(text: str) -> str:
    """A DOT string literal (JSON escaping is valid DOT escaping for the characters we emit)."""
    return json.dumps(text)


def _type_label(v: Value) -> str:
    return str(v.type).removeprefix("tensor<").removesuffix(">")


class _DotWriter:
    def __init__(self, graph: Graph, namer: Namer):
        self.graph = graph
        self.namer = namer
        self.lines: list[str] = []
        self.edges: list[str] = []  # written last, at top level: an edge inside a cluster would pull
        # its endpoints into that cluster
        self.node_of: dict[Value, str] = {}  # value -> the node that produces it
        self.count = 0
        self.clusters = 0

    def node(self, label: str, indent: str, **attrs: str) -> str:
        nid = f"n{self.count}"
        self.count += 1
        extra = "".join(f", {k}={_q(v)}" for k, v in attrs.items())
        self.lines.append(f"{indent}{nid} [label={_q(label)}{extra}];")
        return nid

    def edge(self, v: Value, dst: str) -> None:
        src = self.node_of.get(v)
        if src is not None:
            self.edges.append(f"  {src} -> {dst} [label={_q(_type_label(v))}];")

    def op_label(self, op: Op) -> str:
        res = ", ".join("%" + self.namer[r] for r in op.results)
        d = OPS.get(op.name)
        sym = f" @{op.attrs.get(d.symbol, '')}" if d is not None and d.symbol else ""
        return f"{res} = {op.name}{sym}" if res else f"{op.name}{sym}"

    def block(self, block: Block, indent: str) -> None:
        for op in block.ops:
            if op.regions:
                self.region_op(op, indent)
                continue
            nid = self.node(self.op_label(op), indent, shape="box")
            for v in op.operands:
                self.edge(v, nid)
            for r in op.results:
                self.node_of[r] = nid

    def region_op(self, op: Op, indent: str) -> None:
        """A cluster holding the region's ops; region arguments stand for the op's operands."""
        region = op.regions[0]
        d = OPS.get(op.name)
        name = str(op.attrs.get(d.symbol, "")) if d is not None and d.symbol else ""
        cid = "".join(c if c.isalnum() or c == "_" else "_" for c in (name or op.name))
        self.clusters += 1
        self.lines.append(f"{indent}subgraph cluster_{cid}_{self.clusters} {{")
        inner = indent + "  "
        self.lines.append(f"{inner}label={_q(self.op_label(op))}; style=\"rounded,filled\"; fillcolor=\"#eef4ff\";")
        for a, v in zip(region.args, op.operands):
            if v in self.node_of:
                self.node_of[a] = self.node_of[v]
        self.block(region, inner)
        self.lines.append(f"{indent}}}")
        for r, y in zip(op.results, region.results):
            if y in self.node_of:
                self.node_of[r] = self.node_of[y]

    def write(self) -> str:
        g = self.graph
        self.lines = [f"digraph {_q(g.name)} {{", "  rankdir=TB;", '  node [fontname="monospace"];',
                      '  edge [fontname="monospace", fontsize=10];']
        for v in g.inputs:
            self.node_of[v] = self.node(f"%{self.namer[v]}", "  ", shape="ellipse")
        self.block(g.body, "  ")
        for i, v in enumerate(g.outputs):
            out = self.node(f"return #{i}", "  ", shape="ellipse", style="dashed")
            self.edge(v, out)
        self.lines += self.edges
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"


def to_dot(graph: Graph) -> str:
    """The graph in Graphviz DOT; fused groups are `subgraph cluster_*` listing their inner ops."""
    return _DotWriter(graph, name_values(graph)).write()

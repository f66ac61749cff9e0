"""`to_mlir(graph, dialect="avalon")`: Avalon IR as MLIR generic form, ops in the `avalon` dialect.

Every op prints as `%0 = "avalon.conv2d"(%x, %w) {stride = array<i64: 1, 1>} : (tensor<..>,
tensor<..>) -> tensor<..> loc("net.py":12:0)`, so any MLIR tool reads it without knowing the
dialect (upstream MLIR with unregistered dialects allowed, xDSL with `allow_unregistered`). A fused
group is an `"avalon.fusion"` op with one region ending in `"avalon.yield"`; the graph is a
`func.func` whose arguments carry their Avalon names as `{avalon.name = "conv1.weight"}`. Layouts,
which tensor types lack, ride beside them: `avalon.layouts` (an op's results), `avalon.region_layouts`
(its regions' arguments), `avalon.layout` (a function argument's).

Attributes, by kind: ints -> `array<i64: ...>`, int -> `i64`, float -> `f64`, bool, string, dtype ->
a type attribute (`f32`), a constant's value -> a typed scalar or `dense<...>`. All attributes are
printed, defaults included, so a reader needs no Avalon registry to know their values.
"""
from __future__ import annotations

import numpy as np

from avalon.ir import OPS, Block, DType, Graph, Op, TensorType, Value
from avalon.ir import dtypes as dt

from .text import dense, ident, loc, scalar, string, tensor_type


def attribute(kind: str, v, op: Op | None = None) -> str:
    """One Avalon attribute value as an MLIR attribute (see the module docstring)."""
    if kind == "ints":
        return "array<i64" + (": " + ", ".join(str(int(i)) for i in v) if len(v) else "") + ">"
    if kind == "int":
        return f"{int(v)} : i64"
    if kind == "float":
        return f"{scalar(float(v), dt.float64)} : f64"
    if kind == "bool":
        return "true" if v else "false"
    if kind == "str":
        return string(v)
    if kind == "dtype":
        return v.name
    if kind == "value":
        d: DType = op.attrs.get("dtype", dt.float32) if op is not None else dt.float64
        if isinstance(v, np.ndarray):
            shape = tuple(op.attrs["shape"]) if op is not None and v.size != 1 else v.shape
            return dense(np.asarray(v).astype(d.np), TensorType(shape, d))
        if isinstance(v, (bool, np.bool_)):
            return "true" if v else "false"
        if isinstance(v, (int, np.integer)):
            return f"{int(v)} : i64"
        return f"{scalar(float(v), dt.float64)} : f64"
    return string(str(v))


def _attr_dict(op: Op) -> str:
    d = OPS.get(op.name)
    items = []
    for k, v in op.attrs.items():
        kind = d.attrs[k].kind if d is not None and k in d.attrs else "any"
        items.append(f"{k} = {attribute(kind, v, op)}")
    layouts = [r.type.layout for r in op.results]
    if any(lay is not None for lay in layouts):  # tensor types have no layout: keep it beside them
        items.append("avalon.layouts = [" + ", ".join(attribute("ints", lay or []) for lay in layouts) + "]")
    args = [[a.type.layout for a in region.args] for region in op.regions]
    if any(lay is not None for r in args for lay in r):  # and its regions' arguments' layouts
        items.append("avalon.region_layouts = [" + ", ".join(
            "[" + ", ".join(attribute("ints", lay or []) for lay in r) + "]" for r in args) + "]")
    return " {" + ", ".join(items) + "}" if items else ""


class _Printer:
    def __init__(self) -> None:
        self.names: dict[Value, str] = {}
        self.counter = 0
        self.lines: list[str] = []

    def fresh(self, op: Op) -> str:
        name = f"%{self.counter}"
        self.counter += 1
        if len(op.results) == 1:
            self.names[op.results[0]] = name
        else:
            for i, r in enumerate(op.results):
                self.names[r] = f"{name}#{i}"
        return name if len(op.results) <= 1 else f"{name}:{len(op.results)}"

    def op(self, op: Op, indent: str) -> None:
        operands = ", ".join(self.names[v] for v in op.operands)
        ins = ", ".join(tensor_type(v.type) for v in op.operands)
        outs = ", ".join(tensor_type(r.type) for r in op.results)
        outs = outs if len(op.results) == 1 else f"({outs})"
        head = f"{self.fresh(op)} = " if op.results else ""
        text = f'{indent}{head}"avalon.{op.name}"({operands})'
        if not op.regions:
            self.lines.append(f"{text}{_attr_dict(op)} : ({ins}) -> {outs}{loc(op.loc)}")
            return
        self.lines.append(text + " ({")
        for i, region in enumerate(op.regions):
            if i:
                self.lines.append(indent + "}, {")
            self.block(region, indent + "  ", "avalon.yield", f"r{self.counter}_{i}_")
        self.lines.append(f"{indent}}}){_attr_dict(op)} : ({ins}) -> {outs}{loc(op.loc)}")

    def block(self, block: Block, indent: str, terminator: str, prefix: str) -> None:
        args = []
        for i, a in enumerate(block.args):
            self.names[a] = f"%{prefix}{i}"
            args.append(f"{self.names[a]}: {tensor_type(a.type)}")
        self.lines.append(f"{indent[:-2]}^bb0({', '.join(args)}):")
        self.terminate(block, indent, terminator)

    def terminate(self, block: Block, indent: str, terminator: str) -> None:
        for op in block.ops:
            self.op(op, indent)
        vals = block.results
        names = ", ".join(self.names[v] for v in vals)
        types = ", ".join(tensor_type(v.type) for v in vals)
        if terminator == "func.return":
            self.lines.append(f"{indent}func.return{' ' + names + ' : ' + types if vals else ''}")
        else:
            self.lines.append(f'{indent}"{terminator}"({names}) : ({types}) -> ()')


def to_avalon_mlir(graph: Graph) -> str:
    """The module text (see the module docstring)."""
    p = _Printer()
    args = []
    for i, a in enumerate(graph.inputs):
        p.names[a] = f"%arg{i}"
        named = [f"avalon.name = {string(a.name)}"] if a.name else []
        laid = [f"avalon.layout = {attribute('ints', a.type.layout)}"] if a.type.layout is not None else []
        extra = f" {{{', '.join(named + laid)}}}" if named or laid else ""
        args.append(f"%arg{i}: {tensor_type(a.type)}{extra}")
    outs = ", ".join(tensor_type(v.type) for v in graph.outputs)
    name = ident(graph.name, "forward")
    p.lines.append(f"  func.func @{name}({', '.join(args)}) -> ({outs}) {{")
    p.terminate(graph.body, "    ", "func.return")
    p.lines.append("  }")
    return "module {\n" + "\n".join(p.lines) + "\n}\n"

"""Text IR in MLIR conventions. `parse(print(g))` rebuilds g, and printing that again gives the
same text: names of inputs survive, results are numbered in order, default attributes are left out."""
from __future__ import annotations

import json
import math
import re

import numpy as np

from .core import Block, Graph, Op, Value
from .dtypes import DType
from .registry import OPS

# any name but a bare number (those are result names): `x`, `conv1.weight`, `0.weight` (Sequential)
_IDENT = re.compile(r"^(?!\d+$)[A-Za-z0-9_.$]+$")
_BARE_SYMBOL = re.compile(r"[A-Za-z0-9_.$-]+", re.ASCII)


def format_symbol(name: str) -> str:
    """`@name`, quoted as MLIR does (`@"fünf"`) when the bare form cannot spell it."""
    return f"@{name}" if _BARE_SYMBOL.fullmatch(name) else "@" + json.dumps(name, ensure_ascii=False)


class Namer:
    """Assigns every value in a graph a unique printable name."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.used: set[str] = set()
        self.suffix: dict[str, int] = {}
        self.scopes: dict[int, set[str]] = {}
        self.counter = 0

    def _fresh(self, hint: str) -> str:
        name, k = hint, self.suffix.get(hint, 0)
        if name in self.used:  # resume numbering where this hint left off: linear, not quadratic
            while name in self.used:
                k += 1
                name = f"{hint}_{k}"
            self.suffix[hint] = k
        self.used.add(name)
        return name

    def arg(self, v: Value, default: str) -> str:
        hint = v.name if v.name and _IDENT.match(v.name) else default
        n = self.names[id(v)] = self._fresh(hint)
        return n

    def region_arg(self, v: Value, default: str, block) -> str:
        """Names unique within one region only (results elsewhere are numbers, so never clash)."""
        scope = self.scopes.setdefault(id(block), set())
        hint = v.name if v.name and _IDENT.match(v.name) else default
        name, k = hint, 0
        while name in scope:
            k += 1
            name = f"{hint}_{k}"
        scope.add(name)
        self.names[id(v)] = name
        return name

    def result(self, v: Value) -> str:
        while str(self.counter) in self.used:
            self.counter += 1
        n = str(self.counter)
        self.used.add(n)
        self.counter += 1
        self.names[id(v)] = n
        return n

    def __getitem__(self, v: Value) -> str:
        return self.names.get(id(v), "<undefined>")


def format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    r = repr(float(x))
    return r if any(c in r for c in ".en") else r + ".0"


def format_attr(v) -> str:
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return format_float(float(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, DType):
        return v.name
    if isinstance(v, np.ndarray):
        return f"dense<{format_attr(v.ravel().tolist())}>"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


def _attrs(op: Op) -> str:
    d = OPS.get(op.name)
    items = []
    for k, v in op.attrs.items():
        if d is not None and (k == d.symbol or d.is_default(k, v)):
            continue
        items.append(f"{k} = {format_attr(v)}")
    return " {" + ", ".join(items) + "}" if items else ""


def _loc(op: Op, locations: bool) -> str:
    if not locations or op.loc is None:
        return ""
    return f" loc({json.dumps(op.loc.file)}:{op.loc.line})"


def op_lines(op: Op, namer: Namer, indent: str = "", locations: bool = False) -> list[str]:
    """The text of one op, regions included, naming values through `namer` (which must already
    know the op's operands)."""
    head = ""
    if op.results:
        head = ", ".join("%" + namer.result(r) for r in op.results) + " = "
    d = OPS.get(op.name)
    operands = ", ".join("%" + namer[v] for v in op.operands)
    if d is not None and d.symbol:
        text = f"{op.name} {format_symbol(str(op.attrs.get(d.symbol, '')))}({operands})"
    else:
        text = op.name + (" " + operands if operands else "")
    types = ", ".join(str(r.type) for r in op.results)
    line = f"{indent}{head}{text}{_attrs(op)} : {types}{_loc(op, locations)}"
    if not op.regions:
        return [line]
    lines = [line + " {"]
    for k, region in enumerate(op.regions):
        if k:  # each region in braces of its own, as the parser reads them
            lines.append(indent + "} {")
        lines += _block_lines(region, namer, indent + "  ", locations, header=True)
    lines.append(indent + "}")
    return lines


def _block_lines(block: Block, namer: Namer, indent: str, locations: bool, header: bool) -> list[str]:
    lines = []
    if header:  # a region is isolated from above: its argument names are its own (%arg0, ... again)
        args = ", ".join(f"%{namer.region_arg(a, f'arg{i}', block)}: {a.type}" for i, a in enumerate(block.args))
        lines.append(f"{indent}^bb0({args}):")
    for op in block.ops:
        lines += op_lines(op, namer, indent, locations)
    if block.terminator is not None:
        t = block.terminator
        ops = ", ".join("%" + namer[v] for v in t.operands)
        lines.append(f"{indent}{t.name}{' ' + ops if ops else ''}")
    return lines


def print_graph(graph: Graph, locations: bool = False, namer: Namer | None = None) -> str:
    namer = namer or Namer()
    args = ", ".join(f"%{namer.arg(a, f'arg{i}')}: {a.type}" for i, a in enumerate(graph.inputs))
    outs = ", ".join(str(v.type) for v in graph.outputs)
    lines = [f"func {format_symbol(graph.name)}({args}) -> ({outs}) {{"]
    lines += _block_lines(graph.body, namer, "  ", locations, header=False)
    lines.append("}")
    return "\n".join(lines) + "\n"


def name_values(graph: Graph) -> Namer:
    """The names the printer gives each value (used by error messages)."""
    namer = Namer()
    print_graph(graph, namer=namer)
    return namer


def format_op(op: Op, namer: Namer | None = None) -> str:
    """One op as its text line (regions elided), with the value names of its graph."""
    if namer is None:
        namer = Namer()
    head = ", ".join("%" + namer[r] for r in op.results)
    head = head + " = " if head else ""
    operands = ", ".join("%" + namer[v] for v in op.operands)
    return " ".join(x for x in (f"{head}{op.name}", operands, _attrs(op).strip()) if x)

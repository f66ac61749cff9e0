"""`from_mlir(text) -> Graph`: the `avalon` dialect read back into Avalon IR.

What `to_mlir(graph, "avalon")` writes comes back as the same graph (printing both gives the same
Avalon text), also after an MLIR tool has rewritten the module: upstream MLIR parses it (IREE's
bindings, the `mlir` extra), so generic or custom printing, `#loc` aliases and reordered attribute
dictionaries all read. A pass written in MLIR, xDSL or C++ over the avalon dialect can hand its
result back to Avalon to run, differentiate or compile.

The module holds one `func.func` whose ops are all `avalon.*` (results typed `tensor<...>`, regions
ending in `avalon.yield`), returning with `func.return`. Attributes are read by the kinds the op
registry gives them (`ints` from `array<i64: ...>`, a constant's `value` from a scalar or `dense<>`),
locations from `loc("file":line:col)` (the parser's own `loc("-":...)` of an op without one is
dropped), argument names from `{avalon.name = ...}`, layouts from `avalon.layouts`, `avalon.region_layouts`
and `avalon.layout`. The `linalg`
output is one-way: it has no Avalon ops to read. Anything else is a `MLIRReadError` naming the op
and its location.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from avalon.ir import OPS, Block, Graph, Location, Op, TensorType, Value, VerifyError, verify
from avalon.ir import dtypes as dt


class MLIRReadError(ValueError):
    """The module is not one Avalon graph in the avalon dialect; says which op, where."""


def _ir() -> Any:
    try:
        from iree.compiler import ir
    except ImportError as e:
        raise ImportError("reading MLIR needs upstream MLIR's Python bindings: pip install -e '.[mlir]'") from e
    return ir


def _where(op: Any) -> str:
    return f"'{op.name}' at {op.location}"


def _tensor(t: Any, where: str) -> TensorType:
    ir = _ir()
    if not isinstance(t, ir.RankedTensorType):
        raise MLIRReadError(f"{where}: type {t} is not a ranked tensor type")
    name = str(t.element_type)
    if name not in dt.BY_NAME:
        raise MLIRReadError(f"{where}: element type {name} is not an Avalon dtype ({', '.join(dt.BY_NAME)})")
    return TensorType(tuple(t.shape), dt.BY_NAME[name])


def _location(loc: Any) -> Location | None:
    """A file:line location (inside a named one too); others (fused, call sites, unknown) are dropped."""
    ir = _ir()
    while isinstance(loc, ir.NameLoc):
        loc = loc.child_loc
    if isinstance(loc, ir.FileLineColLoc) and loc.filename != "-":
        return Location(loc.filename, loc.start_line)
    return None


def _value(a: Any, dtype: dt.DType, where: str) -> Any:
    """A constant's `value`: a Python scalar, or an array of the constant's dtype."""
    ir = _ir()
    if isinstance(a, ir.BoolAttr):
        return bool(a.value)
    if isinstance(a, ir.IntegerAttr):
        return int(a.value)
    if isinstance(a, ir.FloatAttr):
        return float(a.value)
    if isinstance(a, ir.DenseElementsAttr):
        shape = tuple(ir.ShapedType(a.type).shape)
        if dtype == dt.bool_:
            return np.array([bool(a[i]) for i in range(int(np.prod(shape)))], np.bool_).reshape(shape)
        if dtype == dt.bfloat16:  # no buffer for bf16: element by element (exact in f32)
            return np.array([float(a[i]) for i in range(int(np.prod(shape)))], np.float32).reshape(shape)
        if a.is_splat:
            return np.full(shape, np.array(a.get_splat_value().value, dtype.np))
        return np.array(a).astype(dtype.np).reshape(shape)
    raise MLIRReadError(f"{where}: a constant's value must be a number or dense<...>, got {a}")


Layouts = list[tuple[int, ...] | None]


def _attrs(op: Any, name: str, where: str) -> tuple[dict[str, Any], Layouts, list[Layouts]]:
    ir = _ir()
    d = OPS[name]
    raw = {op.attributes[i].name: op.attributes[i].attr for i in range(len(op.attributes))}
    layouts: list[tuple[int, ...] | None] = []
    if "avalon.layouts" in raw:
        layouts = [tuple(x) or None for x in raw.pop("avalon.layouts")]
    regions = [[tuple(x) or None for x in r] for r in raw.pop("avalon.region_layouts", [])]
    dtype = raw.get("dtype")
    dtype = dt.BY_NAME.get(str(dtype.value), dt.float32) if isinstance(dtype, ir.TypeAttr) else dt.float32
    out: dict[str, Any] = {}
    for k, a in raw.items():
        if k not in d.attrs:
            raise MLIRReadError(f"{where}: '{name}' has no attribute '{k}' (known: {', '.join(d.attrs) or 'none'})")
        kind = d.attrs[k].kind
        try:
            if kind == "ints":
                out[k] = [int(x) for x in a]
            elif kind == "dtype":
                out[k] = dt.BY_NAME[str(a.value)]
            elif kind == "value":
                out[k] = _value(a, dtype, where)
            elif kind == "str":
                out[k] = a.value
            else:  # int, float, bool
                out[k] = a.value
        except (AttributeError, KeyError, TypeError) as e:
            raise MLIRReadError(f"{where}: attribute {k} = {a} is not a valid {kind} ({e})") from None
    return out, layouts, regions


def _laid(types: list[TensorType], layouts: Layouts) -> list[TensorType]:
    return [TensorType(t.shape, t.dtype, lay) for t, lay in zip(types, layouts)] if layouts else types


class _Reader:
    def __init__(self) -> None:
        self.values: dict[Any, Value] = {}

    def block(self, mblock: Any, block: Block, terminator: str) -> None:
        for mop in mblock.operations:
            mop = mop.operation
            if mop.name == terminator:
                block.set_terminator("yield" if terminator == "avalon.yield" else "return",
                                     [self.use(v, mop) for v in mop.operands])
                return
            block.append(self.op(mop))
        raise MLIRReadError(f"a block ends without '{terminator}'")

    def use(self, v: Any, mop: Any) -> Value:
        try:
            return self.values[v]
        except KeyError:
            raise MLIRReadError(f"{_where(mop)}: an operand is defined outside the graph or region") from None

    def op(self, mop: Any) -> Op:
        where = _where(mop)
        if not mop.name.startswith("avalon.") or mop.name[len("avalon."):] not in OPS:
            hint = (" (the linalg output cannot be read back: read the avalon dialect)"
                    if not mop.name.startswith("avalon.") else "")
            raise MLIRReadError(f"{where}: not an Avalon op{hint}")
        name = mop.name[len("avalon."):]
        attrs, layouts, regions = _attrs(mop, name, where)
        types = _laid([_tensor(r.type, where) for r in mop.results], layouts)
        try:
            attrs = OPS[name].normalize_attrs(attrs)
        except (TypeError, ValueError) as e:
            raise MLIRReadError(f"{where}: {e}") from None
        op = Op(name, [self.use(v, mop) for v in mop.operands], types, attrs, loc=_location(mop.location))
        for mr, r in zip(mop.results, op.results):
            self.values[mr] = r
        for i, mregion in enumerate(mop.regions):
            mblock = mregion.blocks[0]
            region = Block(_laid([_tensor(a.type, where) for a in mblock.arguments], regions[i] if regions else []))
            for ma, a in zip(mblock.arguments, region.args):
                self.values[ma] = a
            self.block(mblock, region, "avalon.yield")
            op.add_region(region)
        return op


def from_mlir(text: str) -> Graph:
    """Read a module in the avalon dialect (as `to_mlir(graph, "avalon")` writes it) into a verified
    Graph; see the module docstring."""
    ir = _ir()
    ctx = ir.Context()
    ctx.allow_unregistered_dialects = True
    try:
        module = ir.Module.parse(text, ctx)
    except Exception as e:  # MLIRError: the parser's diagnostics, with line and column
        raise MLIRReadError(f"MLIR does not parse: {e}") from None
    funcs = [op.operation for op in module.body.operations]
    if len(funcs) != 1 or funcs[0].name != "func.func":
        raise MLIRReadError(f"expected one func.func in the module, found {[f.name for f in funcs]}")
    func = funcs[0]
    mblock = func.regions[0].blocks[0]
    names: list[str | None] = [None] * len(mblock.arguments)
    layouts: Layouts = [None] * len(mblock.arguments)
    if "arg_attrs" in func.attributes:
        for i, d in enumerate(func.attributes["arg_attrs"]):
            if "avalon.name" in d:
                names[i] = d["avalon.name"].value
            if "avalon.layout" in d:
                layouts[i] = tuple(d["avalon.layout"])
    where = f"func.func @{func.attributes['sym_name'].value}"
    body = Block(_laid([_tensor(a.type, where) for a in mblock.arguments], layouts), names)
    reader = _Reader()
    for ma, a in zip(mblock.arguments, body.args):
        reader.values[ma] = a
    reader.block(mblock, body, "func.return")
    graph = Graph(func.attributes["sym_name"].value, body)
    try:
        verify(graph)
    except VerifyError as e:  # reads, but is not a valid graph (a hand edit's type mismatch)
        loc = e.op.loc if e.op is not None else None
        raise MLIRReadError(f"{e}" + (f" (from {loc.file}:{loc.line})" if loc is not None else "")) from None
    return graph

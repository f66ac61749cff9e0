"""Building ops with their attributes normalized and result types inferred."""
from __future__ import annotations

from typing import Any

from .core import Block, Graph, Location, Op, Value
from .registry import infer_types, lookup
from .types import TensorType


def make_op(name: str, /, operands: list[Value], attrs: dict[str, Any] | None = None,
            loc: Location | None = None, result_types: list[TensorType] | None = None) -> Op:
    """An op not yet in any block, with defaults filled and types inferred (raises ShapeError)."""
    d = lookup(name)
    a = d.normalize_attrs(attrs or {})
    types = result_types if result_types is not None else infer_types(name, [v.type for v in operands], a)
    return Op(name, list(operands), types, a, loc=loc)


class Builder:
    """Appends ops to a block (or inserts them before an anchor op), like MLIR's OpBuilder."""

    def __init__(self, block: Block | Graph, before: Op | None = None):
        self.block = block.body if isinstance(block, Graph) else block
        self.before = before
        self.loc: Location | None = None  # stamped on every op built while set

    def insert(self, op: Op) -> Op:
        if self.before is not None:
            self.block.insert_before(self.before, op)
        else:
            self.block.append(op)
        return op

    def op(self, opname: str, /, *operands: Value, loc: Location | None = None, **attrs) -> Op:
        return self.insert(make_op(opname, list(operands), attrs, loc or self.loc))

    def __call__(self, opname: str, /, *operands: Value, loc: Location | None = None, **attrs) -> Value:
        """Build a single-result op and return its result."""
        return self.op(opname, *operands, loc=loc, **attrs).result

    def fusion(self, name: str, operands: list[Value], region: Block, loc: Location | None = None) -> Op:
        """A fused group whose results are what `region` yields."""
        op = make_op("fusion", operands, {"name": name}, loc or self.loc,
                     result_types=[v.type for v in region.results])
        op.add_region(region)
        return self.insert(op)

    def constant(self, value, shape=(), dtype="f32") -> Value:
        return self("constant", value=value, shape=list(shape), dtype=dtype)

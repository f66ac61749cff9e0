"""Avalon's typed SSA IR: dtypes and tensor types, values/ops/blocks/graphs, the op registry,
a builder, and MLIR-style text that round-trips through `parse`."""
from . import ops as _ops  # noqa: F401  (registers the primitives)
from .builder import Builder, make_op
from .core import Block, Graph, Location, Op, Value
from .dot import to_dot
from .dtypes import DType, bfloat16, bool_, dtype, float16, float32, float64, int32, int64
from .parser import ParseError, parse
from .printer import format_op, print_graph
from .registry import OPS, Attr, OpDef, ShapeError, define_op, infer_types, lookup
from .types import TensorType
from .verify import VerifyError, verify

__all__ = [
    "Attr", "Block", "Builder", "DType", "Graph", "Location", "OPS", "Op", "OpDef", "ParseError",
    "ShapeError", "TensorType", "Value", "VerifyError", "bfloat16", "bool_", "define_op", "dtype",
    "float16", "float32", "float64", "format_op", "infer_types", "int32", "int64", "lookup", "make_op",
    "parse", "print_graph", "to_dot", "verify",
]

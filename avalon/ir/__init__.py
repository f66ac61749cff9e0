"""Avalon's typed SSA IR: dtypes and tensor types, values/ops/blocks/graphs, the op registry,
a builder, MLIR-style text that round-trips through `parse`, and the meaning of every op: its
numpy reference rule (`REFERENCE`, `evaluate`) and the interpreter that runs graphs with them
(`interpret`). The reference semantics are the definition of an op, so they live beside its
declaration rather than under one backend."""
from . import primitives as _primitives  # noqa: F401  (registers the primitives)
from .builder import Builder, make_op
from .core import Block, Graph, LiteralArray, Location, Op, Value
from .dot import to_dot
from .dtypes import DType, bfloat16, bool_, dtype, float16, float32, float64, int8, int16, int32, int64, uint8
from .fusion import fusion_groups, group_graph, group_name, region_function
from .interpreter import Interpreter, interpret, to_numpy
from .parser import ParseError, parse
from .printer import format_op, print_graph
from .reference import REFERENCE, evaluate, random_bits, round_bf16, to_result
from .registry import OPS, TRAITS, Attr, OpDef, ShapeError, define_op, infer_types, lookup
from .types import TensorType
from .verify import VerifyError, verify

__all__ = [
    "Attr", "Block", "Builder", "DType", "Graph", "Interpreter", "Location", "OPS", "Op", "OpDef", "ParseError",
    "LiteralArray", "REFERENCE", "ShapeError", "TRAITS", "TensorType", "Value", "VerifyError", "bfloat16", "bool_",
    "define_op",
    "dtype",
    "evaluate", "float16", "float32", "float64", "format_op", "fusion_groups", "group_graph", "group_name",
    "infer_types", "int8", "int16", "int32", "int64", "interpret", "lookup", "make_op", "parse", "print_graph",
    "random_bits", "region_function", "round_bf16", "to_dot", "to_numpy", "to_result", "uint8", "verify",
]

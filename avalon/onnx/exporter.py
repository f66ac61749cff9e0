"""`avalon.onnx.export`: an Avalon model, function, graph or IR text written as an ONNX model.

The model is traced (`av.trace`), each op written through the `onnx_export` table, and fusion
regions inlined back to their standard ops. A model's state becomes initializers named as in
`state_dict`; the example arguments become the graph inputs. A graph or IR text holds no weights,
so each of its arguments becomes a graph input, in order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import Graph, parse
from ..tensor import Tensor
from . import export_rules
from .dtypes import onnx_elem_type
from .table import UnsupportedOp

OPSET = 18


class OnnxWriter:
    """Collects ONNX nodes and constants, naming values uniquely."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.names: dict[int, str] = {}
        self._n = 0
        self.opset = OPSET  # a rule needing a newer operator raises it (bitcast: BitCast, opset 26)

    def fresh(self, hint: str = "v") -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def node(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(op_type), **attrs))
        return outs

    def const(self, value: np.ndarray, dtype: Any = None) -> str:
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(_stored(value, dtype), name))
        return name

    def ints(self, v: Any, scalar: bool = False) -> str:
        return self.const(np.array(v, dtype=np.int64) if scalar else np.array(list(v), dtype=np.int64).reshape(-1))

    def name(self, v: Any) -> str:
        return self.names[id(v)]

    def emit_block(self, ops: list[Any]) -> None:
        for op in ops:
            if op.name == "fusion":  # inline the region: its arguments are the op's operands
                block = op.regions[0]
                for arg, operand in zip(block.args, op.operands):
                    self.names[id(arg)] = self.name(operand)
                self.emit_block(list(block.ops))
                for r, y in zip(op.results, block.results):
                    self.names[id(r)] = self.name(y)
                continue
            rule = export_rules.EXPORT.get(op.name)
            if rule is None and op.has_trait("factorization"):
                raise UnsupportedOp(f"avalon.onnx.export: op {op.name!r}{f' (from {op.loc})' if op.loc else ''} is a "
                                    "LAPACK factorization, and ONNX has no SVD, eigensolver, QR or LDL operator: "
                                    "compute it outside the exported function")
            if rule is None:
                raise UnsupportedOp(f"avalon.onnx.export: op {op.name!r}{f' (from {op.loc})' if op.loc else ''} has no "
                                    "ONNX mapping")
            outs = rule(self, op, [self.name(v) for v in op.operands])
            for r, o in zip(op.results, outs):
                self.names[id(r)] = o


def _stored(value: Any, dtype: Any = None) -> np.ndarray:
    """`value` as the numpy array onnx stores for `dtype`: bf16 (held as float32) as ml_dtypes'."""
    arr = np.asarray(value)
    if dtype is None:
        return arr
    if dtype.name == "bf16":
        import ml_dtypes
        return arr.astype(np.float32).astype(ml_dtypes.bfloat16)
    return arr.astype(dtype.np)


def _value_info(name: str, v: Any) -> Any:
    return helper.make_tensor_value_info(name, onnx_elem_type(v.dtype), list(v.shape))


def graph_to_onnx(graph: Graph, state: dict[str, np.ndarray] | None = None) -> Any:
    """ONNX ModelProto of `graph`; inputs named in `state` become initializers holding its arrays."""
    state = state or {}
    em = OnnxWriter()
    inputs, inits = [], []
    for i, v in enumerate(graph.inputs):
        name = v.name or f"arg{i}"
        em.names[id(v)] = name
        if name in state:
            inits.append(numpy_helper.from_array(_stored(state[name], v.dtype), name))
        else:
            inputs.append(_value_info(name, v))
    em.emit_block(list(graph.ops))
    outputs = []
    for i, v in enumerate(graph.outputs):
        src = em.name(v)
        out = f"output_{i}"
        em.nodes.append(helper.make_node("Identity", [src], [out], name=em.fresh("Identity")))
        outputs.append(_value_info(out, v))
    g = helper.make_graph(em.nodes, graph.name or "forward", inputs, outputs, initializer=inits + em.initializers)
    opset = [helper.make_opsetid("", em.opset)]
    model = helper.make_model(g, opset_imports=opset, producer_name="avalon")
    model.ir_version = 8 if em.opset == OPSET else helper.find_min_ir_version_for(opset)
    onnx.checker.check_model(model)
    return model


def export(model_or_fn: Any, path: str | Path | None, *example_args: Any) -> Any:
    """Write `model_or_fn` (a model or function with example arguments, an `ir.Graph`, or IR text)
    as ONNX to `path` (None: only return it); returns the ModelProto."""
    from ..trace import trace
    from ..tree import is_model, named_tensors
    state: dict[str, np.ndarray] = {}
    if isinstance(model_or_fn, str):
        graph = parse(model_or_fn)
    elif isinstance(model_or_fn, Graph):
        graph = model_or_fn
    else:
        from ..complex import ComplexTensor
        # (a ComplexTensor is traced as its real and imaginary parts: two float inputs)
        args = [a if isinstance(a, (Tensor, ComplexTensor)) or not hasattr(a, "shape") else Tensor(np.asarray(a))
                for a in example_args]
        graph = trace(model_or_fn, *args)
        if is_model(model_or_fn):
            state = {n: t.numpy() for n, t in named_tensors(model_or_fn)}
    proto = graph_to_onnx(graph, state)
    if path is not None:
        onnx.save(proto, str(path))
    return proto

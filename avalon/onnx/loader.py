"""`avalon.onnx.load`: an ONNX model as an Avalon model.

Floating-point initializers become parameters (named as in the file); other initializers, Constant
nodes, Shape and anything computed from those alone are folded to numpy constants when the node
runs, so shape arithmetic never reaches the IR. Every node's op must be in `ONNX_OPS`; the check and
a trial trace (which reaches attribute-level limits) happen in `load`, before anything runs.
"""
from __future__ import annotations

import contextlib
import io
import re
from collections import ChainMap
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..interop.model import ImportedModel, ImportedProgram, UnsupportedOp, get_dotted
from ..ir import dtypes as dt
from ..tensor import Tensor
from ..trace import _STACK

# the rule modules fill ONNX_OPS as they are imported
from . import (  # noqa: F401
    ops_attention,
    ops_contrib,
    ops_contrib_quant,
    ops_control,
    ops_detection,
    ops_extra,
    ops_math,
    ops_nn,
    ops_quant,
    ops_shape,
    ops_signal,
    ops_training,
    ops_vision,
)
from .dtypes import avalon_dtype
from .table import ONNX_OPS, NeedsConstant, Node, op_key

MIN_OPSET = 13
"""The oldest opset the rules read; older models are brought to it by onnx's own version converter
(`_upgraded`), which knows every op's changes (Softmax's axis, Split's and Squeeze's attributes turned
inputs, Upsample to Resize, ...) better than per-rule version switches would."""


class OnnxModel(ImportedModel):
    """An imported ONNX graph; `input_specs` lists (name, shape or None per dim, dtype) per graph input."""

    def example_inputs(self, seed: int = 0, shapes: dict[str, tuple[int, ...]] | None = None) -> list[np.ndarray]:
        """Random inputs of the declared shapes; a dynamic dimension needs an example shape in `shapes`."""
        rng = np.random.default_rng(seed)
        out = []
        for name, shape, d in self.input_specs:
            if shapes and name in shapes:
                shape = tuple(shapes[name])
            elif shape is None:
                raise ValueError(f"ONNX input {name!r} is a sequence or an optional; example inputs are tensors")
            elif any(s is None for s in shape):
                dims = ["?" if s is None else s for s in shape]
                raise ValueError(f"ONNX input {name!r} has a dynamic dimension {dims}; give an example shape for it")
            if d.is_float:
                out.append(rng.standard_normal(shape).astype(d.np))
            elif d.name == "i1":
                out.append(rng.random(shape) < 0.5)
            else:
                out.append(rng.integers(0, 3, size=shape).astype(d.np))
        return out


@contextlib.contextmanager
def outside_trace() -> Iterator[None]:
    """Run ops eagerly even inside a trace: folding constants must not record ops."""
    saved = list(_STACK)
    _STACK.clear()
    try:
        yield
    finally:
        _STACK.extend(saved)


def _read(source: Any) -> Any:
    import onnx
    if isinstance(source, onnx.ModelProto):
        return source
    what = source
    if isinstance(source, (bytes, bytearray, memoryview)):  # torch.onnx.export into a BytesIO, .getvalue()
        source, what = io.BytesIO(bytes(source)), f"<{len(source)} bytes>"
    elif hasattr(source, "read"):
        what = getattr(source, "name", "<file object>")
    try:
        model = onnx.load(source if hasattr(source, "read") else str(source))
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{what}: not a readable ONNX model ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else 'truncated or malformed'})") from None
    return model


def _opset(model: Any) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return MIN_OPSET


def _upgraded(model: Any, opset: int) -> Any:
    """`model` (opset < MIN_OPSET) converted to MIN_OPSET by `onnx.version_converter`."""
    import onnx
    from onnx import version_converter
    for i, n in enumerate(model.graph.node):  # the converter's own message for these is garbled
        if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type):
            raise UnsupportedOp(f"ONNX node {n.name or f'#{i} ({n.op_type})'!r}: {n.op_type} is not an ONNX op "
                                f"(opset {opset} model; onnx {onnx.__version__} has no schema for it)")
    if opset < 9 and any(n.op_type == "Scan" for _, n in _all_nodes(model.graph)):
        raise UnsupportedOp(f"ONNX opset {opset}: Scan before opset 9 (batched, with sequence_lens) is not supported, "
                            "and onnx's version converter leaves it as it is")
    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        why = why.split("failed: ", 1)[-1]
        raise UnsupportedOp(f"ONNX opset {opset}: onnx's version converter could not bring the model to opset "
                            f"{MIN_OPSET}, the oldest Avalon reads ({why})") from None


def _all_nodes(graph: Any) -> Iterator[tuple[int, Any]]:
    """(position in its graph, node) for every node of `graph` and of its subgraphs."""
    for i, n in enumerate(graph.node):
        yield i, n
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _all_nodes(sub)


def _unsupported_ops(graph: Any) -> None:
    """One error naming every op the table lacks (with its count and first node), not just the first,
    subgraphs (If's branches, Loop's body, ...) included."""
    missing: dict[str, list[str]] = {}
    for i, n in _all_nodes(graph):
        label = n.name or f"#{i} ({n.op_type} -> {', '.join(n.output)})"
        if op_key(n.domain, n.op_type) not in ONNX_OPS:
            missing.setdefault(n.op_type if n.domain in ("", "ai.onnx") else f"{n.op_type} of domain {n.domain!r}",
                               []).append(label)
    if missing:
        lines = [f"ONNX node {labels[0]!r}: op {op} is not supported" + (f" ({len(labels)} nodes)" if len(labels) > 1
                                                                        else "") for op, labels in missing.items()]
        raise UnsupportedOp("\n".join(lines) if len(lines) == 1 else
                            f"{len(missing)} ONNX ops are not supported:\n  " + "\n  ".join(lines))


@dataclass
class Subgraph:
    """A graph attribute (If's branches, Loop's and Scan's bodies): called with the body's inputs, it
    runs its nodes in the scope of the node that holds it (outer names are visible) and returns its
    outputs. Its initializers are constants, not parameters. `output_types` are the declared
    (shape or None, dtype) of each output, for a Loop that runs zero times."""

    label: str
    inputs: list[str]
    outputs: list[str]
    nodes: list[tuple[Node, list[str], list[str]]]
    constants: dict[str, np.ndarray]
    output_types: list[tuple[tuple | None, Any]]
    scope: Mapping[str, Any] = field(default_factory=dict)

    def bound(self, scope: Mapping[str, Any]) -> Subgraph:
        return replace(self, scope=scope)

    def __call__(self, *args: Any) -> tuple:
        if len(args) != len(self.inputs):
            raise UnsupportedOp(f"{self.label}: the body takes {len(self.inputs)} inputs, got {len(args)}")
        env = ChainMap(dict(zip(self.inputs, args)), self.constants, self.scope)
        _eval(self.nodes, env)
        return tuple(env[o] for o in self.outputs)


def _subgraph(g: Any, label: str, opset: int) -> Subgraph:
    import onnx
    consts = {i.name: onnx.numpy_helper.to_array(i).copy() for i in g.initializer}
    types = []
    for o in g.output:
        tt = o.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim) \
            if o.type.HasField("tensor_type") and tt.HasField("shape") else None
        dtype = avalon_dtype(tt.elem_type, label) if o.type.HasField("tensor_type") and tt.elem_type else None
        types.append((None if shape is None or None in shape else shape, dtype))
    return Subgraph(label, [i.name for i in g.input], [o.name for o in g.output], _graph_nodes(g, opset), consts, types)


def _nodes(model: Any, opset: int) -> list[tuple[Node, list[str], list[str]]]:
    _unsupported_ops(model.graph)
    return _graph_nodes(model.graph, opset)


def _graph_nodes(graph: Any, opset: int) -> list[tuple[Node, list[str], list[str]]]:
    import onnx
    out = []
    for i, n in enumerate(graph.node):
        label = n.name or f"#{i} ({n.op_type} -> {', '.join(n.output)})"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for k, v in attrs.items():
            if isinstance(v, bytes):
                attrs[k] = v.decode()
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                attrs[k] = [b.decode() for b in v]
            elif isinstance(v, onnx.TensorProto):
                attrs[k] = onnx.numpy_helper.to_array(v)
            elif isinstance(v, onnx.GraphProto):
                attrs[k] = _subgraph(v, f"ONNX node {label!r} ({n.op_type}), {k}", opset)
            elif isinstance(v, onnx.SparseTensorProto) or (isinstance(v, list) and v and
                                                           isinstance(v[0], onnx.GraphProto)):
                raise UnsupportedOp(f"ONNX node {label!r} ({n.op_type}): attribute {k!r} of this kind is not supported")
        outs = [o for o in n.output]
        out.append((Node(n.op_type, label, attrs, len(outs), opset, n.domain), list(n.input), outs))
    return out


def _eval(nodes: list[tuple[Node, list[str], list[str]]], env: MutableMapping[str, Any]) -> None:
    """Run `nodes` in order over `env` (names -> values). A node whose inputs are all known now
    (numpy) is folded outside any trace, so shape arithmetic never reaches the IR; nodes with
    subgraphs and Dropout (a random draw) always run in the trace."""
    for node, ins, outs in nodes:
        values = [env[i] for i in ins]
        while values and values[-1] is None:
            values.pop()
        rule = ONNX_OPS[node.key]
        subs = {k: v.bound(env) for k, v in node.attrs.items() if isinstance(v, Subgraph)}
        if subs:
            node = replace(node, attrs={**node.attrs, **subs})
        if not subs and all(v is None or isinstance(v, np.ndarray) for v in values) and node.op_type != "Dropout":
            with outside_trace():
                res = rule(node, *values)
            res = tuple(_folded(r) for r in res) if isinstance(res, tuple) else _folded(res)
        else:
            try:
                res = rule(node, *values)
            except NeedsConstant as e:
                if str(e).startswith("ONNX node"):
                    raise
                raise NeedsConstant(f"ONNX node {node.name!r} ({node.op_type}): data-dependent shape: {e}") from None
        res = res if isinstance(res, tuple) else (res,)
        for name, r in zip(outs, res):
            if name:
                env[name] = r


def _input_specs(model: Any, init_names: set[str]) -> list[tuple[str, tuple, Any]]:
    specs = []
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        ty = vi.type
        while ty.HasField("optional_type") or ty.HasField("sequence_type"):  # a list or None; shape None
            ty = ty.optional_type.elem_type if ty.HasField("optional_type") else ty.sequence_type.elem_type
            shape = None
        if not ty.HasField("tensor_type"):
            raise UnsupportedOp(f"ONNX input {vi.name!r}: only tensors, sequences and optionals are supported")
        tt = ty.tensor_type
        if ty is vi.type:
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        specs.append((vi.name, shape, avalon_dtype(tt.elem_type, f"ONNX input {vi.name!r}")))
    return specs


def _dim_names(model: Any, init_names: set[str]) -> dict[str, tuple[str | None, ...]]:
    """The symbolic dimensions' names (`dim_param`) of each tensor graph input."""
    out = {}
    for vi in model.graph.input:
        if vi.name not in init_names and vi.type.HasField("tensor_type"):
            out[vi.name] = tuple(d.dim_param or None for d in vi.type.tensor_type.shape.dim)
    return out


def _checked_input(spec: tuple[str, tuple | None, Any], v: Any, dims: tuple[str | None, ...],
                   sizes: dict[str, tuple[str, int, int]]) -> Any:
    """A tensor input must have the declared dtype, rank and fixed sizes (onnxruntime's checks: a
    float64 array would otherwise run the float32 model in float64), and the dimensions sharing a
    `dim_param` name one size per call (onnxruntime lets a batch of 1 broadcast against 4 there)."""
    name, shape, d = spec
    if not isinstance(v, Tensor) or shape is None:
        return v
    declared = tuple(dims[i] or ("?" if e is None else e) for i, e in enumerate(shape)) if dims else shape
    if v.dtype is not d:
        have, want = dt.PY_NAMES[v.dtype.name], dt.PY_NAMES[d.name]
        raise TypeError(f"ONNX input {name!r} is {have}, the model declares {want} (shape {declared}); "
                        f"convert it first (`x.astype(np.{want})`, `x.to(av.{want})`)")
    if v.ndim != len(shape) or any(e is not None and e != g for e, g in zip(shape, v.shape)):
        raise TypeError(f"ONNX input {name!r} has shape {v.shape}, the model declares {declared}")
    for i, label in enumerate(dims):
        if label is None or shape[i] is not None:
            continue
        first = sizes.setdefault(label, (name, i, v.shape[i]))
        if first[2] != v.shape[i]:
            raise TypeError(f"ONNX input {name!r} dimension {i} ({label!r}) is {v.shape[i]}, but input {first[0]!r} "
                            f"dimension {first[1]} ({label!r}) is {first[2]}: dimensions with one name have one size")
    return v


def _input_value(a: Any) -> Any:
    """A graph input as the rules see it: a Tensor, a list for a sequence, None for an empty optional."""
    if a is None or isinstance(a, Tensor):
        return a
    if isinstance(a, (list, tuple)) and (not a or not isinstance(a[0], (int, float, bool))):
        return [_input_value(e) for e in a]
    return Tensor(np.asarray(a))


def load(source: Any, check: bool = True) -> OnnxModel:
    """Load an ONNX model (a path or a `ModelProto`) as an Avalon model called with the graph inputs
    in order; returns one output alone, several as a tuple."""
    import onnx
    model = _read(source)
    opset = _opset(model)
    if opset < MIN_OPSET:
        model, opset = _upgraded(model, opset), MIN_OPSET
    if not model.graph.node and not model.graph.output:
        raise ValueError("ONNX model has an empty graph (truncated or malformed file?)")
    nodes = _nodes(model, opset)
    state: list[tuple[str, Tensor]] = []
    constants: dict[str, np.ndarray] = {}
    params: list[str] = []
    for init in model.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
            avalon_dtype(init.data_type, f"ONNX initializer {init.name!r}")
            state.append((init.name, Tensor(arr.copy())))
            params.append(init.name)
        else:
            constants[init.name] = arr.copy()
    init_names = set(params) | set(constants)
    specs = _input_specs(model, init_names)
    outputs = [o.name for o in model.graph.output]
    for o in model.graph.output:
        if o.type.HasField("tensor_type") and o.type.tensor_type.elem_type:
            avalon_dtype(o.type.tensor_type.elem_type, f"ONNX output {o.name!r}")

    dim_names = _dim_names(model, init_names)

    def run(m: ImportedModel, args: tuple, kwargs: dict) -> Any:
        args = _bind_inputs(specs, args, kwargs)
        env: dict[str, Any] = dict(constants)
        for name in params:
            env[name] = get_dotted(m, name)
        sizes: dict[str, tuple[str, int, int]] = {}
        for spec, a in zip(specs, args):
            env[spec[0]] = _checked_input(spec, _input_value(a), dim_names.get(spec[0], ()), sizes)
        env[""] = None
        _eval(nodes, env)
        result = tuple(env[o] if not isinstance(env[o], np.ndarray) else Tensor(env[o]) for o in outputs)
        return result[0] if len(result) == 1 else result

    name = model.graph.name or "graph"
    m = OnnxModel(state, ImportedProgram(run, f"ONNX {name!r}, opset {opset}, {len(nodes)} nodes"))
    m.input_specs = specs
    m.output_names = outputs
    if check and all(s is not None and None not in s for _, s, _ in specs):
        _trial(m)
    return m


def _bind_inputs(specs: list[tuple[str, tuple, Any]], args: tuple, kwargs: dict) -> tuple:
    """The graph inputs in order, given positionally and/or by their ONNX names."""
    names = [s[0] for s in specs]
    listing = f"{len(names)} inputs ({', '.join(names)})"
    if len(args) > len(names):
        raise TypeError(f"ONNX model takes {listing}, got {len(args)} positional")
    given = dict(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            raise TypeError(f"ONNX model has no input {k!r}; it takes {listing}")
        if k in given:
            raise TypeError(f"ONNX input {k!r} given both by position and by name")
        given[k] = v
    missing = [n for n in names if n not in given]
    if missing:
        raise TypeError(f"ONNX model takes {listing}; missing {', '.join(map(repr, missing))}")
    return tuple(given[n] for n in names)


def _folded(r: Any) -> Any:
    """A folded result as an ndarray: numpy scalars (np.take of a 0-d index) must stay constants.
    A bf16 tensor stays a tensor (numpy has no bf16: as float32 it would compute in f32 later)."""
    if isinstance(r, Tensor):
        return r if r.dtype is dt.bfloat16 else r.numpy()
    return np.asarray(r) if isinstance(r, np.generic) else r


def _trial(m: OnnxModel) -> None:
    """Trace once on example inputs: a node whose attributes we cannot take raises UnsupportedOp
    now, not at the first call. Failures that need run-time values are left to the call."""
    from ..trace import trace
    try:
        trace(m, *[Tensor(a) for a in m.example_inputs()])
    except NeedsConstant:
        pass  # a data-dependent shape: eager calls read it; tracing names the node
    except UnsupportedOp:
        raise
    except Exception:
        pass


def ir_name(name: str) -> str:
    """An ONNX name as an IR value name the parser reads back (`fc/W:0` -> `fc_W_0`); bare numbers
    are result names in the IR, so they get a leading `_`."""
    out = re.sub(r"[^A-Za-z0-9_.$]", "_", name) or "_"
    return "_" + out if out.isdigit() else out


def name_graph_inputs(graph: Any, model: OnnxModel) -> None:
    """Name a traced model's arguments after the ONNX initializers and graph inputs (a model's
    `*args` would trace as `arg0`, `arg1`, ...): its state leaves come first, then the inputs."""
    n = len(model.input_specs)
    state = graph.inputs[:len(graph.inputs) - n]
    for v in state:
        v.name = ir_name(v.name) if v.name else v.name
    for v, (name, _, _) in zip(graph.inputs[len(state):], model.input_specs):
        v.name = ir_name(name)

"""ONNX control flow (If, Loop, Scan, SequenceMap) as straight-line Avalon code.

Avalon's IR has no regions, so a branch or a trip count must be known when the node runs: a
condition or count computed from shapes and constants folds when the model loads, and an eager call
reads run-time values. Traced, a Loop or Scan unrolls (its body is traced once per iteration), and an
If whose condition is data-dependent computes both branches and selects with `where` when their
outputs agree in shape; anything else raises `NeedsConstant` naming the node.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from .table import NeedsConstant, Node, T, axis, onnx_op, static

MAX_TRIPS = 100_000
"""A Loop that runs longer is refused (its unrolled trace would not be a useful program)."""


def _known(x: Any) -> bool:
    return not (isinstance(x, Tensor) and x.is_traced)


def _truth(node: Node, x: Any, what: str) -> bool:
    if not _known(x):
        raise NeedsConstant(f"ONNX node {node.name!r} ({node.op_type}): {what} is computed at run time; "
                            "Avalon unrolls control flow, so it must be known when the node runs (call the model "
                            "eagerly, or export it with the value fixed)")
    v = np.asarray(static(x, what))
    if v.size != 1:
        raise node.unsupported(f"{what} must hold one element, got shape {v.shape}")
    return bool(v.reshape(()))


def _stack(items: list[Any], dim: int = 0) -> Any:
    if all(isinstance(v, np.ndarray) for v in items):
        return np.stack(items, dim)
    return ops.stack([T(v) for v in items], dim)


@onnx_op("If")
def if_(node: Node, cond: Any) -> Any:
    then, other = node.attr("then_branch"), node.attr("else_branch")
    if _known(cond):
        out = then() if _truth(node, cond, "the condition") else other()
        return out if len(out) != 1 else out[0]
    a, b = then(), other()
    picked = []
    for i, (x, y) in enumerate(zip(a, b)):
        if isinstance(x, list) or isinstance(y, list) or tuple(T(x).shape) != tuple(T(y).shape):
            _truth(node, cond, f"the condition (output {i}: the branches give different shapes or sequences)")
        c = ops.reshape(ops.cast(T(cond), dt.bool_), ())
        picked.append(ops.where(c, T(x), ops.cast(T(y), T(x).dtype)))
    return tuple(picked) if len(picked) != 1 else picked[0]


@onnx_op("Loop")
def loop(node: Node, trips: Any = None, cond: Any = None, *carried: Any) -> Any:
    """body(i, cond, *carried) -> (cond, *carried, *scan_outputs), scan outputs stacked on a new
    first axis; unrolled."""
    body = node.attr("body")
    n = None if trips is None else int(np.asarray(static(trips, "the trip count")).reshape(()))
    if n is None and cond is None:
        raise node.unsupported("a Loop with neither a trip count nor a condition never ends")
    going = True if cond is None else _truth(node, cond, "the initial condition")
    k = len(carried)
    scans: list[list[Any]] = []
    i = 0
    while going and (n is None or i < n):
        if i >= MAX_TRIPS:
            raise node.unsupported(f"the loop runs more than {MAX_TRIPS} iterations")
        out = body(np.asarray(i, np.int64), np.asarray(going), *carried)
        going = _truth(node, out[0], "the loop condition") if cond is not None else True
        carried = out[1:1 + k]
        scans.append(list(out[1 + k:]))
        i += 1
    n_scan = len(body.outputs) - 1 - k
    if not scans:
        stacked = []
        for shape, dtype in body.output_types[1 + k:]:
            if shape is None or dtype is None:
                raise node.unsupported("a Loop that runs no iteration needs its scan outputs' shapes declared")
            stacked.append(Tensor(np.zeros((0, *shape), dtype.numpy)))
    else:
        stacked = [_stack([s[j] for s in scans]) for j in range(n_scan)]
    out = (*carried, *stacked)
    return out if len(out) != 1 else out[0]


@onnx_op("Scan")
def scan(node: Node, *values: Any) -> Any:
    """body(*state, *slices) -> (*state, *scan_output_elements) over the scan inputs' axis; unrolled."""
    body = node.attr("body")
    m = int(node.attr("num_scan_inputs"))
    state, xs = list(values[:len(values) - m]), [T(x) for x in values[len(values) - m:]]
    in_axes = [axis(a, x.ndim) for a, x in zip(node.attr("scan_input_axes", [0] * m), xs)]
    in_dirs = node.attr("scan_input_directions", [0] * m)
    lengths = {x.shape[a] for x, a in zip(xs, in_axes)}
    if len(lengths) != 1:
        raise node.unsupported(f"scan inputs disagree in length along their scan axes: {sorted(lengths)}")
    length = lengths.pop()
    k = len(state)
    outs: list[list[Any]] = []
    for t in range(length):
        slices = [ops.select(x, a, length - 1 - t if d else t) for x, a, d in zip(xs, in_axes, in_dirs)]
        res = body(*state, *slices)
        state = list(res[:k])
        outs.append(list(res[k:]))
    n_out = len(body.outputs) - k
    out_axes = node.attr("scan_output_axes", [0] * n_out)
    out_dirs = node.attr("scan_output_directions", [0] * n_out)
    stacked = []
    for j in range(n_out):
        items = [o[j] for o in outs]
        if out_dirs[j]:
            items = items[::-1]
        first = T(items[0]) if items else None
        if first is None:
            raise node.unsupported("a Scan over an empty axis is not supported")
        stacked.append(_stack(items, axis(out_axes[j], first.ndim + 1)))
    res = (*state, *stacked)
    return res if len(res) != 1 else res[0]


@onnx_op("SequenceMap")
def sequence_map(node: Node, seq: Any, *extra: Any) -> Any:
    """The body over each element of `seq` (and of each extra input that is a sequence; a tensor
    extra input is passed whole every time); each output a sequence."""
    body = node.attr("body")
    if not isinstance(seq, list):
        raise node.unsupported("expects a sequence as its first input")
    outs = []
    for i in range(len(seq)):
        outs.append(body(seq[i], *(e[i] if isinstance(e, list) else e for e in extra)))
    res = tuple([o[j] for o in outs] for j in range(len(body.outputs)))
    return res if len(res) != 1 else res[0]


# Optionals: an empty optional is None, a full one its tensor or list.
@onnx_op("Optional")
def optional(node: Node, x: Any = None) -> Any:
    return x


@onnx_op("OptionalHasElement")
def optional_has_element(node: Node, x: Any = None) -> np.ndarray:
    return np.asarray(x is not None)


@onnx_op("OptionalGetElement")
def optional_get_element(node: Node, x: Any = None) -> Any:
    if x is None:
        raise node.unsupported("the optional is empty")
    return x

"""The ONNX import table: op_type -> rule, and what a rule sees of its node.

A rule is `fn(node, *inputs) -> Tensor | tuple`; inputs are Avalon tensors (values computed at run
time) or numpy arrays (values known when the model loads: initializers that are not parameters,
Constant, Shape and whatever is computed from those alone), None for an omitted optional input.
Shape-like operands (Reshape's shape, Slice's starts, ...) must be known: `static` reads them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import ops
from ..interop.model import UnsupportedOp
from ..tensor import Tensor

OnnxRule = Callable[..., Any]
ONNX_OPS: dict[str, OnnxRule] = {}
"""ONNX op_type -> rule; an op of another domain (onnxruntime's `com.microsoft` contrib ops) as
"domain:op_type" (`op_key`). Keyed by a foreign op set, so a plain dict."""


def op_key(domain: str, op_type: str) -> str:
    return op_type if domain in ("", "ai.onnx") else f"{domain}:{op_type}"


class NeedsConstant(UnsupportedOp, ValueError):
    """A shape-like operand is computed at run time (a data-dependent shape): it can be read when
    running eagerly (as the backend does) but not traced or compiled, so tracing raises this."""


@dataclass
class Node:
    """One ONNX node as rules see it."""

    op_type: str
    name: str
    attrs: dict[str, Any] = field(default_factory=dict)
    n_outputs: int = 1
    opset: int = 13
    domain: str = ""

    @property
    def key(self) -> str:
        return op_key(self.domain, self.op_type)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def unsupported(self, why: str) -> UnsupportedOp:
        return UnsupportedOp(f"ONNX node {self.name or '<unnamed>'!r} ({self.op_type}): {why}")


def onnx_op(*names: str, domain: str = "") -> Callable[[OnnxRule], OnnxRule]:
    def deco(fn: OnnxRule) -> OnnxRule:
        for n in names:
            ONNX_OPS[op_key(domain, n)] = fn
        return fn
    return deco


def static(x: Any, what: str = "operand") -> np.ndarray:
    """The value of a shape-like operand, known now."""
    if isinstance(x, (np.ndarray, np.generic, int, float)):
        return np.asarray(x)
    if isinstance(x, Tensor) and not x.is_traced:
        return x.numpy()
    raise NeedsConstant(f"{what} must be known when the model loads (a constant or computed from shapes)")


def T(x: Any) -> Tensor:
    """A tensor operand (numpy constants become Tensors)."""
    if isinstance(x, Tensor):
        return x
    return Tensor(np.asarray(x))


def ints(x: Any, what: str = "operand") -> list[int]:
    return [int(v) for v in np.asarray(static(x, what)).reshape(-1)]


def axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def unidirectional(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    return ops.broadcast_to(x, shape)

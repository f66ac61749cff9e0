"""A group: the ops one kernel computes, its inputs and the values it stores.

A `fusion` op's region is a group (inputs: the region's block arguments, which stand for the fusion
op's operands); any other top-level op is a group of one. Dense constants inside a group become
extra kernel inputs (their data is uploaded once), since a kernel cannot hold an array literal.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from avalon.ir.core import Op, Value
from avalon.ir.fusion import is_dense_constant
from avalon.ir.printer import Namer, op_lines
from avalon.passes.target import KernelGroup


@dataclass
class Group:
    name: str  # the kernel's name
    ops: list[Op]  # in order; dense constants excluded
    inputs: list[Value]
    outputs: list[Value]
    ir_text: str
    constants: dict[int, np.ndarray] = field(default_factory=dict)  # input position -> dense data

    def kernel_group(self) -> KernelGroup:
        """The group as a `Target` classifies it (dense constants count as inputs)."""
        return KernelGroup.of(self.ops, self.outputs)


def identifier(name: str) -> str:
    """A valid Python identifier from a group or op name."""
    s = re.sub(r"\W", "_", name)
    return s if s and not s[0].isdigit() else f"k_{s}"


def ir_text(op: Op) -> str:
    """The op as IR text with its operands named in0, in1, ... (the kernel's parameters)."""
    namer = Namer()
    for i, v in enumerate(op.operands):
        if id(v) not in namer.names:
            namer.names[id(v)] = f"in{i}"
            namer.used.add(f"in{i}")
    return "\n".join(op_lines(op, namer, "", False))


def _dedup(values: list[Value]) -> list[Value]:
    seen: dict[int, Value] = {}
    for v in values:
        seen.setdefault(id(v), v)
    return list(seen.values())


def from_fusion(op: Op, name: str) -> Group:
    region = op.regions[0]
    ops = [o for o in region.ops if not is_dense_constant(o)]
    consts = [o for o in region.ops if is_dense_constant(o)]
    inputs = list(region.args) + [c.result for c in consts]
    constants = {len(region.args) + k: np.asarray(c.attrs["value"]) for k, c in enumerate(consts)}
    return Group(name, ops, inputs, list(region.results), ir_text(op), constants)


def from_op(op: Op, name: str) -> Group:
    return Group(name, [op], _dedup(list(op.operands)), list(op.results), ir_text(op))

"""A generated kernel: its source text plus everything needed to launch it (or compile it ahead of time)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from avalon.ir.dtypes import DType

from . import helpers
from .emitter import Emitter
from .group import Group


@dataclass
class Kernel:
    name: str
    kind: str  # pointwise | reduction | contraction | copy | host (a step between launches, `fn` a function)
    source: str
    params: list[tuple[str, DType]]  # pointer parameters in order: in0.., out0..
    meta: dict[str, int]  # constexpr block sizes passed at launch
    grid: tuple[int, ...]
    num_warps: int = 4
    num_stages: int = 1
    fn: Any = field(default=None, repr=False)  # the @triton.jit function, once loaded

    @property
    def empty(self) -> bool:
        return any(g == 0 for g in self.grid)


def assemble(group: Group, kind: str, em: Emitter, meta_names: list[str], out_dtypes: list[DType]) -> tuple[str, list]:
    """The kernel file: a header comment with the group's IR, imports, helpers, the @jit function."""
    params = [(f"in{i}", v.dtype) for i, v in enumerate(group.inputs)]
    params += [(f"out{j}", d) for j, d in enumerate(out_dtypes)]
    args = ", ".join([p for p, _ in params] + [f"{m}: tl.constexpr" for m in meta_names])
    head = [f"# Avalon {kind} kernel `{group.name}`, generated from:"]
    head += [f"#   {ln}" for ln in group.ir_text.splitlines()]
    body = em.root.lines or ["pass"]
    lines = head + ["import triton", "import triton.language as tl", ""]
    src = "\n".join(lines) + helpers.render(em.helpers)
    src += f"\n\n@triton.jit\ndef {group.name}({args}):\n" + "".join(f"    {ln}\n" for ln in body)
    return src, params

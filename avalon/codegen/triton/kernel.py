"""A generated kernel: its source text plus everything needed to launch it (or compile it ahead of time)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from avalon.ir import dtypes as dt
from avalon.ir.dtypes import DType

from . import helpers
from .emitter import Emitter
from .group import Group

_CHECKS = "# avalon-index-checks: "


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
    checks: list[tuple[str, str, int]] = field(default_factory=list)  # index checks: (op, line, bound) per slot
    problem: dict[str, int] = field(default_factory=dict)  # problem sizes (m, n, k; x, r) the autotuner sizes tiles by
    workspace: int = 0  # elements of the scratch parameter `ws` the runtime binds (a split's partials)
    then: Kernel | None = None  # launched right after this one, same tensors (a split's combining, stride phases)

    def __post_init__(self) -> None:
        """Index checks are read back from the source (`assemble` writes them there, so every
        kernel builder gets them without passing them along); the runtime binds the `err` buffer."""
        if not self.checks and self.params and self.params[-1][0] == "err":
            for ln in self.source.splitlines():
                if ln.startswith(_CHECKS):
                    self.checks = [tuple(c) for c in json.loads(ln[len(_CHECKS):])]
                    break
    @property
    def empty(self) -> bool:
        return any(g == 0 for g in self.grid)

    @property
    def code(self) -> str:
        """The source with the kernel's name masked: equal for kernels that differ only by name (a
        transformer's layers), which then share a compiled function and a tuning record."""
        return self.source.replace(self.name, "\0kernel\0")

    def chain(self) -> list[Kernel]:
        """This kernel and every function launched after it (`then`: a split's epilogue, stride phases)."""
        out, k = [], self
        while k is not None:
            out.append(k)
            k = k.then
        return out


def assemble(group: Group, kind: str, em: Emitter, meta_names: list[str], out_dtypes: list[DType], *,
             workspace: DType | None = None, also: list[tuple[str, Emitter]] | None = None) -> tuple[str, list]:
    """The kernel file: a header comment with the group's IR, imports, helpers, the @jit function
    (and the functions in `also`, same parameters: a split-K epilogue); `workspace`: a scratch
    parameter `ws` of that dtype after the outputs."""
    also = also or []
    if any(e.index_checks for _, e in also):
        raise ValueError("index checks live in a kernel's first function only")
    params = [(f"in{i}", v.dtype) for i, v in enumerate(group.inputs)]
    params += [(f"out{j}", d) for j, d in enumerate(out_dtypes)]
    if workspace is not None:
        params.append(("ws", workspace))
    if em.index_checks:  # an int64 pair (bad value, flag) per checked index: see lowering.check_index
        params.append(("err", dt.int64))
    args = ", ".join([p for p, _ in params] + [f"{m}: tl.constexpr" for m in meta_names])
    head = [f"# Avalon {kind} kernel `{group.name}`, generated from:"]
    head += [f"#   {ln}" for ln in group.ir_text.splitlines()]
    if em.index_checks:
        head.append(_CHECKS + json.dumps(em.index_checks, ensure_ascii=True))
    lines = head + ["import triton", "import triton.language as tl", ""]
    src = "\n".join(lines) + helpers.render(set().union(em.helpers, *(e.helpers for _, e in also)))
    for name, e in [(group.name, em), *also]:
        body = e.root.lines or ["pass"]
        src += f"\n\n@triton.jit\ndef {name}({args}):\n" + "".join(f"    {ln}\n" for ln in body)
    return src, params

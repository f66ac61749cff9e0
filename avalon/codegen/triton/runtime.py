"""Running a compiled graph: inputs to device storage, buffers from the plan, kernels in order.

Torch is storage only here: `torch.empty` for buffers, `as_strided` views for results,
`torch.from_numpy` / `.to(device)` for host transfers. Any data movement on the device (an input
with unexpected strides, or a dtype only Triton can convert, like f32 -> bf16) is a generated copy
kernel, never a torch op.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from avalon.ir import dtypes as dt
from avalon.ir.core import Graph, Value
from avalon.ir.types import TensorType

from . import types as ty
from .cache import interpreting
from .kernel import Kernel
from .memory import MemoryPlan


@dataclass
class Launch:
    kernel: Kernel
    args: list[Value]  # one per pointer parameter: inputs then outputs


def _quiet_interpreter() -> None:
    """Turn off the interpreter's int-overflow sanitizer: its check only asserts in debug mode, yet it
    costs about half the interpreter's time (set AVALON_TRITON_SANITIZE=1 to keep it)."""
    if os.environ.get("AVALON_TRITON_SANITIZE") == "1":
        return
    try:
        from triton.runtime import interpreter as it
        opts = it.interpreter_builder.options
        if getattr(opts, "sanitize_overflow", False):
            it.interpreter_builder.options = dataclasses.replace(opts, sanitize_overflow=False)
    except Exception:  # pragma: no cover - an interpreter without the option is fine as it is
        pass


def launch(k: Kernel, tensors: Sequence[torch.Tensor]) -> None:
    if k.empty:
        return
    try:
        if interpreting():
            _quiet_interpreter()
            with np.errstate(all="ignore"):  # IEEE results (x/0, log 0) are meant, not warned about
                k.fn[k.grid](*tensors, **k.meta)
        else:
            k.fn[k.grid](*tensors, **k.meta, num_warps=k.num_warps, num_stages=k.num_stages)
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"while running Triton kernel '{k.name}' (grid {k.grid}, {k.meta})")
        raise


def default_device() -> torch.device:
    return torch.device("cpu" if interpreting() else "cuda")


class CompiledGraph:
    """A graph lowered to Triton kernels. Call it with numpy arrays or torch tensors (one per graph
    input); it returns a tuple of torch tensors (one per graph output) on its device."""

    def __init__(self, graph: Graph, launches: list[Launch], plan: MemoryPlan, constants: list[np.ndarray],
                 const_types: list[TensorType], kernels: dict[str, str], make_copy, device: torch.device):
        self.graph = graph
        self.launches = launches
        self.plan = plan
        self.kernels = kernels  # kernel name -> generated source
        self.device = device
        self._constants = constants
        self._const_types = const_types
        self._const_tensors: dict[str, list[torch.Tensor]] = {}
        self._make_copy = make_copy  # (TensorType, src dtype, src strides) -> Kernel
        self._copies: dict[tuple, Kernel] = {}

    def __repr__(self) -> str:
        return f"<CompiledGraph @{self.graph.name}: {len(self.launches)} launches, kernels {list(self.kernels)}>"

    def __call__(self, *inputs: Any) -> tuple[torch.Tensor, ...]:
        want = self.graph.inputs
        if len(inputs) != len(want):
            raise TypeError(f"graph @{self.graph.name} takes {len(want)} input(s), got {len(inputs)}")
        device = self._device_of(inputs)
        args = [self._adapt(i, v.type, x, device) for i, (v, x) in enumerate(zip(want, inputs))]
        consts = self._consts(device)
        bufs = [torch.empty(max(n, 1), dtype=ty.TORCH[d.name], device=device) for d, n in self.plan.buffers]
        arenas = [torch.empty(max(n, 8), dtype=torch.uint8, device=device) for n in self.plan.arenas]

        def storage(v: Value) -> torch.Tensor:
            s = self.plan.of(v)
            if s.kind == "arena":  # bytes shared by values of any dtype: view the prefix this one needs
                return arenas[s.index][:max(v.type.nbytes, v.dtype.itemsize)].view(ty.TORCH[v.dtype.name])
            return args[s.index] if s.kind == "input" else consts[s.index] if s.kind == "const" else bufs[s.index]

        for ln in self.launches:
            launch(ln.kernel, [storage(v) for v in ln.args])
        outs, seen = [], set()
        for v in self.graph.outputs:
            s = self.plan.of(v)
            # like the reference: a result never shares memory with an input or another result
            fresh = s.kind == "buffer" and (s.kind, s.index) not in seen
            seen.add((s.kind, s.index))
            x = _view(storage(v), v.type)
            outs.append(x if fresh else self._place(x, v.type, v.dtype, force=True))
        return tuple(outs)

    # --- inputs -----------------------------------------------------------------------------------
    def _device_of(self, inputs: Sequence[Any]) -> torch.device:
        for x in inputs:
            if isinstance(x, torch.Tensor) and x.device.type != "cpu":
                return x.device
        return self.device

    def _adapt(self, i: int, t: TensorType, x: Any, device: torch.device) -> torch.Tensor:
        where = f"input {i} ('{self.graph.inputs[i].name or i}')"
        if isinstance(x, torch.Tensor):
            if ty.from_torch(x.dtype) != t.dtype or tuple(x.shape) != t.shape:
                raise TypeError(f"{where}: expected {t}, got a torch tensor {tuple(x.shape)} {x.dtype}")
            if t.numel == 0:  # nothing to read, but kernels want a valid pointer (masked loads still form it)
                return torch.empty(1, dtype=x.dtype, device=device)
            return self._place(x.to(device) if x.device != device else x, t, t.dtype)
        a = _host_array(x, t, where)
        if t.numel == 0:
            return torch.empty(1, dtype=ty.TORCH[t.dtype.name], device=device)
        src = torch.from_numpy(a)
        if device.type != "cpu":
            src = src.to(device)
        return self._place(src, t, dt.float32 if t.dtype == dt.bfloat16 else t.dtype)

    def _place(self, x: torch.Tensor, t: TensorType, src_dtype, force: bool = False) -> torch.Tensor:
        """`x` if it already has `t`'s dtype and layout, else (or if `force`) a copy kernel's result."""
        strides = t.strides()
        same = all(s == e for s, e, n in zip(x.stride(), strides, t.shape) if n > 1)
        if same and src_dtype == t.dtype and not force:
            return x
        key = (t, src_dtype.name, tuple(x.stride()))
        k = self._copies.get(key)
        if k is None:
            k = self._copies[key] = self._make_copy(t, src_dtype, tuple(x.stride()))
        out = torch.empty(max(t.numel, 1), dtype=ty.TORCH[t.dtype.name], device=x.device)
        launch(k, [x, out])
        return _view(out, t)

    def _consts(self, device: torch.device) -> list[torch.Tensor]:
        key = str(device)
        if key not in self._const_tensors:
            self._const_tensors[key] = [self._adapt_const(a, t, device) for a, t in
                                        zip(self._constants, self._const_types)]
        return self._const_tensors[key]

    def _adapt_const(self, a: np.ndarray, t: TensorType, device: torch.device) -> torch.Tensor:
        from avalon.codegen.numpy import evaluate
        attrs = {"value": a, "shape": list(t.shape), "dtype": t.dtype}
        data = evaluate("constant", attrs, [], TensorType(t.shape, t.dtype))
        src = torch.from_numpy(np.ascontiguousarray(data))
        if device.type != "cpu":
            src = src.to(device)
        return self._place(src, t, dt.float32 if t.dtype == dt.bfloat16 else t.dtype)


def _host_array(x: Any, t: TensorType, where: str) -> np.ndarray:
    """A numpy input as a contiguous array of the input's dtype (bf16: rounded float32)."""
    from avalon.codegen.numpy import round_bf16, to_numpy
    if isinstance(x, (bool, int, float)) and t.shape == ():
        a = np.asarray(x, dtype=t.dtype.np)
    else:
        a = to_numpy(x)
    if a.dtype != t.dtype.np or a.shape != t.shape:
        raise TypeError(f"{where}: expected {t}, got a {a.dtype} array of shape {a.shape}")
    if t.dtype == dt.bfloat16:
        a = round_bf16(a)
    return np.ascontiguousarray(a)


def _view(base: torch.Tensor, t: TensorType) -> torch.Tensor:
    """`base`'s storage seen as a tensor of type `t` (its layout's strides), zero-copy."""
    if tuple(base.shape) == t.shape and all(s == e for s, e, n in zip(base.stride(), t.strides(), t.shape) if n > 1):
        return base
    return torch.as_strided(base, t.shape, t.strides(), base.storage_offset())

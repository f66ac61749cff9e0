"""Running a compiled graph: inputs to device storage, buffers from the storage map, kernels in order.

Torch is storage only here: `torch.empty` for buffers, `as_strided` views for results,
`torch.from_numpy` / `.to(device)` for host transfers. Any data movement on the device (an input
with unexpected strides, or a dtype only Triton can convert, like f32 -> bf16) is a generated copy
kernel, never a torch op.

Index checks: kernels that read at data-dependent indices (take, one_hot) get an `err` buffer,
an int64 pair per checked index (see `lowering.check_index`). Per device one zeroed buffer holds
every kernel's pairs; its slices sit among the fixed slots (after the constants), so a CUDA graph
captures them at fixed addresses and its capture check never poisons them. After the launches of
a call the runtime reads the buffer (one small device-to-host copy, which waits for the kernels)
and raises `IndexOutOfRangeError` naming the op, the user's line and the bad value; graphs without
such kernels skip all of this. `benchmarks/index_check_cost.py` measures the cost on a GPU.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from avalon.ir import dtypes as dt
from avalon.ir.core import Graph, Value
from avalon.ir.dtypes import DType
from avalon.ir.reference import IndexOutOfRangeError, check_error
from avalon.ir.types import TensorType

from . import types as ty
from .cache import interpreting
from .kernel import Kernel
from .memory import StorageMap


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


def _tma_allocator() -> None:
    """Device-side tensor descriptors (a GEMM's TMA form) need global scratch, which Triton asks an
    allocator for at launch; give it torch's when none is set in this context (the setting is a
    context variable: each thread that launches checks)."""
    try:
        from triton.runtime import _allocation as alloc
    except ImportError:  # pragma: no cover - a Triton without descriptors never emits the TMA form
        return
    if isinstance(alloc._allocator.get(), alloc.NullAllocator):
        alloc.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def launch(k: Kernel, tensors: Sequence[torch.Tensor]) -> None:
    if k.empty:  # nothing to compute here; a chained function may still have work
        if k.then is not None:
            launch(k.then, tensors)
        return
    if k.kind == "host":  # not a kernel: a step between launches on the host (a collective)
        k.fn(*tensors)
        return
    try:
        if interpreting():
            _quiet_interpreter()
            with np.errstate(all="ignore"):  # IEEE results (x/0, log 0) are meant, not warned about
                k.fn[k.grid](*tensors, **k.meta)
        else:
            if k.meta.get("TMA"):
                _tma_allocator()
            k.fn[k.grid](*tensors, **k.meta, num_warps=k.num_warps, num_stages=k.num_stages)
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"while running Triton kernel '{k.name}' (grid {k.grid}, {k.meta})")
        raise
    if k.then is not None:  # the next function of the same kernel file (a split's combining, a stride phase)
        launch(k.then, tensors)


def default_device() -> torch.device:
    return torch.device("cpu" if interpreting() else "cuda")


class CompiledGraph:
    """A graph lowered to Triton kernels. Call it with numpy arrays or torch tensors (one per graph
    input); it returns a tuple of torch tensors (one per graph output) on its device.

    Per device, the storage of intermediates (own buffers, the memory-plan pass's arenas) and
    the uploaded constants are allocated on the first call and reused by later ones: kernels on
    one device run in order (one stream), so a call's intermediates are dead before the next call
    writes them. Returned tensors never live there: outputs get new buffers on every call, except
    the ones listed in `scratch_outputs`, which the caller promises to consume before calling
    again (`av.compile` lists its state updates, which `run_traced` writes back at once).

    On CUDA, after one call has run the kernels once (compiling them), the next call captures
    the whole launch sequence into a CUDA graph that later calls replay (`cudagraph.GraphRunner`);
    `AVALON_CUDA_GRAPHS=0` turns that off. `capture` (None: CUDA graphs on CUDA devices) lets
    tests drive the same machinery with a fake graph on the CPU.
    """

    def __init__(self, graph: Graph, launches: list[Launch], storage: StorageMap, constants: list[np.ndarray],
                 const_types: list[TensorType], kernels: dict[str, str], make_copy, device: torch.device,
                 fallbacks: list[str] | None = None):
        self.graph = graph
        self.launches = launches
        self.storage = storage
        self.fallbacks = list(fallbacks or [])  # "@group: why" for each fused group run one kernel per op
        self.kernels = kernels  # kernel name -> generated source
        self.device = device
        self.scratch_outputs: frozenset[int] = frozenset()
        self.capture: Any = None  # a `cudagraph.Capture` to use on every device (tests); None: the default
        self._constants = constants
        self._const_types = const_types
        self._make_copy = make_copy  # (TensorType, src dtype, src strides) -> Kernel
        self._copies: dict[tuple, Kernel] = {}
        self._work: dict[str, _Workspace] = {}
        self._runners: dict[str, Any] = {}  # device -> GraphRunner, or None where graphs are off
        self._layout()

    def __repr__(self) -> str:
        return f"<CompiledGraph @{self.graph.name}: {len(self.launches)} launches, kernels {list(self.kernels)}>"

    @property
    def cuda_graphs(self) -> dict[str, str]:
        """Per device this graph ran on: "captured", "warming up", "off: <why>" (capture given up)
        or "not used" (disabled, or not a CUDA device)."""
        return {d: "not used" if r is None else f"off: {r.failed}" if r.failed else r.state
                for d, r in self._runners.items()}

    def _layout(self) -> None:
        """Number every storage a run touches (inputs, constants, buffers, typed arena views) once,
        so that a call binds launches by list indexing instead of per-value plan lookups."""
        sm, n_in, n_const = self.storage, len(self.graph.inputs), len(self._constants)
        self._err: list[tuple[int, Kernel]] = []  # (offset in the err buffer, kernel) per checked launch
        n_err = 0
        for ln in self.launches:
            if ln.kernel.checks:
                self._err.append((n_err, ln.kernel))
                n_err += 2 * len(ln.kernel.checks)
        self._err_size = n_err
        self._n_fixed = n_in + n_const + len(self._err)
        self._views: list[tuple[int, int, DType]] = []  # (arena, bytes, dtype) per arena view slot
        index: dict[tuple, int] = {}

        def slot(v: Value) -> int:
            s = sm.of(v)
            if s.kind == "input":
                return s.index
            if s.kind == "const":
                return n_in + s.index
            if s.kind == "buffer":
                return self._n_fixed + s.index
            key = (s.index, max(v.type.nbytes, v.dtype.itemsize), v.dtype)  # bytes shared by values of any dtype
            if key not in index:
                index[key] = len(self._views)
                self._views.append(key)
            return self._n_fixed + len(sm.buffers) + index[key]

        err_slot = {id(k): n_in + n_const + j for j, (_, k) in enumerate(self._err)}
        self._bound = [(ln.kernel, [slot(v) for v in ln.args] + ([err_slot[id(ln.kernel)]] if ln.kernel.checks else []))
                       for ln in self.launches]
        self._outs: list[tuple[int, TensorType, bool]] = []  # slot, type, fresh (else copied)
        seen = set()
        for v in self.graph.outputs:
            s = sm.of(v)
            # like the reference: a result never shares memory with an input or another result
            self._outs.append((slot(v), v.type, s.kind == "buffer" and (s.kind, s.index) not in seen))
            seen.add((s.kind, s.index))
        self._in_specs = [_InputSpec.of(v.type) for v in self.graph.inputs]

    def _returned_buffers(self) -> set[int]:
        """Buffers holding an output that is not scratch: new ones on every call."""
        return {slot - self._n_fixed for j, (slot, _, fresh) in enumerate(self._outs)
                if fresh and j not in self.scratch_outputs}

    # --- running ------------------------------------------------------------------------------------
    def __call__(self, *inputs: Any) -> tuple[torch.Tensor, ...]:
        want = self.graph.inputs
        if len(inputs) != len(want):
            raise TypeError(f"graph @{self.graph.name} takes {len(want)} input(s), got {len(inputs)}")
        device = self._device_of(inputs)
        args = [self._adapt(i, v.type, x, device) for i, (v, x) in enumerate(zip(want, inputs))]
        key = str(device)
        runner = self._runners.get(key, False)
        if runner is False:
            runner = self._runners[key] = self._graph_runner(device)
        if runner is not None:
            outs = runner(args)
            if outs is not None:
                self._check_indices(self._workspace(device))
                return outs
        ws = self._workspace(device)
        if not ws.lock.acquire(blocking=False):  # another thread is running on it: use storage of our own
            ws = _Workspace(self, device)
            ws.lock.acquire()
        try:
            slots = self._slots(args, ws)
            for k, idx in self._bound:
                launch(k, [slots[i] for i in idx])
            self._check_indices(ws)
            return tuple(x if fresh else self._place(x, t, t.dtype, force=True)
                         for x, (_, t, fresh) in zip(self._out_views(slots), self._outs))
        finally:
            ws.lock.release()

    def _check_indices(self, ws: _Workspace) -> None:
        """Raise for the first index a kernel of this call flagged out of range, or value a `check` op
        flagged (and clear the flags)."""
        if ws.err is None:
            return
        flags = np.array(ws.err.cpu().numpy())  # a copy: on the CPU .numpy() shares the buffer
        if not flags[1::2].any():
            return
        ws.err.copy_(ws.err_zeros)
        for off, k in self._err:
            for j, (op, where, bound) in enumerate(k.checks):
                if flags[off + 2 * j + 1] and isinstance(bound, dict):  # a `check` op's error and message
                    raise check_error(bound["error"], f"{where}: {bound['message']}" if where else bound["message"])
                if flags[off + 2 * j + 1]:
                    at = f" at {where}" if where else ""
                    raise IndexOutOfRangeError(
                        f"{op}{at}: index {int(flags[off + 2 * j])} is out of range [0, {bound}) "
                        f"(found by Triton kernel '{k.name}')")

    def _slots(self, args: list[torch.Tensor], ws: _Workspace) -> list[torch.Tensor]:
        bufs = ws.bufs
        if ws.per_call:
            bufs = list(bufs)
            for b in ws.per_call:
                bufs[b] = ws.new_buffer(b)
        return [*args, *ws.consts, *bufs, *ws.views]

    def _out_views(self, slots: list[torch.Tensor]) -> list[torch.Tensor]:
        return [_view(slots[i], t) for i, t, _ in self._outs]

    def _workspace(self, device: torch.device) -> _Workspace:
        ws = self._work.get(str(device))
        if ws is None:
            ws = self._work[str(device)] = _Workspace(self, device)
        return ws

    def _graph_runner(self, device: torch.device) -> Any:
        from . import cudagraph
        if any(k.kind == "host" for k, _ in self._bound):  # collectives are not captured into a CUDA graph
            return None
        capture = cudagraph.capture_for(device, self.capture)
        return cudagraph.GraphRunner(self, device, capture) if capture is not None else None

    # --- inputs -----------------------------------------------------------------------------------
    def _device_of(self, inputs: Sequence[Any]) -> torch.device:
        for x in inputs:
            if isinstance(x, torch.Tensor) and x.device.type != "cpu":
                return x.device
        if self.device.type == "cuda" and self.device.index is None:  # one name per device, as tensors say: "cuda:0"
            self.device = torch.device("cuda", torch.cuda.current_device())
        return self.device

    def _adapt(self, i: int, t: TensorType, x: Any, device: torch.device) -> torch.Tensor:
        spec = self._in_specs[i]
        if isinstance(x, torch.Tensor):
            aligned = x.data_ptr() % 16 == 0  # kernels are specialized on 16-byte bases (vector loads, TMA)
            if x.dtype is spec.dtype and x.shape == t.shape and x.device == device and spec.fits(x) and aligned:
                return x  # the common case: the caller's storage as it is
        elif (isinstance(x, np.ndarray) and spec.row_major and x.dtype == spec.np_dtype and x.shape == t.shape
              and x.flags.c_contiguous):  # a host array as the kernels read it: wrapped (and uploaded) as it is
            src = torch.from_numpy(x)
            return src.to(device) if device.type != "cpu" else src
        where = f"input {i} ('{self.graph.inputs[i].name or i}')"
        if isinstance(x, torch.Tensor):
            if ty.from_torch(x.dtype) != t.dtype or tuple(x.shape) != t.shape:
                raise TypeError(f"{where}: expected {t}, got a torch tensor {tuple(x.shape)} {x.dtype}")
            if t.numel == 0:  # nothing to read, but kernels want a valid pointer (masked loads still form it)
                return torch.empty(1, dtype=x.dtype, device=device)
            return self._place(x.to(device) if x.device != device else x, t, t.dtype, force=not aligned)
        a = _host_array(x, t, where)
        if t.numel == 0:
            return torch.empty(1, dtype=ty.TORCH[t.dtype.name], device=device)
        src = torch.from_numpy(a)
        if device.type != "cpu":
            src = src.to(device)
        return self._place(src, t, dt.float32 if t.dtype == dt.bfloat16 else t.dtype)

    def _copy_kernel(self, x: torch.Tensor, t: TensorType, src_dtype) -> Kernel:
        key = (t, src_dtype.name, tuple(x.stride()))
        k = self._copies.get(key)
        if k is None:
            k = self._copies[key] = self._make_copy(t, src_dtype, tuple(x.stride()))
        return k

    def _place(self, x: torch.Tensor, t: TensorType, src_dtype, force: bool = False) -> torch.Tensor:
        """`x` if it already has `t`'s dtype and layout, else (or if `force`) a copy kernel's result."""
        strides = t.strides()
        same = all(s == e for s, e, n in zip(x.stride(), strides, t.shape) if n > 1)
        if same and src_dtype == t.dtype and not force:
            return x
        k = self._copy_kernel(x, t, src_dtype)
        out = torch.empty(max(t.numel, 1), dtype=ty.TORCH[t.dtype.name], device=x.device)
        launch(k, [x, out])
        return _view(out, t)

    def _adapt_const(self, a: np.ndarray, t: TensorType, device: torch.device) -> torch.Tensor:
        from avalon.ir import evaluate
        attrs = {"value": a, "shape": list(t.shape), "dtype": t.dtype}
        data = evaluate("constant", attrs, [], TensorType(t.shape, t.dtype))
        src = torch.from_numpy(np.ascontiguousarray(data))
        if device.type != "cpu":
            src = src.to(device)
        return self._place(src, t, dt.float32 if t.dtype == dt.bfloat16 else t.dtype)


@dataclass
class _InputSpec:
    """What an input tensor must look like to be used as it is (its dims longer than 1 strided as
    the input type's layout says)."""

    dtype: torch.dtype
    dims: tuple[int, ...]  # the dims with more than one element
    strides: tuple[int, ...]  # their strides
    empty: bool  # no elements: kernels get a one-element buffer instead (a valid pointer)
    np_dtype: np.dtype | None  # a host array of this dtype needs no conversion (None: bf16 always does)
    row_major: bool  # the layout is numpy's C order

    @classmethod
    def of(cls, t: TensorType) -> _InputSpec:
        st = t.strides()
        dims = tuple(d for d, n in enumerate(t.shape) if n > 1)
        np_dtype = None if t.dtype == dt.bfloat16 else np.dtype(t.dtype.np)
        row_major = st == TensorType(t.shape, t.dtype).strides()
        return cls(ty.TORCH[t.dtype.name], dims, tuple(st[d] for d in dims), t.numel == 0, np_dtype,
                   row_major and t.numel > 0)

    def fits(self, x: torch.Tensor) -> bool:
        st = x.stride()
        return not self.empty and all(st[d] == e for d, e in zip(self.dims, self.strides))


class _Workspace:
    """One device's storage kept across calls: constants, intermediate buffers, arenas and
    their typed views. Buffers that hold returned outputs are made anew on every call instead
    (`per_call`); `lock` keeps two threads from running on the same storage at once."""

    def __init__(self, cg: CompiledGraph, device: torch.device):
        sm = self._storage = cg.storage
        self.device = device
        self.consts = [cg._adapt_const(a, t, device) for a, t in zip(cg._constants, cg._const_types)]
        self.err: torch.Tensor | None = None
        if cg._err:  # zeroed once; kernels only ever write flags into it
            self.err_zeros = torch.from_numpy(np.zeros(cg._err_size, np.int64))
            self.err = torch.from_numpy(np.zeros(cg._err_size, np.int64)).to(device)
            self.consts += [self.err[off:off + 2 * len(k.checks)] for off, k in cg._err]
        self.per_call = sorted(cg._returned_buffers())
        self.bufs: list[torch.Tensor | None] = [None if b in self.per_call else self.new_buffer(b)
                                                for b in range(len(sm.buffers))]
        arenas = [torch.empty(max(n, 8), dtype=torch.uint8, device=device) for n in sm.arenas]
        self.views = [arenas[a][:n].view(ty.TORCH[d.name]) for a, n, d in cg._views]
        self.lock = threading.Lock()

    def new_buffer(self, b: int) -> torch.Tensor:
        d, n = self._storage.buffers[b]
        return torch.empty(max(n, 1), dtype=ty.TORCH[d.name], device=self.device)


def _host_array(x: Any, t: TensorType, where: str) -> np.ndarray:
    """A numpy input as a contiguous array of the input's dtype (bf16: rounded float32)."""
    from avalon.ir import round_bf16, to_numpy
    if isinstance(x, (bool, int, float)) and t.shape == ():
        a = np.asarray(x, dtype=t.dtype.np)
    else:
        a = to_numpy(x)
    if a.dtype != t.dtype.np or a.shape != t.shape:
        raise TypeError(f"{where}: expected {t}, got a {a.dtype} array of shape {a.shape}")
    if t.dtype == dt.bfloat16:
        a = round_bf16(a)
    return np.require(a, requirements="C")  # (ascontiguousarray would make a 0-d array 1-d)


def _view(base: torch.Tensor, t: TensorType) -> torch.Tensor:
    """`base`'s storage seen as a tensor of type `t` (its layout's strides), zero-copy."""
    if tuple(base.shape) == t.shape and all(s == e for s, e, n in zip(base.stride(), t.strides(), t.shape) if n > 1):
        return base
    return torch.as_strided(base, t.shape, t.strides(), base.storage_offset())

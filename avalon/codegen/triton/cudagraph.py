"""CUDA-graph replay of a compiled graph's launches (TorchInductor's "reduce-overhead" idea).

Why: small models are launch-bound. Each Triton launch costs tens of microseconds of Python and
driver time on the host, so a training step of a hundred small kernels spends most of its time
issuing them. A CUDA graph records the whole sequence once; one replay then issues all of it for
about the cost of one launch.

How (`GraphRunner`, one per compiled graph and device):

1. The first call runs plainly, so Triton compiles every kernel (nothing may compile during a
   capture).
2. The second call builds a static frame: input buffers, output buffers and the device's
   reused intermediates (`runtime._Workspace`), all allocated once. It copies its inputs in,
   runs the launches on the frame (a warm-up at the very addresses the graph will use; its
   results are this call's), captures the same launches into a graph, replays it once and
   checks that the replay reproduced the warm-up bit for bit.
3. Later calls copy their inputs into the static input buffers (`Tensor.copy_`, batched: memory
   movement, not compute), replay, and copy the outputs out into new tensors, so a caller never
   sees a result overwritten by a later call. Outputs the caller consumes before its next call
   (`CompiledGraph.scratch_outputs`, state updates under `av.compile`) are returned as the
   static buffers themselves.

The captured region holds nothing but kernel launches on tensors allocated beforehand: no
allocation, no host synchronization, no Python-side decision that could differ between replays.

If anything in step 2 fails, or the check finds a difference, or a replay raises, the runner
logs one warning on channel `avalon.triton` and that compiled graph launches its kernels one by
one from then on; the failing call is answered by the warm-up's results or rerun plainly, never
with a possibly wrong replay. `AVALON_CUDA_GRAPHS=0` (read when a compiled graph first runs on a
device) turns graphs off; they are on by default on CUDA, never used by Triton's interpreter.

The capture itself is a function given to the runner (`torch_capture` on CUDA), so tests drive
the same machinery on the CPU with a fake graph that records the launch sequence and reruns it.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from avalon.channels import get_logger

from .cache import interpreting
from .runtime import _view, launch

log = get_logger("triton")

ENV = "AVALON_CUDA_GRAPHS"


class Replayable(Protocol):
    def replay(self) -> None: ...


Capture = Callable[[Callable[[], None], torch.device], Replayable]
"""`capture(run, device)`: record what `run()` launches on `device` into something that can `replay()`."""


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def torch_capture(run: Callable[[], None], device: torch.device) -> Replayable:
    """A `torch.cuda.CUDAGraph` of `run()`'s launches. Capture mode "thread_local": other threads'
    CUDA calls (a data loader's) do not invalidate this capture."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.device(device), torch.cuda.graph(g, capture_error_mode="thread_local"):
        run()
    return g


def capture_for(device: torch.device, override: Capture | None = None) -> Capture | None:
    """How to capture on `device`, or None where graphs are off (disabled, not CUDA, interpreter)."""
    if not enabled():
        return None
    if override is not None:
        return override
    if device.type != "cuda" or interpreting() or not hasattr(torch.cuda, "CUDAGraph"):
        return None
    return torch_capture


class CaptureMismatch(RuntimeError):
    """A replay did not reproduce the results of the same launches run directly."""


class GraphRunner:
    """Runs one `CompiledGraph` on one device through a captured graph (see the module docstring).

    Calling it with the adapted inputs returns the outputs, or None when the caller should run
    the launches plainly (still warming up, graphs given up, or the storage busy in another thread).
    """

    def __init__(self, cg: Any, device: torch.device, capture: Capture, warmup: int = 1):
        self.cg = cg
        self.device = device
        self.capture = capture
        self.warmup = warmup
        self.calls = 0
        self.replays = 0
        self.graph: Replayable | None = None
        self.failed: str | None = None  # why graphs were given up
        self._inputs: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []
        self._program: list[tuple[Any, list[torch.Tensor]]] = []

    @property
    def state(self) -> str:
        return "off" if self.failed else "captured" if self.graph is not None else "warming up"

    def __call__(self, args: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...] | None:
        if self.failed:
            return None
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            return None
        ws = self.cg._workspace(self.device)
        if not ws.lock.acquire(blocking=False):
            return None
        try:
            if self.graph is None:
                return self._capture(args, ws)
            self._copy_in(args)
            self.graph.replay()
            self.replays += 1
            return self._copy_out()
        except Exception as e:  # never crash, never answer from a graph that may be wrong
            self._give_up(e)
            return None
        finally:
            ws.lock.release()

    def _capture(self, args: Sequence[torch.Tensor], ws: Any) -> tuple[torch.Tensor, ...]:
        cg = self.cg
        self._inputs = [_static_like(a, v.type, spec.empty)
                        for a, v, spec in zip(args, cg.graph.inputs, cg._in_specs)]
        bufs = list(ws.bufs)
        for b in ws.per_call:
            bufs[b] = ws.new_buffer(b)
        slots = [*self._inputs, *ws.consts, *bufs, *ws.views]
        program = [(k, [slots[i] for i in idx]) for k, idx in cg._bound]
        outputs, written = [], slots[cg._n_fixed:]
        for x, (_, t, fresh) in zip(cg._out_views(slots), cg._outs):
            if not fresh:  # a result sharing storage: a copy kernel into a buffer of its own, in the graph
                dst = torch.empty(max(t.numel, 1), dtype=x.dtype, device=x.device)
                program.append((cg._copy_kernel(x, t, t.dtype), [x, dst]))
                written.append(dst)
                x = _view(dst, t)
            outputs.append(x)
        self._program, self._outputs = program, outputs
        self._copy_in(args)
        self._run()  # the warm-up, at the graph's addresses: this call's results
        result = self._copy_out()
        expected = [_host_bytes(o) for o in outputs]
        graph = self.capture(self._run, self.device)
        # a replay must write every result and intermediate itself: poison them (NaN bytes) first
        for st in {x.untyped_storage().data_ptr(): x.untyped_storage() for x in written}.values():
            st.fill_(0xFF)
        graph.replay()
        if [_host_bytes(o) for o in outputs] != expected:
            raise CaptureMismatch("a replay of the captured graph differs from running its kernels directly")
        self.graph = graph
        log.debug("captured @%s on %s: %d launches in one CUDA graph", cg.graph.name, self.device, len(program))
        return result

    def _run(self) -> None:
        for k, tensors in self._program:
            launch(k, tensors)

    def _copy_in(self, args: Sequence[torch.Tensor]) -> None:
        pairs = [(s, a) for s, a, spec in zip(self._inputs, args, self.cg._in_specs)
                 if not spec.empty and s.data_ptr() != a.data_ptr()]
        copy_all(pairs)

    def _copy_out(self) -> tuple[torch.Tensor, ...]:
        scratch = self.cg.scratch_outputs
        outs = [o if j in scratch else torch.empty_like(o) for j, o in enumerate(self._outputs)]
        copy_all([(d, s) for d, s in zip(outs, self._outputs) if d is not s])
        return tuple(outs)

    def _give_up(self, e: Exception) -> None:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        self.failed = f"{type(e).__name__}: {first}" if first else type(e).__name__  # one line
        self.graph, self._program, self._inputs, self._outputs = None, [], [], []
        log.warning("CUDA graphs off for @%s on %s (%s); launching its kernels one by one",
                    self.cg.graph.name, self.device, self.failed)


def copy_all(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """`dst.copy_(src)` for each pair, batched into one `torch._foreach_copy_` where torch has it."""
    if len(pairs) > 1 and hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_([d for d, _ in pairs], [s for _, s in pairs])
    else:
        for d, s in pairs:
            d.copy_(s)


def _static_like(a: torch.Tensor, t: Any, empty: bool) -> torch.Tensor:
    """An input buffer of the graph: `t`'s layout (as kernels index it), or one element when empty."""
    if empty:
        return torch.empty(1, dtype=a.dtype, device=a.device)
    return _view(torch.empty(max(t.numel, 1), dtype=a.dtype, device=a.device), t)


def _host_bytes(x: torch.Tensor) -> bytes:
    return x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

"""Ahead-of-time compilation of generated kernels for a GPU target, with no GPU present.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` runs the whole GPU pipeline
(TTIR -> TTGIR -> LLVM -> PTX -> cubin, with the ptxas shipped in the wheel) on any machine. It
checks that every kernel the interpreter-tested emitters produce is also accepted by the real
compiler (no interpreter-only constructs, power-of-two shapes, dot tile sizes), and measures its
compile time. Run it in a process with TRITON_INTERPRET=0 (unset, a GPU-less machine interprets):
`@triton.jit` decides at decoration time whether it makes an interpreted or a compiled function.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from . import types as ty
from .kernel import Kernel


def signature(k: Kernel) -> tuple[dict[str, str], dict[str, int]]:
    """The `ASTSource` signature and constexprs of a kernel as it is launched."""
    sig = {name: ty.POINTER[d.name] for name, d in k.params}
    sig.update({m: "constexpr" for m in k.meta})
    return sig, dict(k.meta)


def compile_for_target(k: Kernel, arch: int = 90, warp_size: int = 32) -> Any:
    """Compile `k` (its `fn` must be a compiled-mode `@triton.jit` function) for CUDA sm_`arch`;
    returns Triton's CompiledKernel (`.asm["ptx"]`, `.asm["cubin"]`, `.metadata`)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, consts = signature(k)
    # every buffer the runtime binds starts 16-byte aligned (torch allocations, arena buffers at
    # offset 0), and the JIT specializes on that at launch: without the same hint here the PTX
    # would use scalar loads and no cp.async, unlike what the GPU runs
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(len(k.params))}
    src = ASTSource(fn=k.fn, signature=sig, constexprs=consts, attrs=aligned)
    return triton.compile(src, target=GPUTarget("cuda", arch, warp_size),
                          options={"num_warps": k.num_warps, "num_stages": k.num_stages})


@dataclass
class TargetBinary:
    """What `compile_each` brings back from a worker: Triton's `asm` texts (ptx, cubin, ...) and
    the shared memory a block needs (`metadata.shared`), or `error` where the compile raised."""

    asm: dict[str, Any]
    shared: int = 0
    error: str = ""


_PENDING: list[tuple[Kernel, int]] = []  # what forked workers compile, by index (inherited, not pickled)


def _compile_pending(i: int) -> TargetBinary:
    k, arch = _PENDING[i]
    try:
        ck = compile_for_target(k, arch)
    except Exception as e:  # reported per kernel: one bad kernel must not hide the others
        lines = str(e).strip().splitlines()
        return TargetBinary({}, error=f"{type(e).__name__}: {lines[-1][:300] if lines else ''}")
    return TargetBinary({n: v for n, v in ck.asm.items() if isinstance(v, (str, bytes))}, ck.metadata.shared)


def compile_each(kernels: list[Kernel], arch: int = 90, workers: int | None = None) -> list[TargetBinary]:
    """`compile_for_target` of every kernel, in a pool of `workers` forked processes (default: the
    CPUs). Processes, not threads: Triton's Python front end holds the GIL, and on two CPUs a
    thread pool compiling attention kernels was no faster than one thread, where two processes
    halved the time. Results in order, each a `TargetBinary`."""
    import multiprocessing

    n = max(1, min(len(kernels), workers or os.cpu_count() or 1))
    _PENDING[:] = [(k, arch) for k in kernels]
    try:
        if n == 1:
            return [_compile_pending(i) for i in range(len(kernels))]
        with multiprocessing.get_context("fork").Pool(n) as pool:
            return pool.map(_compile_pending, range(len(kernels)), chunksize=1)
    finally:
        _PENDING.clear()

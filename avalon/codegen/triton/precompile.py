"""Cold kernels compiled in forked processes, so that the JIT's warm-up then only loads them.

Triton's Python front end holds the GIL for most of a compile: on two CPUs a thread pool compiling
five attention kernels took 41 s where one thread took 39 s and two forked processes 20 s
(`benchmarks/parallel_compile.py`, `gpu_notes.md`). Processes need the exact compile the JIT would
do at launch, or the JIT compiles again: so the JIT itself says what it would compile. Its
`jit_cache_hook` (Triton's hook for this) is called with the specialization (signature, constants,
alignment attributes, every option, the target) before each compile, and returning True skips the
compile. `precompile` runs each kernel's `warmup` under such a hook, keeps the kernels whose binary
is not in Triton's disk cache yet, and compiles those in a pool of forked processes with the same
`triton.compile(ASTSource(...), target, options)` call the JIT makes, so the keys agree by
construction; the caller's warm-up after it is a cache hit per kernel (~1 ms).

A forked child never touches CUDA (compiling for a given target needs no device; the parent may
have initialized CUDA, which a fork cannot use). A kernel that fails in a child is left to the
caller's warm-up, which compiles it in process and reports as before.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from avalon.channels import get_logger

log = get_logger("triton")

_PENDING: list[tuple[Any, str]] = []  # (JITFunction, specialization JSON) for forked children, by index


def _source(fn: Any, spec: str) -> tuple[Any, Any, dict[str, Any]]:
    """The (ASTSource, GPUTarget, options) `JITFunction._do_compile` would compile for `spec`
    (decoded as Triton's `JITFunction.preload` decodes it)."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import convert_to_tuple_if_list

    o = json.loads(spec)

    def const(v: Any) -> Any:
        if tl.dtype.is_dtype(v):
            return tl.dtype(v)
        if isinstance(v, dict) and "constexpr" in v:
            return tl.constexpr(convert_to_tuple_if_list(v["constexpr"]))
        return convert_to_tuple_if_list(v)

    consts = {tuple(k): const(v) for k, v in zip(o["constant_keys"], o["constant_vals"])}
    attrs = dict(zip(map(tuple, o["attrs_keys"]), o["attrs_vals"]))
    sig = {k: convert_to_tuple_if_list(v) for k, v in o["signature"].items()}
    target = GPUTarget(**o["target"])
    options = make_backend(target).parse_options({k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in o["options"].items()})
    return ASTSource(fn, sig, consts, attrs), target, options.__dict__


def _cached(fn: Any, spec: str) -> bool:
    """Whether Triton's disk cache holds this compile already (the first lines of `triton.compile`)."""
    import hashlib

    from triton import knobs
    from triton.compiler import make_backend
    from triton.compiler.compiler import get_cache_invalidating_env_vars, get_cache_key, get_cache_manager

    src, target, options = _source(fn, spec)
    backend = make_backend(target)
    options = backend.parse_options(dict(options, **src.parse_options()))
    key = get_cache_key(src, backend, options, get_cache_invalidating_env_vars())
    if knobs.runtime.add_stages_inspection_hook is not None:
        key += knobs.runtime.add_stages_inspection_hook()[0]
    manager = get_cache_manager(hashlib.sha256(key.encode("utf-8")).hexdigest())
    return manager.get_group(f"{src.name[:150]}.json") is not None


def _compile_pending(i: int) -> str:
    """In a forked child: compile one recorded kernel into the disk cache ("" or the error)."""
    import triton

    fn, spec = _PENDING[i]
    try:
        src, target, options = _source(fn, spec)
        triton.compile(src, target=target, options=options)
    except Exception as e:  # left to the parent's warm-up, which compiles it in process
        return f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"
    return ""


def record(warm: Callable[[Any], Any], kernels: Sequence[Any]) -> list[tuple[Any, str]]:
    """What the JIT would compile for each kernel's `warm(kernel)` (a `fn.warmup` call) and does not
    find compiled: (JITFunction, specialization JSON) pairs, nothing compiled."""
    from triton import knobs

    seen: list[tuple[Any, str]] = []

    def hook(*, fn: Any, compile: dict[str, Any], **_: Any) -> bool:
        seen.append((fn.jit_function, compile["specialization_data"]))
        return True  # skip the compile

    before = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = hook
    try:
        for k in kernels:
            try:
                warm(k)
            except Exception as e:  # the caller's warm-up meets it again and reports it
                log.debug("recording %s failed (%s)", getattr(k, "name", k), e)
    finally:
        knobs.runtime.jit_cache_hook = before
    todo = []
    for fn, spec in seen:
        try:
            if not _cached(fn, spec):
                todo.append((fn, spec))
        except Exception as e:  # Triton internals moved: compile it, the cache decides
            log.debug("disk-cache probe failed (%s)", e)
            todo.append((fn, spec))
    return todo


def precompile(warm: Callable[[Any], Any], kernels: Sequence[Any], workers: int) -> int:
    """Compile the kernels' cold binaries into Triton's disk cache in `workers` forked processes;
    returns how many were compiled there. Nothing happens for fewer than two cold kernels, or
    where `fork` does not exist."""
    import multiprocessing

    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    todo = record(warm, kernels)
    if len(todo) <= 1:
        return 0
    _PENDING[:] = todo
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(todo))) as pool:
            errors = pool.map(_compile_pending, range(len(todo)), chunksize=1)
    finally:
        _PENDING.clear()
    for (fn, _), err in zip(todo, errors):
        if err:
            log.debug("precompiling %s in a child failed (%s); it compiles in process", fn, err)
    log.info("compiled %d kernels in %d processes", len(todo), min(workers, len(todo)))
    return sum(not e for e in errors)


"""The compile driver: trace once per input signature, optimize with a pass pipeline, run on a backend.

    step = av.compile(train_step, backend="numpy")      # or "triton"; pipeline=None is the default one
    loss = step(model, opt, x, y)                        # traced, optimized and compiled on first call
    print(step.inspect(model, opt, x, y))               # what the compiler did for this signature

Every user-facing function transformation goes through `Compiled`, the one path from a call to a
result: `av.compile` (the program is `trace_call(fn, args)`), `av.grad` / `av.value_and_grad` (the
program is `fn`'s gradient graph, built by `gradients.GradProgram`) and `av.fit` / `predict` (which
compile their step). A `Program` turns `fn` and one call's arguments into a `Traced` whose
`out_tree` already describes what the caller gets back, so the driver needs no per-transform
assembly step.

The cache key is `avalon.trace.signature` (shapes, dtypes, devices and structure of the arguments,
static arguments, which models) plus the plain Python attributes of the models involved (a layer's
`training` flag), so `model.eval()` compiles anew, and the float32 product precision
(`av.set_float32_matmul_precision`), which generated kernels bake in. A program that captured arrays that are not
arguments (a closure's numpy data or tensors) is compiled on every call: those values could change
without changing the signature. So is one whose trace drew from Python's `random` module or numpy's
global random state (a teacher-forcing coin `random.random() < ratio`, LayerDrop's `random.uniform(0, 1)`,
mixup's `np.random.beta`): the draw is baked in, and a cached replay would reuse it and leave the stream
where it was, where an eager call draws anew (it warns once per call, as captured arrays do). Tensors
built inside the function from Python numbers are literal data (`LiteralArray` constants,
`torch.tensor([-1])`) and kept, as the Python numbers a trace reads are.

Outputs are rebuilt and state updates (batch-norm statistics, optimizer steps: values recorded
with `avalon.trace.assign`, which are extra graph outputs) are written back by
`execute.run_traced` after every call. Inside an enclosing trace (`av.trace`, `av.grad`, another
`av.compile`) a plain compiled function simply runs its Python function, so its ops are recorded
into the enclosing graph and optimized with it; a transformed one (a gradient) has no Python
function computing its program, so its (cleaned-up) program graph is inlined there instead.
"""
from __future__ import annotations

import os
import random
import time
import types
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from avalon import amp, debug, precision, tree
from avalon import trace as trace_mod
from avalon.ir import Graph, LiteralArray, VerifyError, fusion_groups, verify
from avalon.passes import PassManager, PassRecord
from avalon.passes.manager import paused_gc
from avalon.passes.memory_plan import MemoryPlan, plan_memory
from avalon.tensor import Tensor, captured_state, default_float_dtype
from avalon.trace import SEED, Traced, current_trace, owner_model, reads_collected, signature, trace_call
from avalon.tree import StateCache

from .backends import get_backend
from .check import GroupChecker
from .execute import feed, run_traced
from .hoist import as_inputs, hoist_constants

_TRUE = ("1", "true", "yes", "on")


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    entries: int


@dataclass
class Inspection:
    """What `av.compile` did for one signature.

    `passes`: one `PassRecord` per pass (name, ms, changed, ir_after); `traced_graph`: the graph as
    traced, before any pass; `graph`: the final graph the backend runs (do not mutate it);
    `kernels`: kernel name -> generated source (on the Triton backend headed by two comment lines:
    how it launches, and the autotuner's choice with every candidate's time; on the numpy backend,
    which generates no code, each fused group's region as a standalone function, so both backends
    show the same groups);
    `source`: the generated program's source where the backend generates one (the numpy backend's
    straight-line function), else ""; `memory_plan`: the buffer plan of the final graph's
    intermediates; `tuning`: per tunable kernel its launch config, the other candidates' times and
    how it was chosen (Triton backend); `pipeline_key`: every pass
    with all its options and its version (`PassManager.key()`), so a pass that changes names a new
    debug folder.
    """

    name: str
    backend: str
    pipeline: str
    traced_graph: Graph
    graph: Graph
    passes: list[PassRecord]
    kernels: dict[str, str]
    trace_ms: float
    passes_ms: float
    codegen_ms: float
    kernel_suffix: str = ".py"
    pipeline_key: str = ""
    debug_dir: str | None = None
    source: str = ""
    tuning: dict[str, dict] = field(default_factory=dict)  # kernel -> {"config", "times" (ms per candidate), "how"}
    _plan: MemoryPlan | None = field(default=None, repr=False)

    @property
    def compile_ms(self) -> float:
        return self.trace_ms + self.passes_ms + self.codegen_ms

    @property
    def memory_plan(self) -> MemoryPlan:
        plan = self.graph.analysis("memory_plan")
        if plan is not None:
            return plan
        if self._plan is None:
            self._plan = plan_memory(self.graph)
        return self._plan

    @property
    def signature(self) -> str:
        """The inputs of the compiled graph with their types (`x: tensor<8x1x28x28xf32>`, ...)."""
        return ", ".join(f"{v.name or f'arg{i}'}: {v.type}" for i, v in enumerate(self.traced_graph.inputs))

    def __str__(self) -> str:
        groups = fusion_groups(self.graph)
        lines = [
            f"compiled @{self.name} on {self.backend} for ({self.signature})",
            f"  pipeline: {self.pipeline or '(none)'}",
            f"  {len(self.traced_graph.ops)} ops traced -> {len(self.graph.ops)} ops, {len(groups)} fused groups; "
            f"compiled in {self.compile_ms:.1f} ms (trace {self.trace_ms:.1f}, passes {self.passes_ms:.1f}, "
            f"codegen {self.codegen_ms:.1f})",
            "  passes:"]
        for r in self.passes:
            lines.append(f"    {r.name:<16} {r.ms:9.2f} ms  {'changed' if r.changed else 'no change'}")
        lines.append(f"  kernels ({len(self.kernels)}): {', '.join(self.kernels) or '-'}")
        lines.append("  " + self.memory_plan.summary())
        if self.debug_dir:
            lines.append(f"  debug files: {self.debug_dir}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<Inspection @{self.name} on {self.backend}: {len(self.passes)} passes, {len(self.graph.ops)} ops, "
                f"{len(self.kernels)} kernels>")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython shows the summary
        p.text(str(self))


@dataclass
class _Entry:
    inspection: Inspection
    executable: Any
    out_tree: Any
    n_outputs: int
    update_at: list[tuple[int | None, Any]]  # (leaf position, or None for a non-argument target; target)
    seeded: bool
    checker: GroupChecker | None = None
    extra: list[Any] | None = None  # inputs after the leaves (the seed, values lifted from an enclosing trace)
    guards: list[tuple[int, Any]] | None = None  # (leaf position, its values) read while tracing, baked in
    constants: list[Any] | None = None  # hoisted values (compiler/hoist.py), the graph's last inputs
    writes: list[tuple[int, str, str, Any, Any]] | None = None  # Python numbers the trace wrote (_number_writes)
    python_random: bool = False  # the trace drew from Python's (or numpy's global) random stream: never cached


class Program(Protocol):
    """What a function transformation compiles instead of `fn`'s own trace (see `gradients.GradProgram`).

    `prepare` checks and converts one call's arguments before its signature is taken; `build`
    makes the program for them: a `Traced` with `fn`'s inputs whose `out_tree` says what the
    caller gets back; `finish` dresses the result (gradients learn whose they are)."""

    def prepare(self, fn: Callable, args: tuple) -> tuple: ...

    def build(self, fn: Callable, args: tuple) -> Traced: ...

    def finish(self, fn: Callable, args: tuple, out: Any) -> Any: ...


class Compiled:
    """A compiled function: call it like the original. `inspect(*args)` and `cache_info()` tell
    what the compiler did. Binds as a method when used as a decorator inside a class.

    `program` (None: trace `fn`) lets a transformation such as `av.grad` compile another program
    of the same inputs through this same path; `name` then names it (`value_and_grad_loss`)."""

    # slots (no __dict__): the tracer must not mistake a compiled function for a model to walk
    __slots__ = ("fn", "backend", "pipeline", "check", "program", "_name", "_cache", "_states", "_hits",
                 "_misses", "_inlined", "_versions", "_last_key", "_warned", "_evicted", "__weakref__")

    def __init__(self, fn: Callable, backend: str | Any = "numpy", pipeline: str | PassManager | None = None,
                 check: bool | None = None, *, program: Program | None = None, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"av.compile expects a callable, got {type(fn).__name__}")
        self.fn = fn
        self.program = program
        self._name = name
        self.backend = get_backend(backend)
        if pipeline is None:
            from avalon.passes import DEFAULT_PIPELINE
            pipeline = DEFAULT_PIPELINE
        if isinstance(pipeline, str):
            PassManager.parse(pipeline)  # fail now on an unknown pass, not at the first call
        elif not isinstance(pipeline, PassManager):
            raise TypeError(f"pipeline must be a pipeline string or a PassManager, got {type(pipeline).__name__}")
        self.pipeline = pipeline
        self.check = check if check is not None else os.environ.get("AVALON_CHECK", "").lower() in _TRUE
        self._cache: dict[Any, _Entry] = {}
        self._inlined: dict[Any, _Entry] = {}  # programs built for inlining into an enclosing trace
        self._versions: dict[Any, list[_Entry]] = {}  # older guarded entries of a signature (`_KEEP_VERSIONS`)
        self._last_key: Any = None  # the signature compiled last, to say what changed at the next retrace
        self._warned = False  # the retrace warning is given once; later ones go to the log
        self._evicted = 0  # signatures dropped for `CACHE_LIMIT`
        self._states = StateCache()  # the models' walks, re-used while nothing in them is reassigned
        self._hits = self._misses = 0

    # -- looking like the wrapped function --------------------------------------------------
    @property
    def __name__(self) -> str:
        return self._name or getattr(self.fn, "__name__", None) or type(self.fn).__name__.lower()

    @property
    def __wrapped__(self) -> Callable:
        return self.fn

    @property
    def __self__(self) -> Any:
        """The model owning the function (itself a model, or a bound method's object), so that an
        enclosing trace feeds its parameters first, as it would for the function itself."""
        owner = owner_model(self.fn)
        if owner is None:
            raise AttributeError("__self__")
        return owner

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else types.MethodType(self, obj)

    def __repr__(self) -> str:
        return f"<compiled {self.__name__} on {self.backend.name}, {len(self._cache)} signature(s)>"

    # -- public ------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"compiled {self.__name__}: pass arguments positionally (got {', '.join(kwargs)})")
        outer = current_trace()
        if self.program is not None:
            args = self.program.prepare(self.fn, args)
        elif outer is not None:
            return self.fn(*args)  # record into the enclosing trace; it is optimized with that graph
        misses = self._misses
        entry, leaves = self._entry(args, inline=outer is not None)  # run_traced inlines a program
        if entry.writes and self._misses == misses:  # a cached trace: its writes to Python numbers again
            _replay_writes(entry.writes, _models_in(self.fn, args))
        objs = [x for _, x in leaves] + (entry.extra if entry.extra is not None else [SEED] if entry.seeded else [])
        objs += entry.constants or []
        if self.check and outer is None:
            objs = feed(objs)  # one seed for the check and the run
            self._check(entry, objs)
        targets = [objs[i] if i is not None else t for i, t in entry.update_at]
        runner = Traced(entry.inspection.graph, objs, entry.out_tree, entry.n_outputs, targets)
        out = run_traced(runner, entry.inspection.graph, entry.executable, objs)
        return self.program.finish(self.fn, args, out) if self.program is not None else out

    def inspect(self, *args: Any) -> Inspection:
        """What the compiler did for the signature of `args` (compiling it if it is not cached yet;
        nothing runs)."""
        if self.program is not None:
            args = self.program.prepare(self.fn, args)
        return self._entry(args)[0].inspection

    @property
    def cache(self) -> types.MappingProxyType:
        """The compiled signatures (signature key -> entry, whose `.inspection` says what was
        done), read-only, for looking at what a function was compiled for."""
        return types.MappingProxyType(self._cache)

    def cache_info(self) -> CacheInfo:
        """Hits and misses of the signature cache (calls and `inspect`s), and cached signatures."""
        return CacheInfo(self._hits, self._misses, len(self._cache))

    def cache_clear(self) -> None:
        self._cache.clear()
        self._inlined.clear()
        self._versions.clear()
        self._states = StateCache()
        self._hits = self._misses = self._evicted = 0
        self._warned = False

    # -- machinery ---------------------------------------------------------------------------
    def _entry(self, args: tuple, inline: bool = False) -> tuple[_Entry, list[tuple[str, Any]]]:
        key, leaves = signature(self.fn, args, self._states)
        key = (key, precision.dot_precisions(), amp.cache_key(),  # baked in: product precision, autocast,
               default_float_dtype())                              # the dtype of Python floats
        entry = self._cache.get(key)
        if entry is None and inline:
            entry = self._inlined.get(key)
        if entry is not None and entry.guards and not _guards_hold(entry.guards, leaves):
            # a model tensor whose values the trace read (and baked in) has changed since: an older
            # version of this signature may hold (a pointer cycling through a queue's positions)
            entry = self._other_version(key, entry, leaves) if not inline else None
        if entry is not None:
            self._hits += 1
            if len(self._cache) > 1 and self._cache.get(key) is entry:
                self._cache[key] = self._cache.pop(key)  # most recently used last: evicted last
            return entry, leaves
        self._misses += 1
        written = len(trace_mod.NUMBER_WRITES)
        with paused_gc():
            entry = self._build(args, leaves, optimize=not inline)
        counters = dict(trace_mod.NUMBER_WRITES[written:])  # number attributes this trace rebound, and where
        del trace_mod.NUMBER_WRITES[written:]
        if inline:  # not compiled: cached apart, so a later call outside a trace still compiles it
            if (entry.extra is None and not entry.python_random and not _captured_arrays(entry.inspection.traced_graph)
                    and not _captured_state(entry)):
                self._inlined[key] = entry
            return entry, leaves
        if entry.python_random:
            warnings.warn(f"{self.__name__} draws from Python's `random` module (or numpy's global random state) "
                          "while tracing (`random.random() < ratio`); the draw is baked into the graph, so it is "
                          "traced again and compiled again on every call, drawing as an eager call does. Draw "
                          "outside and pass the result as an argument (av.rand for a tensor) to reuse the compiled "
                          "graph.", stacklevel=3)
        elif _captured_arrays(entry.inspection.traced_graph) or _captured_state(entry):
            warnings.warn(f"{self.__name__} uses arrays that are not among its arguments (captured from an "
                          "enclosing scope, or built from Python lists); they are baked into the graph, so it is "
                          "traced again and compiled again on every call. Pass them as arguments to reuse the "
                          "compiled graph." + (" (It writes tensors it captured in place: each call writes those "
                          "its scope holds then.)" if _captured_state(entry) else ""), stacklevel=3)
        else:
            self._retraced(key, leaves, counters)
            old = self._cache.get(key)
            if old is not None and old.guards and entry.guards:
                kept = self._versions.setdefault(key, [])
                kept.insert(0, old)
                del kept[_KEEP_VERSIONS - 1:]
            elif old is None and len(self._cache) >= CACHE_LIMIT:  # a counter's signatures: never unbounded
                gone = next(iter(self._cache))  # the least recently used
                del self._cache[gone]
                self._versions.pop(gone, None)
                self._evicted += 1
            self._cache[key] = entry
        return entry, leaves

    def _retraced(self, key: Any, leaves: list[tuple[str, Any]], counters: dict[str, str] | None = None) -> None:
        """Say what changed since the last compiled signature (channel `avalon.compile`), and warn once
        when one function has been compiled for 8 signatures (later at 16, 32, ... on the log only): a
        value that changes every call (a learning rate a hand-written optimizer reads from
        `group['lr']`, a step counter) retraces every call, which torch.compile warns about too (its
        `recompile_limit`, 8). `counters`: the model number attributes the last trace rebound, with
        the user's line; the warning names the one that changed. At most `CACHE_LIMIT` signatures are
        kept (the least recently used goes)."""
        last, self._last_key = self._last_key, key
        if last is None:
            return
        n = len(self._cache) + self._evicted + (key not in self._cache)
        why = _key_diff(last, key, leaves, self.fn) if key not in self._cache else "a value read while tracing changed"
        from avalon.channels import get_logger
        get_logger("compile").info("%s traced again (signature %d): %s", self.__name__, n, why)
        if n >= 8 and n & (n - 1) == 0:
            if self._warned:
                get_logger("compile").info("%s has been traced and compiled for %d different signatures",
                                           self.__name__, n)
                return
            self._warned = True
            attr = why.split(": ", 1)[-1].split(" = ", 1)[0].rsplit(".", 1)[-1] if " = " in why else None
            site = (counters or {}).get(attr)
            counter = (f" `{attr}` is a Python number the function itself changes at {site}, so no call can "
                       f"reuse a compiled signature: keep it as a tensor buffer "
                       f"(self.register_buffer('{attr}', av.tensor(0)), then `+= 1` as before), which a compiled "
                       "call updates in place." if site else "")
            warnings.warn(f"{self.__name__} has been traced and compiled for {n} different signatures; the last "
                          f"change: {why}.{counter} Each new signature traces and compiles again: pass a number that "
                          "changes every call as a tensor (av.tensor(lr)), or keep shapes fixed (AVALON_LOG=compile "
                          f"lists every retrace). Said once; at most {CACHE_LIMIT} signatures are kept.", stacklevel=4)

    def _other_version(self, key: Any, current: _Entry, leaves: list[tuple[str, Any]]) -> _Entry | None:
        """An older entry of `key` whose guards hold, made the current one (the one it replaces kept)."""
        kept = self._versions.get(key, [])
        for i, e in enumerate(kept):
            if _guards_hold(e.guards, leaves):
                kept[i] = current
                self._cache[key] = e
                return e
        return None

    def _pass_manager(self) -> PassManager:
        """A fresh manager per compile (check mode verifies after every pass, naming a pass that
        breaks the IR); a PassManager the user gave is used as given."""
        if isinstance(self.pipeline, str):
            return PassManager.parse(self.pipeline, verify_each=self.check,
                                     target=getattr(self.backend, "target", None))
        return self.pipeline

    def _build(self, args: tuple, leaves: list[tuple[str, Any]], optimize: bool = True) -> _Entry:
        """Trace (or build the program) and, with `optimize`, run the pipeline and the backend. A program
        inlined into an enclosing trace is not optimized: the enclosing pipeline runs on the whole graph."""
        t0 = time.perf_counter()
        models = _models_in(self.fn, args)
        numbers = [tree.number_slots(m)[0] for m in models]
        rng_before = _host_rng_state()
        with reads_collected() as reads:
            traced = trace_call(self.fn, args) if self.program is None else self.program.build(self.fn, args)
        drew = _host_rng_state() != rng_before
        guards = _guards(reads, leaves)
        writes = _number_writes(models, numbers) or None
        graph = traced.graph
        if not optimize:
            insp = Inspection(self.__name__, self.backend.name, "", graph, graph, [], {},
                              (time.perf_counter() - t0) * 1e3, 0.0, 0.0)
            ids = {id(obj): j for j, (_, obj) in enumerate(leaves)}
            update_at = [(ids.get(id(t)), t) for t in traced.update_targets]
            extra = list(traced.leaves[len(leaves):])  # lifted values are the enclosing trace's: never cached
            return _Entry(insp, None, traced.out_tree, traced.n_outputs, update_at,
                          any(x is SEED for x in traced.leaves), extra=extra if any(x is not SEED for x in extra)
                          else None, guards=guards, writes=writes, python_random=drew)
        # the pipeline rewrites a copy: the trace's own graph stays as traced, so a constant it made and something
        # outside kept (open_clip's cached labels, an lru_cache'd mask) can still be computed (`trace.constant_value`)
        traced_graph, graph = graph, graph.clone()
        n_inputs = len(graph.inputs)
        hoisted = hoist_constants(graph)
        t_traced = time.perf_counter()
        pm = self._pass_manager()  # resolving the backend's target may import it (Triton: ~1 s once)
        t1 = time.perf_counter()
        root = debug.debug_root()
        with debug.capture_log("fusion") as fusion_log:
            pm.run(graph)
        records = list(pm.records)
        try:
            verify(graph)
        except VerifyError as e:  # (check mode verified after each pass): name the pass that broke it
            raise pm.blame(e) from e
        t2 = time.perf_counter()
        exe = self.backend.compile(graph)
        ids = {id(obj): j for j, (_, obj) in enumerate(leaves)}
        update_at = [(ids.get(id(t)), t) for t in traced.update_targets]
        if hasattr(exe, "donated"):  # each updated state is written back into its input: donate it
            once = Counter(j for j, _ in update_at)
            exe.donated = {traced.n_outputs + k: j for k, (j, _) in enumerate(update_at)
                           if j is not None and once[j] == 1}
        t3 = time.perf_counter()
        insp = Inspection(self.__name__, self.backend.name, str(pm), traced_graph, graph, records,
                          dict(getattr(exe, "kernels", {}) or {}), (t_traced - t0) * 1e3, (t2 - t1) * 1e3,
                          (t3 - t2 + t1 - t_traced) * 1e3, getattr(self.backend, "kernel_suffix", ".py"), pm.key(),
                          source=(getattr(exe, "source", "") or "") if current_trace() is None else "")
        if root is not None:
            insp.debug_dir = debug.dump(insp, root, fusion_log)
        # state updates are written back before a call returns, so the backend may hand them over in
        # storage it reuses (a `CompiledGraph`, possibly wrapped by the backend's executable)
        runtime = getattr(exe, "compiled", exe)
        insp.tuning = dict(getattr(runtime, "tuning", {}) or {})  # the autotuner's choices (Triton)
        if hasattr(runtime, "scratch_outputs"):
            runtime.scratch_outputs = frozenset(range(traced.n_outputs, len(graph.outputs)))
        seeded = any(x is SEED for x in traced.leaves)
        devs = {x.device for _, x in leaves if isinstance(x, Tensor)}
        constants = as_inputs(hoisted, [v.type for v in graph.inputs[n_inputs:]],
                              next(iter(devs)) if len(devs) == 1 else None) if hoisted else None
        return _Entry(insp, exe, traced.out_tree, traced.n_outputs, update_at, seeded, guards=guards,
                      constants=constants, writes=writes, python_random=drew)

    def _check(self, entry: _Entry, inputs: list[Any]) -> None:
        if entry.checker is None:
            entry.checker = GroupChecker(entry.inspection.graph, self.backend)
        entry.checker.run(inputs)


def _host_rng_state() -> tuple:
    """Python's and numpy's global random streams where they stand (compared around a trace: a draw the
    trace made, such as a teacher-forcing coin `random.random() < ratio`, is a value baked into the graph;
    a cached replay would neither draw again nor advance the stream, so such a trace is not cached)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return random.getstate(), kind, keys.tobytes(), pos, has_gauss, gauss


def _models_in(fn: Any, args: tuple) -> list[Any]:
    """The models a call reaches: `fn`'s own (a model, or a bound method's), then those among its
    arguments (in lists, tuples and dicts too), each once: the tracer's own list (`trace._roots`)."""
    from ..trace import _roots
    return _roots(owner_model(fn), args)


def _number_writes(models: list[Any], before: list[dict]) -> list[tuple[int, str, str, Any, Any]]:
    """What a trace wrote to the Python numbers of the models it was given (torchdiffeq's ODE function
    counting its evaluations, `self.nfe += 1`; a module switching `self.training`): (model position,
    path, holder path, key, value) for each number that changed or appeared. The signature holds
    every such number as it was before the trace, so a later call with the same signature starts
    from the same numbers, and the trace's Python (which ran only once) would have written the same
    values: the compiled call writes them (`_replay_writes`), as torch's forward does on every call."""
    out = []
    for i, (m, old) in enumerate(zip(models, before)):
        for path, (_, key, v) in tree.number_slots(m)[0].items():
            was = old.get(path)
            if was is None or type(was[2]) is not type(v) or not (was[2] == v or (was[2] != was[2] and v != v)):
                name = str(key)  # the path is the holder's path, a dot and this name
                out.append((i, path, path[:len(path) - len(name) - 1] if len(path) > len(name) else "", key, v))
    return out


def _replay_writes(writes: list[tuple[int, str, str, Any, Any]], models: list[Any]) -> None:
    """A cached call's share of its trace's Python: the numbers `_number_writes` found, written again
    into the same places of this call's models (which the signature says hold what the trace's did)."""
    holders: dict[int, dict[str, Any]] = {}
    for i, _, where, key, v in writes:
        if i >= len(models):
            continue
        if i not in holders:
            holders[i] = tree.number_slots(models[i])[1]
        holder = holders[i].get(where)
        if isinstance(holder, (list, dict)):
            holder[key] = v
        elif holder is not None:
            setattr(holder, key, v)


def _host_bytes(t: Any) -> tuple:
    """A tensor's values, exactly (NaNs included), read without `Tensor.numpy`, which notes reads."""
    data = t._data
    if not isinstance(data, np.ndarray):  # torch storage on a device (bfloat16 has no numpy dtype: bytes)
        import torch
        data = data.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
    return (tuple(t.shape), t.dtype, data.tobytes())


def _key_diff(old: Any, new: Any, leaves: list[tuple[str, Any]], fn: Any = None) -> str:
    """What differs between two cache keys, in words: a leaf's shape or dtype by its name, a Python
    number by its attribute path, the settings baked into every trace."""
    (sig_o, *set_o), (sig_n, *set_n) = old, new
    for what, a, b in zip(("the float32 matmul precision", "autocast", "the default float dtype"), set_o, set_n):
        if a != b:
            return f"{what} is {b!r} (was {a!r})"
    head_o, trees_o, specs_o, free_o = sig_o
    head_n, trees_n, specs_n, free_n = sig_n
    if len(specs_o) == len(specs_n):
        for (name, _), a, b in zip(leaves, specs_o, specs_n):
            if a != b:
                return f"{name or 'an argument'}: {_spec_words(b)} (was {_spec_words(a)})"
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    names = code.co_varnames[:code.co_argcount] if code is not None else ()
    if getattr(fn, "__self__", None) is not None:
        names = names[1:]
    args = [(f"argument {i}" + (f" ({names[i]})" if i < len(names) else ""), x, y)
            for i, (x, y) in enumerate(zip(trees_o, trees_n))]
    for where, a, b in (("the model", head_o, head_n), *args,
                        ("a number it reads from its closure or globals", free_o, free_n)):
        d = _first_diff(a, b)
        if d is not None:
            return f"{where}: {d}"
    return "the arguments' structure"


def _spec_words(spec: tuple) -> str:
    return f"shape {spec[0]} {spec[1]} on {spec[2]}" + (" (frozen)" if len(spec) > 3 else "")


def _first_diff(a: Any, b: Any) -> str | None:
    """The first place two parts of a key differ: `name = new (was old)` for a named setting."""
    if a == b:
        return None
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        if len(a) == 2 and isinstance(a[0], str) and a[0] == b[0] and not isinstance(a[1], tuple):
            return f"{a[0]} = {b[1]!r} (was {a[1]!r})"
        if a and a[0] == "model" and a[1] != b[1]:
            return "another model object"
        for x, y in zip(a, b):
            d = _first_diff(x, y)
            if d is not None:
                return d
    return f"{_short(b)} (was {_short(a)})"


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


_KEEP_VERSIONS = 8
CACHE_LIMIT = 64
"""Signatures one compiled function keeps; a new one beyond replaces the least recently used (a
step counter kept as a Python number is a new signature every call)."""
"""Compiled versions kept per signature whose traces read model tensors' values (guards): a value
cycling among a few states (MoCo's queue pointer) reuses its versions instead of tracing every step."""


def _guards(reads: list[Any], leaves: list[tuple[str, Any]]) -> list[tuple[int, Any]] | None:
    """The leaves whose values the trace read, by position, with those values."""
    if not reads:
        return None
    at = {id(obj): j for j, (_, obj) in enumerate(leaves)}
    out: dict[int, Any] = {}
    for t in reads:
        j = at.get(id(t))
        if j is not None and j not in out and isinstance(t, Tensor):
            out[j] = _host_bytes(t)
    return list(out.items()) or None


def _guards_hold(guards: list[tuple[int, Any]], leaves: list[tuple[str, Any]]) -> bool:
    """Whether each guarded leaf still holds the values the trace read (a traced value there: no)."""
    return all(j < len(leaves) and isinstance(t := leaves[j][1], Tensor) and not t.is_traced
               and _host_bytes(t) == seen for j, seen in guards)


def _captured_state(entry: _Entry) -> bool:
    """A write into a tensor the traced function captured rather than took (`tensor.CAPTURED_STATE`: an EMA
    helper's shadow weights): the graph writes back into the object its scope held at trace time; traced again
    on each call, it writes the one the scope holds then, as the eager call would."""
    return any(j is None and captured_state(t) for j, t in entry.update_at)


def _captured_arrays(graph: Graph) -> bool:
    """Dense constants in a program before any pass are data captured at trace time (a closure's
    arrays or tensors, literal lists; see the module docstring)."""
    return any(op.name == "constant" and isinstance(op.attrs["value"], np.ndarray)
               and not isinstance(op.attrs["value"], LiteralArray) for op in graph.walk())


_TORCH_BACKENDS = ("inductor", "eager", "aot_eager", "cudagraphs")
_TORCH_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_said: set[str] = set()


def _note_once(key: str, message: str) -> None:
    if key not in _said:
        _said.add(key)
        from avalon.channels import get_logger
        get_logger("compile").info(message)


def compile(fn: Callable | None = None, backend: str | Any = "numpy", pipeline: str | PassManager | None = None,
            *, check: bool | None = None, model: Callable | None = None, mode: str | None = None,
            fullgraph: bool = False, dynamic: bool | None = None, options: dict | None = None,
            disable: bool = False) -> Any:
    """`av.compile(fn, backend="numpy" | "triton", pipeline=None, check=False) -> callable`.

    Traced and compiled once per input signature and cached. `pipeline` is a pipeline string or a
    `PassManager` (None: `avalon.passes.DEFAULT_PIPELINE`). `check=True` (or `AVALON_CHECK=1`)
    checks every fused group against its unfused reference on each call and verifies the IR after
    every pass of a pipeline string (slow; for debugging; see `avalon.compiler.check`).
    `AVALON_DEBUG_DIR=path` writes what each compile did under `path` (see `avalon.debug`).
    Usable as a decorator, bare or with arguments: `@av.compile(backend="triton")`.

    A model (an `nn.Module`, or any object holding parameters that is called) gives an
    `OptimizedModule` (`avalon.compiler.module`): calling it runs the compiled forward, and it is
    still the model everywhere else (parameters, state_dict, train/eval, attributes, `av.grad`,
    optimizers), as torch's `torch.compile(model)`. A function gives a `Compiled`.

    torch's keywords are accepted: `model=` (torch's name for `fn`); `disable=True` returns `fn`
    itself; `mode`, `options`, `fullgraph` and `dynamic` change nothing here: Avalon always compiles
    the whole function into one graph (what `fullgraph=True` asks; data-dependent Python control flow
    is an error, never a graph break), once per input signature (so `dynamic=True` does not make a
    shape-generic graph), and its passes and autotuner are not configured by Inductor's modes or
    options. torch's backend names ("inductor", "eager", "aot_eager", "cudagraphs") mean Avalon's
    default backend ("numpy"), said once on the `avalon.compile` log channel.
    """
    if model is not None:
        if fn is not None:
            raise TypeError("compile: got both fn and model= (torch's name for it); pass one")
        fn = model
    if mode not in _TORCH_MODES:
        raise RuntimeError(f"compile: unrecognized mode={mode!r}, should be one of: "
                           f"{', '.join(m for m in _TORCH_MODES if m)}")
    if mode is not None and options is not None:
        raise RuntimeError("compile: either mode or options can be specified, but both can't be specified at "
                           "the same time (as torch says)")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"compile: options must be a dict, got {type(options).__name__}")
    if isinstance(backend, str) and backend in _TORCH_BACKENDS:
        _note_once(backend, f"av.compile(backend={backend!r}): torch's backend name; Avalon compiles with its "
                            "default backend, 'numpy' (Avalon's own: 'numpy', 'cpu', 'triton', 'iree')")
        backend = "numpy"
    if mode not in (None, "default") or options:
        _note_once("mode", "av.compile: torch's mode=/options= configure Inductor and change nothing here")

    def build(f: Callable) -> Any:
        if disable:
            return f
        compiled = Compiled(f, backend, pipeline, check)
        if _is_model(f):
            from .module import OptimizedModule
            return OptimizedModule(f, compiled)
        return compiled

    if fn is None:
        return build
    return build(fn)


def _is_model(f: Any) -> bool:
    """A model to wrap as a module: a called object holding state (not a function, a compiled
    function, or a functools.partial)."""
    import functools

    from avalon.tree import is_model
    return is_model(f) and callable(f) and not isinstance(f, (Compiled, functools.partial))

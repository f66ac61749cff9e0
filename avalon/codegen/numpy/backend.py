"""`backend="numpy"`: generated numpy code per compiled signature, the interpreter as its oracle.

`NumpyBackend.compile` generates one straight-line Python function for the final graph
(`avalon.codegen.numpy.generator`): the memory plan's buffers and the scratch slots are allocated
once, ops write through `out=`, fused groups are inlined. Its source is `.source` (shown by
`inspect(...).source` and written to `AVALON_DEBUG_DIR` as `generated.py`). `kernels` still holds,
per fused group, the group's region printed as a standalone function, so `inspect(...).kernels`
shows the same grouping on both backends.

`NumpyExecutable` runs a graph on the reference interpreter (or a subclass of it), op by op: the
oracle the generated code is tested against, and the way to run a graph with an observing or
altered interpreter.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from avalon.channels import get_logger
from avalon.ir import Graph, Interpreter, fusion_groups, group_name, region_function
from avalon.passes.memory_plan import MemoryPlan, plan_memory
from avalon.passes.target import Target
from avalon.trace import located

from . import kernels
from .generator import Emission, generate
from .loops import CPU, schedule

log = get_logger("numpy")

NUMPY = Target("numpy", memory_plan=True)
"""The generated code runs any group, but takes the default kernel kinds so that `inspect()` shows
the grouping the Triton backend gets; its buffers follow the memory plan."""


def _kernels(graph: Graph) -> dict[str, str]:
    return {group_name(op): str(region_function(op)) for op in fusion_groups(graph)}


class NumpyExecutable:
    """Runs the graph with the reference interpreter."""

    kernel_suffix = ".avalon"  # Avalon text IR, not MLIR

    def __init__(self, graph: Graph, interpreter: type[Interpreter] = Interpreter):
        self.graph = graph
        self.interpreter = interpreter
        self.kernels = _kernels(graph)

    def __call__(self, *inputs: Any) -> tuple[Any, ...]:
        return self.interpreter(self.graph).run(*inputs)


class GeneratedExecutable:
    """Runs the generated function of a graph. Inputs are checked and converted exactly as the
    interpreter does (`Interpreter.check_inputs`: dtypes, shapes, bf16 rounding)."""

    kernel_suffix = ".avalon"  # Avalon text IR, not MLIR

    def __init__(self, graph: Graph, plan: MemoryPlan | None = None, target: Target = NUMPY, native: bool = False):
        self.graph, self.target, self.native = graph, target, native
        self._plan = plan
        self.kernels = _kernels(graph)
        self._emission: Emission | None = None
        self._fn: Any = None
        self._checker = Interpreter(graph)
        self._donated: dict[int, int] = {}
        self._donor = _Donor([])

    @property
    def donated(self) -> dict[int, int]:
        """Output index -> input index: the caller copies that output into that input's array after
        the call and needs the old value no more (a state update), so the generated code may write
        it there directly (`avalon.codegen.numpy.donate`). Set before the first call."""
        return dict(self._donated)

    @donated.setter
    def donated(self, mapping: dict[int, int]) -> None:
        if mapping != self._donated:
            self._donated = dict(mapping)
            self._emission = self._fn = None

    @property
    def emission(self) -> Emission:
        """The generated program, made on first use: a gradient program compiled inside an
        enclosing trace is only inlined there and never runs, so it never pays for generation."""
        if self._emission is None:
            plan = self._plan
            if plan is None or not plan.is_current(self.graph):
                plan = self._plan = plan_memory(self.graph, target=self.target)
            self._emission = e = generate(self.graph, plan, self.target, self._donated, self.native)
            self._donor = _Donor(sorted({self._donated[o] for o in e.donated}))
            log.debug("generated @%s: %d lines, %d ops fast, %d by reference rules, %d B resident", self.graph.name,
                      e.source.count("\n"), e.stats["fast"], e.stats["fallback"], e.resident_bytes)
        return self._emission

    @property
    def source(self) -> str:
        return self.emission.source

    @property
    def plan(self) -> MemoryPlan:
        self.emission  # noqa: B018 - makes the plan when none was given
        return self._plan  # type: ignore[return-value]

    def __call__(self, *inputs: Any) -> tuple[Any, ...]:
        if self._fn is None:
            self._fn = self._link()
        args = self._donor.prepare(self._checker.check_inputs(inputs))
        threads = kernels.serial()  # small GEMMs on one BLAS thread (see `kernels.PARALLEL_MIN_MNK`)
        with np.errstate(all="ignore"):
            try:
                return self._fn(*args)
            except (IndexError, ValueError) as e:  # an index out of range: say whose, as Triton does
                raise self._located(e) from None
            finally:
                kernels.restore(threads)

    def _located(self, e: Exception) -> Exception:
        """`e` with the user's source line of the op whose generated line raised it."""
        tb, op = e.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.startswith("<avalon numpy"):
                op = self.emission.op_at(tb.tb_lineno)
            tb = tb.tb_next
        if op is None or getattr(e, "location", None) is not None:
            return e
        try:
            new = located(e, op.loc)
        except TypeError:  # an exception type that takes other arguments
            return e
        what = f"op '{op.name}' of " if str(e).startswith(f"{op.name}:") else ""
        new.add_note(f"while running {what}@{self.graph.name} (backend {'cpu' if self.native else 'numpy'})")
        return new


    def _link(self) -> Any:
        """The runnable function; compiled runs that cannot be built fall back to numpy code, once
        said on avalon.numpy."""
        from .native import NativeUnavailable
        try:
            return self.emission.link()
        except NativeUnavailable as e:
            global _warned_native
            if not _warned_native:
                log.warning("compiled loops unavailable, running generated numpy code instead: %s", e)
                _warned_native = True
            self.native, self._emission = False, None
            return self.emission.link()


_warned_native = False


class NumpyBackend:
    name = "numpy"
    kernel_suffix = ".avalon"  # Avalon text IR, not MLIR
    target = NUMPY
    native = False

    def compile(self, graph: Graph) -> GeneratedExecutable:
        return GeneratedExecutable(graph, graph.analysis("memory_plan"), self.target, self.native)


class CpuBackend(NumpyBackend):
    """`backend="cpu"`: the numpy backend with groups' elementwise runs compiled to C loops by the
    system compiler (`avalon.codegen.numpy.native`, groups as whole loop nests: `loops`), f32/f64
    `random` ops as one compiled call each (`native_random`) and fused gemm-plus-accumulator forms
    (`W - lr * (A @ B)`, `0.9 * buf + A @ B`, `A @ B + C @ D`, ...) as one gemm call into the
    accumulator (`blas`): faster, but the libmvec functions and those sums are ulps from the reference
    (checked within float tolerance, as the Triton backend is; uniform random
    numbers stay bit for bit)."""

    name = "cpu"
    native = True
    target = CPU

    def compile(self, graph: Graph) -> GeneratedExecutable:
        from .native import eligible, reducible
        for op in fusion_groups(graph):
            schedule(op.regions[0], eligible, reducible)
        return super().compile(graph)


class _Donor:
    """Per call, hands the generated code only donated arrays it may overwrite: writable, C-contiguous
    ndarrays that overlap no other input (two inputs may be views of one array); any other donated
    input is replaced by a copy, which is then written instead (and copied back by the caller)."""

    def __init__(self, inputs: list[int]):
        self.inputs = inputs
        self._bounds: list[tuple[Any, int, int]] = []  # per input: (array, first byte, end byte), reused

    def _span(self, i: int, a: Any) -> tuple[int, int]:
        known = self._bounds[i]
        if known[0] is not a:
            lo, hi = np.lib.array_utils.byte_bounds(a) if isinstance(a, np.ndarray) and a.nbytes else (0, 0)
            known = self._bounds[i] = (a, lo, hi)
        return known[1], known[2]

    def prepare(self, args: list[Any]) -> list[Any]:
        if not self.inputs:
            return args
        if len(self._bounds) != len(args):
            self._bounds = [(None, 0, 0)] * len(args)
        spans = sorted((*self._span(i, a), i) for i, a in enumerate(args))
        alone: set[int] = set()
        reach = None  # an interval overlaps another iff it starts before an earlier one ends, or the next starts
        for k, (lo, hi, i) in enumerate(spans):  # before it ends
            if lo < hi and (reach is None or reach <= lo) and (k + 1 == len(spans) or spans[k + 1][0] >= hi):
                alone.add(i)
            if lo < hi:
                reach = hi if reach is None else max(reach, hi)
        for j in self.inputs:
            a = args[j]
            if j not in alone or not (isinstance(a, np.ndarray) and a.flags.writeable and a.flags.c_contiguous):
                args[j] = np.array(a)
        return args

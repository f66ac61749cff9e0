"""The IREE backend (see the package docstring).

IREE fuses and tiles the linalg module itself, so the Avalon target asks for pointwise groups only
(they become one `linalg.generic` each) and no memory plan (IREE plans its own buffers). One
compile makes one module whose public function is the graph; a call converts the inputs to numpy,
calls it on IREE's `local-task` driver (all cores) and hands back numpy arrays.

Compiler flags: `--iree-llvmcpu-target-cpu=host` (without it IREE targets a generic x86-64 and
warns about poor performance) and `--iree-input-demote-f64-to-f32=false` (IREE demotes f64 to f32
by default, which would change an f64 graph's signature and results) and `--iree-opt-level=O3`
(1.4-1.5x faster LeNet and VAE training steps than the default level, same compile time:
benchmarks/mlir_iree.py);
`AVALON_IREE_FLAGS="--flag=value ..."` adds more.
"""
from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from avalon.channels import get_logger
from avalon.ir import Graph
from avalon.ir.reference import IndexOutOfRangeError, check_error
from avalon.mlir.linalg import lower_function
from avalon.passes.target import Target
from avalon.tensor import as_array

INSTALL = 'pip install iree-base-compiler iree-base-runtime (or pip install -e ".[mlir]")'
try:
    import iree.compiler as ireec
    import iree.runtime as ireert
except ImportError as e:  # one line that says what to do
    raise ImportError(f"backend='iree' needs IREE: {INSTALL}") from e

IREE = Target("iree", kinds=("pointwise",), memory_plan=False, strided_traits=())
"""Pointwise groups only (IREE forms its own dispatch regions around contractions and reductions);
no memory plan; no strided reads, so the layout pass keeps every value row-major."""

DEFAULT_FLAGS = ("--iree-llvmcpu-target-cpu=host", "--iree-input-demote-f64-to-f32=false", "--iree-opt-level=O3")
NO_TRANSPOSE_PROPAGATION = "--iree-global-opt-propagate-transposes=false"
NO_AGGRESSIVE_FUSION = "--iree-dispatch-creation-enable-aggressive-fusion=false"
SYSTEM_LINKER = "--iree-llvmcpu-link-embedded=false"
_TRANSPOSE_BUG = "'linalg.yield' op expected number of yield values"
WORKAROUNDS = (
    # IREE 3.x's transpose propagation rewrites a multi-result linalg.generic one of whose results is
    # transposed into a generic that yields more values than it has outs (`y = x * 2; return y.T, y.exp()`).
    (_TRANSPOSE_BUG, NO_TRANSPOSE_PROPAGATION),
    # Its aggressive dispatch fusion (on from --iree-opt-level=O2) moves a multi-use producer into a
    # dispatch before its operands are defined (label-smoothed cross-entropy's gradient: "operand #0
    # does not dominate this use"), or fuses a write into a dispatch it cannot distribute (GRU and
    # LSTM gradients: "restricted to workgroup distributed contexts").
    ("does not dominate this use", NO_AGGRESSIVE_FUSION),
    ("restricted to workgroup distributed contexts", NO_AGGRESSIVE_FUSION),
    ("failed on workgroup distribution verification", NO_AGGRESSIVE_FUSION),
    # Its stream partitioning fails on chained pad/slice/mul steps of 64-bit elements (f64 cumprod's
    # log-step scan: "'stream.yield' op used resource not listed in explicit captures"); fusing the
    # pads into their consumers leaves no such chain (results exact; the `favor=debug` partitioning
    # that also compiles it computes wrong numbers).
    ("used resource not listed in explicit captures",
     "--iree-dispatch-creation-enable-fuse-padding-into-linalg-consumer-ops=true"),
    # f64 tanh, sin and cos have no polynomial expansion in IREE (f32 ones do): they become libm calls,
    # which the embedded linker cannot resolve ("undefined symbol: tanh"); the system linker makes a
    # shared object that takes them from the process's libm.
    ("undefined symbol: ", SYSTEM_LINKER),
    # ... and when such a call sits in a constant expression (a mel filterbank's cos of an iota), IREE's
    # compile-time evaluator links it with the embedded linker anyway: evaluate it at run time instead.
    ("undefined symbol: ", "--iree-opt-const-eval=false"),
)
"""(a failed compile's diagnostic, the flag that avoids that IREE bug): valid modules (upstream
verifies them) that IREE's optimizations break; only a module that failed is compiled again, with
the flag added, so no other module's code changes."""


def flags(base: Sequence[str] = DEFAULT_FLAGS) -> list[str]:
    """The compiler flags: `base` (the defaults) plus `AVALON_IREE_FLAGS`."""
    return [*base, *shlex.split(os.environ.get("AVALON_IREE_FLAGS", ""))]


class IreeCompileError(RuntimeError):
    """iree-compile rejected a module. The message's first line names the module's op that failed
    and the compiler's first `error:` line (its raw output is kilobytes, mostly the CPU feature
    list); `diagnostics` holds that full output and `source` the module. `AVALON_LOG=iree` prints both."""

    def __init__(self, message: str, diagnostics: str, source: str):
        super().__init__(message)
        self.diagnostics, self.source = diagnostics, source


_LOG = get_logger("iree")  # asked for at import, so AVALON_LOG=iree never reads as a typo
_ERROR = re.compile(r"^[^\n]*?:(\d+):\d+: error: (.*)$", re.M)
_TOP_OP = re.compile(r"^    (?:%\S+ = )?([a-z_]+\.[\w.]+)")  # an op of the function body (ours indent 4)
_ANY_OP = re.compile(r"^\s*(?:%\S+ = )?([a-z_]+\.[\w.]+)")


def compile_error(diagnostics: str, source: str) -> IreeCompileError:
    """The one-line summary of a failed compile: the first `error:` and the op of `source` it points at."""
    m = _ERROR.search(diagnostics)
    if m is None:
        first = next((ln.strip() for ln in diagnostics.splitlines() if ln.strip()), "no diagnostics")
        return IreeCompileError(f"iree-compile failed: {first}", diagnostics, source)
    line, what = int(m.group(1)), m.group(2).strip()
    # a tool's own error before it (the linker's "undefined symbol: cos") is the specific one
    tool = next((ln.strip() for ln in diagnostics[:m.start()].splitlines() if "error: " in ln), None)
    if tool:
        what = f"{what} [{tool[:200]}]"
    lines = source.splitlines()
    where = f"line {line} of the linalg module"
    if 1 <= line <= len(lines):
        op = _ANY_OP.match(lines[line - 1])
        top = next(((k + 1, t.group(1)) for k in range(line - 1, -1, -1) if (t := _TOP_OP.match(lines[k]))), None)
        if top is not None and top[0] != line:
            where = f"{top[1]} (line {top[0]}; {op.group(1) if op else 'its body'} at line {line})"
        elif op is not None:
            where = f"{op.group(1)} (line {line})"
    return IreeCompileError(f"iree-compile failed on {where}: error: {what}\n"
                            "(the error's .source is the module, its .diagnostics the compiler's full output; "
                            "AVALON_LOG=iree prints both)", diagnostics, source)


def compile_module(source: str, extra_flags: Sequence[str] = (), base: Sequence[str] = DEFAULT_FLAGS) -> bytes:
    """IREE's compiled module (a .vmfb) for llvm-cpu from MLIR text; a failure raises
    `IreeCompileError` (short message, full output kept on it)."""
    args = [*flags(base), *extra_flags]
    while True:
        try:
            return ireec.compile_str(source, target_backends=["llvm-cpu"], extra_args=args)
        except ireec.CompilerToolError as e:
            full = str(e)
        # a known IREE bug whose flag the user has not set either way: compile again without that
        # optimization (the first such entry for the diagnostic; the next one if that did not help)
        fix = next((flag for sign, flag in WORKAROUNDS if sign in full
                    and not any(a.startswith(flag.split("=")[0]) for a in args)), None)
        if fix is None:
            break
        _LOG.debug("iree-compile hit a known bug of its own; compiling again with %s", fix)
        args = [*args, fix]
    _LOG.debug("iree-compile failed:\n%s", full)
    _LOG.debug("the module:\n%s", source)
    raise compile_error(full, source) from None


_CONFIG: Any = None


def _config() -> Any:
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = ireert.Config("local-task")
    return _CONFIG


class IreeExecutable:
    """One compiled module; `kernels` holds its linalg source under the graph's name."""

    kernel_suffix = ".mlir"

    def __init__(self, graph: Graph, extra_flags: Sequence[str] = (), base: Sequence[str] = DEFAULT_FLAGS):
        self.name = "main"
        # bf16 crosses the boundary as the f32 Avalon holds it in (the module rounds it, exactly)
        self.checks: list[tuple] = []  # (op, bound) per index range the module returns after the outputs
        self.source = ("module {\n" + lower_function(graph, self.name, bf16_as_f32=True, index_checks=self.checks)
                       + "\n}\n")
        self.kernels = {graph.name: self.source}
        self.in_types = [v.type for v in graph.inputs]
        self.n_out = len(graph.outputs)
        self.out_dtypes = [v.type.dtype.np for v in graph.outputs]
        self.vmfb = compile_module(self.source, extra_flags, base)
        self._ctx = ireert.SystemContext(config=_config())
        self._ctx.add_vm_module(ireert.VmModule.copy_buffer(self._ctx.instance, self.vmfb))
        self._fn = self._ctx.modules.module[self.name]

    def __call__(self, *inputs: Any) -> tuple[np.ndarray, ...]:
        if len(inputs) != len(self.in_types):
            raise TypeError(f"expected {len(self.in_types)} inputs, got {len(inputs)}")
        args = [np.ascontiguousarray(as_array(x, t.dtype)).reshape(t.shape) for x, t in zip(inputs, self.in_types)]
        out = self._fn(*args)
        if self.n_out == 0 and not self.checks:
            return ()
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self._check_indices(outs[self.n_out:])
        outs = outs[:self.n_out]
        # a uint8 result comes back as the i8 the module stores it as (the same bits): view it as uint8
        return tuple(np.array(o.to_host() if hasattr(o, "to_host") else o).view(d)
                     for o, d in zip(outs, self.out_dtypes))


    def _check_indices(self, ranges: Sequence[Any]) -> None:
        """Raise the reference's IndexOutOfRangeError for the first gather or scatter whose index
        range (its min and max, returned by the module) leaves [0, bound): IREE's kernels clamp;
        and ValueCheckError for a `check` op whose condition failed somewhere."""
        for k, (op, bound) in enumerate(self.checks):
            lo, hi = (int(np.asarray(r.to_host() if hasattr(r, "to_host") else r)) for r in ranges[2 * k:2 * k + 2])
            at = f" at {op.loc}" if op.loc else ""
            if op.name == "check":  # (the condition's smallest element: 0 where one failed)
                if lo == 0:
                    raise check_error(op.attrs["error"], f"{op.loc}: {op.attrs['message']}" if op.loc else
                                      op.attrs["message"])
                continue
            if lo < 0 or hi >= bound:
                raise IndexOutOfRangeError(f"{op.name}{at}: index {lo if lo < 0 else hi} is out of range "
                                           f"[0, {bound}) (found by the IREE module)")


class IreeBackend:
    """Compiles a graph with IREE (`avalon.codegen.iree`); `kernels` shows the linalg module.
    `IreeBackend(extra_flags=[...])` adds compiler flags; `base` replaces the defaults (an LLVM
    option may be given only once, so `--iree-llvmcpu-target-cpu=generic` goes there)."""

    name = "iree"
    kernel_suffix = ".mlir"
    target = IREE

    def __init__(self, extra_flags: Sequence[str] = (), base: Sequence[str] = DEFAULT_FLAGS):
        self.extra_flags, self.base = tuple(extra_flags), tuple(base)

    def compile(self, graph: Graph) -> IreeExecutable:
        return IreeExecutable(graph, self.extra_flags, self.base)

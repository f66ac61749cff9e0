"""Compiled loops for elementwise runs: `backend="cpu"`, the numpy backend with C where it pays.

numpy runs one pass over memory per op; a fused group's chain of elementwise ops (a clamped
log-likelihood and its gradient, a sigmoid, a bias + relu epilogue) costs a dozen passes where one
loop would do. With `native`, the generator collects each run of consecutive elementwise ops of a
group that share one shape (splats and broadcasts join it), writes the run as one C function (its
values in registers, only the values read after the run stored, loop dimensions merged where every
operand allows), and calls it instead of the run's numpy lines. Sums of the run's shape join it: the
loop adds each element into a double accumulator (per run of reduced inner loops, an `omp simd`
reduction) or, when the innermost loop is kept (a column sum), into the result in memory, zeroed
first; a value that reads a sum of the open run closes it. A `check` (torch's value checks) joins
the run too: the loop counts the elements whose condition fails and the line after the call raises,
unless the loop also writes a donated state (numpy's lines then check before anything is written).
The cpu target (`loops`) makes groups
whole loop nests for this, so a loss, its sum and its gradient's column sum are one loop. Slots
freed while a run is open are reused only after it closes, since the loop reads and writes all of
its storage in each iteration. Non-overlapping max pools and their gradients become one loop over
the windows too (bit for bit the reference's, which takes a dozen strided passes), and so does a
batch-last convolution input gradient's scatter of its taps (`col2im_call`); a random op is one call
(`native_random`). Threads were measured and left out: beside OpenBLAS's worker, which
spins on the other core for a while after each sgemm, a loop split over two threads ran slower
(2.1 vs 1.5 ms) and a short-spinning pool made the next sgemm ~40x slower on a 2-core machine.
The system C compiler builds all of a signature's functions into one shared
library, cached on disk (`<AVALON_CACHE_DIR or ~/.cache/avalon>/native/`, written atomically, a
library that fails to load is rebuilt).

Arithmetic is IEEE as numpy's (+ - * / sqrt correctly rounded, maximum/minimum propagate nan,
comparisons false on nan), but exp/log/sin/cos/tanh come from glibc's vector math library (libmvec, reached through
`omp declare simd` declarations, so no -ffast-math) and other functions from libm: ulps away from
numpy's own loops; exp (and sigmoid's) flushes subnormal results to 0 (`expzf` in `HEADER`). The
numpy backend stays bit-exact with the reference interpreter; this one is
checked against it within float tolerance, like the Triton backend. Without a C compiler (or if a
build fails) a signature falls back to plain generated numpy code, with one warning.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from avalon.channels import get_logger
from avalon.ir import Op, Value
from avalon.ir import dtypes as dt
from avalon.passes.target import reduced_axes

from .generator import Generator, Ref

log = get_logger("numpy")

MIN_ELEMENTS = 4096
"""Runs over fewer elements stay numpy: a call (pointers, ctypes) costs ~10-20 us."""

_CTYPE = {dt.float32: "float", dt.float64: "double", dt.bool_: "unsigned char"}
_ANY = {"add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
        "eq": "({0} == {1})", "ne": "({0} != {1})", "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})",
        "ge": "({0} >= {1})", "maximum": "NPMAX({0}, {1})", "minimum": "NPMIN({0}, {1})", "where": "({0} ? {1} : {2})",
        "stop_gradient": "{0}", "check": "{0}", "logical_and": "({0} && {1})", "logical_or": "({0} || {1})",
        "logical_not": "(!{0})"}
"""C forms of ops over any of the dtypes (numpy's nan-propagating maximum/minimum as macros)."""
_ARITH = ("add", "sub", "mul", "div", "maximum", "minimum")
_FLOAT = {"exp": "expz{s}({0})", "log": "log{f}({0})", "sqrt": "sqrt{f}({0})", "tanh": "tanh{f}({0})",
          "sin": "sin{f}({0})", "cos": "cos{f}({0})", "abs": "fabs{f}({0})", "neg": "(-{0})", "relu": "NPMAX({0}, 0)",
          "rsqrt": "(1 / sqrt{f}({0}))", "sigmoid": "sig{s}({0})", "pow": "pow{f}({0}, {1})"}
"""C forms of float ops; {f} is libm's float suffix, {s} the sigmoid helper's."""

HEADER = r"""#include <math.h>
#include <string.h>
#ifndef AVALON_NO_MVEC
#pragma omp declare simd notinbranch
extern float expf(float);
#pragma omp declare simd notinbranch
extern float logf(float);
#pragma omp declare simd notinbranch
extern double exp(double);
#pragma omp declare simd notinbranch
extern double log(double);
#pragma omp declare simd notinbranch
extern double cos(double);
#pragma omp declare simd notinbranch
extern float cosf(float);
#pragma omp declare simd notinbranch
extern float sinf(float);
#pragma omp declare simd notinbranch
extern double sin(double);
#ifndef AVALON_MVEC_BASIC /* glibc >= 2.35: tanh (GELU's) and friends */
#pragma omp declare simd notinbranch
extern float tanhf(float);
#pragma omp declare simd notinbranch
extern double tanh(double);
#endif
#endif
#define NPMAX(a, b) (((a) >= (b) || (a) != (a)) ? (a) : (b))
#define NPMIN(a, b) (((a) <= (b) || (a) != (a)) ? (a) : (b))
/* where as a select of bits: a branch-free form gcc vectorizes beside sums (a ?: does not always) */
static inline float self(int c, float a, float b) {
    unsigned m = -(unsigned)(c != 0), x, y;
    memcpy(&x, &a, 4); memcpy(&y, &b, 4); x = (x & m) | (y & ~m); memcpy(&a, &x, 4); return a; }
static inline double seld(int c, double a, double b) {
    unsigned long m = -(unsigned long)(c != 0), x, y;
    memcpy(&x, &a, 8); memcpy(&y, &b, 8); x = (x & m) | (y & ~m); memcpy(&a, &x, 8); return a; }
/* exp with arguments below ln(FLT_MIN) / ln(DBL_MIN) (a subnormal result, or 0: a causal mask's -inf)
   giving 0: libmvec's vector exp takes a scalar path for a whole vector holding one such lane, ~8x
   slower on a masked softmax. The argument is clamped through a bit select, which gcc does not move
   the call across (it turns exp(c ? k : x) into c ? exp(k) : exp(x)); nan stays nan. */
static inline float expzf(float x) {
    int ok = x >= -87.33f; float e = expf(self(ok, x, -87.33f)); return self(ok, e, self(x != x, x, 0.0f)); }
static inline double expzd(double x) {
    int ok = x >= -708.39; double e = exp(seld(ok, x, -708.39)); return seld(ok, e, seld(x != x, x, 0.0)); }
static inline float sigf(float x) { float e = expzf(-fabsf(x)); return (x >= 0.0f ? 1.0f : e) / (1.0f + e); }
static inline double sigd(double x) { double e = expzd(-fabs(x)); return (x >= 0.0 ? 1.0 : e) / (1.0 + e); }
"""


class NativeUnavailable(RuntimeError):
    """No C compiler, or the build failed: the signature runs as plain generated numpy code."""


def _expr(op: Op, args: list[str]) -> str | None:
    """The C expression of one elementwise op over its operands' C expressions (None: not supported)."""
    t, n = op.results[0].type.dtype, op.name
    if n == "cast":
        return f"({args[0]} != 0)" if t == dt.bool_ else f"(({_CTYPE[t]}){args[0]})"
    if n == "where" and t in (dt.float32, dt.float64):
        return f"sel{'f' if t == dt.float32 else 'd'}({args[0]}, {args[1]}, {args[2]})"
    if n in _ANY and not (n in _ARITH and op.operands[0].type.dtype == dt.bool_):  # numpy's bool + is or
        return _ANY[n].format(*args)
    if n in _FLOAT and t in (dt.float32, dt.float64):
        f32 = t == dt.float32
        return _FLOAT[n].format(*args, f="f" if f32 else "", s="f" if f32 else "d")
    return None


def eligible(op: Op) -> tuple[int, ...] | None:
    """The shape of a run `op` can join (elementwise, f32/f64/bool, a C form), else None."""
    if op.regions or len(op.results) != 1 or not op.has_trait("elementwise"):
        return None
    if any(v.type.dtype not in _CTYPE or v.type.layout is not None for v in (*op.operands, *op.results)):
        return None
    if _expr(op, ["a"] * len(op.operands)) is None:
        return None
    shape = tuple(op.results[0].type.shape)
    return shape if shape else None


def reducible(op: Op) -> tuple[int, ...] | None:
    """The shape of a run a sum can close over (its float operand's), else None: the loop adds each
    element into its accumulator (see `_function`)."""
    if op.name != "sum" or op.regions:
        return None
    x, r = op.operands[0].type, op.results[0].type
    if x.dtype not in (dt.float32, dt.float64) or r.dtype != x.dtype or x.layout is not None or r.layout is not None:
        return None
    return tuple(x.shape) or None


def transparent(op: Op) -> bool:
    """Ops that emit no line inside a group (splats, broadcasts): they neither open nor close a run."""
    return op.name in ("constant", "broadcast") and not op.regions


def _through_transparent(values: list[Value]) -> list[Value]:
    """`values` and, behind splats and broadcasts, what they read."""
    out, todo = [], list(values)
    while todo:
        v = todo.pop()
        out.append(v)
        if v.op is not None and transparent(v.op):
            todo.extend(v.op.operands)
    return out


def _literal(value: Any, t: dt.DType) -> str:
    v = np.asarray(value).reshape(-1)[0]
    if t == dt.bool_:
        return "1" if bool(v) else "0"
    x = float(v)
    if math.isnan(x):
        return "NAN"
    if math.isinf(x):
        return "INFINITY" if x > 0 else "(-INFINITY)"
    return x.hex() + ("f" if t == dt.float32 else "")


class NativeRuns:
    """Collects a group's runs while it is emitted; `close` turns the open run into a C call."""

    def __init__(self, gen: Generator):
        self.gen = gen
        self.ops: list[Op] = []
        self.shape: tuple[int, ...] | None = None
        self.mark: int | None = None  # first line of a hoisted op (`after` moves its lines above the run)
        self.mark_start: int = 0  # the run's first line when `mark` was taken (allocations go in above it)
        self.keep: set[Value] = set()  # while an op is hoisted: what the run reads (not to be overwritten)

    def before(self, op: Op) -> None:
        self.mark, self.keep = None, set()
        if transparent(op):
            return
        if self.shape is not None and self._hoistable(op):
            self.mark, self.mark_start = len(self.gen.lines), self.gen.run_start
            self.keep = set(_through_transparent([v for o in self.ops for v in o.operands]))
            return
        shape = eligible(op) or reducible(op)
        if self.shape is not None and (shape != self.shape or self._reads_sum(op)):
            self.close()
        if shape is not None and self.shape is None:
            self.shape = shape
            self.gen.run_start = len(self.gen.lines)
        if shape is not None:
            self.ops.append(op)

    def _hoistable(self, op: Op) -> bool:
        """Can `op`, which is not of the open run, run before it instead of closing it? A reshape, or
        an elementwise op of another shape (a batch norm's (C,) scale seen as (1, C, 1, 1), its
        per-channel factors), that reads nothing the run computes and yields nothing (a donated state
        written early would be read by the run); while it is emitted, the region emitter does not
        overwrite in place an operand the run reads (`keep`). A closed run of one op is a numpy pass:
        two of a batch norm's four forward passes and one of its backward ones were."""
        if op.regions or not (op.name == "reshape" or op.has_trait("elementwise")):
            return False
        if (eligible(op) or reducible(op)) == self.shape:
            return False
        block = op.parent
        if block is None or any(r in block.results or any(u.name == "stop_gradient" for u, _ in r.uses)
                                for r in op.results):  # yielded, or computed straight into a yielded identity's
            return False
        made = {r for o in self.ops for r in o.results}
        return not any(v in made for v in _through_transparent(op.operands))

    def after(self, op: Op) -> None:
        """After `op` was emitted: the lines of a hoisted op moved above the open run."""
        gen, mark = self.gen, self.mark
        self.mark, self.keep = None, set()
        if mark is None or gen.run_start is None:
            return
        mark += gen.run_start - self.mark_start  # arrays the hoisted op allocated went in above the run
        moved = gen.lines[mark:]
        del gen.lines[mark:]
        gen.lines[gen.run_start:gen.run_start] = moved
        gen.run_start += len(moved)

    def _reads_sum(self, op: Op) -> bool:
        """Does `op` read (through broadcasts) a sum of the open run? Its value exists once the loop ends."""
        sums = {r for o in self.ops if o.name == "sum" for r in o.results}
        todo = list(op.operands)
        while todo:
            v = todo.pop()
            if v in sums:
                return True
            if v.op is not None and transparent(v.op):
                todo.extend(v.op.operands)
        return False

    def close(self) -> None:
        gen, ops, shape, start = self.gen, self.ops, self.shape, self.gen.run_start
        self.ops, self.shape = [], None
        gen.close_run()
        if not ops or start is None or math.prod(shape) < MIN_ELEMENTS or len(ops) < 2:
            return
        call = _function(gen, ops, shape)
        if call is not None:
            gen.lines[start:] = ["    " + call]


def _collapse(shape: tuple[int, ...], vectors: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge neighbouring loop dimensions wherever every operand steps through them as one (stride of
    the outer = stride of the inner x its extent; broadcast ones step 0 in both), so the innermost loop
    is as long as possible: a bias over NCHW becomes N*C x H*W, not four loops with a 24-long inner one."""
    dims: list[tuple[int, list[int]]] = [(n, [v[d] for v in vectors]) for d, n in enumerate(shape)]
    merged = [dims[-1]]
    for n, ss in reversed(dims[:-1]):
        inner_n, inner_ss = merged[0]
        if all(s == si * inner_n for s, si in zip(ss, inner_ss)):
            merged[0] = (n * inner_n, inner_ss)
        else:
            merged.insert(0, (n, ss))
    return [n for n, _ in merged], [[ss[k] for _, ss in merged] for k in range(len(vectors))]


def _function(gen: Generator, ops: list[Op], shape: tuple[int, ...]) -> str | None:
    """Write the run's C function into `gen.native` and return the line that calls it (None when an
    operand cannot be read from C)."""
    inside = set(ops)
    made = [r for op in ops if op.name != "sum" for r in op.results]  # in op order: the source is deterministic
    params: dict[str, tuple[str, bool]] = {}  # array name -> (C pointer name, written)
    names: dict[Value, str] = {}
    full = [math.prod(shape[d + 1:]) for d in range(len(shape))]  # element strides of a full operand
    loads: list[tuple[str, str, str, list[int]]] = []  # (C type, local, pointer, element strides)
    stores: list[tuple[str, str, str]] = []  # (C type, pointer, local)

    def pointer(name: str, written: bool) -> str:
        if name not in params:
            params[name] = (f"p{len(params)}", written)
        elif written:
            params[name] = (params[name][0], True)
        return params[name][0]

    def operand(v: Value) -> str | None:
        if v in names:
            return names[v]
        ref: Ref = gen.env[v]
        t = v.type.dtype
        if ref.kind == "scalar":
            value = gen.consts.get(ref.expr)
            if value is None:
                return None
            names[v] = _literal(value, t)
            return names[v]
        if ref.kind == "array":
            vec = full
        else:  # a broadcast: the source's strides, 0 along stretched dimensions (numpy's right alignment)
            src = ref.source
            if src is None or src.dtype != t:
                return None
            pad = (1,) * (len(shape) - src.rank) + tuple(src.shape)
            vec = [0 if pad[d] == 1 else math.prod(pad[d + 1:]) for d in range(len(shape))]
        names[v] = c = f"x{len(loads)}"
        loads.append((_CTYPE[t], c, pointer(ref.expr, False), vec))
        return c

    body: list[str] = []
    sums: list[tuple[str, str, str, list[int], int]] = []  # (C type, pointer, addend, result strides, elements)
    checks: list[tuple[str, Op]] = []  # (flag array, check op): failures counted in c<j>, raised after the call
    for k, op in enumerate(ops):
        args = [operand(v) for v in op.operands]
        if any(a is None for a in args):
            return None
        r = op.results[0]
        if op.name == "check":  # the value passes on; the failed elements are counted, raised after the loop
            flag = gen.const(np.zeros(1, np.int64), "flag")
            body.append(f"c{len(checks)} += !{args[1]};")
            pointer(flag, True)
            checks.append((flag, op))
        if op.name == "sum":
            ref = gen.env[r]
            if ref.kind != "array" or ref.expr in gen.input_names:  # a donated state: the loop may read it
                return None
            axes = set(reduced_axes(op))
            kept = [1 if d in axes else n for d, n in enumerate(shape)]
            vec = [0 if d in axes else math.prod(kept[d + 1:]) for d in range(len(shape))]
            sums.append((_CTYPE[r.type.dtype], pointer(ref.expr, True), args[0], vec, math.prod(kept)))
            continue
        names[r] = f"v{k}"
        body.append(f"{_CTYPE[r.type.dtype]} v{k} = {_expr(op, args)};")
    for r in made:
        users = [u for u, _ in r.uses]
        if all(u in inside for u in users) and users:
            continue
        ref = gen.env[r]
        if ref.kind != "array":
            return None
        stores.append((_CTYPE[r.type.dtype], pointer(ref.expr, True), names[r]))
    if checks and any(w and name in gen.input_names for name, (_, w) in params.items()):
        return None  # a donated state written before the check raises (numpy's lines check first)
    if _overlap(gen, params, {p for _, p, *_ in sums}):
        return None
    if any(w and name in gen.strided for name, (_, w) in params.items()):
        return None  # written in place through a transposed view: the loop's row-major index is wrong there
    extents, (full_m, *rest) = _collapse(shape, [full, *(vec for *_, vec in loads), *(s[3] for s in sums)])
    load_m, sum_m = rest[:len(loads)], rest[len(loads):]
    depth = len(extents)
    # a sum accumulates in a double declared above the innermost run of loops it reduces (its suffix),
    # added into its result when that run ends; a sum whose innermost loop is kept adds into memory
    suffix = [next((d for d in range(depth) if not any(m[d:])), depth) for m in sum_m]

    def at(vec: list[int]) -> str:
        return " + ".join(f"i{d} * {s}L" for d, s in enumerate(vec) if s) or "0"
    fn = f"run{len(gen.native)}"
    head = f"void {fn}(" + ", ".join(f"void *{p}" for p, _ in params.values()) + ") {"
    lines = [head, *(f"for (long z = 0; z < {n}L; z++) (({c} *){p})[z] = 0;" for c, p, _, _, n in sums)]
    accs = [f"a{j}" for j, d in enumerate(suffix) if d < depth] + [f"c{j}" for j in range(len(checks))]
    lines += [f"long c{j} = 0;" for j in range(len(checks))]
    for d, n in enumerate(extents):
        lines += [f"double a{j} = 0;" for j, s in enumerate(suffix) if s == d]
        simd = "_Pragma(\"omp simd" + (f" reduction(+:{', '.join(accs)})" if accs else "") + "\") "
        lines.append((simd if d == depth - 1 else "") + f"for (long i{d} = 0; i{d} < {n}L; i{d}++) {{")
    lines += [f"{c} {x} = ((const {c} *){p})[{at(m)}];" for (c, x, p, _), m in zip(loads, load_m)]
    lines += body + [f"(({c} *){p})[{at(full_m)}] = {x};" for c, p, x in stores]
    lines += [f"(({c} *){p})[{at(m)}] += {x};" for (c, p, x, _, _), m, d in zip(sums, sum_m, suffix) if d == depth]
    lines += [f"a{j} += {x};" for j, ((_, _, x, _, _), d) in enumerate(zip(sums, suffix)) if d < depth]
    for d in reversed(range(depth)):
        lines.append("}")
        lines += [f"(({c} *){p})[{at(m)}] += ({c})a{j};"
                  for j, ((c, p, _, _, _), m, s) in enumerate(zip(sums, sum_m, suffix)) if s == d]
    lines += [f"*(long *){params[flag][0]} = c{j};" for j, (flag, _) in enumerate(checks)]
    src = "\n".join([*lines, "}"])
    gen.native.append((src, len(params)))
    outputs = {name for name, (_, w) in params.items() if w}
    args = [address(gen, name) if name in outputs or name in gen.views else f"N.ptr({name})" for name in params]
    raises = "".join(f"; K.check_flag({flag}, {op.attrs['message']!r}, {op.attrs['error']!r}, "
                     f"{str(op.loc) if op.loc else ''!r})" for flag, op in checks)
    return f"{fn}({', '.join(args)}){raises}"


_KEEP: deque = deque(maxlen=64)  # contiguous copies handed to a call, alive until it has returned


def _overlap(gen: Generator, params: dict[str, tuple[str, bool]], sums: set[str]) -> bool:
    """Could the fused loop overwrite what a later iteration still reads? Names of one layout on one
    scratch slot or buffer are the same element at the same index: safe. But not a written name beside
    one of another shape or element size (a slot reused for another dtype), nor a sum's result (pointers
    `sums`) beside any other name there (a dead value's slot, reused): the loop zeroes it first and adds
    into it throughout. Then numpy's passes run instead."""
    homes: dict[tuple[str, int], list[tuple[str, Any]]] = {}
    for name in params:
        v = gen.views.get(name)
        if v is not None:
            homes.setdefault((v.pool, v.index), []).append((name, (v.type.shape, v.type.dtype.np.itemsize)))
    return any(len(m) > 1 and (any(params[n][0] in sums for n, _ in m)
                               or any(params[n][1] for n, _ in m) and len({layout for _, layout in m}) > 1)
               for m in homes.values())


def address(gen: Generator, name: str) -> str:
    """The address of an array the generated code owns: a buffer or slot view's is a constant of the
    linked module (`<name>_p`: reading `.ctypes.data` costs ~1 us a call); a fresh array's is read."""
    return f"{name}_p" if name in gen.views else f"{name}.ctypes.data"


def ptr(a: np.ndarray) -> int:
    """The address of an input array the C code reads row-major. Generated code's own buffers are;
    a caller's array or a view may not be, and is read through a contiguous copy."""
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
        _KEEP.append(a)
    return a.ctypes.data


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise NativeUnavailable("no C compiler found (set CC, or install gcc)")
    return cc


FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp-simd", "-shared", "-fPIC"]
"""-ffp-contract=off: with -march=native's FMA, gcc would contract `a * b + c` into one rounding (its default
outside ISO C mode), not numpy's two: a float32 `iota * 0.1 + 1` came out 1 ulp from the reference."""


def _cache_dir() -> Path:
    return Path(os.environ.get("AVALON_CACHE_DIR") or Path.home() / ".cache" / "avalon") / "native"


def _source(functions: list[str]) -> str:
    return HEADER + "\n\n".join(functions) + "\n"


@functools.lru_cache(maxsize=1)
def _cpu() -> str:
    """What -march=native builds for: a library from another CPU's cache must not be loaded here."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        return "\n".join(ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features")))[:8192]
    except OSError:
        return platform.machine() + platform.processor()


def library_path(functions: list[str]) -> Path:
    """Where the library of `functions` is cached (keyed by source, compiler, flags and CPU)."""
    key = hashlib.sha256("\0".join([_source(functions), _compiler(), *FLAGS, _cpu()]).encode()).hexdigest()
    return _cache_dir() / key[:2] / f"{key}.so"


_warned_cache = False


def build(functions: list[str]) -> ctypes.CDLL:
    """One shared library with `functions`, from the disk cache or built now: with libmvec first,
    then plain libm (a platform without the vector math library), then without -march=native."""
    source, cc, path = _source(functions), _compiler(), library_path(functions)
    if path.exists():
        try:
            return ctypes.CDLL(str(path))
        except OSError as e:  # a truncated or foreign file: build it again
            log.warning("native: cached library %s does not load (%s); rebuilding", path, e)
            path.unlink(missing_ok=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as d:
            os.replace(_compile(Path(d), source, cc), path)
        return ctypes.CDLL(str(path))
    except OSError as e:  # a cache that cannot be written (read-only, a file in the way): build privately
        global _warned_cache
        if not _warned_cache:
            log.warning("native: cannot write the library cache %s (%s); building in temporary directories",
                        path.parent, e)
            _warned_cache = True
    d = Path(tempfile.mkdtemp(prefix="avalon-native-"))
    try:
        return ctypes.CDLL(str(_compile(d, source, cc)))  # loaded: the file is no longer needed
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _compile(d: Path, source: str, cc: str) -> Path:
    """Build `source` into `d`/runs.so: with every libmvec function first (tanh needs glibc 2.35), then
    the ones glibc has had since 2.22 (exp, log, sin, cos), then plain libm, then without -march=native."""
    c_file, so = d / "runs.c", d / "runs.so"
    c_file.write_text(source)
    errors = []
    portable = [f for f in FLAGS if f != "-march=native"]  # compilers or CPUs without it
    mvec = ["-Wl,-z,defs", "-lmvec", "-lm"]  # a vector function this libmvec lacks fails the link, not the load
    for flags, libs in ((FLAGS, mvec), ([*FLAGS, "-DAVALON_MVEC_BASIC"], mvec), ([*FLAGS, "-DAVALON_NO_MVEC"], ["-lm"]),
                        ([*portable, "-DAVALON_NO_MVEC"], ["-lm"])):
        try:
            done = subprocess.run([cc, *flags, str(c_file), "-o", str(so), *libs], capture_output=True,
                                  text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NativeUnavailable(f"cannot run the C compiler {cc!r}: {e}") from e
        if done.returncode == 0:
            return so
        errors.append(done.stderr.strip()[-2000:])
    raise NativeUnavailable(f"{cc} failed to build the compiled loops:\n" + "\n".join(errors))


_ARGTYPES = {"p": ctypes.c_void_p, "u": ctypes.c_uint32}


def bind(lib: ctypes.CDLL, arities: list[int | str], ns: dict[str, Any]) -> None:
    """Put `run0`, `run1`, ... of `lib` into the generated module's globals. An arity is a number of
    pointer arguments, or one code per argument, "p" a pointer and "u" a uint32 (a compiled random
    op's keys, `native_random`)."""
    for k, n in enumerate(arities):
        f = getattr(lib, f"run{k}")
        f.argtypes = [ctypes.c_void_p] * n if isinstance(n, int) else [_ARGTYPES[c] for c in n]
        f.restype = None
        ns[f"run{k}"] = f


def _pool_body(t: dt.DType, shape: tuple[int, ...], kh: int, kw: int, oh: int, ow: int, grad: bool) -> str:
    """Loops over non-overlapping kh x kw windows: the max as numpy's chain of maximums in tap order
    (nan propagates) and, for the gradient, dy to the first tap equal to it (a nan max: the first nan).
    The taps are read into locals once; input, dy and output never overlap (restrict)."""
    c = _CTYPE[t]
    n, ch, h, w = shape
    taps = [a * w + b for a in range(kh) for b in range(kw)]
    lines = [f"const {c} *restrict x = px; {c} *restrict o = po;"]
    u = "unsigned int" if t == dt.float32 else "unsigned long long"  # dy's bits, masked: no branch per tap
    if grad:
        lines = [f"const {c} *restrict x = px; {u} *restrict o = po; const {u} *restrict dy = pdy;"]
        if h != kh * oh or w != kw * ow:  # rows/columns no window covers
            lines.append(f"for (long k = 0; k < {n * ch * h * w}L; k++) o[k] = 0;")
    lines += [f"for (long nc = 0; nc < {n * ch}L; nc++)", f"for (long i = 0; i < {oh}L; i++)",
              f"for (long j = 0; j < {ow}L; j++) {{",
              f"long base = nc * {h * w}L + i * {kh * w}L + j * {kw}L;",
              *(f"{c} t{k} = x[base + {off}L];" for k, off in enumerate(taps)), f"{c} m = t0;",
              *(f"m = NPMAX(m, t{k});" for k in range(1, len(taps)))]
    if not grad:
        lines.append(f"o[(nc * {oh}L + i) * {ow}L + j] = m;")
    else:
        lines.append(f"{u} g = dy[(nc * {oh}L + i) * {ow}L + j]; {u} seen = 0, eq;")
        for k, off in enumerate(taps):  # a data-dependent select compiles to a branch: ~20x slower here
            lines.append(f"eq = ({u})((t{k} == m) | ((m != m) & (t{k} != t{k}))); "
                         f"o[base + {off}L] = g & (0 - (eq & ~seen)); seen |= eq;")
    lines.append("}")
    return "\n".join(lines)


def pool_call(gen: Generator, op: Op, args: list[Ref], out: str) -> str | None:
    """The call line of a compiled non-overlapping max pool (forward or gradient), else None."""
    t = op.results[0].type.dtype
    if t not in (dt.float32, dt.float64) or any(a.lazy for a in args):
        return None
    kh, kw = op.attrs["kernel"]
    x_shape = tuple(op.operands[0].type.shape)
    oh, ow = (op.operands[1].type.shape if op.name == "max_pool2d_grad" else op.results[0].type.shape)[2:]
    grad = op.name == "max_pool2d_grad"
    fn = f"run{len(gen.native)}"
    params = "void *px, void *pdy, void *po" if grad else "void *px, void *po"
    gen.native.append((f"void {fn}({params}) {{\n{_pool_body(t, x_shape, kh, kw, oh, ow, grad)}\n}}", 3 if grad else 2))
    ins = [address(gen, a.expr) if a.expr in gen.views else f"N.ptr({a.expr})" for a in args]
    return f"{fn}({', '.join(ins)}, {address(gen, out)})"


def col2im_call(gen: Generator, t: dt.DType, c: int, kh: int, kw: int, ow: int, n: int, hp: int, wp: int,
                g: tuple[int, ...]) -> str | None:
    """The compiled scatter of a batch-last convolution's input gradient (`kernels.conv2d_grad_input_bl`):
    each tap's patch rows added into the padded gradient, taps in numpy's order (so bit for bit its
    sums), one channel's plane at a time (it stays in cache; numpy's 25 strided adds per chunk each
    stream every channel's: ~1.5 ms of LeNet's conv2 gradient)."""
    if t not in (dt.float32, dt.float64):
        return None
    sh, sw, _, _, dh, dw = g
    ct = _CTYPE[t]
    fn = f"run{len(gen.native)}"
    gen.native.append(("\n".join([
        f"void {fn}(void *pd, void *px, unsigned int r0, unsigned int r1) {{",
        f"const {ct} *restrict d = pd; {ct} *restrict x = px; long rows = (long)r1 - (long)r0;",
        f"for (long c = 0; c < {c}L; c++) for (long i = 0; i < {kh}L; i++) for (long j = 0; j < {kw}L; j++)",
        "for (long r = 0; r < rows; r++) {",
        f"const {ct} *src = d + (((c * {kh}L + i) * {kw}L + j) * rows + r) * {ow * n}L;",
        f"{ct} *dst = x + ((c * {hp}L + (r0 + r) * {sh}L + i * {dh}L) * {wp}L + j * {dw}L) * {n}L;",
        f"for (long q = 0; q < {ow}L; q++)",
        f"_Pragma(\"omp simd\") for (long k = 0; k < {n}L; k++) dst[q * {sw * n}L + k] += src[q * {n}L + k];",
        "}", "}"]), "ppuu"))
    return fn



def col2im_bf_call(gen: Generator, t: dt.DType, c: int, kh: int, kw: int, oh: int, ow: int, hp: int, wp: int,
                   g: tuple[int, ...]) -> str | None:
    """The compiled scatter of a batch-first convolution's input gradient (`kernels.conv2d_grad_input_bf`):
    a chunk's patches (m, C, KH, KW, OH, OW) added into samples n0 .. n0+m-1 of the padded gradient
    (N, C, HP, WP), one sample's channel plane at a time (it stays in cache), taps in numpy's order,
    so bit for bit numpy's per-tap adds (which stream the whole chunk once per tap: ~2.7 ms of a
    narrow ResNet's 32x32 conv gradient)."""
    if t not in (dt.float32, dt.float64):
        return None
    sh, sw, _, _, dh, dw = g
    ct = _CTYPE[t]
    fn = f"run{len(gen.native)}"
    gen.native.append(("\n".join([
        f"void {fn}(void *pd, void *px, unsigned int n0, unsigned int m) {{",
        f"const {ct} *restrict d = pd; {ct} *restrict x = px;",
        f"for (long p = 0; p < (long)m * {c}L; p++) {{",
        f"{ct} *plane = x + ((long)n0 * {c}L + p) * {hp * wp}L;",
        f"const {ct} *src = d + p * {kh * kw * oh * ow}L;",
        f"for (long i = 0; i < {kh}L; i++) for (long j = 0; j < {kw}L; j++)",
        f"for (long r = 0; r < {oh}L; r++, src += {ow}L) {{",
        f"{ct} *dst = plane + (r * {sh}L + i * {dh}L) * {wp}L + j * {dw}L;",
        f"_Pragma(\"omp simd\") for (long q = 0; q < {ow}L; q++) dst[q * {sw}L] += src[q];",
        "}", "}", "}"]), "ppuu"))
    return fn


def im2col_bf_call(gen: Generator, t: dt.DType, c: int, kh: int, kw: int, oh: int, ow: int, hp: int, wp: int,
                   g: tuple[int, ...]) -> str | None:
    """The compiled patch copy of a batch-first convolution (`kernels.conv2d_bf`,
    `conv2d_grad_weight_bf`): samples n0 .. n0+m-1 of the C-contiguous (padded) input (N, C, HP, WP)
    into patches (m, C, KH, KW, OH, OW), one sample's channel plane at a time (exact: a copy).
    numpy's copy of the 6-D window view runs one short strided inner loop per output row."""
    if t not in (dt.float32, dt.float64):
        return None
    sh, sw, _, _, dh, dw = g
    ct = _CTYPE[t]
    fn = f"run{len(gen.native)}"
    gen.native.append(("\n".join([
        f"void {fn}(void *px, void *pc, unsigned int n0, unsigned int m) {{",
        f"const {ct} *restrict x = px; {ct} *restrict dst = pc;",
        f"for (long p = 0; p < (long)m * {c}L; p++) {{",
        f"const {ct} *plane = x + ((long)n0 * {c}L + p) * {hp * wp}L;",
        f"for (long i = 0; i < {kh}L; i++) for (long j = 0; j < {kw}L; j++)",
        f"for (long r = 0; r < {oh}L; r++, dst += {ow}L) {{",
        f"const {ct} *src = plane + (r * {sh}L + i * {dh}L) * {wp}L + j * {dw}L;",
        f"_Pragma(\"omp simd\") for (long q = 0; q < {ow}L; q++) dst[q] = src[q * {sw}L];",
        "}", "}", "}"]), "ppuu"))
    return fn


# -- row patches: convolutions as one GEMM over every output position (`kernels.conv2d_rows`) --------

def _new(gen: Generator, lines: list[str], arity: int | str) -> str:
    """The name of a C function (`lines`, its header naming `{fn}`), added once per signature: a
    ResNet's convolutions of one shape share their layout copies (and the build compiles less)."""
    text = "\n".join(lines)
    fn = gen.native_named.get(text)
    if fn is None:
        fn = gen.native_named[text] = f"run{len(gen.native)}"
        gen.native.append((text.replace("{fn}", fn), arity))
    return fn


def to_nhwc_call(gen: Generator, t: dt.DType, n: int, c: int, h: int, w: int, ph: int, pw: int) -> str:
    """A compiled copy of a C-contiguous NCHW array into NHWC with a zero border of ph rows and pw
    columns on each side, (N, H+2ph, W+2pw, C): the layout in which one output position's patch is KH
    runs of KW*C values (exact: a copy)."""
    ct, hp, wp = _CTYPE[t], h + 2 * ph, w + 2 * pw
    lines = ["void {fn}(void *px, void *pd) {", f"const {ct} *restrict x = px; {ct} *restrict d = pd;",
             f"for (long n = 0; n < {n}L; n++) {{", f"{ct} *img = d + n * {hp * wp * c}L;"]
    if ph:
        lines += [f"for (long k = 0; k < {ph * wp * c}L; k++) {{ img[k] = 0; img[{(ph + h) * wp * c}L + k] = 0; }}"]
    if pw:
        lines += [f"for (long r = {ph}L; r < {ph + h}L; r++) for (long k = 0; k < {pw * c}L; k++) {{",
                  f"img[r * {wp * c}L + k] = 0; img[r * {wp * c}L + {(pw + w) * c}L + k] = 0; }}"]
    lines += [f"for (long r = 0; r < {h}L; r++) for (long ch = 0; ch < {c}L; ch++) {{",
              f"const {ct} *src = x + ((n * {c}L + ch) * {h}L + r) * {w}L;",
              f"{ct} *dst = img + ((r + {ph}L) * {wp}L + {pw}L) * {c}L + ch;",
              f"for (long q = 0; q < {w}L; q++) dst[q * {c}L] = src[q];", "}", "}", "}"]
    return _new(gen, lines, 2)


def from_nhwc_call(gen: Generator, t: dt.DType, n: int, c: int, h: int, w: int, ph: int, pw: int) -> str:
    """A compiled copy of the interior of an NHWC array with a border (N, H+2ph, W+2pw, C) into a
    C-contiguous NCHW one (exact: a copy)."""
    ct, hp, wp = _CTYPE[t], h + 2 * ph, w + 2 * pw
    return _new(gen, [
        "void {fn}(void *ps, void *pd) {", f"const {ct} *restrict s = ps; {ct} *restrict d = pd;",
        f"for (long n = 0; n < {n}L; n++) for (long r = 0; r < {h}L; r++) for (long ch = 0; ch < {c}L; ch++) {{",
        f"const {ct} *src = s + ((n * {hp}L + r + {ph}L) * {wp}L + {pw}L) * {c}L + ch;",
        f"{ct} *dst = d + ((n * {c}L + ch) * {h}L + r) * {w}L;",
        f"for (long q = 0; q < {w}L; q++) dst[q] = src[q * {c}L];", "}", "}"], 2)


def _row_taps(c: int, kh: int, kw: int, oh: int, ow: int, hp: int, wp: int, g: tuple[int, ...]) -> list[str]:
    """Loop header shared by the row patch copy and its scatter: per output position r in [r0, r0+m)
    and tap run (per kernel row, or per tap when dilated), `at` the run's first element in the padded
    NHWC input and `to` in the chunk's patch rows."""
    sh, sw, _, _, dh, dw = g
    return ["for (long r = r0; r < (long)r0 + (long)m; r++) {",
            f"long n = r / {oh * ow}L, q = r % {oh * ow}L, i0 = q / {ow}L, j0 = q % {ow}L;",
            f"long base = ((n * {hp}L + i0 * {sh}L) * {wp}L + j0 * {sw}L) * {c}L;",
            f"long row = (r - (long)r0) * {kh * kw * c}L;",
            f"for (long i = 0; i < {kh}L; i++) for (long j = 0; j < {1 if dw == 1 else kw}L; j++) {{",
            f"long at = base + (i * {dh * wp}L + j * {dw}L) * {c}L, to = row + (i * {kw}L + j) * {c}L;"]


def im2col_rows_call(gen: Generator, t: dt.DType, c: int, kh: int, kw: int, oh: int, ow: int, hp: int, wp: int,
                     g: tuple[int, ...]) -> str:
    """The compiled row patch copy: output positions r0 .. r0+m-1 (n, oh, ow row-major) of the padded
    NHWC input into rows of (KH, KW, C) values, each tap's KW*C (dilated: C) values one contiguous run
    (exact: a copy)."""
    ct, run = _CTYPE[t], (kw if g[5] == 1 else 1) * c
    return _new(gen, ["void {fn}(void *px, void *pc, unsigned int r0, unsigned int m) {",
                      f"const {ct} *restrict x = px; {ct} *restrict d = pc;", *_row_taps(c, kh, kw, oh, ow, hp, wp, g),
                      f"_Pragma(\"omp simd\") for (long k = 0; k < {run}L; k++) d[to + k] = x[at + k];", "}", "}", "}"],
                "ppuu")


def col2im_rows_call(gen: Generator, t: dt.DType, c: int, kh: int, kw: int, oh: int, ow: int, hp: int, wp: int,
                     g: tuple[int, ...]) -> str:
    """The compiled scatter of row patch gradients (output positions r0 .. r0+m-1) into the padded NHWC
    input gradient: each tap's run added where `im2col_rows_call` read it, positions in order."""
    ct, run = _CTYPE[t], (kw if g[5] == 1 else 1) * c
    return _new(gen, ["void {fn}(void *pc, void *px, unsigned int r0, unsigned int m) {",
                      f"const {ct} *restrict d = pc; {ct} *restrict x = px;", *_row_taps(c, kh, kw, oh, ow, hp, wp, g),
                      f"_Pragma(\"omp simd\") for (long k = 0; k < {run}L; k++) x[at + k] += d[to + k];",
                      "}", "}", "}"], "ppuu")


def index_add_call(gen: Generator, op: Op) -> str | None:
    """A compiled index_add (`kernels.index_add`): `out` zeroed, then row m of the values added into
    row idx[m], m in order: np.add.at's adds in its order, so bit for bit (indices checked before)."""
    v, i = op.operands[0].type, op.operands[1].type
    t = op.results[0].type
    if v.dtype not in (dt.float32, dt.float64) or t.dtype != v.dtype or i.rank != 1 or i.dtype not in (
            dt.int32, dt.int64) or v.layout is not None or t.layout is not None:
        return None
    ct, it = _CTYPE[v.dtype], "int" if i.dtype == dt.int32 else "long long"
    row = math.prod(v.shape[1:])
    return _new(gen, [
        "void {fn}(void *pv, void *pi, void *po) {",
        f"const {ct} *restrict v = pv; const {it} *restrict idx = pi; {ct} *restrict o = po;",
        f"memset(o, 0, {math.prod(t.shape) * v.dtype.np.itemsize}UL);",
        f"for (long m = 0; m < {i.shape[0]}L; m++) {{", f"{ct} *dst = o + (long)idx[m] * {row}L;",
        f"const {ct} *src = v + m * {row}L;",
        f"_Pragma(\"omp simd\") for (long k = 0; k < {row}L; k++) dst[k] += src[k];", "}", "}"], 3)


def max_last_call(gen: Generator, t: dt.DType, rows: int, length: int) -> str | None:
    """A compiled max over the last axis of a C-contiguous (rows, length) array: a vector of running
    maximums per row (numpy's nan-propagating maximum), folded at the end; numpy's reduction takes
    ~1 ns an element on a softmax's 64-long rows (0.15 ms per GPT attention, ~0.03 here). The max
    of values is their max in any order (a nan propagates), up to the sign of a zero result."""
    if t not in (dt.float32, dt.float64) or length < 1:
        return None
    ct, w = _CTYPE[t], 64 // t.np.itemsize
    return _new(gen, [
        "void {fn}(void *px, void *po) {", f"const {ct} *restrict x = px; {ct} *restrict o = po;",
        f"for (long r = 0; r < {rows}L; r++) {{", f"const {ct} *row = x + r * {length}L; {ct} m = row[0]; long k = 1;",
        *([f"{ct} acc[{w}]; for (long l = 0; l < {w}L; l++) acc[l] = row[l];",
           f"for (k = {w}L; k + {w}L <= {length}L; k += {w}L) {{",
           f"_Pragma(\"omp simd\") for (long l = 0; l < {w}L; l++) acc[l] = NPMAX(acc[l], row[k + l]); }}",
           f"m = acc[0]; for (long l = 1; l < {w}L; l++) m = NPMAX(m, acc[l]);"] if length >= w else []),
        f"for (; k < {length}L; k++) m = NPMAX(m, row[k]);", "o[r] = m;", "}", "}"], 2)

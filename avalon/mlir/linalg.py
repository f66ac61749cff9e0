"""`to_mlir(graph, dialect="linalg")`: Avalon IR lowered to upstream dialects only.

The lowering is one rule table keyed by op name, `LINALG` (registered as the "linalg" table, so
`avalon ops --missing` lists an op without one): `LINALG[name](e, op, args, result_types) ->
results`, emitting func/arith/math/tensor/linalg text through an `LinalgEmitter`. The rules are split by
concept: elementwise ops, broadcasts, constants and fused groups here; `lower_shapes` (reductions,
scans, shape ops), `lower_contraction` (matmul, conv), `lower_pool`, `lower_gather` (take,
one_hot, random numbers), `lower_sort` (sort, argsort: the bitonic network of primitives),
`lower_scatter` (index_add: a one-hot matmul).

Conventions of the reference (`avalon.ir.reference.core`) are kept here once, for every
non-elementwise rule: f16/bf16 operands compute in f32 and the result is rounded once; i1 operands
of `bool_as_int` ops (sum, avg_pool2d) compute as i64 and the result is `!= 0`. Elementwise rules
(`scalar.SCALAR`) apply the same conventions per element.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from avalon.ir import Block, Graph, Op, TensorType, Value, to_result
from avalon.ir import dtypes as dt
from avalon.ir.registry import OPS, register_table

from .emitter import LinalgEmitter, V, amap, identity, ty
from .scalar import LOW, SCALAR, cast
from .text import ident, string

LinalgRule = Callable[[LinalgEmitter, Op, list[V], list[TensorType]], list[V]]
"""A linalg lowering: `rule(emitter, op, operands, result types) -> results`."""

LINALG: dict[str, LinalgRule] = register_table(
    "linalg", {}, exempt=("custom_vjp",),  # (inlined into its forward before any backend sees a graph)
    exempt_traits=("factorization",))  # (upstream MLIR has no SVD, eigensolver or QR: lower_op says so)
"""op name -> its lowering to upstream MLIR (func, arith, math, tensor, linalg, and cf.assert)."""


class LoweringError(NotImplementedError):
    """An op (or an attribute value of it) has no lowering to upstream MLIR."""


def rule(*names: str) -> Callable[[LinalgRule], LinalgRule]:
    def deco(fn: LinalgRule) -> LinalgRule:
        for n in names:
            LINALG[n] = fn
        return fn
    return deco


def plain(t: TensorType) -> TensorType:
    """`t` without a layout: linalg tensors are values, layouts are a backend's business."""
    return TensorType(t.shape, t.dtype)


def convert(e: LinalgEmitter, x: V, to) -> V:
    """`x` cast elementwise to dtype `to` (a no-op when it already is)."""
    if x.d == to:
        return x
    return e.map([x], TensorType(x.t.shape, to), lambda b, a: cast(b, a[0], to))


def _compute_type(op: Op, d) -> object:
    if d in LOW:
        return dt.float32
    if d == dt.bool_ and op.has_trait("bool_as_int"):
        return dt.int64
    return d


def lower_op(e: LinalgEmitter, op: Op, args: list[V]) -> list[V]:
    """Lower one op, widening f16/bf16 (and i1 of bool_as_int ops) around non-elementwise rules."""
    fn = LINALG.get(op.name)
    where = f" (from {op.loc})" if op.loc else ""
    if fn is None and op.has_trait("factorization"):
        raise LoweringError(f"op '{op.name}'{where} is a LAPACK factorization, which "
                            "upstream MLIR (linalg, tensor, arith) cannot express: compute it outside the exported "
                            "function, or run with backend='numpy', 'cpu' or 'triton'")
    if fn is None:
        raise LoweringError(f"op '{op.name}'{where} has no linalg lowering (avalon ops --missing lists such ops)")
    try:
        return _lower_op(e, op, args, fn)
    except LoweringError:
        raise
    except NotImplementedError as err:  # a rule refusing an attribute value: say which op, and where
        raise LoweringError(f"op '{op.name}'{where}: {err}") from err


def _lower_op(e: LinalgEmitter, op: Op, args: list[V], fn: LinalgRule) -> list[V]:
    types = [plain(r.type) for r in op.results]
    if op.has_trait("elementwise") or op.has_trait("region") or op.name in ("constant", "random"):
        return fn(e, op, args, types)
    wide = [convert(e, a, _compute_type(op, a.d)) for a in args]
    wtypes = [t.with_dtype(_compute_type(op, t.dtype)) if args else t for t in types]
    outs = fn(e, op, wide, wtypes)
    return [convert(e, o, t.dtype) for o, t in zip(outs, types)]


def lower_block(e: LinalgEmitter, block: Block, args: Sequence[V]) -> list[V]:
    """Lower a block's ops given values for its arguments; returns its results."""
    env: dict[Value, V] = dict(zip(block.args, args))
    for op in block.ops:
        for r, v in zip(op.results, lower_op(e, op, [env[x] for x in op.operands])):
            env[r] = v
    return [env[v] for v in block.results]


def lower_function(graph: Graph, name: str | None = None, bf16_as_f32: bool = False,
                   index_checks: list | None = None) -> str:
    """One `func.func` computing `graph` (its arguments typed as the graph's inputs). `bf16_as_f32`:
    bf16 arguments and results are f32 at the boundary (Avalon holds bf16 in f32 on the host; a
    runtime without bf16 arrays passes them so), rounded to bf16 inside and widened back on return.
    `index_checks` (a list to fill): each gather's and scatter's index range is two more i64
    results after the graph's, and (op, bound) of each is appended to the list, in that order.
    Without it (an exported module) each range, and each `check` op's condition, is a `cf.assert`
    with the reference's message: IREE fails the call with it, and a module in other hands keeps
    the checks a traced torch program makes, where its kernels would clamp an index or compute nan."""
    e = LinalgEmitter()
    e.checks = []

    def host(t: TensorType) -> TensorType:
        return t.with_dtype(dt.float32) if bf16_as_f32 and t.dtype == dt.bfloat16 else t
    params = [V(f"%arg{i}", host(plain(v.type))) for i, v in enumerate(graph.inputs)]
    args = [convert(e, p, v.type.dtype) for p, v in zip(params, graph.inputs)]
    outs = [convert(e, o, host(o.t).dtype) for o in lower_block(e, graph.body, args)]
    for lo, hi, op, bound in e.checks:
        if index_checks is None:
            _assert(e, lo, hi, op, bound)
            continue
        outs += [lo, hi]
        index_checks.append((op, bound))
    sig = ", ".join(f"{a.name}: {ty(a.t)}" for a in params)
    rt = ", ".join(ty(o.t) for o in outs)
    ret = f"    func.return {', '.join(o.name for o in outs)} : {rt}" if outs else "    func.return"
    fname = ident(name or graph.name, "forward")
    return "\n".join([f"  func.func @{fname}({sig}) -> ({rt}) {{", *e.lines, ret, "  }"])


def _assert(e: LinalgEmitter, lo: V, hi: V, op: Op, bound: int) -> None:
    """`cf.assert` that the index range [lo, hi] lies in [0, bound) (a `check` op: bound 1 and its
    condition's smallest element 1), with the message the reference raises."""
    at = f"{op.loc}: " if op.loc else ""
    lo_s, hi_s = (e.op(f"tensor.extract {v.name}[] : {ty(v.t)}", dt.int64) for v in (lo, hi))
    if op.name == "check":
        ok, msg = e.cmp("cmpi", "eq", lo_s, e.const(1, dt.int64)), at + op.attrs["message"]
    else:
        ok = e.arith("arith.andi", e.cmp("cmpi", "sge", lo_s, e.const(0, dt.int64)),
                     e.cmp("cmpi", "slt", hi_s, e.const(bound, dt.int64)))
        msg = f"{op.name}{' at ' + str(op.loc) if op.loc else ''}: an index is out of range [0, {bound})"
    e.emit(f"cf.assert {ok.name}, {string(msg)}")


def to_linalg_mlir(graph: Graph, name: str | None = None) -> str:
    return "module {\n" + lower_function(graph, name) + "\n}\n"


# --- elementwise ops, broadcast, constants ---------------------------------------------------------

def elementwise(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """The rule of every elementwise op: one `linalg.generic` whose body is `SCALAR[op.name]` (an
    op of your own joins with a SCALAR entry and `LINALG[name] = elementwise`)."""
    out = types[0]
    return [e.map(args, out, lambda b, xs: SCALAR[op.name](b, op.attrs, xs, out.dtype))]


for _name in SCALAR:
    LINALG[_name] = elementwise


@rule("bitcast")
def _bitcast(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """Between types of one width: `arith.bitcast` per element (uint8 is i8 here); other widths (a
    resized last dim) and booleans (i1, a byte in torch) have no per-element bitcast upstream."""
    out, src = types[0], op.operands[0].dtype
    if src.itemsize != out.dtype.itemsize or dt.bool_ in (src, out.dtype):
        raise LoweringError(f"op 'bitcast' from {src} to {out.dtype} has no lowering to upstream MLIR (only between "
                            "non-boolean types of the same width)")
    if src == out.dtype or (src in (dt.int8, dt.uint8) and out.dtype in (dt.int8, dt.uint8)):
        return [e.map(args, out, lambda b, xs: xs[0])]
    return [e.map(args, out, lambda b, xs: b.convert("arith.bitcast", xs[0], out.dtype))]


def broadcast_input(e: LinalgEmitter, x: V, shape: Sequence[int]) -> tuple[V, str]:
    """`x` and the indexing map that reads it broadcast to `shape` (numpy rules, right-aligned):
    stretched size-1 dims are collapsed away first, so the map is a projected permutation."""
    r, big = x.t.rank, len(shape)
    off = big - r
    keep = [j for j in range(r) if not (x.t.shape[j] == 1 and shape[j + off] != 1)]
    if len(keep) != r:
        x = e.reshape(x, [x.t.shape[j] for j in keep])
    return x, amap(big, [f"d{j + off}" for j in keep])


@rule("broadcast")
def _broadcast(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    x, m = broadcast_input(e, args[0], types[0].shape)
    return [e.map([x], types[0], lambda b, a: a[0], maps=[m])]


def constant_array(op: Op, t: TensorType) -> np.ndarray:
    """The constant's values exactly as the reference makes them."""
    from avalon.ir import evaluate
    return evaluate("constant", op.attrs, [], t)


@rule("constant")
def _constant(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    return [e.constant(constant_array(op, types[0]), types[0])]


def splat_scalar(op: Op):
    """A splat constant's one value, converted to its dtype as the reference does."""
    d = op.attrs["dtype"]
    return to_result(np.asarray(op.attrs["value"]).reshape(-1)[0], TensorType((), d)).item()


# --- fused groups ----------------------------------------------------------------------------------

@rule("fusion")
def _fusion(e: LinalgEmitter, op: Op, args: list[V], types: list[TensorType]) -> list[V]:
    """A group of elementwise ops (with broadcasts of its inputs and constants) is one
    `linalg.generic` whose body holds every op's scalar code; any other group is lowered op by op
    (IREE fuses those again itself)."""
    region = op.regions[0]
    outs = _pointwise_group(e, region, args)
    return outs if outs is not None else lower_block(e, region, args)


def _pointwise_group(e: LinalgEmitter, region: Block, args: list[V]) -> list[V] | None:
    ys = region.results
    if not ys:
        return None
    shape = ys[0].shape
    if any(y.shape != shape for y in ys):
        return None
    inputs: list[tuple[V, str]] = []
    slot: dict[Value, tuple] = {}  # value -> ("in", k) | ("const", value) | ("op", op)
    outer = dict(zip(region.args, args))

    def direct(v: Value) -> bool:
        if v in slot:
            return True
        if v in outer and v.shape == shape:
            slot[v] = ("in", len(inputs))
            inputs.append((outer[v], identity(len(shape))))
            return True
        return False

    for op in region.ops:
        src = op.operands[0] if op.operands else None
        if op.name == "constant" and np.asarray(op.attrs["value"]).size == 1:
            slot[op.result] = ("const", splat_scalar(op), op.attrs["dtype"])
        elif op.name == "constant" and op.result.shape == shape:
            slot[op.result] = ("in", len(inputs))
            inputs.append((e.constant(constant_array(op, plain(op.result.type)), plain(op.result.type)),
                           identity(len(shape))))
        elif op.name == "broadcast" and op.result.shape == shape and src in outer:
            slot[op.result] = ("in", len(inputs))
            inputs.append(broadcast_input(e, outer[src], shape))
        elif op.name == "broadcast" and op.result.shape == shape and src in slot and slot[src][0] == "const":
            slot[op.result] = slot[src]
        elif (op.name in SCALAR and LINALG.get(op.name) is elementwise and op.result.shape == shape
              and all(direct(v) for v in op.operands)):
            slot[op.result] = ("op", op)
        else:
            return None
    if not all(direct(y) for y in ys):
        return None

    def body(b: LinalgEmitter, scalars: list[V]) -> list[V]:
        val: dict[Value, V] = {}

        def get(v: Value) -> V:
            if v not in val:
                s = slot[v]
                if s[0] == "in":
                    val[v] = scalars[s[1]]
                elif s[0] == "const":
                    val[v] = b.const(s[1], s[2])
                else:
                    o = s[1]
                    val[v] = SCALAR[o.name](b, o.attrs, [get(x) for x in o.operands], o.result.dtype)
            return val[v]
        return [get(y) for y in ys]

    r = len(shape)
    outputs = [(e.empty(TensorType(shape, y.dtype)), identity(r)) for y in ys]
    return e.generic(inputs, outputs, ["parallel"] * r, body)


def check_table() -> list[str]:
    """Ops of the registry without a linalg rule (the registry's view of this table)."""
    return sorted(n for n in OPS if n not in LINALG)


from . import lower_contraction, lower_gather, lower_pool, lower_scatter, lower_shapes, lower_sort  # noqa: E402,F401,I001

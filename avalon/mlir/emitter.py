"""A small text builder for upstream MLIR (func, arith, math, tensor, linalg), used by the lowering.

Values are `V(name, type)`: an SSA name and its Avalon `TensorType` (or, for scalars inside a
`linalg.generic` body, a `DType`). Every SSA name is unique in the whole function (one counter), so
nested regions never shadow. The helpers here are the shapes the lowering rules share: empty and
filled tensors, `linalg.generic` with a scalar body, reshapes by collapse/expand, pad and crop.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from avalon.ir import DType, TensorType
from avalon.ir import dtypes as dt

from .text import dense, scalar, tensor_type, type_name


@dataclass(frozen=True)
class V:
    """An SSA value: its name (`%7`) and its type (a tensor type, or a dtype for a scalar)."""

    name: str
    type: TensorType | DType

    @property
    def t(self) -> TensorType:
        assert isinstance(self.type, TensorType), self
        return self.type

    @property
    def d(self) -> DType:
        return self.type.dtype if isinstance(self.type, TensorType) else self.type


INDEX = DType("index", "int64", False, 99)
"""MLIR's `index` type, for loop indices and tensor.extract coordinates inside generic bodies."""


def literal(value, d: DType) -> str:
    """The operand of `arith.constant` (an i1 is a bare `true`/`false`, which carries its type)."""
    return scalar(value, d) if d == dt.bool_ else f"{scalar(value, d, True)} : {sname(d)}"


def sname(d: DType) -> str:
    """A scalar type as upstream arith spells it: signless, so uint8 is `i8` (its ops are the
    unsigned variants: see `scalar`)."""
    return type_name(d, True)


def ty(x: TensorType | DType) -> str:
    return tensor_type(x, True) if isinstance(x, TensorType) else sname(x)


def amap(rank: int, results: Sequence[str]) -> str:
    """`affine_map<(d0, d1) -> (d1)>` from result expressions written over `d0..`."""
    return f"affine_map<({', '.join(f'd{i}' for i in range(rank))}) -> ({', '.join(results)})>"


def identity(rank: int) -> str:
    return amap(rank, [f"d{i}" for i in range(rank)])


class LinalgEmitter:
    """Collects the lines of one function body."""

    def __init__(self, counter: list[int] | None = None):
        self.lines: list[str] = []
        self.indent = "    "
        self._counter = counter if counter is not None else [0]
        self.checks: list | None = None  # index checks wanted (lower_gather.check_bounds): (lo, hi, op, bound)

    def fresh(self) -> str:
        self._counter[0] += 1
        return f"%{self._counter[0]}"

    def emit(self, line: str) -> None:
        self.lines.append(self.indent + line)

    def op(self, text: str, type: TensorType | DType) -> V:
        """`%n = text` (text names the result type itself)."""
        v = V(self.fresh(), type)
        self.emit(f"{v.name} = {text}")
        return v

    # --- scalars (inside generic bodies, or at the top for scalar math) ----------------------
    def const(self, value, d: DType) -> V:
        return self.op(f"arith.constant {literal(value, d)}", d)

    def index_const(self, i: int) -> V:
        return self.op(f"arith.constant {int(i)} : index", INDEX)

    def arith(self, opname: str, *args: V, d: DType | None = None, result: DType | None = None) -> V:
        """`%n = arith.addf %a, %b : f32` style ops (`d`: the operand type; `result`: if different)."""
        d = d or args[0].d
        return self.op(f"{opname} {', '.join(a.name for a in args)} : {sname(d)}", result or d)

    def cmp(self, kind: str, pred: str, a: V, b: V) -> V:
        return self.op(f"arith.{kind} {pred}, {a.name}, {b.name} : {sname(a.d)}", dt.bool_)

    def select(self, c: V, a: V, b: V) -> V:
        return self.op(f"arith.select {c.name}, {a.name}, {b.name} : {sname(a.d)}", a.d)

    def convert(self, opname: str, a: V, to: DType) -> V:
        return self.op(f"{opname} {a.name} : {sname(a.d)} to {sname(to)}", to)

    def index(self, dim: int) -> V:
        """`linalg.index` of loop `dim`."""
        return self.op(f"linalg.index {dim} : index", INDEX)

    # --- tensors -------------------------------------------------------------------------------
    def empty(self, t: TensorType) -> V:
        return self.op(f"tensor.empty() : {ty(t)}", t)

    def full(self, t: TensorType, value) -> V:
        """A tensor of `t` filled with `value` (linalg.fill of tensor.empty)."""
        c = self.const(value, t.dtype)
        e = self.empty(t)
        return self.op(f"linalg.fill ins({c.name} : {sname(t.dtype)}) outs({e.name} : {ty(t)}) -> {ty(t)}", t)

    def constant(self, array, t: TensorType) -> V:
        return self.op(f"arith.constant {dense(array, t, True)}", t)

    def generic(self, inputs: Sequence[tuple[V, str]], outputs: Sequence[tuple[V, str]], iterators: Sequence[str],
                body: Callable[[LinalgEmitter, list[V]], list[V]]) -> list[V]:
        """`linalg.generic`: `inputs`/`outputs` are (tensor, indexing map); `body(emitter, scalars)`
        gets one scalar per input then per output (the accumulators) and returns what to yield."""
        maps = ", ".join(m for _, m in [*inputs, *outputs])
        its = ", ".join(f'"{i}"' for i in iterators)
        outs_t = [o.t for o, _ in outputs]
        names = [self.fresh() for _ in outputs]
        head = names[0] if len(names) == 1 else f"{names[0]}:{len(names)}"
        ins = (f" ins({', '.join(v.name for v, _ in inputs)} : {', '.join(ty(v.type) for v, _ in inputs)})"
               if inputs else "")
        outs = f"outs({', '.join(v.name for v, _ in outputs)} : {', '.join(ty(t) for t in outs_t)})"
        self.emit(f"{head} = linalg.generic {{indexing_maps = [{maps}], iterator_types = [{its}]}}{ins} {outs} {{")
        sub = LinalgEmitter(self._counter)
        sub.indent = self.indent + "  "
        args = [V(sub.fresh(), v.d) for v, _ in [*inputs, *outputs]]
        self.lines.append(f"{self.indent}^bb0({', '.join(f'{a.name}: {sname(a.d)}' for a in args)}):")
        ys = body(sub, args)
        self.lines += sub.lines
        self.emit(f"  linalg.yield {', '.join(y.name for y in ys)} : {', '.join(sname(y.d) for y in ys)}")
        rt = ", ".join(ty(t) for t in outs_t)
        self.emit(f"}} -> {rt if len(outs_t) == 1 else '(' + rt + ')'}")
        if len(names) == 1:
            return [V(names[0], outs_t[0])]
        return [V(f"{names[0]}#{i}", t) for i, t in enumerate(outs_t)]

    def map(self, inputs: Sequence[V], out: TensorType, body: Callable[[LinalgEmitter, list[V]], V],
            maps: Sequence[str] | None = None) -> V:
        """An all-parallel generic computing one `out` element from one element of each input."""
        r = out.rank
        maps = maps or [identity(r)] * len(inputs)
        return self.generic(list(zip(inputs, maps)), [(self.empty(out), identity(r))], ["parallel"] * r,
                            lambda e, a: [body(e, a[: len(inputs)])])[0]

    def reshape(self, x: V, shape: Sequence[int]) -> V:
        """Row-major reshape as collapse-to-1-d then expand (static shapes only; one of them is
        skipped when the shape already has rank 1). A same-shape reshape is `x` itself."""
        shape = tuple(shape)
        if x.t.shape == shape:
            return x
        n = x.t.numel
        flat = TensorType((n,), x.d)
        if x.t.rank == 0:
            y = self.op(f"tensor.expand_shape {x.name} [] output_shape [1] : {ty(x.t)} into {ty(flat)}", flat)
        elif x.t.rank == 1:
            y = x
        else:
            grp = ", ".join(str(i) for i in range(x.t.rank))
            y = self.op(f"tensor.collapse_shape {x.name} [[{grp}]] : {ty(x.t)} into {ty(flat)}", flat)
        out = TensorType(shape, x.d)
        if len(shape) == 1:
            return y
        if len(shape) == 0:
            return self.op(f"tensor.collapse_shape {y.name} [] : {ty(flat)} into {ty(out)}", out)
        grp = ", ".join(str(i) for i in range(len(shape)))
        return self.op(f"tensor.expand_shape {y.name} [[{grp}]] output_shape [{', '.join(map(str, shape))}] : "
                       f"{ty(flat)} into {ty(out)}", out)

    def pad(self, x: V, low: Sequence[int], high: Sequence[int], value) -> V:
        """Constant padding; negative amounts crop instead (tensor.extract_slice)."""
        if any(v < 0 for v in [*low, *high]):
            off = [max(0, -v) for v in low]
            sizes = [s - max(0, -lo) - max(0, -hi) for s, lo, hi in zip(x.t.shape, low, high)]
            x = self.slice(x, off, sizes, [1] * len(off))
            low, high = [max(0, v) for v in low], [max(0, v) for v in high]
        if not any(low) and not any(high):
            return x
        out = TensorType(tuple(s + lo + hi for s, lo, hi in zip(x.t.shape, low, high)), x.d)
        c = V(self.fresh(), x.d)
        idx = ", ".join(f"%i{self._counter[0]}_{k}: index" for k in range(x.t.rank))
        name = self.fresh()
        self.emit(f"{name} = tensor.pad {x.name} low[{', '.join(map(str, low))}] high[{', '.join(map(str, high))}] {{")
        self.emit(f"^bb0({idx}):")
        self.emit(f"  {c.name} = arith.constant {literal(value, x.d)}")
        self.emit(f"  tensor.yield {c.name} : {sname(x.d)}")
        self.emit(f"}} : {ty(x.t)} to {ty(out)}")
        return V(name, out)

    def slice(self, x: V, offsets: Sequence[int], sizes: Sequence[int], strides: Sequence[int]) -> V:
        out = TensorType(tuple(sizes), x.d)
        j = ", ".join
        return self.op(f"tensor.extract_slice {x.name}[{j(map(str, offsets))}] [{j(map(str, sizes))}] "
                       f"[{j(map(str, strides))}] : {ty(x.t)} to {ty(out)}", out)

    def insert(self, src: V, into: V, offsets: Sequence[int], strides: Sequence[int]) -> V:
        j = ", ".join
        return self.op(f"tensor.insert_slice {src.name} into {into.name}[{j(map(str, offsets))}] "
                       f"[{j(map(str, src.t.shape))}] [{j(map(str, strides))}] : {ty(src.t)} into {ty(into.t)}",
                       into.t)

    def transpose(self, x: V, perm: Sequence[int]) -> V:
        out = TensorType(tuple(x.t.shape[p] for p in perm), x.d)
        if list(perm) == list(range(x.t.rank)):
            return x
        e = self.empty(out)
        return self.op(f"linalg.transpose ins({x.name} : {ty(x.t)}) outs({e.name} : {ty(out)}) "
                       f"permutation = [{', '.join(map(str, perm))}]", out)

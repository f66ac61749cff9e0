"""Inlining a fused group: its ops run in order, with the fewest temporaries.

A value the group yields is written straight into its result's storage (planned buffer or fresh
output), unless that storage is also an operand of the group (the memory plan's in place, which
assumes one pass per element: here ops run one after another, so the write waits until every op
has run) or the value is yielded twice. Any other value takes a scratch slot, or the storage of
an operand that dies at its op when the op is one elementwise pass. A result donated to an input
(`donate`) is written into the input's array where it is computed when nothing in the group reads
the input afterwards, else copied there when the group ends.
"""
from __future__ import annotations

from avalon.ir import Op, Value

from . import blas
from .donate import aliases, region_safe
from .generator import Generator, Ref
from .native import NativeRuns
from .ops import OpEmitter, emit_op


def emit_region(gen: Generator, op: Op) -> None:
    block = op.regions[0]
    for a, v in zip(block.args, op.operands):
        gen.env[a] = gen.env[v]
    inner = list(block.ops)
    index = {o: j for j, o in enumerate(inner)}
    last: dict[Value, int] = {}
    for j, o in enumerate(inner):
        for w in o.walk():
            for x in w.operands:
                last[x] = j
    end = len(inner)
    for y in block.results:
        last[y] = end
    # backend="cpu": `beta * P + alpha * (A @ B)` as one BLAS call at the add/sub (`blas`); the matmul,
    # the muls (and transposes only the matmul reads) emit nothing, and what they read stays alive until then
    gemms = blas.patterns(gen, op) if gen.native_runs else {}
    skip = {o for u in gemms.values() for o in u.ops}
    for o, u in gemms.items():
        for x in u.reads:
            last[x] = max(last.get(x, -1), index[o])
    plan = gen.plan
    direct: dict[Value, tuple[Value, Ref | None]] = {}
    deferred: list[tuple[Value, Value]] = []
    for r, y in zip(op.results, block.results):
        while (y.op is not None and y.op.name == "stop_gradient" and y.op.parent is block
               and y.op.operands[0] not in block.args and y.op.operands[0] not in block.results):
            y = y.op.operands[0]  # an identity yielded: compute its operand straight into the result
        mine = y.op is not None and y.op.parent is block and not y.op.regions
        donated = gen.donated_store(r)
        if donated is not None:
            views = aliases([gen.graph.inputs[gen.donation[r]]], gen.graph.body)
            args = [a for a, v in zip(block.args, op.operands) if v in views]
            if y not in direct and region_safe(block, args, y):
                direct[y] = (r, donated)
            else:
                deferred.append((r, y))
            continue
        if mine and y not in direct and not (plan is not None and r in plan.inplace):
            store = gen.planned(r)
            direct[y] = (r, Ref(store, r.type) if store else None)
        else:
            deferred.append((r, y))

    def dest(v: Value, em: OpEmitter | None) -> Ref | None:
        if v in direct:
            r, ref = direct[v]
            if ref is None and em is not None:
                ref = Ref(gen.new_array(v.type), v.type, fresh=True)
                direct[v] = (r, ref)
            return ref
        if em is None:
            return None
        o = v.op
        if em.inplace and o.has_trait("elementwise"):
            # `o` hoisted above an open run: not over storage the run reads (a view of it included)
            kept = {gen.env[k].slot for k in runs.keep if k in gen.env} if runs is not None and runs.keep else set()
            for x in o.operands:
                a = gen.env.get(x)  # none for what a gemm call replaced
                if runs is not None and (x in runs.keep or a is not None and a.slot is not None and a.slot in kept):
                    continue
                if (a is not None and not a.lazy and a.slot is not None and last.get(x) == index[o]
                        and gen.refs.get(a.slot) == 1 and a.type.shape == v.type.shape
                        and a.type.dtype.np == v.type.dtype.np):
                    ref = Ref(a.expr, v.type, slot=a.slot)
                    gen.hold(ref)
                    return ref
        name, slot = gen.scratch(v.type.shape, v.type.dtype.np, op_scoped=False)
        ref = Ref(name, v.type, slot=slot)
        gen.hold(ref)
        return ref

    alive: set[Value] = set()
    runs = NativeRuns(gen) if gen.native_runs else None
    for j, o in enumerate(inner):
        if o in skip:
            continue
        u = gemms.get(o)
        if runs is not None:
            runs.close() if u is not None else runs.before(o)
        if u is not None:
            blas.emit(gen, u, dest)
        elif o.regions:
            emit_region(gen, o)
        else:
            emit_op(gen, o, dest=dest)
        if runs is not None and u is None:
            runs.after(o)
        gen.end_op()
        alive.update(o.results)
        for x in {x for w in o.walk() for x in w.operands}.union(u.reads if u is not None else ()):
            if last.get(x) == j and x in alive:
                alive.discard(x)
                gen.drop(gen.env[x])
        for r in o.results:
            if r not in last and r in alive:
                alive.discard(r)
                gen.drop(gen.env[r])

    if runs is not None:
        runs.close()
    for y, (r, ref) in direct.items():
        src = gen.env[y]
        if ref is not None and src.expr == ref.expr or ref is None and src.fresh and src.slot is None:
            gen.env[r] = src
        else:  # computed elsewhere (a view, a splat, a broadcast): copy it into its storage
            deferred.append((r, y))
    # copies into donated inputs go last: another result may still be a view of the input's old value
    for r, y in sorted(deferred, key=lambda ry: gen.donated_store(ry[0]) is not None):
        src = gen.env[y]
        donated = gen.donated_store(r)
        if donated is not None:  # every read of the donated input in this group is done
            gen.line(f"np.copyto({donated.expr}, {src.expr})")
            gen.env[r] = donated
            continue
        store = gen.planned(r)
        if store is None:
            name = gen.new_array(r.type)
            gen.line(f"np.copyto({name}, {src.expr})")
            gen.env[r] = Ref(name, r.type, fresh=True)
        else:
            gen.line(f"np.copyto({store}, {src.expr})")
            gen.env[r] = Ref(store, r.type)
    for v in alive:
        gen.drop(gen.env[v])

"""Compile time and retracing, round 2.

- `fuse`'s cycle check walked every unit between a producer and a consumer that reads something
  derived from it (a forward op and its backward, thousands of ops apart on a DNC's unrolled training
  graph), for each such pair tried: quadratic. The walk now takes the latest unit first and stops at
  the first unit the consumer reads, and each unit's users are cached until a unit they name is
  replaced. The groups must be exactly those of the exhaustive walk.
- A Python number attribute used as a counter (`self.step += 1` in a traced forward) is a new
  signature every call: one warning, naming the attribute and the user's line, and at most
  `CACHE_LIMIT` signatures kept.
- A write into a tensor the step captured (not an argument) is traced on every call: the object is
  the one the scope holds at the call, which a trace cannot guard (see the last test); passed as an
  argument, the holder is cached and written back.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import rel

import avalon as av
import avalon.compiler.core as core
import avalon.passes.fuse as fuse_mod
from avalon import nn, zoo
from avalon.ir.printer import print_graph
from avalon.nn import functional as F
from avalon.passes import PassManager
from avalon.passes.fuse import Decision


def exhaustive_placement(self, p, c):
    """The walk as it was: every unit up to q reachable from p, then the reads checked in order."""
    pp = self.pos[p]
    q = pp
    reads = []
    for m in c.ops:
        for b in self.bases(m):
            u = self.unit_of.get(b.op) if b.op is not None else None
            if u is None or u is p or u is c:
                continue
            reads.append(u)
            q = max(q, self.pos[u])
    marked = set()
    stack = list(self.users(p))
    while stack:
        u = stack.pop()
        if u in marked or u is c or u is p or (self.pos[u] > q and not self._inlinable_unit(u)):
            continue
        marked.add(u)
        stack.extend(self.users(u))
    for u in reads:
        if u in marked:
            return Decision(False, f"it would create a cycle through {self.describe(u.ops)}"), [], pp
    return None, sorted((u for u in marked if self.pos[u] <= q), key=self.pos.__getitem__), q


def fresh_users(self, u):
    out = {}
    for op in u.ops:
        for r in op.results:
            for user, _ in r.uses:
                w = self.unit_of.get(user)
                if w is not None and w is not u:
                    out.setdefault(w, None)
    return list(out)


def dnc_graph(steps=2):
    from test_port_programs_42 import dnc
    model = dnc(nn, F, av)
    opt = av.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, eps=1e-8)
    rng = np.random.default_rng(0)
    x = av.tensor((rng.random((2, steps, 4)) < 0.5).astype(np.float32))
    y = av.tensor((rng.random((2, steps, 4)) < 0.5).astype(np.float32))

    def step(m, o, a, b):
        loss, grads = av.value_and_grad(lambda m, a, b: F.binary_cross_entropy_with_logits(m(a)[0], b))(m, a, b)
        o.step(grads)
        return loss
    return av.compile(step, pipeline="canonicalize,cse,dce").inspect(model, opt, x, y).graph


def gpt_graph():
    model = zoo.GPT(block_size=8, n_layer=1)
    rng = np.random.default_rng(1)
    idx, tgt = av.tensor(rng.integers(0, 96, (2, 8))), av.tensor(rng.integers(0, 96, (2, 8)))
    return av.compile(lambda m, a, b: av.grad(lambda m: m(a, b)[1])(m),
                      pipeline="canonicalize,cse,dce").inspect(model, idx, tgt).graph


def fused(graph, monkeypatch, reference):
    """The graph after `fuse`, with the exhaustive walk (reference) or the pass's; and the units the
    cycle checks visited."""
    g = graph.clone()
    visits = [0]
    with monkeypatch.context() as mp:
        if reference:
            mp.setattr(fuse_mod._Fuser, "placement", exhaustive_placement)
        users = fuse_mod._Fuser.users
        reorder = fuse_mod._Fuser.reorder

        def counted(self, u):
            visits[0] += 1
            return users(self, u)

        def checked(self, *a):  # after merges, each live unit's cached users are the true ones
            reorder(self, *a)
            if self.fusions % 97:
                return
            for u in self.order:
                if u is not None and u.users is not None:
                    assert u.users == fresh_users(self, u), u.ops
        mp.setattr(fuse_mod._Fuser, "users", counted)
        mp.setattr(fuse_mod._Fuser, "reorder", checked)
        mp.setattr(fuse_mod._Fuser, "verify_order", True)
        PassManager.parse("fuse").run(g)
    return print_graph(g), visits[0]


@pytest.mark.parametrize("make", [dnc_graph, gpt_graph], ids=["dnc", "gpt"])
def test_fusion_groups_are_those_of_the_exhaustive_cycle_walk(make, monkeypatch):
    graph = make()
    want, walked = fused(graph, monkeypatch, reference=True)
    got, walked_now = fused(graph, monkeypatch, reference=False)
    assert got.count("fusion") > 10
    assert got == want  # the same groups, names, order and IR
    assert walked_now <= walked
    if make is dnc_graph:  # the forward/backward pairs no longer walk the graph between them
        assert walked_now < walked / 2, (walked_now, walked)


def test_fused_dnc_step_still_computes_the_reference_result():
    from test_port_programs_42 import dnc
    model = dnc(nn, F, av)
    rng = np.random.default_rng(3)
    x = av.tensor(rng.standard_normal((2, 3, 4)).astype(np.float32))

    def loss(m, a):
        return (m(a)[0] ** 2).mean()
    want = av.compile(av.grad(loss), backend="numpy", pipeline="canonicalize,cse,dce")(model, x)
    got = av.compile(av.grad(loss), backend="numpy")(model, x)
    for k in want:
        assert rel(got[k], want[k]) < 1e-5, k


# -- Python number counters ---------------------------------------------------------------------------------------

class Counted(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.step = 0

    def forward(self, x):
        self.step += 1  # THE COUNTER LINE
        return self.lin(x) * (1.0 / self.step)


def counter_line():
    import inspect
    src, first = inspect.getsourcelines(Counted.forward)
    return first + next(i for i, s in enumerate(src) if "THE COUNTER LINE" in s)


def test_a_python_counter_attribute_warns_once_naming_it_and_its_line_and_the_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(core, "CACHE_LIMIT", 5)
    m = Counted()
    w, b = m.lin.weight.numpy().astype(np.float64), m.lin.bias.numpy().astype(np.float64)
    x = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    run = av.compile(lambda m, x: m(x), backend="numpy")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for i in range(1, 20):
            got = run(m, av.tensor(x))
            assert rel(got, (x @ w.T + b) / i) < 1e-6, i  # each call sees its own count, as eagerly
    assert m.step == 19
    said = [str(s.message) for s in seen if "different signatures" in str(s.message)]
    assert len(said) == 1, said  # once, not at 8, 16, ...
    assert "step = 7 (was 6)" in said[0] and "`step` is a Python number the function itself changes at" in said[0]
    assert f"test_compile_time_2.py:{counter_line()}" in said[0]
    assert "register_buffer('step'" in said[0]
    info = run.cache_info()
    assert info.misses == 19 and info.entries == 5  # the least recently used signatures went


def test_the_bounded_cache_keeps_the_signatures_in_use(monkeypatch):
    monkeypatch.setattr(core, "CACHE_LIMIT", 3)
    run = av.compile(lambda x: (x * 2).sum(), backend="numpy")
    rng = np.random.default_rng(5)
    xs = {n: rng.standard_normal(n).astype(np.float32) for n in (2, 3, 4, 5)}
    for n in (2, 3, 4):
        run(av.tensor(xs[n]))
    run(av.tensor(xs[2]))  # used again: now the most recent
    run(av.tensor(xs[5]))  # a fourth signature replaces 3, the least recently used
    assert run.cache_info() == (1, 4, 3)
    for n in (2, 4, 5):
        assert rel(run(av.tensor(xs[n])), 2 * xs[n].astype(np.float64).sum()) < 1e-6
    assert run.cache_info().misses == 4
    run(av.tensor(xs[3]))
    assert run.cache_info().misses == 5


def test_a_counter_kept_as_a_buffer_is_compiled_once():
    class Buffered(Counted):
        def __init__(self):
            super().__init__()
            del self.step
            self.register_buffer("step", av.tensor(0))
    m = Buffered()
    w, b = m.lin.weight.numpy().astype(np.float64), m.lin.bias.numpy().astype(np.float64)
    x = np.random.default_rng(6).standard_normal((2, 3)).astype(np.float32)
    run = av.compile(lambda m, x: m(x), backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(1, 6):
            assert rel(run(m, av.tensor(x)), (x @ w.T + b) / i) < 1e-6, i
    assert int(m.step) == 5 and run.cache_info().misses == 1


# -- writes into captured tensors ---------------------------------------------------------------------------------

def test_captured_ema_writes_retrace_because_the_scope_may_hold_another_tensor_next_call():
    rng = np.random.default_rng(7)
    shadow = {"w": av.tensor(rng.standard_normal(3).astype(np.float32))}

    def ema(x):
        s = shadow["w"]
        s.copy_(0.5 * s + 0.5 * x)
        return (x * 2).sum()
    run = av.compile(ema, backend="numpy")
    want = shadow["w"].numpy().astype(np.float64)
    for k in range(3):
        x = rng.standard_normal(3).astype(np.float32)
        if k == 2:  # rebound between calls: the next call writes the new object, as an eager call does
            old = shadow["w"]
            shadow["w"] = av.tensor(rng.standard_normal(3).astype(np.float32))
            want = shadow["w"].numpy().astype(np.float64)
        with pytest.warns(UserWarning, match="writes tensors it captured"):
            run(av.tensor(x))
        want = 0.5 * want + 0.5 * x
        assert rel(shadow["w"], want) < 1e-6, k
    assert rel(old, old.numpy()) == 0 and run.cache_info().misses == 3

    # the holder passed as an argument: one trace, its tensor written back on every call
    def ema_arg(holder, x):
        s = holder["w"]
        s.copy_(0.5 * s + 0.5 * x)
        return (x * 2).sum()
    run = av.compile(ema_arg, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            x = rng.standard_normal(3).astype(np.float32)
            run(shadow, av.tensor(x))
            want = 0.5 * want + 0.5 * x
            assert rel(shadow["w"], want) < 1e-6
    assert run.cache_info().misses == 1

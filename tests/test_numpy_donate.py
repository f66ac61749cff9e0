"""Donated inputs in the numpy backend: a state update written into the array of the state it
replaces must give exactly what the interpreter gives, whatever reads the old value and when."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import avalon as av
from avalon import nn, optim, zoo
from avalon.codegen.numpy import GeneratedExecutable
from avalon.codegen.numpy.backend import NUMPY
from avalon.ir import Builder, Graph, TensorType, interpret, verify
from avalon.ir.fusion import outline
from avalon.passes import DEFAULT_PIPELINE, PassManager

UNARY = ["neg", "exp", "tanh", "relu", "abs", "stop_gradient"]
BINARY = ["add", "sub", "mul", "maximum"]


@st.composite
def updates(draw) -> tuple[Graph, dict[int, int]]:
    """A state `w` (input 0) and data `x` (input 1); ops read w, its views and x in a drawn order; the
    last output is w's update. Other outputs may be computed before or after the update reads w."""
    R, C = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    g = Graph("f")
    b = Builder(g)
    w, x = g.add_input(TensorType((R, C), "f32"), "w"), g.add_input(TensorType((R, C), "f32"), "x")
    vals = [w, x]
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["unary", "binary", "view", "alias", "reduce"]))
        a, c = draw(st.sampled_from(vals)), draw(st.sampled_from(vals))
        if kind == "unary":
            vals.append(b(draw(st.sampled_from(UNARY)), a))
        elif kind == "binary":
            vals.append(b(draw(st.sampled_from(BINARY)), a, c))
        elif kind == "view":
            t = b("reshape", a, shape=[C, R])
            vals.append(b("reshape", b("exp", t), shape=[R, C]))
        elif kind == "alias":  # the same storage as `a` in generated code (w itself when a is w)
            vals.append(b("reshape", b("transpose", b("reshape", a, shape=[C, R]), perm=[1, 0]), shape=[R, C]))
        else:
            vals.append(b("broadcast", b("sum", a, axes=[0], keepdims=True), shape=[R, C]))
    new_w = b(draw(st.sampled_from(BINARY)), draw(st.sampled_from(vals)), draw(st.sampled_from(vals)))
    later = [b("mul", draw(st.sampled_from(vals)), w) for _ in range(draw(st.integers(0, 2)))]
    outs = draw(st.lists(st.sampled_from(vals[2:] or [x]), max_size=2)) + later + [new_w]
    g.set_outputs(outs)
    return g, {len(outs) - 1: 0}


def _run(g: Graph, donated: dict[int, int], seed: int):
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal(v.type.shape).astype(np.float32) for v in g.inputs]
    want = interpret(g, *[a.copy() for a in args])
    exe = GeneratedExecutable(g)
    exe.donated = donated
    got = exe(*args)
    return args, want, got, exe


@settings(max_examples=120, deadline=None)
@given(updates(), st.sampled_from(["as traced", "pipeline", "one group"]))
def test_donated_updates_match_the_interpreter(case, how):
    g, donated = case
    if how == "pipeline":
        PassManager.parse(DEFAULT_PIPELINE, target=NUMPY).run(g)
    elif how == "one group":  # every op in one fused group: the update, views of the state and the rest
        outline([op for op in g.ops if op.name != "constant"], "fused")
    verify(g)
    args, want, got, exe = _run(g, donated, 0)
    for k, (a, w) in enumerate(zip(got, want)):
        assert np.array_equal(a, w, equal_nan=True), f"output #{k}\n{g}\n{exe.source}"
    (o, j), = donated.items()
    if exe.emission.donated:  # honoured: the update is the input's own array, holding the new value
        assert got[o] is args[j], f"{g}\n{exe.source}"


def test_a_group_yielding_a_view_of_the_state_copies_it_before_the_update_lands():
    """One group computes the update and yields a reshape of the old state: the view must be copied
    out before the update is copied into the state's array."""
    g = Graph("f")
    b = Builder(g)
    w = g.add_input(TensorType((4, 6), "f32"), "w")
    new = b("mul", w, b.constant(2.0, (4, 6), "f32"))
    g.set_outputs([b("reshape", w, shape=[6, 4]), new])
    outline(list(g.ops), "fused")
    args, want, got, exe = _run(g, {1: 0}, 5)
    for a, w_ in zip(got, want):
        np.testing.assert_array_equal(a, w_)
    assert got[1] is args[0]


def _sgd_like(read_after: bool) -> Graph:
    g = Graph("f")
    b = Builder(g)
    w, gr = g.add_input(TensorType((4, 6), "f32"), "w"), g.add_input(TensorType((4, 6), "f32"), "g")
    loss = None if read_after else b("sum", b("mul", w, w), axes=[0, 1], keepdims=False)
    new = b("sub", w, b("mul", gr, b.constant(0.1, (4, 6), "f32")))
    if read_after:  # reads the old w after the update is computed: the update may not go into w early
        loss = b("sum", b("mul", w, new), axes=[0, 1], keepdims=False)
    outs = [loss, new]
    g.set_outputs(outs)
    return g


@pytest.mark.parametrize("read_after", [False, True])
def test_an_update_goes_into_its_input_only_after_the_last_read(read_after):
    g = _sgd_like(read_after)
    PassManager.parse(DEFAULT_PIPELINE, target=NUMPY).run(g)
    args, want, got, exe = _run(g, {1: 0}, 3)
    for a, w in zip(got, want):
        np.testing.assert_array_equal(a, w)
    assert got[1] is args[0]
    lines = exe.source.splitlines()[1:-1]
    writes = [k for k, ln in enumerate(lines) if "out=a0" in ln or "copyto(a0" in ln]
    reads = [k for k, ln in enumerate(lines) if "a0" in ln]
    assert len(writes) == 1 and writes[0] == reads[-1], exe.source  # one write, after (or at) the last read
    assert ("copyto(a0" in lines[writes[0]]) == read_after  # read in the same group after the update: copied


def test_a_donated_input_that_overlaps_another_is_copied_first():
    """Two inputs viewing one array: writing the update into it would change the other input."""
    g = _sgd_like(False)
    shared = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    want = interpret(g, shared.copy(), shared.copy())
    exe = GeneratedExecutable(g)
    exe.donated = {1: 0}
    before = shared.copy()
    got = exe(shared, shared[:])
    for a, w in zip(got, want):
        np.testing.assert_array_equal(a, w)
    assert got[1] is not shared and np.array_equal(shared, before)
    ro = before.copy()
    ro.flags.writeable = False  # a read-only state array is never written either
    got = exe(ro, before)
    assert got[1] is not ro and np.array_equal(ro, before)


def test_a_training_step_updates_parameters_in_place_without_copies(rng):
    """The compiled step writes each SGD update into the parameter's own array: same storage object
    before and after, and the same values as the interpreter's step."""
    model = zoo.VAE(features=20, hidden=12, latent=3)
    ref = zoo.VAE(features=20, hidden=12, latent=3)
    ref.load_state_dict(model.state_dict())
    x = rng.random((5, 20)).astype(np.float32)

    def loss_fn(m, x):
        r, mu, lv = m(x)
        return zoo.vae_loss(r, x, mu, lv)

    def step(m, o, x):
        loss, grads = av.value_and_grad(loss_fn)(m, x)
        o.step(grads)
        return loss
    storage = {k: p._data for k, p in nn.named_parameters(model)}
    fast = av.compile(step)
    slow = av.compile(step, pipeline=PassManager([]))
    opt, ropt = optim.SGD(model, lr=0.05), optim.SGD(ref, lr=0.05)
    for _ in range(3):
        av.manual_seed(7)
        a = float(fast(model, opt, x))
        av.manual_seed(7)
        b = float(slow(ref, ropt, x))
        np.testing.assert_allclose(a, b, rtol=1e-5)
    exe = next(iter(fast.cache.values())).executable
    assert len(exe.emission.donated) == len(storage) + 1  # and the optimizer's step count
    for k, p in nn.named_parameters(model):
        assert p._data is storage[k], k
        np.testing.assert_allclose(p.numpy(), dict(nn.named_parameters(ref))[k].numpy(), rtol=1e-4, atol=1e-6)


class _ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        # no conv bias: BatchNorm cancels it, so its gradient is rounding noise (~1e-9) that Adam scales up
        # to +-lr, and two correct backends that sum in different orders disagree on it by ~lr
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(nn.functional.relu(self.bn(self.conv(x))).reshape(x.shape[0], -1))


@pytest.mark.parametrize("make_opt", [lambda m: optim.Adam(m, lr=0.01), lambda m: optim.SGD(m, lr=0.05, momentum=0.9)],
                         ids=["adam", "sgd-momentum"])
def test_optimizer_state_and_running_stats_update_in_place(make_opt, rng):
    """Adam's moments, momentum buffers and BatchNorm's running statistics are state updated every
    step too: written in place, they must track the interpreter's step exactly as before."""
    from avalon.codegen.numpy import NumpyBackend, NumpyExecutable

    class Interpreted(NumpyBackend):
        name = "interpreted"

        def compile(self, graph):
            return NumpyExecutable(graph)

    x = rng.standard_normal((6, 2, 5, 5)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    results = []
    for backend in ("numpy", Interpreted()):
        av.manual_seed(3)
        model = _ConvBN()
        opt = make_opt(model)

        def step(m, o, x, y):
            loss, grads = av.value_and_grad(lambda m, x, y: nn.functional.cross_entropy(m(x), y))(m, x, y)
            o.step(grads)
            return loss
        c = av.compile(step, backend=backend)
        losses = [float(c(model, opt, x, y)) for _ in range(4)]
        if backend == "numpy":  # updates (parameters, moments, running statistics, step counts) in place; one
            entry = next(iter(c.cache.values()))  # whose input is still read after its update group is copied
            assert len(entry.executable.emission.donated) >= len(entry.inspection.graph.outputs) - 2
        state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        results.append((losses, state))
    (l1, s1), (l2, s2) = results
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for k in s1:
        np.testing.assert_allclose(s1[k], s2[k], rtol=1e-4, atol=1e-6, err_msg=k)

"""The cheap path of a cached compiled call: models' walks are remembered between calls
(`tree.StateCache`) yet every change that shapes a trace still retraces, state write-back keeps
`assign`'s semantics, and signatures with and without the cache agree."""
import numpy as np
import pytest

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F
from avalon.trace import assign, signature
from avalon.tree import StateCache


class Net:
    def __init__(self):
        self.fc1 = nn.Linear(4, 8)
        self.blocks = [nn.Linear(8, 8)]
        self.drop = nn.Dropout(0.0)
        self.scale = 1.0
        self.training = True

    def __call__(self, x):
        h = F.relu(self.fc1(x))
        for b in self.blocks:
            h = b(h)
        return self.drop(h) * self.scale


def counting(fn):
    calls = [0]

    def f(*args):
        calls[0] += 1
        return fn(*args)

    f.calls = calls
    return f


def _x(rng, n=3):
    return rng.standard_normal((n, 4)).astype(np.float32)


def test_a_hit_walks_no_model_and_every_change_that_shapes_the_trace_retraces(rng):
    net = Net()
    f = counting(lambda m, x: m(x).sum())
    c = av.compile(f)
    x = _x(rng)
    c(net, x)
    c(net, x)
    walks = c._states.walks
    c(net, x)
    assert c._states.walks == walks and f.calls[0] == 1  # cached walk reused, no retrace

    net.training = False                       # a flag flip
    c(net, x)
    assert f.calls[0] == 2
    net.training = True
    c(net, x)
    assert f.calls[0] == 2                     # back to the first signature: a hit

    nn.eval(net)                               # a flag deep inside (Dropout, Linear)
    c(net, x)
    assert f.calls[0] == 3
    nn.train(net)

    net.fc1.weight = av.tensor(rng.standard_normal((8, 4)).astype(np.float32))  # same shape, new tensor
    np.testing.assert_allclose(c(net, x).item(), net(x).sum().item(), rtol=1e-5)  # reads the new one
    assert f.calls[0] == 3

    net.fc1 = nn.Linear(4, 8, bias=False)      # a submodule without bias: other inputs
    c(net, x)
    assert f.calls[0] == 4

    net.blocks[0].weight = av.tensor(rng.standard_normal((16, 8)).astype(np.float32))
    net.blocks[0].bias = av.tensor(np.zeros(16, np.float32))
    net.blocks.append(nn.Linear(16, 8))        # a list mutated in place, and another shape
    np.testing.assert_allclose(c(net, x).item(), net(x).sum().item(), rtol=1e-5)
    assert f.calls[0] == 5

    net.scale = 2.0                            # a plain value (baked into the trace)
    np.testing.assert_allclose(c(net, x).item(), net(x).sum().item(), rtol=1e-5)
    assert f.calls[0] == 6
    net.scale = float("2.0")                   # an equal value in a new object: walked again, still a hit
    c(net, x)
    assert f.calls[0] == 6

    c(net, _x(rng, 5))                         # another input shape
    assert f.calls[0] == 7


def test_replacing_a_state_tensor_writes_back_into_the_new_one(rng):
    net = Net()
    opt = optim.SGD(net, lr=0.1)

    def step(m, opt, x):
        loss, grads = av.value_and_grad(lambda m, x: m(x).sum())(m, x)
        opt.step(grads)
        return loss

    c = av.compile(step)
    x = _x(rng)
    c(net, opt, x)
    old = net.fc1.weight
    new = av.tensor(old.numpy().copy())
    net.fc1.weight = new
    opt.params["fc1.weight"] = new             # the optimizer updates what the model holds
    before = new.numpy().copy()
    c(net, opt, x)
    assert c.cache_info().entries == 1
    assert not np.array_equal(new.numpy(), before)   # the update landed in the new tensor ...
    assert np.array_equal(old.numpy(), before)       # ... not in the one it replaced


def _structures(rng):
    """(fn, args, the model to change) with models shared between arguments and inside containers."""
    net = Net()
    opt = optim.Adam(net, lr=1e-3)
    shared = nn.Linear(2, 2)
    pair = [shared, {"again": shared, "w": shared.weight}]

    def step(m, o, x):
        return None

    def g(a, b):
        return None

    return [(step, (net, opt, _x(rng)), net), (step, (opt, net, _x(rng)), opt), (g, (pair, (shared, 3)), shared),
            (net, (_x(rng),), net), (g, (net, net), net)]


def test_cached_signatures_equal_uncached_ones_through_changes(rng):
    cache = StateCache()
    for fn, args, model in _structures(rng):
        for change in range(4):
            key, leaves = signature(fn, args)
            key2, leaves2 = signature(fn, args, cache)
            assert key == key2
            assert [(n, id(x)) for n, x in leaves] == [(n, id(x)) for n, x in leaves2]
            if change == 0:
                nn.eval(model)
            elif change == 1:
                vars(model)["extra"] = [av.tensor(np.ones(2, np.float32))]
            else:
                vars(model)["extra"].append(av.tensor(np.ones(change, np.float32)))


def test_the_cache_holds_a_bounded_number_of_models():
    cache = StateCache(size=2)
    nets = [Net() for _ in range(4)]
    for n in nets:
        cache.model_state(n, set())
    assert len(cache._entries) == 2
    assert cache.walks == 4
    cache.model_state(nets[-1], set())
    assert cache.walks == 4


def test_write_back_keeps_assign_semantics(rng):
    """State updates are applied in order (the last write to a target wins) and converted to the
    target's dtype, as `assign` does."""
    t = av.tensor(np.zeros(3, np.float32))
    u = av.tensor(np.zeros(3, np.float64))

    def f(x):
        assign(t, x)
        assign(u, x * 2)
        assign(t, x + 1)
        return x.sum()

    c = av.compile(f)
    x = rng.standard_normal(3).astype(np.float32)
    c(x)
    np.testing.assert_allclose(t.numpy(), x + 1)
    np.testing.assert_allclose(u.numpy(), 2 * x, rtol=1e-6)
    assert u.dtype == av.float64


@pytest.mark.parametrize("n", [1, 3])
def test_arg_names_are_remembered_per_function(n):
    def f(a, b=0, *rest):
        return a

    args = tuple(np.ones(2, np.float32) for _ in range(n))
    names = [name for name, _ in signature(f, args)[1]]
    assert names == ["a", "b", "arg2"][:n]
    assert [name for name, _ in signature(f, args)[1]] == names

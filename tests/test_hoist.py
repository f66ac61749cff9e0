"""Constant hoisting (avalon/compiler/hoist.py): large values computed from no input are computed once
when a function compiles and fed as inputs; results are the reference's, and the entry stays cached."""
from __future__ import annotations

import numpy as np
import pytest

import avalon as av
from avalon.compiler.hoist import MIN_ELEMENTS

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def masked(x):
    n = x.shape[-1]
    mask = av.triu(av.ones(n, n), diagonal=1) * -1e4 + av.cos(av.arange(n * n).reshape(n, n) * 0.01)
    return av.softmax(x @ x.T + mask, dim=-1)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_an_input_free_value_is_hoisted_computed_once_and_the_entry_cached(backend):
    x = av.tensor(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    f = av.compile(masked, backend=backend)
    graph = f.inspect(x).graph
    hoisted = [v for v in graph.inputs if (v.name or "").startswith("hoisted_")]
    assert len(hoisted) == 1 and hoisted[0].shape == (64, 64) and 64 * 64 >= MIN_ELEMENTS
    assert not any(op.name in ("cos", "iota") for op in graph.walk())  # the cone left the graph
    for _ in range(2):
        assert np.abs(f(x).numpy() - masked(x).numpy()).max() < 1e-6
    assert f.cache_info().misses == 1
    g = av.compile(av.grad(lambda x: masked(x).sum()), backend=backend)(x)
    assert np.abs(g.numpy() - av.grad(lambda x: masked(x).sum())(x).numpy()).max() < 1e-4


def test_small_input_free_values_stay_in_the_graph():
    x = av.tensor(np.ones((8, 8), np.float32))
    graph = av.compile(masked).inspect(x).graph
    assert not any((v.name or "").startswith("hoisted_") for v in graph.inputs)

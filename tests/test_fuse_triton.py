"""After the default pipeline, the seed's LeNet (forward, and the training step: forward and
backward) compiles with ONE Triton kernel per fusion group, no group falling back to per-op
kernels, and matches the numpy interpreter (Triton's interpreter on machines without a GPU)."""
import logging

import numpy as np
import pytest

import avalon as av
from avalon import passes
from avalon.codegen.numpy import interpret
from avalon.passes.testing import random_inputs
from avalon.trace import trace_call
from avalon.zoo import LeNet, nll

compile_graph = pytest.importorskip("avalon.codegen.triton").compile_graph


@pytest.fixture(autouse=True, scope="module")
def _cache_dir(tmp_path_factory):
    """Kernel files go to a temporary cache, not ~/.cache/avalon."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AVALON_CACHE_DIR", str(tmp_path_factory.mktemp("avalon_cache")))
    yield
    mp.undo()


def lenet_graph(step: bool):
    av.random.manual_seed(0)
    model = LeNet()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    y = np.array([3, 7])
    fn, args = (av.value_and_grad(nll), (model, x, y)) if step else (model, (x,))
    g = trace_call(fn, args).graph
    passes.run_pipeline(g, passes.DEFAULT_PIPELINE)
    return g


@pytest.mark.parametrize("step", [False, True], ids=["forward", "training_step"])
def test_lenet_compiles_one_kernel_per_group_and_matches(step, caplog):
    g = lenet_graph(step)
    groups = [op.attrs["name"] for op in g.ops if op.name == "fusion"]
    assert len(groups) >= (10 if step else 4)
    with caplog.at_level(logging.INFO, logger="avalon.triton"):
        cg = compile_graph(g)
    fallbacks = [r.getMessage() for r in caplog.records if r.name == "avalon.triton" and r.levelno >= logging.INFO]
    assert fallbacks == []
    assert all(name in cg.kernels for name in groups)
    assert len(cg.kernels) == sum(1 for op in g.ops if not (op.name == "reshape"))
    args = random_inputs(g, 0)
    args = [a * 0.1 if a.dtype == np.float32 else a % 10 for a in args]  # LeNet-sized values, valid labels
    want = interpret(g, *args)
    got = cg(*args)
    for w, r in zip(want, got):
        np.testing.assert_allclose(r.cpu().numpy(), w, rtol=2e-3, atol=2e-4)

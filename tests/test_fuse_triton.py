"""After the default pipeline, the README's LeNet (forward, and the training step: forward and
backward), and the training steps of the zoo's MLP and VAE, compile with ONE Triton kernel per
fusion group, no group falling back to per-op kernels, and match the numpy interpreter (Triton's
interpreter on machines without a GPU)."""
import logging

import numpy as np
import pytest

import avalon as av
from avalon import passes, zoo
from avalon.ir import interpret
from avalon.passes.testing import random_inputs
from avalon.trace import trace_call
from avalon.zoo import MLP, VAE, LeNet, elbo


def nll(model, x, y):  # the training objectives: zoo's nll and cross_entropy are criteria (prediction, target)
    return zoo.nll(model(x), y)


def cross_entropy(model, x, y):
    return zoo.cross_entropy(model(x), y)


compile_graph = pytest.importorskip("avalon.codegen.triton").compile_graph


pytestmark = pytest.mark.usefixtures("module_kernel_cache")  # kernel files go to a temporary cache


def model_graph(case: str):
    av.random.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    y = np.array([3, 7])
    fn, args = {
        "lenet_forward": lambda: (LeNet(), (x,)),
        "lenet_training_step": lambda: (av.value_and_grad(nll), (LeNet(), x, y)),
        "mlp_training_step": lambda: (av.value_and_grad(cross_entropy), (MLP(), x.reshape(2, -1)[:, :64], y)),
        "vae_training_step": lambda: (av.value_and_grad(elbo), (VAE(64, 32, 8), rng.random((2, 64), np.float32))),
    }[case]()
    g = trace_call(fn, args).graph
    passes.run_pipeline(g, passes.DEFAULT_PIPELINE)
    return g


@pytest.mark.parametrize("case", ["lenet_forward", "lenet_training_step", "mlp_training_step", "vae_training_step"])
def test_compiles_one_kernel_per_group_and_matches(case, caplog):
    g = model_graph(case)
    groups = [op.attrs["name"] for op in g.ops if op.name == "fusion"]
    assert len(groups) >= 4
    with caplog.at_level(logging.INFO, logger="avalon.triton"):
        cg = compile_graph(g)
    fallbacks = [r.getMessage() for r in caplog.records if r.name == "avalon.triton" and r.levelno >= logging.INFO]
    assert fallbacks == []
    assert all(name in cg.kernels for name in groups)
    assert len(cg.kernels) == sum(1 for op in g.ops if not (op.name == "reshape"))
    args = random_inputs(g, 0)
    args = [a * 0.1 if a.dtype == np.float32 else a for a in args]  # layer-sized values; labels are 0..3
    if case == "vae_training_step":  # the data is BCE's target, which binary_cross_entropy checks is in [0, 1]
        args = [np.abs(a) for a in args]
    want = interpret(g, *args)
    got = cg(*args)
    for w, r in zip(want, got):
        np.testing.assert_allclose(r.cpu().numpy(), w, rtol=2e-3, atol=2e-4)

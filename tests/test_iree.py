"""`backend="iree"`: the linalg lowering compiled by IREE (llvm-cpu) agrees with the reference.

IREE compiles take seconds, so this file compiles few modules: one holding a function per
non-elementwise op plus one fused group of every elementwise op (module-scoped), and the zoo's
LeNet training step and VAE value_and_grad through `av.compile`.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from mlir_samples import SPECIAL, merged_elementwise, sample

import avalon as av
from avalon import optim, zoo
from avalon.ir import interpret
from avalon.mlir import lower_function
from avalon.passes.testing import random_inputs

pytest.importorskip("iree.runtime", reason="needs the mlir extra: pip install -e '.[mlir]'")
pytest.importorskip("iree.compiler", reason="needs the mlir extra: pip install -e '.[mlir]'")

from avalon.codegen.iree import IREE, IreeBackend, compile_module  # noqa: E402

GRAPHS = [merged_elementwise()] + [sample(n) for n in SPECIAL]


def _inputs(g):
    ins = random_inputs(g, 0)
    if g.name == "t_take":
        ins[1] = np.array([[0, 4, 2, 1], [3, 3, 0, 4]], np.int64)
    if g.name == "t_one_hot":
        ins[0] = np.array([0, 4, 2, 3], np.int64)
    if g.name == "t_random":
        ins[0] = np.array(-12345678901, np.int64)  # both 32-bit halves of the seed matter
    return ins


@pytest.fixture(scope="module")
def module():
    import iree.runtime as rt
    src = "module {\n" + "\n".join(lower_function(g) for g in GRAPHS) + "\n}\n"
    ctx = rt.SystemContext(config=rt.Config("local-task"))
    ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, compile_module(src)))
    return ctx.modules.module


def _call(module, g, ins):
    out = module[g.name](*ins)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [np.asarray(o.to_host()) for o in out]


@pytest.mark.parametrize("g", GRAPHS, ids=[g.name for g in GRAPHS])
def test_every_op_on_iree_matches_the_reference(module, g):
    ins = _inputs(g)
    want = interpret(g, *ins)
    got = _call(module, g, ins)
    assert len(got) == len(want)
    for i, (o, w) in enumerate(zip(got, want)):
        assert o.dtype == w.dtype and o.shape == w.shape, (i, o.dtype, o.shape, w.dtype, w.shape)
        if w.dtype.kind == "f":
            tol = 2e-3 if w.dtype == np.float16 else 2e-5
            np.testing.assert_allclose(o, w, rtol=tol, atol=tol, equal_nan=True, err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(o, w, err_msg=f"output {i}")


def test_uniform_random_numbers_are_bit_exact(module):
    g = sample("random")
    ins = _inputs(g)
    uniform, normal, half = _call(module, g, ins)
    want = interpret(g, *ins)
    assert np.array_equal(uniform, want[0]) and np.array_equal(half, want[2])
    assert not np.array_equal(uniform, interpret(g, np.array(7, np.int64))[0])  # the seed matters
    np.testing.assert_allclose(normal, want[1], rtol=1e-6, atol=1e-6)  # f64 log/cos/sqrt: last-bit rounding


def _twins(make):
    a, b = make(), make()
    av.nn.load_state_dict(b, {k: v.numpy().copy() for k, v in av.nn.named_parameters(a)})
    return a, b


def _close_params(a, b, tol):
    pa, pb = dict(av.nn.named_parameters(a)), dict(av.nn.named_parameters(b))
    for k in pa:
        np.testing.assert_allclose(pa[k].numpy(), pb[k].numpy(), rtol=tol, atol=tol, err_msg=k)


def test_lenet_training_steps_match_the_numpy_backend(rng):
    def step(model, opt, x, y):
        loss, grads = av.value_and_grad(lambda m, x, y: zoo.nll(m(x), y))(model, x, y)  # nll is a criterion
        opt.step(grads)
        return loss
    m_iree, m_np = _twins(zoo.LeNet)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    run_iree, run_np = av.compile(step, backend="iree"), av.compile(step, backend="numpy")
    o_iree, o_np = optim.SGD(m_iree, lr=0.1, momentum=0.9), optim.SGD(m_np, lr=0.1, momentum=0.9)
    for _ in range(2):
        np.testing.assert_allclose(run_iree(m_iree, o_iree, x, y).numpy(), run_np(m_np, o_np, x, y).numpy(),
                                   rtol=1e-5, atol=1e-5)
    _close_params(m_iree, m_np, 1e-5)
    insp = run_iree.inspect(m_iree, o_iree, x, y)
    assert insp.backend == "iree" and "linalg.conv_2d_nchw_fchw" in next(iter(insp.kernels.values()))


def test_vae_value_and_grad_with_random_noise_matches_the_numpy_backend(rng):
    m_iree, m_np = _twins(lambda: zoo.VAE(features=64, hidden=32, latent=8))
    x = rng.random((16, 64)).astype(np.float32)
    f_iree = av.compile(av.value_and_grad(zoo.elbo), backend="iree")
    f_np = av.compile(av.value_and_grad(zoo.elbo), backend="numpy")
    av.random.manual_seed(3)
    v_iree, g_iree = f_iree(m_iree, x)
    av.random.manual_seed(3)
    v_np, g_np = f_np(m_np, x)  # the same seed: the same reparameterization noise
    np.testing.assert_allclose(v_iree.numpy(), v_np.numpy(), rtol=1e-4)
    for k in g_np:
        np.testing.assert_allclose(g_iree[k].numpy(), g_np[k].numpy(), rtol=1e-3, atol=1e-4, err_msg=k)


def test_the_target_asks_for_pointwise_groups_and_no_memory_plan():
    assert IREE.kinds == ("pointwise",) and not IREE.memory_plan
    assert IreeBackend().target is IREE and av.compile(lambda x: x, backend="iree").backend.name == "iree"


def test_without_iree_the_error_says_how_to_install_it():
    code = ("import sys; sys.modules['iree'] = None\n"
            "import numpy as np, avalon as av\n"
            "av.compile(lambda x: x + 1, backend='iree')(np.ones(2, np.float32))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "pip install iree-base-compiler iree-base-runtime" in last, last

"""`backend="iree"`: the linalg lowering compiled by IREE (llvm-cpu) agrees with the reference.

IREE compiles take seconds, so this file compiles few modules: one holding a function per
non-elementwise op plus one fused group of every elementwise op (module-scoped), and the zoo's
LeNet training step and VAE value_and_grad through `av.compile`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from mlir_samples import SPECIAL, merged_elementwise, sample

import avalon as av
from avalon import optim, zoo
from avalon.ir import OPS, interpret
from avalon.mlir import lower_function
from avalon.passes.testing import random_inputs

pytest.importorskip("iree.runtime", reason="needs the mlir extra: pip install -e '.[mlir]'")
pytest.importorskip("iree.compiler", reason="needs the mlir extra: pip install -e '.[mlir]'")

from avalon.codegen.iree import IREE, IreeBackend, compile_module  # noqa: E402

# (custom_vjp is inlined before lowering; factorizations have no lowering: test_mlir.py checks they are refused)
GRAPHS = [merged_elementwise()] + [sample(n) for n in SPECIAL if n != "custom_vjp" and "factorization" not in OPS[n].traits]


def _inputs(g):
    ins = random_inputs(g, 0)
    if g.name == "t_take":
        ins[1] = np.array([[0, 4, 2, 1], [3, 3, 0, 4]], np.int64)
    if g.name == "t_one_hot":
        ins[0] = np.array([0, 4, 2, 3], np.int64)
    if g.name == "t_random":
        ins[0] = np.array(-12345678901, np.int64)  # both 32-bit halves of the seed matter
    return ins


def _load(graphs):
    """One IREE module with a function per graph (named after it): one compile for many checks."""
    import iree.runtime as rt
    src = "module {\n" + "\n".join(lower_function(g) for g in graphs) + "\n}\n"
    ctx = rt.SystemContext(config=rt.Config("local-task"))
    ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, compile_module(src)))
    return ctx.modules.module


@pytest.fixture(scope="module")
def module():
    return _load(GRAPHS)


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


def _binary(op: str, dtype: str, n: int):
    return av.ir.parse(f"func @t_{op}_{dtype}(%a: tensor<{n}x{dtype}>, %b: tensor<{n}x{dtype}>) -> "
                       f"(tensor<{n}x{dtype}>) {{\n  %0 = {op} %a, %b : tensor<{n}x{dtype}>\n  return %0\n}}")


SPECIALS = [-np.inf, -3.0, -2.0, -1.5, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, np.inf, np.nan]
N_POW = len(SPECIALS) ** 2 + 64


@pytest.fixture(scope="module")
def arith_module():
    return _load([_binary("pow", "f32", N_POW), _binary("pow", "f64", N_POW)])


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_float_pow_is_c_pow_for_negative_and_zero_bases(arith_module, rng, dtype):
    """IREE expands math.powf as exp(y * log x): nan for every x < 0 and for 0 ** 0."""
    d = np.float32 if dtype == "f32" else np.float64
    x, y = (np.array(v, d) for v in zip(*[(a, b) for a in SPECIALS for b in SPECIALS]))
    rx = (rng.standard_normal(64) * 3).astype(d)
    ry = np.round(rng.standard_normal(64) * 4).astype(d) + np.where(np.arange(64) % 3 == 0, 0.5, 0).astype(d)
    x, y = np.concatenate([x, rx]), np.concatenate([y, ry])
    g = _binary("pow", dtype, N_POW)
    got, want = _call(arith_module, g, [x, y])[0], interpret(g, x, y)[0]
    tol = 1e-5 if dtype == "f32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=0, equal_nan=True)
    num = ~np.isnan(want)
    assert np.array_equal(np.signbit(got[num]), np.signbit(want[num]))  # -0 and -inf keep their sign


_DIV = """
import numpy as np
from avalon.codegen.iree import IreeBackend
from avalon.ir import interpret, parse
rng = np.random.default_rng(0)
for d, t in ((np.int32, "i32"), (np.int64, "i64")):
    g = parse(f"func @f(%a: tensor<16x{t}>, %b: tensor<16x{t}>) -> (tensor<16x{t}>) {{\\n"
              f"  %0 = div %a, %b : tensor<16x{t}>\\n  return %0\\n}}")
    lo = np.iinfo(d).min
    x = np.concatenate([np.array([lo, lo, lo, 7, -7, 5, -1, 0], d), rng.integers(-100, 100, 8).astype(d)])
    y = np.concatenate([np.array([-1, 1, 0, 0, 2, -2, lo, -1], d), rng.integers(-5, 5, 8).astype(d)])
    np.testing.assert_array_equal(IreeBackend().compile(g)(x, y)[0], interpret(g, x, y)[0])
print("ok")
"""


def test_integer_division_of_min_by_minus_one_wraps_instead_of_trapping():
    """x86 idiv traps on MIN / -1 as on a zero divisor (SIGFPE kills the process, so this runs in a
    child); the reference gives MIN, the wrapped quotient, for i32 and i64."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _DIV], capture_output=True, text=True, cwd=root, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([root, *sys.path])})
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


# (a shape, b shape, axes): a broadcasting mul summed over several axes, which IREE takes for a
# contraction and failed to compile ("'vector.contract' op invalid accumulator/result vector shape")
BCAST_SUMS = [((3, 4), (4,), None), ((3, 1, 4), (1, 5, 4), None), ((3, 1, 4), (1, 5, 4), (1, 2)),
              ((2, 3, 4), (4,), (0, 2)), ((2, 3, 4, 5), (3, 1, 5), (1, 2, 3)), ((2, 1, 4), (3, 4), (1, 2))]


def _bcast_sum(k, sa, sb, axes, dtype=np.float32):
    a, b = np.zeros(sa, dtype), np.zeros(sb, dtype)
    g = av.trace(lambda a, b: (a * b).sum() if axes is None else (a * b).sum(axis=axes), a, b)
    g.name = f"t_bcast_sum_{k}"
    return g


@pytest.fixture(scope="module")
def bcast_sums():
    graphs = [_bcast_sum(k, *c) for k, c in enumerate(BCAST_SUMS)]
    graphs.append(_bcast_sum(len(graphs), (3, 4), (4,), None, np.int32))
    return _load(graphs), graphs


def test_broadcast_mul_summed_over_several_axes_compiles_and_matches(bcast_sums, rng):
    module, graphs = bcast_sums
    for g in graphs:
        ins = [(rng.standard_normal(v.shape) * 4).astype(v.dtype.np) for v in g.inputs]
        (got,), (want,) = _call(module, g, ins), interpret(g, *ins)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=g.name)


def test_av_compile_of_a_broadcast_mul_sum(rng):
    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    fn = lambda a, b: (a * b).sum()  # noqa: E731
    np.testing.assert_allclose(av.compile(fn, backend="iree")(a, b).numpy(),
                               av.compile(fn, backend="numpy")(a, b).numpy(), rtol=1e-5)


def test_a_failed_compile_says_which_op_and_what_in_its_first_line():
    from avalon.codegen.iree import IreeCompileError
    src = textwrap.dedent("""\
        module {
          func.func @f(%arg0: tensor<4xf32>) -> (tensor<4xf32>) {
            %1 = tensor.empty() : tensor<4xf32>
            %2 = linalg.generic {indexing_maps = [affine_map<(d0) -> (d0)>, affine_map<(d0) -> (d0)>], iterator_types = ["parallel"]} ins(%arg0 : tensor<4xf32>) outs(%1 : tensor<4xf32>) {
            ^bb0(%3: f32, %4: f32):
              %5 = math.exp %3 : f64
              linalg.yield %5 : f32
            } -> tensor<4xf32>
            func.return %2 : tensor<4xf32>
          }
        }
        """)
    with pytest.raises(IreeCompileError) as info:
        compile_module(src)
    first = str(info.value).splitlines()[0]
    assert first.startswith("iree-compile failed on linalg.generic (line 4; math.exp at line 6): error: "), first
    assert len(first) < 300 and "cpu_features" not in str(info.value)
    assert "error:" in info.value.diagnostics and info.value.source == src
    from avalon.codegen.iree.backend import compile_error  # a linker's error before the located one
    linker = compile_error("iree-lld: error: undefined symbol: cos\n<stdin>:2:10: error: failed to link\n",
                           "module {\n    %2 = linalg.generic {} ins() outs() {\n}\n")
    assert str(linker).splitlines()[0] == ("iree-compile failed on linalg.generic (line 2): error: failed to link "
                                           "[iree-lld: error: undefined symbol: cos]")


def test_f64_layer_norm_compiles_and_matches(rng):
    """Its eps is the f64 literal 1e-05, which MLIR read as `1` then an unknown op `e` (fuzzer)."""
    import avalon.nn.functional as AF
    x, w, b = rng.standard_normal((2, 5)), rng.standard_normal(5), rng.standard_normal(5)
    f = lambda x, w, b: AF.layer_norm(x, (5,), w, b, eps=1e-05)  # noqa: E731
    got = av.compile(f, backend="iree")(x, w, b).numpy()
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(var + 1e-05) * w + b, rtol=1e-12, atol=1e-12)


def test_a_transposed_result_of_a_multi_result_group_compiles(rng):
    """IREE's transpose propagation breaks a two-result linalg.generic whose first result is then
    transposed ("expected number of yield values (2) to match ... (1)"); the backend compiles such a
    module again without that optimization (fuzzer)."""
    x = rng.standard_normal((3, 4)).astype(np.float32)
    got_t, got_e = av.compile(lambda x: ((x * 2).transpose(0, 1), (x * 2).exp()), backend="iree")(x)
    np.testing.assert_allclose(got_t.numpy(), (x * 2).T, rtol=1e-6)
    np.testing.assert_allclose(got_e.numpy(), np.exp(x * 2), rtol=1e-5)


def test_an_out_of_range_index_raises_where_the_kernels_clamp():
    """IREE's gathers clamp (an out-of-bounds tensor.extract is undefined), so the module also returns
    each index's range and the backend raises the reference's error, naming the op's line: a row
    past the end, or x[0, 4] of a 3x4 tensor (folded into one flat offset), read a wrong row in silence."""
    from avalon.ir.reference import IndexOutOfRangeError
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    forms = {"gather": lambda x, i: av.gather(x, 1, i.reshape(2, 1)),
             "row": lambda x, i: x.index_select(0, i),
             "scatter": lambda x, i: x.index_copy(1, i, av.ones(3, 2))}
    for name, fn in forms.items():
        f = av.compile(fn, backend="iree")
        good = np.array([2, 0])
        np.testing.assert_array_equal(np.asarray(f(x, good).numpy()),
                                      np.asarray(fn(av.tensor(x), av.tensor(good)).numpy()), err_msg=name)
        bad = 3 if name == "row" else 4
        with pytest.raises(IndexOutOfRangeError, match=rf"test_iree.py:\d+: index {bad} is out of range \[0, {bad}\)"):
            f(x, np.array([bad, 0]))
        with pytest.raises(IndexOutOfRangeError, match="index -5 is out of range"):
            f(x, np.array([0, -5]))
    exported = lower_function(av.trace(forms["gather"], av.tensor(x), av.tensor(good)))
    assert "-> (tensor<2x1xf32>)" in exported  # exported MLIR returns no index ranges


def test_f64_cumprod_compiles_through_the_workaround_table():
    """IREE 3.13's stream partitioning refused f64 cumprod's log-step scan; WORKAROUNDS fuses the pads."""
    x = np.random.default_rng(0).uniform(0.5, 1.5, (9, 3))
    got = av.compile(lambda x: av.cumprod(x, 0), backend="iree")(x).numpy()
    np.testing.assert_allclose(got, np.cumprod(x, 0), rtol=1e-13)

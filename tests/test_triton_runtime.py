"""compile_graph and CompiledGraph: every op lowers (LOWERING covers the registry), un-fused graphs run
one kernel per op, buffers are reused, views cost nothing, inputs arrive as numpy or torch in any
layout, results never alias inputs, and the on-disk kernel cache hits, misses and rebuilds."""
import logging
import os

import numpy as np
import pytest
import torch
from helpers import graph

import avalon.ir as ir
from avalon.codegen.triton import LOWERING, KernelCache, compile_graph
from avalon.codegen.triton.testing import check, random_inputs
from avalon.ir import interpret, to_numpy


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Each test gets its own kernel cache directory."""
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path / "cache"))


def test_every_registered_op_has_a_lowering():
    from avalon.ir.registry import TABLES
    missing = sorted(n for n in ir.OPS if n not in LOWERING and TABLES["lowering"].needs(n))
    assert not missing, f"LOWERING has no rule for: {', '.join(missing)}"
    assert not sorted(n for n in LOWERING if n not in ir.OPS)
    assert all(rule.describe() for rule in LOWERING.values())
    assert "tl.exp" in LOWERING["exp"].describe()


def lenet_like():
    g, b, (x, w1, b1, w2, b2) = graph(((2, 1, 12, 12), "f32"), ((4, 1, 3, 3), "f32"), ((4,), "f32"),
                                      ((5, 36), "f32"), ((5,), "f32"))
    y = b("conv2d", x, w1)  # 2, 4, 10, 10
    y = b("relu", b("add", y, b("broadcast", b("reshape", b1, shape=[4, 1, 1]), shape=[2, 4, 10, 10])))
    y = b("max_pool2d", y, kernel=[3, 3], stride=[3, 3])  # 2, 4, 3, 3
    y = b("reshape", y, shape=[2, 36])
    y = b("matmul", y, b("transpose", w2, perm=[1, 0]))
    y = b("add", y, b("broadcast", b2, shape=[2, 5]))
    m = b("max", y, axes=[1], keepdims=True)
    z = b("sub", y, b("broadcast", m, shape=[2, 5]))
    s = b("log", b("sum", b("exp", z), axes=[1], keepdims=True))
    g.set_outputs([b("sub", z, b("broadcast", s, shape=[2, 5]))])
    return g


def test_unfused_graph_runs_one_kernel_per_op_named_after_it():
    g = lenet_like()
    cg = check(g, fused=None, kind="contraction")
    names = list(cg.kernels)
    assert names[0] == "conv2d_0" and any(n.startswith("max_pool2d_") for n in names)
    assert not any(n.startswith("reshape") for n in names)  # row-major reshapes are views
    assert all(n in cg.kernels[n] for n in names)


def test_intermediate_buffers_are_reused():
    g, b, (x,) = graph(((64,), "f32"))
    v = x
    for name in ["exp", "neg", "tanh", "abs", "sigmoid", "sqrt", "relu"]:
        v = b(name, v)
    g.set_outputs([v])
    cg = check(g, fused=None)
    assert len(cg.launches) == 7
    # the memory plan (computed at compile time) runs the chain in place in one arena buffer;
    # the output, handed to the caller, has a buffer of its own
    assert cg.storage.arenas == [64 * 4] and len(cg.storage.buffers) == 1


def test_results_never_share_memory_with_inputs_or_each_other(rng):
    g, b, (x,) = graph(((3, 4), "f32"))
    y = b("exp", x)
    g.set_outputs([x, y, y, b("reshape", y, shape=[12])])
    x0 = rng.standard_normal((3, 4)).astype(np.float32)
    xt = torch.from_numpy(x0)
    outs = compile_graph(g)(xt)
    ptrs = [o.data_ptr() for o in outs]
    assert xt.data_ptr() not in ptrs and len(set(ptrs[1:3])) == 2
    for o, r in zip(outs, interpret(g, x0)):
        np.testing.assert_allclose(to_numpy(o), r, rtol=1e-6)


def test_torch_inputs_in_any_layout_and_python_scalars(rng):
    g, b, (x, s) = graph(((4, 5), "f32"), ((), "f32"))
    g.set_outputs([b("mul", x, b("broadcast", s, shape=[4, 5]))])
    cg = compile_graph(g)
    base = torch.from_numpy(rng.standard_normal((5, 4)).astype(np.float32))
    xt = base.t()  # not contiguous: goes through a copy kernel
    out = cg(xt, 3.0)[0]
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(to_numpy(out), base.numpy().T * 3.0, rtol=1e-6)
    out2 = cg(xt.contiguous(), np.float32(3.0))[0]
    np.testing.assert_allclose(to_numpy(out2), to_numpy(out))
    with pytest.raises(TypeError, match="input 0"):
        cg(xt.double(), 3.0)
    with pytest.raises(TypeError, match="takes 2 input"):
        cg(xt)


def test_bf16_inputs_from_numpy_and_torch(rng):
    g, b, (x,) = graph(((6,), "bf16"))
    g.set_outputs([b("mul", x, x)])
    x0 = rng.standard_normal(6).astype(np.float32)
    ref = interpret(g, x0)[0]
    cg = compile_graph(g)
    np.testing.assert_array_equal(to_numpy(cg(x0)[0]), ref)
    np.testing.assert_array_equal(to_numpy(cg(torch.from_numpy(x0).to(torch.bfloat16))[0]), ref)


def test_channels_last_layouts_and_transpose_views():
    """Layouts change strides, never values; a transpose whose layout makes it a view costs no kernel."""
    g, b, (x, w, m) = graph(((2, 3, 6, 6), "f32"), ((4, 3, 3, 3), "f32"), ((5, 4), "f32"))
    y = b("conv2d", x, w)
    y.type = y.type.with_layout([0, 2, 3, 1])
    r = b("relu", y)
    r.type = r.type.with_layout([0, 2, 3, 1])
    mt = b("transpose", m, perm=[1, 0])
    mt.type = mt.type.with_layout([1, 0])  # the bytes of m
    pooled = b("sum", r, axes=[2, 3])  # 2, 4
    g.set_outputs([b("max_pool2d", r, kernel=[2, 2], stride=[2, 2]), b("matmul", pooled, mt)])
    cg = check(g, fused=None, kind="contraction")
    assert not any(n.startswith("transpose") for n in cg.kernels)


def test_dense_constants_empty_tensors_and_unused_results():
    g, b, (x, e) = graph(((2, 3), "f32"), ((0, 3), "f32"))
    c = b.constant(np.arange(6, dtype=np.float32).reshape(2, 3) - 2, (2, 3))
    b("exp", x)  # computed, never used
    g.set_outputs([b("add", x, c), b("neg", e), b("sum", e, axes=[0])])
    check(g, fused=None)


def test_a_zero_size_inner_dim_launches_nothing_and_reductions_over_it_fill():
    """A zero-size dim after the first (a diagonal with an offset past its end, the fuzzer's case)
    made the pointwise emitter's index arithmetic divide by zero at compile time; an op whose
    results are all empty now launches no kernel, and a sum over an empty axis still writes zeros."""
    import avalon as av
    x, y = np.zeros((4, 0), np.float32), np.zeros((0, 2), np.float32)
    f = av.compile(lambda x, y: (av.exp(x) * 2, x.sum(-1) + 1, x @ y + 1, av.sigmoid(x.T)), backend="triton")
    e, s, m, t = f(x, y)
    assert e.shape == (4, 0) and t.shape == (0, 4)
    np.testing.assert_array_equal(s.numpy(), np.ones(4, np.float32))
    np.testing.assert_array_equal(m.numpy(), np.ones((4, 2), np.float32))
    d = np.random.default_rng(0).standard_normal((1, 5, 4)).astype(np.float32)
    got = av.compile(lambda d: av.sigmoid(d.diagonal(1, 1, 0)), backend="triton")(d)
    assert got.shape == (4, 0)
    g = av.compile(av.grad(lambda x: (av.exp(x) * 2).sum() + x.sum()), backend="triton")(x)
    assert g.shape == (4, 0)
    # an empty value reshaped inside a group whose result is not empty (a pad of it: a gradient's)
    p = av.compile(lambda d: av.nn.functional.pad(d[:, :, :0].reshape(5, 0, 1) * 2, (0, 0, 1, 1), value=3.0),
                   backend="triton")(d)
    np.testing.assert_array_equal(p.numpy(), np.full((5, 2, 1), 3.0, np.float32))


def test_memory_plan_pass_buffers_are_used_when_present():
    mp = pytest.importorskip("avalon.passes.memory_plan")
    g, b, (x,) = graph(((16,), "f32"))
    v = x
    for name in ["exp", "neg", "tanh", "abs", "relu"]:
        v = b(name, v)
    g.set_outputs([b("add", v, x)])
    mp.plan_memory(g)
    cg = check(g, fused=None)
    assert cg.storage.arenas and any(s.kind == "arena" for s in cg.storage.where.values())


def test_cache_misses_then_hits_and_logs_keys(caplog, tmp_path):
    g = lenet_like()
    cache = KernelCache(tmp_path / "kc")
    with caplog.at_level(logging.DEBUG, logger="avalon.cache"):
        cg = compile_graph(g, cache=cache)
    # kernels equal but for their name load (and compile) the first one's file: one file per function
    distinct = len({id(ln.kernel.fn) for ln in cg.launches})
    assert distinct < len(cg.kernels)  # this graph has such twins
    assert cache.misses == distinct and cache.hits == 0
    files = sorted((tmp_path / "kc").rglob("*.py"))
    assert len(files) == distinct
    assert all(f.read_text() in cg.kernels.values() for f in files)
    assert all(f.stem in caplog.text for f in files)  # keys are logged
    assert not list((tmp_path / "kc").rglob("*.tmp"))  # atomic writes leave nothing behind
    KernelCache._loaded.clear()  # as if in a new process
    again = KernelCache(tmp_path / "kc")
    compile_graph(g, cache=again)
    assert again.hits == distinct and again.misses == 0


def test_corrupted_and_unreadable_entries_are_rebuilt(tmp_path, rng):
    g, b, (x,) = graph(((5,), "f32"))
    g.set_outputs([b("exp", x)])
    cache = KernelCache(tmp_path / "kc")
    compile_graph(g, cache=cache)
    (path,) = (tmp_path / "kc").rglob("*.py")
    good = path.read_text()
    for bad in (good[: len(good) // 2], "this is not python(", b"\xff\xfe".decode("latin-1")):
        path.write_text(bad)
        KernelCache._loaded.clear()
        fresh = KernelCache(tmp_path / "kc")
        cg = compile_graph(g, cache=fresh)
        assert fresh.misses == 1 and path.read_text() == good
        x0 = rng.standard_normal(5).astype(np.float32)
        np.testing.assert_allclose(to_numpy(cg(x0)[0]), np.exp(x0), rtol=1e-6)


def test_cache_key_covers_versions_and_device(monkeypatch):
    import avalon.codegen.triton.cache as c
    import avalon.version
    cache = KernelCache()
    assert str(cache.root).startswith(os.environ["AVALON_CACHE_DIR"])
    k = cache.key("src")
    assert cache.key("src") == k and cache.key("src2") != k
    with monkeypatch.context() as m:
        m.setattr(avalon.version, "__version__", "9.9")
        assert cache.key("src") != k
    with monkeypatch.context() as m:
        m.setattr(c, "device_kind", lambda: "some-other-device")
        assert cache.key("src") != k
    assert cache.key("src") == k


def test_random_inputs_cover_every_dtype(rng):
    g, _, _ = graph(((2,), "f16"), ((2,), "i32"), ((2,), "i1"))
    assert [a.dtype for a in random_inputs(g, rng)] == [np.float16, np.int32, np.bool_]


def test_concurrent_processes_share_one_cache_without_corrupting_it(tmp_path):
    """Four processes compile the same kernels into one empty cache at once; all must produce the
    right numbers, and the cache must hold only complete entries a fifth process can reuse."""
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(
        "import numpy as np\n"
        "from avalon import ir\n"
        "from avalon.codegen.triton import compile_graph\n"
        "g = ir.parse('''func @f(%x: tensor<64xf32>) -> (tensor<64xf32>) {\n"
        "  %0 = exp %x : tensor<64xf32>\n"
        "  %1 = add %0, %x : tensor<64xf32>\n"
        "  return %1\n"
        "}\n''')\n"
        "x = np.linspace(-1, 1, 64, dtype=np.float32)\n"
        "out = compile_graph(g)(x)[0].numpy()\n"
        "assert np.allclose(out, np.exp(x) + x, rtol=1e-6), out\n"
        "print('ok')\n")
    env = dict(os.environ, AVALON_CACHE_DIR=str(tmp_path / "cache"), TRITON_INTERPRET="1",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    leftovers = [p for p in (tmp_path / "cache").rglob("*.tmp")]
    assert not leftovers
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "ok" in again.stdout, again.stderr


def test_a_group_no_emitter_takes_is_a_counted_warning_and_a_crash_an_error(caplog, monkeypatch):
    from avalon.codegen.triton import target as tt
    from avalon.codegen.triton.testing import fuse
    g, b, (x,) = graph(((4, 6), "f32"))
    g.set_outputs([b("sum", x, axes=[1]), b("exp", x)])  # also reduced over axis 0 below: no one kernel
    g.set_outputs([*g.outputs, b("sum", x, axes=[0])])
    with caplog.at_level(logging.WARNING, logger="avalon.triton"):
        cg = check(g)
    assert [f.split(":")[0] for f in cg.fallbacks] == ["@fused_0"] and "fused_0" in caplog.text
    g2, b2, (y,) = graph(((8,), "f32"))
    g2.set_outputs([b2("exp", y)])

    def boom(*a, **k):
        raise ZeroDivisionError("emitter bug")
    monkeypatch.setitem(tt.EMITTERS, "pointwise", boom)
    with pytest.raises(ZeroDivisionError) as e:
        compile_graph(fuse(g2))
    assert "fused_0" in "".join(getattr(e.value, "__notes__", []))


def test_a_misaligned_input_is_copied_not_read_in_place(rng):
    """Kernels are specialized on 16-byte-aligned bases (vector loads; the TMA form requires it): a
    view one element into its storage is copied to aligned storage first, with the same values."""
    g, b, (x,) = graph(((4, 8), "f32"))
    g.set_outputs([b("mul", x, x)])
    cg = compile_graph(g)
    base = torch.from_numpy(rng.standard_normal(33).astype(np.float32))
    view = base[1:].view(4, 8)  # contiguous, row-major, 4 bytes past an aligned base
    assert view.data_ptr() % 16 != 0
    np.testing.assert_allclose(to_numpy(cg(view)[0]), view.numpy() ** 2, rtol=1e-6)
    aligned = base[1:].clone().view(4, 8)
    assert cg._adapt(0, g.inputs[0].type, aligned, aligned.device) is aligned  # as it is
    assert cg._adapt(0, g.inputs[0].type, view, view.device) is not view


def test_kernels_equal_but_for_their_name_share_one_compiled_function(rng):
    """Two layers of the same shape lower to the same kernel under two names: both launch one
    @jit function (Triton compiles it once), each keeping its own name and source."""
    g, b, (x, w1, w2) = graph(((8, 16), "f32"), ((16, 16), "f32"), ((16, 16), "f32"))
    h = b("relu", b("matmul", x, w1))
    g.set_outputs([b("relu", b("matmul", h, w2))])
    from avalon.codegen.triton.target import TRITON
    from avalon.passes import DEFAULT_PIPELINE, PassManager
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    cg = compile_graph(g)
    k1, k2 = [ln.kernel for ln in cg.launches if ln.kernel.kind == "contraction"]
    assert k1.name != k2.name and k1.source != k2.source and k1.fn is k2.fn
    xs = [rng.standard_normal(v.shape).astype(np.float32) for v in g.inputs]
    np.testing.assert_allclose(to_numpy(cg(*xs)[0]), interpret(g, *xs)[0], rtol=1e-5, atol=1e-5)

"""The `index_add` primitive (a scatter-add: zeros (size, *rest) plus each value row added at its
index) end to end: declaration and shape errors, the reference against torch.index_add with
duplicate indices, out-of-range indices raising on every backend, `take`'s gradient (an embedding's)
emitted as one `index_add` (no one-hot, no matmul) and matching torch on the numpy, cpu and Triton
(interpreter) backends, the Triton kernels' compile to PTX for sm_90, the MLIR/IREE one-hot form and
the ONNX export (ScatterND, reduction add) in onnxruntime."""
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import avalon as av
from avalon.codegen.numpy import GeneratedExecutable
from avalon.codegen.triton import compile_graph
from avalon.ir import Builder, Graph, ShapeError, TensorType, interpret
from avalon.ir.reference import IndexOutOfRangeError

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

FLOATS = ["f32", "f64", "f16", "bf16"]
TOL = {"f32": 1e-5, "f64": 1e-12, "f16": 2e-3, "bf16": 1.6e-2}


def one_op(vshape, size: int, dtype: str = "f32", idtype: str = "i64", name: str = "index_add") -> Graph:
    g = Graph("f")
    b = Builder(g)
    v = g.add_input(TensorType(tuple(vshape), dtype), "v")
    i = g.add_input(TensorType((vshape[0],), idtype), "i")
    g.set_outputs([b(name, v, i, size=size)])
    return g


def values(rng, shape, dtype: str) -> np.ndarray:
    """Random normals as the dtype's numpy storage (bf16 is stored as f32 holding bf16 values)."""
    x = rng.standard_normal(shape)
    if dtype == "bf16":
        return torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    return x.astype({"f32": np.float32, "f64": np.float64, "f16": np.float16}[dtype])


def torch_index_add(v: np.ndarray, idx: np.ndarray, size: int) -> np.ndarray:
    """torch.index_add on zeros, in float64."""
    t = torch.from_numpy(v.astype(np.float64))
    return torch.zeros((size,) + v.shape[1:], dtype=torch.float64).index_add(0, torch.from_numpy(idx).long(), t).numpy()


def close(got, want: np.ndarray, dtype: str) -> None:
    got = np.asarray(got.float() if isinstance(got, torch.Tensor) and got.dtype == torch.bfloat16 else got)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got.astype(np.float64) - want) / (1 + np.abs(want))
    assert err.max() <= TOL[dtype], (dtype, float(err.max()))


CASES = [((40, 3, 5), 7), ((9,), 4), ((33, 20), 50), ((0, 3), 5)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("vshape,size", CASES)
def test_reference_matches_torch_index_add_with_duplicates(rng, vshape, size, dtype):
    v, idx = values(rng, vshape, dtype), rng.integers(0, size, vshape[0])
    if vshape[0] > size:
        assert len(np.unique(idx)) < len(idx)  # duplicates: their rows must add up
    got = interpret(one_op(vshape, size, dtype), v, idx)[0]
    close(got, torch_index_add(v, idx, size), dtype)


def test_declaration_rejects_bad_operands_by_name():
    g = Graph("f")
    b = Builder(g)
    v = g.add_input(TensorType((4, 3), "f32"))
    with pytest.raises(ShapeError, match="index_add: indices must be a 1-d i32 or i64"):
        b("index_add", v, g.add_input(TensorType((4,), "f32")), size=5)
    with pytest.raises(ShapeError, match=r"index_add: values \(4, 3\) need one row per index \(5 indices\)"):
        b("index_add", v, g.add_input(TensorType((5,), "i64")), size=5)
    with pytest.raises(ShapeError, match="index_add: values must be floating point"):
        b("index_add", g.add_input(TensorType((4,), "i32")), g.add_input(TensorType((4,), "i64")), size=5)


@pytest.mark.parametrize("backend", ["reference", "numpy", "triton"])
def test_an_index_out_of_range_raises_naming_the_op(backend):
    g = one_op((3, 2), 4)
    v, idx = np.ones((3, 2), np.float32), np.array([1, 4, 0])
    with pytest.raises(IndexOutOfRangeError, match=r"index_add: index 4 is out of range"):
        if backend == "reference":
            interpret(g, v, idx)
        elif backend == "numpy":
            GeneratedExecutable(g)(v, idx)
        else:
            compile_graph(g)(v, idx)


@pytest.mark.parametrize("dtype", FLOATS)
def test_triton_kernels_match_torch(rng, dtype):
    vshape, size = (70, 3, 5), 9
    v, idx = values(rng, vshape, dtype), rng.integers(0, size, vshape[0]).astype(np.int32)
    out = compile_graph(one_op(vshape, size, dtype, "i32"))(v, idx)
    out = out[0] if isinstance(out, (tuple, list)) else out
    close(out, torch_index_add(v, idx, size), dtype)


def test_triton_reads_strided_values(rng):
    """A transposed operand (the gradient of a take along axis 1) goes through its strides."""
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((3, 6), "f32"), "x")
    i = g.add_input(TensorType((6,), "i64"), "i")
    g.set_outputs([b("index_add", b("transpose", x, perm=[1, 0]), i, size=4)])
    xv, iv = values(rng, (3, 6), "f32"), rng.integers(0, 4, 6)
    out = compile_graph(g)(xv, iv)
    close(out[0] if isinstance(out, (tuple, list)) else out, torch_index_add(xv.T.copy(), iv, 4), "f32")


def embedding_loss(w, idx, r):
    return (av.nn.functional.embedding(idx, w) * r).sum()


def torch_embedding_grad(w: np.ndarray, idx: np.ndarray, r: np.ndarray) -> np.ndarray:
    tw = torch.from_numpy(w.astype(np.float64)).requires_grad_()
    (torch.nn.functional.embedding(torch.from_numpy(idx), tw) * torch.from_numpy(r.astype(np.float64))).sum().backward()
    return tw.grad.numpy()


def test_take_gradient_is_one_index_add_with_no_one_hot_or_matmul(rng):
    w, idx, r = values(rng, (11, 4), "f32"), rng.integers(0, 11, (3, 5)), values(rng, (3, 5, 4), "f32")
    names = [op.name for op in av.trace(av.grad(embedding_loss), w, idx, r).ops]
    assert names.count("index_add") == 1 and "one_hot" not in names and "matmul" not in names, names


@pytest.mark.parametrize("backend", ["numpy", "cpu", "triton"])
def test_embedding_gradient_matches_torch(rng, backend):
    w, idx, r = values(rng, (13, 6), "f32"), rng.integers(0, 13, (4, 9)), values(rng, (4, 9, 6), "f32")
    want = torch_embedding_grad(w, idx, r)
    f = av.compile(av.grad(embedding_loss), backend=backend)
    got = f(av.tensor(w), av.tensor(idx), av.tensor(r))
    close(got.numpy(), want, "f32")
    if backend == "triton":  # zero, atomic adds: the one-hot matmul's kernels are gone
        kernels = f.inspect(av.tensor(w), av.tensor(idx), av.tensor(r)).kernels
        assert any("tl.atomic_add" in src for src in kernels.values())
        assert not any("tl.dot" in src for src in kernels.values())


AOT = textwrap.dedent('''
    import json
    from avalon.ir import Builder, Graph, TensorType
    from avalon.codegen.triton import compile_graph
    from avalon.codegen.triton.aot import compile_for_target
    out = []
    for op, dtype in [("index_add", d) for d in ("f32", "f16", "bf16", "f64")] + [("index_max", "f32"),
                                                                                  ("index_max", "f64")]:
        g = Graph("f")
        b = Builder(g)
        v = g.add_input(TensorType((300, 4, 48), dtype), "v")
        i = g.add_input(TensorType((300,), "i32"), "i")
        g.set_outputs([b(op, v, i, size=1000)])
        for ln in compile_graph(g).launches:
            for k in ln.kernel.chain():
                ptx = compile_for_target(k).asm["ptx"]
                out.append([op + ":" + dtype, k.name, ".target sm_90" in ptx,
                            "atom.global" in ptx or "red.global" in ptx])
    print(json.dumps(out))
''')


def test_kernels_compile_to_ptx_for_h100(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # compile real kernels: the package would interpret without a GPU
    env.update(AVALON_CACHE_DIR=str(tmp_path / "avalon"), TRITON_CACHE_DIR=str(tmp_path / "triton"),
               PYTHONPATH=os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", AOT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(ok for _, _, ok, _ in got)
    names = {(d, n.rsplit("_", 1)[-1]) for d, n, _, _ in got}
    assert {(f"index_add:{d}", "add") for d in ("f32", "f16", "bf16", "f64")} <= names
    assert ("index_add:bf16", "cast") in names and {("index_max:f32", "add"), ("index_max:f64", "add")} <= names
    assert all(atomic for _, n, _, atomic in got if n.endswith("_add"))  # the adds are atomics


@pytest.mark.parametrize("name", ["index_add", "index_max"])
def test_onnx_export_is_scatternd_and_runs_in_onnxruntime(rng, tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    import avalon.onnx
    g = one_op((12, 3), 6, name=name)
    v, idx = values(rng, (12, 3), "f32"), rng.integers(0, 5, 12)  # (row 5 named by no index: -inf for max)
    proto = avalon.onnx.export(g, tmp_path / "f.onnx")
    assert any(n.op_type == "ScatterND" for n in proto.graph.node)
    sess = ort.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    want = torch_index_add(v, idx, 6) if name == "index_add" else interpret(g, v, idx)[0]
    if name == "index_max":
        assert np.isneginf(want[5]).all() and np.isfinite(want[:5]).all()
        np.testing.assert_array_equal(sess.run(None, dict(zip(names, (v, idx))))[0], want)
    else:
        close(sess.run(None, dict(zip(names, (v, idx))))[0], want, "f32")


def test_index_max_reference_and_triton_match_torch(rng):
    """index_max against torch's index_reduce amax (include_self=False, on -inf), duplicates and an
    unnamed row included, f32/f64/f16, through the reference and Triton (its sm_90 build: above)."""
    for dtype in ("f32", "f64", "f16"):
        v, idx = values(rng, (30, 4), dtype), rng.integers(0, 6, 30)
        idx[idx == 5] = 0
        t = torch.from_numpy(v.astype(np.float64))
        want = torch.full((6, 4), -np.inf, dtype=torch.float64).index_reduce(0, torch.from_numpy(idx), t, "amax",
                                                                             include_self=False).numpy()
        g = one_op(v.shape, 6, dtype, name="index_max")
        np.testing.assert_array_equal(interpret(g, v, idx)[0].astype(np.float64), want)
        got = compile_graph(g)(torch.from_numpy(v), torch.from_numpy(idx))[0]
        np.testing.assert_array_equal(np.asarray(got).astype(np.float64), want)


def test_linalg_lowering_is_the_one_hot_matmul():
    from avalon.mlir import to_mlir
    text = to_mlir(one_op((6, 2, 3), 4), dialect="linalg")
    assert text.count("linalg.matmul") == 1 and "scatter" not in text  # onehot^T @ values


def test_embedding_gradient_on_iree_matches_torch(rng):
    pytest.importorskip("iree.runtime", reason="needs the mlir extra: pip install -e '.[mlir]'")
    pytest.importorskip("iree.compiler", reason="needs the mlir extra: pip install -e '.[mlir]'")
    w, idx, r = values(rng, (10, 4), "f32"), rng.integers(0, 10, (3, 5)), values(rng, (3, 5, 4), "f32")
    f = av.compile(av.grad(embedding_loss), backend="iree")
    close(f(av.tensor(w), av.tensor(idx), av.tensor(r)).numpy(), torch_embedding_grad(w, idx, r), "f32")


def test_torch_index_add_of_floats_is_the_primitive_and_matches_torch(rng):
    """GNN message passing: av.index_add along any dim is one `index_add` op (no (E, N) mask)."""
    x, src = values(rng, (5, 3, 4), "f64"), values(rng, (5, 6, 4), "f64")
    i = np.array([0, 2, 2, 1, 0, 2])
    want = torch.index_add(torch.from_numpy(x), 1, torch.from_numpy(i), torch.from_numpy(src), alpha=2).numpy()
    np.testing.assert_allclose(av.index_add(av.tensor(x), 1, av.tensor(i), av.tensor(src), alpha=2).numpy(), want,
                               rtol=1e-12)
    names = [op.name for op in av.trace(lambda a, b: av.index_add(a, 1, av.tensor(i), b), x, src).ops]
    assert "index_add" in names and "eq" not in names, names


@pytest.mark.parametrize("name", ["scatter_add", "sum", "mean", "amax", "amin"])
@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_scatter_add_and_float_reductions_are_scatter_primitives_with_torchs_gradients(rng, name, backend):
    """scatter_add and float scatter_reduce sum/mean/amax/amin along a middle dim (an index narrower
    than the input in the other dims, repeated targets, and for amax/amin ties between sources and
    with the input): `index_add`/`index_max` ops and no (index x dim) mask (no value larger than
    input and source together), and values and both gradients equal torch's, compiled; the gradient
    of a gather is an index_add."""
    x, src = values(rng, (4, 6, 5), "f64"), values(rng, (3, 7, 4), "f64")  # (torch's backward needs
    i = rng.integers(0, 6, (3, 7, 4))                                     # src shaped as the index)
    if name in ("amax", "amin"):  # small integers: ties among sources and with the input
        x, src = rng.integers(-2, 3, x.shape).astype(np.float64), rng.integers(-2, 3, src.shape).astype(np.float64)

    def fn(lib, a, s, idx, inc):
        if name == "scatter_add":
            return lib.scatter_add(a, 1, idx, s)
        return lib.scatter_reduce(a, 1, idx, s, name, include_self=inc)

    r = values(rng, x.shape, "f64")
    for inc in (True, False):
        def loss(a, s, inc=inc):
            return (fn(av, a, s, av.tensor(i), inc) * av.tensor(r)).sum()
        g = av.trace(av.grad(loss, argnums=(0, 1)), x, src)
        names = [op.name for op in g.ops]
        assert ("index_max" if name in ("amax", "amin") else "index_add") in names, names
        assert max(math.prod(v.shape) for op in g.walk() for v in op.results) <= x.size + src.size, g
        ga, gs = av.compile(av.grad(loss, argnums=(0, 1)), backend=backend)(av.tensor(x), av.tensor(src))
        ta, ts = torch.from_numpy(x).requires_grad_(), torch.from_numpy(src).requires_grad_()
        (fn(torch, ta, ts, torch.from_numpy(i), inc) * torch.from_numpy(r)).sum().backward()
        np.testing.assert_allclose(ga.numpy(), ta.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(gs.numpy(), ts.grad.numpy(), rtol=1e-9, atol=1e-12)
        got = av.compile(lambda a, s, inc=inc: fn(av, a, s, av.tensor(i), inc), backend=backend)(av.tensor(x), av.tensor(src))
        np.testing.assert_allclose(got.numpy(), fn(torch, torch.from_numpy(x), torch.from_numpy(src),
                                                   torch.from_numpy(i), inc).numpy(), rtol=1e-12)
    names = [op.name for op in av.trace(av.grad(lambda a: av.gather(a, 1, av.tensor(i)).sum()), x).ops]
    assert "index_add" in names and "eq" not in names, names


@pytest.mark.parametrize("reduce", ["prod", "mean", "amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False])
def test_index_reduce_matches_torch(reduce, include_self):
    """torch.index_reduce along a middle dim with repeated indices (and ties for amax/amin): values
    eagerly and compiled, gradients, the in-place method, and integers."""
    from helpers import check_like_torch
    rng = np.random.default_rng(3)
    x, src = rng.integers(-2, 3, (3, 5, 2)).astype(np.float64), rng.integers(-2, 3, (3, 4, 2)).astype(np.float64)
    if reduce in ("prod", "mean"):
        x, src = rng.standard_normal(x.shape), rng.standard_normal(src.shape)
    i = np.array([4, 0, 4, 2])
    check_like_torch(lambda lib, a, s: lib.index_reduce(a, 1, lib.tensor(i), s, reduce, include_self=include_self),
                     x, src, tol=1e-9)
    a, t = av.tensor(x), torch.from_numpy(x.copy())
    a.index_reduce_(1, av.tensor(i), av.tensor(src), reduce, include_self=include_self)
    t.index_reduce_(1, torch.from_numpy(i), torch.from_numpy(src), reduce, include_self=include_self)
    np.testing.assert_allclose(a.numpy(), t.numpy(), rtol=1e-12)
    xi, si = rng.integers(-5, 6, (4, 3)), rng.integers(-5, 6, (2, 3))
    got = av.index_reduce(av.tensor(xi), 0, av.tensor([3, 3]), av.tensor(si), reduce, include_self=include_self)
    want = torch.from_numpy(xi).index_reduce(0, torch.tensor([3, 3]), torch.from_numpy(si), reduce,
                                              include_self=include_self)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    with pytest.raises(ValueError, match="reduce to be one of"):
        av.index_reduce(av.tensor(x), 1, av.tensor(i), av.tensor(src), "sum")


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_last_wins_writes_are_index_max_and_take(rng, backend):
    """scatter, index_copy and `x[idx] = v` with repeated targets keep the last entry (torch's CPU
    order) through one `index_max` of the positions and a `take`, with no (index x dim) mask: values
    for floats, ints and bools, compiled, and gradients (only the winning entries get one)."""
    x, src = values(rng, (4, 6, 5), "f64"), values(rng, (3, 7, 4), "f64")
    i = rng.integers(0, 6, (3, 7, 4))
    r = values(rng, x.shape, "f64")

    def loss(a, s):
        return (av.scatter(a, 1, av.tensor(i), s) * av.tensor(r)).sum()
    g = av.trace(av.grad(loss, argnums=(0, 1)), x, src)
    assert "index_max" in [op.name for op in g.ops]
    assert max(math.prod(v.shape) for op in g.walk() for v in op.results) <= x.size + src.size, g
    ga, gs = av.compile(av.grad(loss, argnums=(0, 1)), backend=backend)(av.tensor(x), av.tensor(src))
    ta, ts = torch.from_numpy(x).requires_grad_(), torch.from_numpy(src).requires_grad_()
    (torch.scatter(ta, 1, torch.from_numpy(i), ts) * torch.from_numpy(r)).sum().backward()
    np.testing.assert_allclose(ga.numpy(), ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gs.numpy(), ts.grad.numpy(), rtol=1e-12)
    for xs, ss in ((x, src), (x.astype(np.int64) * 3, src.astype(np.int64) * 3), (x > 0, src > 0)):
        got = av.compile(lambda a, s: av.scatter(a, 1, av.tensor(i), s), backend=backend)(av.tensor(xs), av.tensor(ss))
        np.testing.assert_array_equal(got.numpy(), torch.scatter(torch.from_numpy(xs), 1, torch.from_numpy(i),
                                                                 torch.from_numpy(ss)).numpy())
    j = np.array([2, 0, 2, 5, 0])
    rows = values(rng, (4, 5, 5), "f64")
    got = av.compile(lambda a, s: a.index_copy(1, av.tensor(j), s), backend=backend)(av.tensor(x), av.tensor(rows))
    np.testing.assert_array_equal(got.numpy(), torch.from_numpy(x).index_copy(1, torch.from_numpy(j),
                                                                               torch.from_numpy(rows)).numpy())


def test_repeated_writes_give_every_entry_the_gradient_as_torch():
    """torch's backward of scatter / index_copy / index_put / `y[idx] = v` is a gather: every entry
    aimed at an element gets its gradient, not only the one whose value stays (Avalon gave the
    losers none); the overwritten input elements get none."""
    idx, w = np.array([0, 0, 1]), np.array([5.0, 7.0, 11.0])

    def fns(lib, x, v):
        i = lib.tensor(idx)
        y = x.clone()
        y[i] = v
        return [x.scatter(0, i, v), x.index_copy(0, i, v), x.index_put((i,), v), y]

    x, v = np.zeros(3), np.array([1.0, 2.0, 3.0])
    for k in range(4):
        gx, gv = av.grad(lambda a, b, k=k: (fns(av, a, b)[k] * av.tensor(w)).sum(), argnums=(0, 1))(
            av.tensor(x), av.tensor(v))
        tx, tv = torch.zeros(3, dtype=torch.float64, requires_grad=True), torch.tensor(v, requires_grad=True)
        (fns(torch, tx, tv)[k] * torch.from_numpy(w)).sum().backward()
        np.testing.assert_array_equal(gx.numpy(), tx.grad.numpy(), err_msg=str(k))
        np.testing.assert_array_equal(gv.numpy(), tv.grad.numpy(), err_msg=str(k))

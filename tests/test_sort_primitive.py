"""The `sort` / `argsort` primitives end to end: declaration, the reference against torch's stable sort
(ties, nan, -0.0, descending, every dtype, several dims and axes), the frontend (eager, traced, the
bitonic network past SORT_BLOCK), the VJP against torch.autograd, the numpy/cpu backends, ONNX
export, the Triton kernels in the interpreter (packed `tl.sort` keys and the f64/i64 pair network,
strided operands, kernel counts) and their compile to PTX for sm_90."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import avalon as av
import avalon.ir as ir
from avalon.codegen.triton import compile_graph
from avalon.ir import Builder, Graph, ShapeError, TensorType, interpret
from avalon.ops.sorting import SORT_BLOCK

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

DTYPES = ["f32", "f64", "f16", "bf16", "i32", "i64", "i1"]


def one_op(name, shape, dtype="f32", axis=-1, descending=False) -> Graph:
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType(tuple(shape), dtype), "x")
    g.set_outputs([b(name, x, axis=axis, descending=descending)])
    return g


def data(rng, shape, dtype) -> np.ndarray:
    """Few distinct values (many ties), with nan, -0.0 and infinities among the floats and the
    extreme integers among the ints."""
    npt = ir.dtype(dtype).np
    if dtype == "i1":
        return rng.random(shape) < 0.5
    if npt.kind == "f":
        x = (rng.integers(-4, 4, shape) * 0.5).astype(npt)
        for v, p in ((np.nan, 0.15), (-0.0, 0.1), (np.inf, 0.05), (-np.inf, 0.05)):
            x[rng.random(shape) < p] = v
        return x
    x = rng.integers(-5, 5, shape).astype(npt)
    if x.size >= 2:
        x.reshape(-1)[:2] = [np.iinfo(npt).min, np.iinfo(npt).max]
    return x


def torch_sort(x: np.ndarray, axis: int, descending: bool):
    t = torch.from_numpy(np.ascontiguousarray(x))
    return torch.sort(t, dim=axis, descending=descending, stable=True)


def same(a: np.ndarray, b: np.ndarray) -> None:
    """Equal element for element, nan where nan, and the sign of every zero the same."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    np.testing.assert_array_equal(a, b)
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


# -- declaration ----------------------------------------------------------------------------------

def test_declaration_inference_and_text_round_trip():
    g = one_op("argsort", (3, 5), "f16", axis=0, descending=True)
    assert g.outputs[0].type == TensorType((3, 5), "i64")
    assert one_op("sort", (3, 5), "bf16").outputs[0].type == TensorType((3, 5), "bf16")
    text = str(g)
    assert "argsort %x {axis = 0, descending = true}" in text
    assert str(ir.parse(text)) == text
    with pytest.raises(ShapeError, match="rank >= 1"):
        one_op("sort", ())
    with pytest.raises(ShapeError, match="axis 2 out of range"):
        one_op("argsort", (3, 5), axis=2)
    assert ir.lookup("sort").traits >= {"pure", "sort"} and "sort" in ir.lookup("argsort").traits


# -- reference against torch ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("descending", [False, True])
def test_reference_is_torchs_stable_sort(dtype, descending, rng):
    for shape, axis in (((40,), 0), ((3, 17), 1), ((6, 5, 4), 0), ((2, 3, 9), -2)):
        x = data(rng, shape, dtype)
        want = torch_sort(x if dtype != "bf16" else ir.round_bf16(x), axis, descending)
        xs = ir.round_bf16(x) if dtype == "bf16" else x
        same(interpret(one_op("argsort", shape, dtype, axis, descending), xs)[0], want.indices.numpy())
        same(interpret(one_op("sort", shape, dtype, axis, descending), xs)[0], want.values.numpy())


# -- frontend -----------------------------------------------------------------------------------------

def test_frontend_records_the_primitives_and_dce_drops_the_unused_one(rng):
    x = data(rng, (4, 300), "f32")
    g = av.trace(lambda a: av.sort(a, 1, descending=True).values, x)
    assert [op.name for op in g.ops] == ["sort", "argsort"]
    opt = av.compile(lambda a: av.topk(a, 5).indices, backend="numpy")
    assert [op.name for op in opt.inspect(x).graph.ops if op.name != "slice"] == ["argsort"]
    same(opt(x).numpy(), torch_sort(x, 1, True).indices.numpy()[:, :5])  # (torch.topk orders ties as it likes)


def test_frontend_eager_traced_and_past_the_block(rng):
    for backend in ("numpy", "cpu"):
        x = data(rng, (3, 8, 5), "f32")
        f = av.compile(lambda a: tuple(av.sort(a, 1, descending=True)), backend=backend)
        v, i = f(x)
        want = torch_sort(x, 1, True)
        same(v.numpy(), want.values.numpy())
        same(i.numpy(), want.indices.numpy())
    x = data(rng, (SORT_BLOCK + 1,), "f32")
    same(av.argsort(x).numpy(), torch_sort(x, 0, False).indices.numpy())  # eager: the reference at any length
    g = av.trace(lambda a: av.sort(a).values, x)
    assert not any(op.name in ("sort", "argsort") for op in g.ops)  # traced: the bitonic network
    same(interpret(g, x)[0], torch_sort(x, 0, False).values.numpy())


# -- gradients --------------------------------------------------------------------------------------

@pytest.mark.parametrize("descending", [False, True])
def test_values_gradient_goes_back_to_the_positions_they_came_from(descending, rng):
    x = (rng.integers(-3, 3, (3, 4, 6)) + rng.standard_normal((3, 4, 6)) * (rng.random((3, 4, 6)) < 0.5))
    x = x.astype(np.float32)  # half of it integers: ties
    r = rng.standard_normal((3, 2, 6)).astype(np.float32)

    def loss(lib, a, w):
        if lib is torch:  # (torch.topk breaks ties as it likes; av.topk is the stable sort's head)
            top = torch.sort(a, dim=1, descending=descending, stable=True).values[:, :2]
        else:
            top = av.topk(a, 2, dim=1, largest=descending).values
        return (top * w).sum() + (lib.sort(a, dim=-1, descending=descending, stable=True).values ** 2).sum()

    t = torch.from_numpy(x).requires_grad_()
    loss(torch, t, torch.from_numpy(r)).backward()
    for backend in ("numpy", "cpu"):
        got = av.compile(av.grad(lambda a, w: loss(av, a, w)), backend=backend)(x, r)
        np.testing.assert_allclose(got.numpy(), t.grad.numpy(), rtol=1e-6, atol=1e-6)
    gg = av.trace(av.grad(lambda a: av.sort(a, 0).values.sum()), x)
    assert sum(op.name == "argsort" for op in gg.ops) == 2 and not any(op.name == "matmul" for op in gg.ops)


# -- ONNX ---------------------------------------------------------------------------------------------

def test_onnx_export_is_topk_and_runs_like_torch(tmp_path, rng):
    ort = pytest.importorskip("onnxruntime")
    import avalon.onnx
    for dtype, desc in (("f32", True), ("f32", False), ("i1", True), ("i64", False)):
        x = data(rng, (4, 9), dtype)
        path = str(tmp_path / f"s_{dtype}_{desc}.onnx")
        avalon.onnx.export(lambda a, d=desc: tuple(av.sort(a, 1, descending=d)), path, x)
        s = ort.InferenceSession(path)
        v, i = s.run(None, {s.get_inputs()[0].name: x})
        want = torch_sort(x, 1, desc)
        same(v, want.values.numpy())
        same(i, want.indices.numpy())


# -- Triton ------------------------------------------------------------------------------------------

def _run(cg, x):
    out = cg(x)[0]
    return out.float().cpu().numpy() if out.dtype == torch.bfloat16 else out.cpu().numpy()


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_sort_kernels_match_the_reference(dtype, rng):
    shape, axis = (3, 21, 2), 1  # 21 of 32 lanes live: padding in every row
    x = data(rng, shape, dtype)
    flip = DTYPES.index(dtype) % 2 == 1  # each dtype: one kernel ascending, the other descending
    for name, desc in (("sort", flip), ("argsort", not flip)):
        g = one_op(name, shape, dtype, axis, desc)
        cg = compile_graph(g)
        (src,) = cg.kernels.values()
        assert ("tl.sort(" in src) != (dtype in ("f64", "i64")) and ("xor_sum" in src) == (dtype in ("f64", "i64"))
        got = _run(cg, x)
        want = interpret(g, x)[0]
        same(got.astype(want.dtype) if dtype == "bf16" else got, want)


def test_triton_sort_reads_and_writes_through_strides(rng):
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((5, 6), "f32"), "x")
    t = b("transpose", x, perm=[1, 0])
    t.type = t.type.with_layout((1, 0))  # a zero-copy view of x
    y = b("argsort", t, axis=0, descending=True)
    y.type = y.type.with_layout((1, 0))
    g.set_outputs([y])
    cg = compile_graph(g)
    a = data(rng, (5, 6), "f32")
    same(cg(a)[0].cpu().numpy(), torch_sort(a.T, 0, True).indices.numpy())


def test_a_300_element_sort_is_one_or_two_kernels_on_triton(rng):
    x = data(rng, (2, 300), "f32")
    f = av.compile(lambda a: tuple(av.sort(a, -1)), backend="triton")
    v, i = f(x)
    want = torch_sort(x, 1, False)
    same(v.cpu().numpy(), want.values.numpy())
    same(i.cpu().numpy(), want.indices.numpy())
    assert len(f.inspect(x).kernels) == 2  # the values and the indices (was 134 launches)


def test_triton_refuses_an_axis_longer_than_a_block_by_name():
    with pytest.raises(NotImplementedError, match=r"'argsort' along an axis of 5000 elements.*bitonic"):
        compile_graph(one_op("argsort", (5000,)))


AOT = textwrap.dedent('''
    import json
    from avalon.ir import Builder, Graph, TensorType
    from avalon.codegen.triton import compile_graph
    from avalon.codegen.triton.aot import compile_for_target
    out = []
    for shape, dtype, name in (((3, 100), "f32", "argsort"), ((2, 16), "i64", "sort")):
        g = Graph("f")
        b = Builder(g)
        x = g.add_input(TensorType(shape, dtype), "x")
        g.set_outputs([b(name, x, axis=1, descending=True)])
        for ln in compile_graph(g).launches:
            out.append(".target sm_90" in compile_for_target(ln.kernel).asm["ptx"])
    print(json.dumps(out))
''')


def test_sort_kernels_compile_to_ptx_for_h100(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # compile real kernels: the package would interpret without a GPU
    env.update(AVALON_CACHE_DIR=str(tmp_path / "avalon"), TRITON_CACHE_DIR=str(tmp_path / "triton"),
               PYTHONPATH=os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", AOT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [True, True]


def test_from_torch_maps_sort_argsort_and_topk(rng):
    class M(torch.nn.Module):
        def forward(self, x):
            v, i = torch.topk(x, 3, dim=-1)
            s, j = torch.sort(x, dim=0, descending=True)
            return v * 2, i, s, j, torch.argsort(x, dim=1, stable=True)
    x = torch.tensor(rng.permutation(24).reshape(4, 6).astype(np.float32) - 11.5)  # distinct: torch's tie order is free
    got = av.from_torch(M(), x)(x.numpy())
    for g, w in zip(got, M()(x)):
        np.testing.assert_array_equal(g.numpy(), w.numpy())


def test_onnx_topk_orders_ties_by_index_as_onnxruntime(rng):
    """ONNX's TopK takes the lower index first among equal values; the model comes from bytes."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import io

    class T(torch.nn.Module):
        def forward(self, x):
            return torch.topk(x, 3, dim=-1, largest=False)
    x = np.round(rng.standard_normal((4, 6)), 0).astype(np.float32)  # many ties
    f = io.BytesIO()
    torch.onnx.export(T(), (torch.tensor(x),), f, dynamo=False, opset_version=17)
    s = ort.InferenceSession(f.getvalue())
    want = s.run(None, {s.get_inputs()[0].name: x})
    from avalon import onnx as aonnx
    got = aonnx.load(f.getvalue())(x)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w)

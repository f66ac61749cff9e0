"""cumsum, the worked example of docs/adding-a-primitive.md, end to end: declaration and shape/dtype
inference, the reference rule against numpy and torch, the vjp against torch.autograd and central
differences, text round trip, the fold, the frontend function, and the Triton scan kernel (in the
interpreter, persistent and chunked, forward and reverse) plus its compile to PTX for sm_90."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import avalon as av
import avalon.ir as ir
from avalon import ops
from avalon.autodiff import grad_graph
from avalon.codegen.triton import compile_graph
from avalon.codegen.triton.blocks import BlockPolicy
from avalon.ir import Builder, Graph, ShapeError, TensorType, evaluate, interpret

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

DTYPES = ["f16", "f32", "f64", "i32", "i64"]


def one_op(shape, dtype="f32", axis=0, reverse=False) -> Graph:
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType(tuple(shape), dtype), "x")
    g.set_outputs([b("cumsum", x, axis=axis, reverse=reverse)])
    return g


def random_array(rng, shape, dtype) -> np.ndarray:
    npt = ir.dtype(dtype).np
    if npt.kind == "f":
        return rng.standard_normal(shape).astype(npt)
    return rng.integers(-1000, 1000, shape).astype(npt)


def torch_cumsum(x: np.ndarray, axis: int, reverse: bool) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype == torch.float16:
        t = t.float()  # the reference sums f16 in f32 and rounds once
    out = t.flip(axis).cumsum(axis).flip(axis) if reverse else t.cumsum(axis)
    return out.to(t.dtype if x.dtype != np.float16 else torch.float16).numpy()


@st.composite
def cases(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return shape, axis, draw(st.booleans()), draw(st.sampled_from(DTYPES)), draw(st.integers(0, 2**32 - 1))


# -- declaration --------------------------------------------------------------------------------

def test_declaration_and_inference():
    d = ir.lookup("cumsum")
    assert d.traits == {"pure", "scan"}
    assert ir.infer_types("cumsum", [TensorType((2, 3), "i32")], {"axis": -1, "reverse": False}) == \
        [TensorType((2, 3), "i32")]
    with pytest.raises(ShapeError, match="cumsum: needs a floating-point or integer.*i1"):
        one_op((3,), "i1")
    with pytest.raises(ShapeError, match="axis 2 out of range"):
        one_op((3, 4), axis=2)


def test_text_round_trip():
    g = one_op((2, 5), "f32", axis=1, reverse=True)
    text = str(g)
    assert "cumsum %x {axis = 1, reverse = true}" in text
    assert str(ir.parse(text)) == text
    plain = str(one_op((4,), "i64"))
    assert "reverse" not in plain and str(ir.parse(plain)) == plain  # the default is not printed


# -- reference ----------------------------------------------------------------------------------

@settings(max_examples=40)
@given(cases())
def test_reference_matches_numpy_and_torch(case):
    shape, axis, reverse, dtype, seed = case
    x = random_array(np.random.default_rng(seed), shape, dtype)
    got = interpret(one_op(shape, dtype, axis, reverse), x)[0]
    assert got.dtype == x.dtype and got.shape == x.shape
    wide = x.astype(np.float32) if x.dtype == np.float16 else x
    want = np.flip(np.cumsum(np.flip(wide, axis), axis, dtype=wide.dtype), axis) if reverse \
        else np.cumsum(wide, axis, dtype=wide.dtype)
    np.testing.assert_array_equal(got, want.astype(x.dtype))
    tol = {"f16": 2e-3, "f32": 1e-5, "f64": 1e-12}.get(dtype, 0)
    np.testing.assert_allclose(got.astype(np.float64), torch_cumsum(x, axis, reverse).astype(np.float64),
                               rtol=tol, atol=tol * 10)


def test_integers_wrap():
    x = np.array([2**31 - 1, 1, 1], np.int32)
    assert interpret(one_op((3,), "i32"), x)[0].tolist() == [2**31 - 1, -(2**31), -(2**31) + 1]


# -- vjp ----------------------------------------------------------------------------------------

def _grad(shape, axis, reverse, x, r):
    g = Graph("f")
    b = Builder(g)
    xv = g.add_input(TensorType(shape, "f64"), "x")
    rv = g.add_input(TensorType(shape, "f64"), "r")
    y = b("cumsum", xv, axis=axis, reverse=reverse)
    g.set_outputs([b("sum", b("mul", y, rv), axes=list(range(len(shape))))])
    gg = grad_graph(g, [0])
    ir.verify(gg)
    assert str(ir.parse(str(gg))) == str(gg)
    return interpret(gg, x, r)[1]


@settings(max_examples=20)
@given(cases())
def test_vjp_matches_torch_and_finite_differences(case):
    shape, axis, reverse, _, seed = case
    rng = np.random.default_rng(seed)
    x, r = rng.standard_normal(shape), rng.standard_normal(shape)
    got = _grad(shape, axis, reverse, x, r)

    t = torch.tensor(x, requires_grad=True)
    y = t.flip(axis).cumsum(axis).flip(axis) if reverse else t.cumsum(axis)
    (want,) = torch.autograd.grad((y * torch.tensor(r)).sum(), [t])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-12)

    attrs = {"axis": axis, "reverse": reverse}
    loss = lambda a: float(np.sum(evaluate("cumsum", attrs, [a], TensorType(shape, "f64")) * r))  # noqa: E731
    fd = np.zeros(shape)
    eps = 1e-6
    for j in np.ndindex(shape):
        hi, lo = x.copy(), x.copy()
        hi[j] += eps
        lo[j] -= eps
        fd[j] = (loss(hi) - loss(lo)) / (2 * eps)
    np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-6)


def test_vjp_is_cumsum_with_reverse_flipped():
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((3, 4), "f32"), "x")
    g.set_outputs([b("sum", b("cumsum", x, axis=1), axes=[0, 1])])
    text = str(grad_graph(g, [0]))
    assert "cumsum" in text and "reverse = true" in text


# -- fold and frontend ----------------------------------------------------------------------------

def test_fold_axis_of_size_one_is_identity():
    from avalon.passes import PassManager
    g = one_op((3, 1, 2), axis=1)
    PassManager.parse("canonicalize").run(g)
    assert not [op for op in g.ops if op.name == "cumsum"]
    g = one_op((3, 2), axis=1)
    PassManager.parse("canonicalize").run(g)
    assert [op.name for op in g.ops] == ["cumsum"]


def test_frontend_function(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(ops.cumsum(x, 1).numpy(), np.cumsum(x, 1), rtol=1e-6)
    np.testing.assert_allclose(ops.cumsum(x, -2, reverse=True).numpy(), np.cumsum(x[::-1], 0)[::-1], rtol=1e-6)
    assert ops.cumsum(np.array([True, False, True]), 0).numpy().tolist() == [1, 1, 2]  # i1 counts, as in torch
    g = av.trace(lambda t: ops.cumsum(t, 0), x)
    assert [op.name for op in g.ops] == ["cumsum"]


# -- compiled: numpy and triton -------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "triton"])
@pytest.mark.parametrize("reverse", [False, True])
def test_compile_matches_the_reference(backend, reverse, rng):
    x = rng.standard_normal((3, 17, 2)).astype(np.float32)
    f = av.compile(lambda t: ops.cumsum(ops.mul(t, 2.0), 1, reverse=reverse), backend=backend)
    want = interpret(one_op((3, 17, 2), axis=1, reverse=reverse), x * 2)[0]
    np.testing.assert_allclose(f(x).numpy(), want, rtol=1e-5, atol=1e-5)


CHUNKED = BlockPolicy.for_device(interpret=True).replace(rblock=16, persistent_r=16)


@pytest.mark.parametrize("shape,axis,reverse,dtype,policy", [
    ((4, 9, 3), 1, False, "f32", None),          # persistent: the axis fits one block
    ((2, 50, 3), 1, True, "f32", CHUNKED),       # chunked: 4 blocks of 16 with a running carry, reversed
    ((3, 40), -1, False, "f16", CHUNKED),
    ((33, 5), 0, True, "bf16", CHUNKED),
    ((70,), 0, False, "i32", CHUNKED),
    ((6, 4), 0, True, "i64", None),
    ((), 0, False, "f64", None),
])
def test_triton_scan_kernel(shape, axis, reverse, dtype, policy, rng):
    g = one_op(shape, dtype, axis, reverse)
    x = random_array(rng, shape, dtype)
    if dtype == "bf16":
        x = ir.round_bf16(x)
    cg = compile_graph(g, blocks=policy)
    (src,) = cg.kernels.values()
    assert "tl.cumsum" in src and ("for start in range" in src) == (policy is CHUNKED)
    got = cg(x)[0]
    got = got.float().cpu().numpy() if got.dtype == torch.bfloat16 else got.cpu().numpy()
    want = interpret(g, x)[0]
    tol = {"f16": 2e-3, "bf16": 1e-2, "f32": 1e-5}.get(dtype, 0)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol * 10)


def test_triton_scan_reads_and_writes_through_strides(rng):
    """The kernel addresses operand and result through their types' strides, not a row-major
    assumption: here the operand is a transposed view (strides (1, 6)) and the result column-major."""
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((4, 6), "f32"), "x")
    t = b("transpose", x, perm=[1, 0])
    t.type = t.type.with_layout((1, 0))  # a zero-copy view of x
    y = b("cumsum", t, axis=0)
    y.type = y.type.with_layout((1, 0))
    g.set_outputs([y])
    cg = compile_graph(g)
    (src,) = cg.kernels.values()
    assert "tl.cumsum" in src and len(cg.launches) <= 2  # the scan (and maybe a copy out), no transpose
    a = rng.standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_allclose(cg(a)[0].cpu().numpy(), np.cumsum(a.T, 0), rtol=1e-5, atol=1e-5)


AOT = textwrap.dedent('''
    import json
    from avalon.ir import Builder, Graph, TensorType
    from avalon.codegen.triton import compile_graph
    from avalon.codegen.triton.aot import compile_for_target
    out = []
    for shape, axis, reverse, dtype in (((64, 100), 1, False, "f32"), ((8, 5000, 4), 1, True, "bf16")):
        g = Graph("f")
        b = Builder(g)
        x = g.add_input(TensorType(shape, dtype), "x")
        g.set_outputs([b("cumsum", x, axis=axis, reverse=reverse)])
        for ln in compile_graph(g).launches:
            out.append(".target sm_90" in compile_for_target(ln.kernel).asm["ptx"])
    print(json.dumps(out))
''')


def test_scan_kernels_compile_to_ptx_for_h100(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # compile real kernels: the package would interpret without a GPU
    env.update(AVALON_CACHE_DIR=str(tmp_path / "avalon"), TRITON_CACHE_DIR=str(tmp_path / "triton"),
               PYTHONPATH=os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", AOT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [True, True]

"""Pointwise kernels against the numpy reference: random op chains (hypothesis), every elementwise
primitive, shape ops read through indices (broadcast, reshape, transpose, slice, pad, concat, take,
one_hot), casts, constants and counter-based random numbers. Each graph is first wrapped in one
fusion op, so each case is one generated kernel."""
import numpy as np
import pytest
from helpers import graph
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import avalon.ir as ir
from avalon.codegen.triton import BlockPolicy
from avalon.codegen.triton.cache import interpreting
from avalon.codegen.triton.testing import check
from avalon.ir import Builder, Graph, TensorType

pytestmark = pytest.mark.usefixtures("module_kernel_cache")  # kernel files go to a temporary cache


UNARY = ["exp", "log", "tanh", "sigmoid", "sqrt", "rsqrt", "erf", "neg", "abs", "relu", "sign"]
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "pow"]
COMPARE = ["eq", "ne", "lt", "le", "gt", "ge"]


@st.composite
def chains(draw):
    """A random pointwise graph: inputs read full, broadcast from rows/columns/scalars or through a
    transpose, then a chain of elementwise ops, compares and selects; one or two outputs."""
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3)))
    g = Graph("chain")
    b = Builder(g)
    vals = []
    for i in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["full", "row", "col", "scalar", "transposed"]))
        if kind == "row" and shape:
            x = g.add_input(TensorType(shape[-1:], "f32"), f"x{i}")
            x = b("broadcast", x, shape=list(shape))
        elif kind == "col" and len(shape) >= 2:
            x = g.add_input(TensorType(shape[:-1] + (1,), "f32"), f"x{i}")
            x = b("broadcast", x, shape=list(shape))
        elif kind == "scalar":
            x = b("broadcast", g.add_input(TensorType((), "f32"), f"x{i}"), shape=list(shape))
        elif kind == "transposed" and len(shape) >= 2:
            x = g.add_input(TensorType(shape[::-1], "f32"), f"x{i}")
            x = b("transpose", x, perm=list(range(len(shape)))[::-1])
        else:
            x = g.add_input(TensorType(shape, "f32"), f"x{i}")
        vals.append(x)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["unary", "binary", "select", "const", "reshape"]))
        a = draw(st.sampled_from(vals))
        if kind == "unary":
            vals.append(b(draw(st.sampled_from(UNARY)), a))
        elif kind == "binary":
            vals.append(b(draw(st.sampled_from(BINARY)), a, draw(st.sampled_from(vals))))
        elif kind == "select":
            c = b(draw(st.sampled_from(COMPARE)), a, draw(st.sampled_from(vals)))
            vals.append(b("where", c, a, draw(st.sampled_from(vals))))
        elif kind == "const":
            k = b.constant(draw(st.sampled_from([0.5, 2.0, -1.0, 3.0, 1.7])), (), "f32")
            op = draw(st.sampled_from(["mul", "add", "pow"]))
            vals.append(b(op, a, b("broadcast", k, shape=list(shape))))
        elif kind == "reshape" and shape:
            flat = b("reshape", a, shape=[int(np.prod(shape))])
            vals.append(b("reshape", b("exp", flat), shape=list(shape)))
    outs = [vals[-1]]
    if draw(st.booleans()) and len(vals) > 1 and vals[-2] is not vals[-1] and vals[-2].op is not None:
        outs.append(vals[-2])
    g.set_outputs(outs)
    return g


# no shrinking: every example compiles a kernel, and shrinking one failure can take minutes
@settings(max_examples=20, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(chains(), st.integers(0, 2**16))
def test_random_pointwise_chains_match_the_reference(g, seed):
    cg = check(g, rng=np.random.default_rng(seed), rtol=1e-4, atol=1e-5)
    assert len(cg.kernels) <= 1  # none when the chain returns an input


@pytest.mark.parametrize("name", UNARY)
def test_unary(name, rng):
    g, b, (x,) = graph(((7, 5), "f32"))
    g.set_outputs([b(name, x)])
    x0 = rng.uniform(-6, 6, (7, 5)).astype(np.float32)
    x0[0, :3] = [0.0, 1e-4, -1e-3]  # tanh near 0, where exp formulas cancel
    check(g, [x0], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", BINARY + COMPARE)
def test_binary(name, rng):
    g, b, (x, y) = graph(((6, 4), "f32"), ((6, 4), "f32"))
    g.set_outputs([b(name, x, y)])
    x0 = rng.uniform(-3, 3, (6, 4)).astype(np.float32)
    y0 = rng.uniform(-3, 3, (6, 4)).astype(np.float32)
    y0[0] = np.round(y0[0])  # integer exponents of negative bases
    y0[1, 0], x0[1, 1], y0[1, 2], x0[1, 3] = 0.0, 1.0, x0[1, 2], np.nan
    check(g, [x0, y0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "neg", "abs", "sign", "relu"])
@pytest.mark.parametrize("dtype", ["i32", "i64"])
def test_integer_semantics(name, dtype, rng):
    unary = name in ("neg", "abs", "sign", "relu")
    g, b, xs = graph(((5, 4), dtype), ((5, 4), dtype))
    g.set_outputs([b(name, xs[0]) if unary else b(name, *xs)])
    x0 = rng.integers(-9, 10, (5, 4)).astype(dtype.replace("i", "int"))
    y0 = rng.integers(-9, 10, (5, 4)).astype(x0.dtype)
    if name == "div":
        y0[y0 == 0] = 3  # integer division by zero is undefined on GPUs
    if name == "pow":
        x0, y0 = x0 % 7 - 3, y0 % 9 - 2  # small enough not to wrap, with negative exponents
    check(g, [x0, y0])


def test_boolean_logic_and_arithmetic(rng):
    g, b, (p, q) = graph(((9,), "i1"), ((9,), "i1"))
    g.set_outputs([b("logical_and", p, q), b("logical_or", p, q), b("logical_not", p), b("add", p, q),
                   b("sub", p, q), b("mul", p, q), b("maximum", p, q), b("eq", p, q)])
    check(g, [rng.random(9) < 0.5, rng.random(9) < 0.5])


@pytest.mark.parametrize("to", ["f16", "bf16", "f64", "i32", "i64", "i1"])
def test_cast(to, rng):
    g, b, (x,) = graph(((5, 6), "f32"))
    y = b("cast", x, dtype=to)
    g.set_outputs([y, b("cast", y, dtype="f32")])
    check(g, [(rng.standard_normal((5, 6)) * 100).astype(np.float32)])


def test_where_with_constant_splats_and_scalar_output(rng):
    g, b, (x,) = graph(((4, 3), "f32"))
    zero = b("broadcast", b.constant(0.0), shape=[4, 3])
    big = b("broadcast", b.constant(float("inf")), shape=[4, 3])
    y = b("where", b("gt", x, zero), x, big)
    g.set_outputs([y, b.constant(2.5, (2, 2)), b.constant(7, (), "i64")])
    check(g)


def test_dense_constant_inside_a_group_becomes_an_input():
    g, b, (x,) = graph(((2, 3), "f32"))
    c = b.constant(np.arange(6, dtype=np.float32).reshape(2, 3), (2, 3))
    g.set_outputs([b("mul", x, c)])
    cg = check(g)
    assert "in1" in cg.kernels["fused_0"]


def test_reshape_transpose_slice_chain(rng):
    g, b, (x,) = graph(((4, 6, 5), "f32"))
    t = b("transpose", x, perm=[2, 0, 1])  # 5, 4, 6
    r = b("reshape", t, shape=[20, 6])
    s = b("slice", r, start=[1, 0], limit=[19, 6], step=[3, 2])  # 6, 3
    g.set_outputs([b("tanh", s)])
    check(g)


def test_pad_and_concat(rng):
    g, b, (x, y) = graph(((3, 4), "f32"), ((3, 2), "f32"))
    p = b("pad", x, low=[1, 0], high=[0, 2], value=-5.0)  # 4, 6
    c = b("concat", b("exp", y), x, b("neg", y), axis=1)  # 3, 8
    g.set_outputs([p, c, b("add", b("pad", c, low=[1, 0], high=[0, 0], value=0.0), b("pad", p, low=[0, 1],
                                                                                       high=[0, 1], value=1.0))])
    check(g)


def test_take_and_one_hot(rng):
    g, b, (table, ids) = graph(((10, 4), "f32"), ((3, 5), "i64"))
    e = b("take", table, ids, axis=0)  # 3, 5, 4
    h = b("one_hot", ids, num_classes=10, dtype="f32")  # 3, 5, 10
    g.set_outputs([b("relu", e), h])
    check(g, [rng.standard_normal((10, 4)).astype(np.float32), rng.integers(0, 10, (3, 5))])


def test_take_along_a_middle_axis_with_i32_indices(rng):
    g, b, (x, ids) = graph(((2, 7, 3), "f32"), ((4,), "i32"))
    g.set_outputs([b("take", x, ids, axis=1)])
    check(g, [rng.standard_normal((2, 7, 3)).astype(np.float32), np.array([6, 0, 3, 3], np.int32)])


@pytest.mark.parametrize("dist,dtype", [("uniform", "f32"), ("uniform", "f16"), ("uniform", "bf16"),
                                        ("uniform", "f64"), ("normal", "f32"), ("normal", "f64")])
def test_random_reproduces_random_bits(dist, dtype):
    g, b, (seed,) = graph(((), "i64"))
    g.set_outputs([b("random", seed, shape=[3, 37], dtype=dtype, distribution=dist)])
    for s in (0, 12345, -987654321987):
        exact = dist == "uniform"
        check(g, [np.array(s, np.int64)], rtol=0 if exact else 1e-5, atol=0 if exact else 1e-5)


@pytest.mark.parametrize("shape, axis", [((1, 4), 0), ((3, 1), 1), ((1,), 0), ((), None)])
def test_iota_and_random_over_size_one_axes(shape, axis, rng):
    """A size-1 axis (reflect padding of width 1 takes along it) or a one-element result: the index
    is a plain constant there, which once became `(0).to(...)` and failed to compile."""
    g, b, (seed, x) = graph(((), "i64"), (shape, "f32"))
    outs = [b("add", x, b("random", seed, shape=list(shape), dtype="f32", distribution="uniform"))]
    if axis is not None:
        outs.append(b("add", x, b("iota", shape=list(shape), axis=axis, dtype="f32")))
    g.set_outputs(outs)
    check(g, [np.array(7, np.int64), rng.standard_normal(shape).astype(np.float32)])


def test_multi_program_grid_with_small_blocks(rng):
    g, b, (x, y) = graph(((37, 3), "f32"), ((3,), "f32"))
    g.set_outputs([b("mul", x, b("broadcast", y, shape=[37, 3]))])
    cg = check(g, blocks=BlockPolicy.for_device(interpreting()).replace(xblock=16))
    assert cg.launches[0].kernel.grid == (7,)


def test_kernel_source_is_readable_and_named_after_the_group():
    g, b, (x, y) = graph(((8,), "f32"), ((8,), "f32"))
    g.set_outputs([b("relu", b("add", x, y))])
    cg = check(g, fused="fused_add_relu_0")
    src = cg.kernels["fused_add_relu_0"]
    assert "def fused_add_relu_0(in0, in1, out0, XBLOCK: tl.constexpr):" in src
    assert "#   %0 = fusion @fused_add_relu_0(%in0, %in1)" in src  # the group's IR heads the file
    assert "tl.load(in0 + xindex, mask=xmask, other=0)" in src
    ir.verify(g)


def test_fusing_a_graph_without_ops_leaves_it_as_is():
    """A generated chain can come out with no ops (it returns an input): nothing to fuse, and the
    Triton backend still runs it (hypothesis found this case)."""
    from avalon.codegen.triton.testing import fuse
    g = ir.Graph("f")
    x = g.add_input(ir.TensorType((3,), ir.float32), "x")
    g.set_outputs([x])
    assert str(fuse(g)) == str(g)
    check(g, [np.arange(3, dtype=np.float32)])


def test_an_output_planned_over_a_dying_input_is_stored_after_every_load():
    """The memory plan gives output 0 the buffer of %0, which dies in the group; output 0 needs only
    %y, so a kernel storing each output as soon as it is computed overwrote %0 before reading it
    (grid_sample's two-argument gradient came out wrong this way)."""
    from avalon.passes.memory_plan import plan_memory
    g = ir.parse("""
    func @f(%x: tensor<8xf32>, %y: tensor<8xf32>) -> (tensor<8xf32>) {
      %0 = exp %x : tensor<8xf32>
      %1, %2 = fusion @fused_neg_add_0(%y, %0) : tensor<8xf32>, tensor<8xf32> {
        ^bb0(%a: tensor<8xf32>, %b: tensor<8xf32>):
        %3 = neg %a : tensor<8xf32>
        %4 = add %b, %a : tensor<8xf32>
        yield %3, %4
      }
      %5 = mul %1, %2 : tensor<8xf32>
      return %5
    }""")
    plan = plan_memory(g)
    exp, group = g.ops[0], g.ops[1]
    assert plan.inplace.get(group.results[0]) is exp.results[0]
    src = check(g, fused=None).kernels["fused_neg_add_0"]
    assert src.rindex("tl.load(") < src.index("tl.store(")

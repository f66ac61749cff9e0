"""stop_gradient: an identity on every backend that autodiff sends no gradient through."""
import numpy as np
import pytest

import avalon as av
from avalon import ir
from avalon.codegen.triton.testing import check
from avalon.ir import interpret
from avalon.passes import run_pipeline

pytestmark = pytest.mark.usefixtures("module_kernel_cache")  # kernel files go to a temporary cache

TEXT = """func @f(%x: tensor<4x8xf32>) -> (tensor<4x8xf32>) {
  %0 = stop_gradient %x : tensor<4x8xf32>
  %1 = exp %0 : tensor<4x8xf32>
  %2 = mul %1, %x : tensor<4x8xf32>
  return %2
}
"""


def test_grad_treats_the_operand_as_a_constant(rng):
    x = rng.standard_normal((3, 5))
    g = av.grad(lambda x: (av.stop_gradient(x) * x).sum())(x)
    np.testing.assert_allclose(g.numpy(), x, rtol=0, atol=0)  # d/dx (c * x) = c = x, not 2x
    assert not av.grad(lambda x: av.stop_gradient(x).sum())(x).numpy().any()


def test_eager_value_is_a_copy_of_the_operand(rng):
    x = av.tensor(rng.standard_normal((2, 3)).astype(np.float32))
    y = av.stop_gradient(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    ints = av.stop_gradient(np.arange(4))
    np.testing.assert_array_equal(ints.numpy(), np.arange(4))


def test_print_parse_round_trip():
    g = ir.parse(TEXT)
    ir.verify(g)
    assert ir.print_graph(g) == TEXT
    assert ir.print_graph(ir.parse(ir.print_graph(g))) == TEXT


def test_canonicalize_keeps_it_and_fuse_groups_it(rng):
    g = ir.parse(TEXT)
    run_pipeline(g, "canonicalize,cse,dce")
    assert [op.name for op in g.ops] == ["stop_gradient", "exp", "mul"]
    run_pipeline(g, "fuse")
    (fusion,) = [op for op in g.ops if op.name == "fusion"]
    assert "stop_gradient" in [op.name for op in fusion.regions[0].ops]


def test_triton_interpreter_matches_the_reference(rng):
    g = ir.parse(TEXT)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    (want,) = interpret(g, x)
    np.testing.assert_allclose(want, np.exp(x) * x, rtol=1e-6)
    cg = check(g, [x], rtol=1e-6, atol=1e-7)
    assert len(cg.kernels) == 1


def test_grad_graph_runs_on_triton(rng):
    """After the grad transform the op is a plain identity the kernels compute."""
    x = rng.standard_normal((4, 8)).astype(np.float32)
    f = av.compile(av.grad(lambda x: (av.ops.exp(av.stop_gradient(x)) * x).sum()), backend="triton")
    np.testing.assert_allclose(np.asarray(f(x).numpy()), np.exp(x), rtol=1e-6)

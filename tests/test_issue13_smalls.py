"""Issue 13, item 7: conv2d with batch 0 in the reference, and a batched matmul whose operand is
padded or concatenated along the batch dim in Triton's interpreter ("mask has unsupported dtype")."""
from __future__ import annotations

import numpy as np
import pytest

import avalon as av

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def test_conv2d_batch_zero_in_the_reference(rng):
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    y = av.compile(lambda x, w: av.ops.conv2d(x, w, padding=1), backend="numpy")(x, w)
    assert y.shape == (0, 3, 5, 5)

    def loss(x, w):
        return av.ops.conv2d(x, w).sum()

    dx, dw = av.compile(av.grad(loss, argnums=(0, 1)), backend="numpy")(x, w)
    assert dx.shape == x.shape and dw.shape == w.shape
    np.testing.assert_array_equal(dw.numpy(), 0)


@pytest.mark.parametrize("how", ["concat", "pad"])
def test_batched_matmul_with_a_batch_dim_built_operand(rng, how):
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4, 5)).astype(np.float32)
    if how == "concat":
        def f(a, b):
            return av.ops.matmul(av.ops.concat([a, a[:1]], axis=0), b)
        want = np.matmul(np.concatenate([a, a[:1]]), b)
    else:
        def f(a, b):
            return av.ops.matmul(av.ops.pad(a, [(1, 0), (0, 0), (0, 0)], value=0.5), b)
        want = np.matmul(np.pad(a, [(1, 0), (0, 0), (0, 0)], constant_values=0.5), b)
    got = av.compile(f, backend="triton", pipeline="canonicalize,cse,dce,fuse")(a, b).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

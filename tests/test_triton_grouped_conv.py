"""Grouped and depthwise convolution (forward and both gradients) run all groups in one launch:
narrow groups fold into the rows of one broadcast-product kernel, wide ones keep the `tl.dot`
kernel with the group on grid axis 1. Checked against the numpy reference with blocks small
enough that rows span several groups and the K loop runs more than once."""
import numpy as np
import pytest
from helpers import graph

from avalon.codegen.triton import BlockPolicy
from avalon.codegen.triton.cache import interpreting
from avalon.codegen.triton.testing import check

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

BIG = BlockPolicy.for_device(interpreting())
SMALL = BIG.replace(mm_k=8, reduction_elems=512)  # folded: rows cross groups, several K steps

# (N, C, H, W), groups, out channels, stride, padding, dilation
CASES = {
    "groups1": ((2, 4, 7, 6), 1, 6, 1, 1, 1),
    "groups2": ((2, 4, 7, 6), 2, 6, 2, 1, 1),
    "groups2_wide": ((1, 4, 5, 5), 2, 36, 1, 1, 1),
    "depthwise": ((2, 8, 9, 7), 8, 8, 1, 1, 1),
    "depthwise_x2_strided": ((2, 6, 9, 9), 6, 12, 2, 2, 2),
}


def _conv(name):
    xs, groups, o, s, p, d = CASES[name]
    ws = (o, xs[1] // groups, 3, 3)
    attrs = dict(stride=[s, s], padding=[p, p], dilation=[d, d], groups=groups)
    return xs, ws, attrs


@pytest.mark.parametrize("blocks", [BIG, SMALL], ids=["big", "small"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("form", ["forward", "grad_input", "grad_weight"])
def test_grouped_conv_matches_reference(name, form, blocks, rng):
    xs, ws, attrs = _conv(name)
    if form == "forward":
        g, b, (x, w, bias) = graph((xs, "f32"), (ws, "f32"), ((ws[0],), "f32"))
        y = b("conv2d", x, w, **attrs)
        bb = b("broadcast", b("reshape", bias, shape=[ws[0], 1, 1]), shape=list(y.shape))
        g.set_outputs([b("relu", b("add", y, bb))])
    else:
        g0, b0, (x0, w0) = graph((xs, "f32"), (ws, "f32"))
        ys = b0("conv2d", x0, w0, **attrs).shape
        if form == "grad_input":
            g, b, (dy, w) = graph((ys, "f32"), (ws, "f32"))
            g.set_outputs([b("conv2d_grad_input", dy, w, input_shape=list(xs), **attrs)])
        else:
            g, b, (x, dy) = graph((xs, "f32"), (ys, "f32"))
            g.set_outputs([b("conv2d_grad_weight", x, dy, weight_shape=list(ws), **attrs)])
    cg = check(g, blocks=blocks, kind="contraction", rng=rng)
    (launch,) = cg.launches
    grid = launch.kernel.grid
    groups = attrs["groups"]
    # columns of one group's GEMM: out channels per group, in channels per group, (c, kh, kw) taps
    cols = {"forward": ws[0] // groups, "grad_input": ws[1], "grad_weight": ws[1] * 9}[form]
    if groups > 1 and cols < 16:
        # folded: one grid axis; with big blocks the whole layer is a single program
        assert len(grid) == 1 and "tl.dot(" not in launch.kernel.source
        if blocks is BIG:
            assert grid == (1,)
        else:
            assert grid[0] > 1  # small blocks: several programs, each spanning several groups
    else:
        assert grid[1] == groups  # tl.dot, the group on grid axis 1 of the same launch
        assert "tl.dot(" in launch.kernel.source

def test_depthwise_kernel_has_no_program_per_group():
    """MobileNet-sized depthwise layer: 32 channels, at most 2 programs (was 32, one per group)."""
    g, b, (x, w) = graph(((2, 32, 16, 16), "f32"), ((32, 1, 3, 3), "f32"))
    g.set_outputs([b("conv2d", x, w, stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=32)])
    cg = check(g, kind="contraction", rng=np.random.default_rng(1))
    assert cg.launches[0].kernel.grid[0] <= 2 and len(cg.launches[0].kernel.grid) == 1

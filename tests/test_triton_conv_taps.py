"""Blocked taps: a convolution runs its contraction as (tap, channel) with the tap a per-tile
scalar, its channels padded to a multiple of 16 (`gemms._kblock`, `Gemm.kblock`; padding masked). The bounds test
of the image border and the tap's offset are then scalars or [BM, 1] columns, and each operand's
address is a pointer tile made before the K loop plus a scalar: in the sm_90 PTX a ResNet 3x3
conv's K step went from ~550 to ~180 instructions (`benchmarks/ptx_report.py`). Checked here
against the numpy reference in every form that takes them (forward, input gradient at stride 1
and per stride phase, grouped, channels-last, split K) and against the per-element form the tuner
times beside it."""
import numpy as np
import pytest
from helpers import conv_graph
from test_triton_split_k import SPLIT, PickTimer

from avalon.codegen.triton import BlockPolicy, KernelCache, compile_graph
from avalon.codegen.triton.autotune import Tuner, candidates, config_of
from avalon.codegen.triton.cache import interpreting
from avalon.codegen.triton.testing import check, fuse
from avalon.ir import Builder

SMALL = BlockPolicy.for_device(interpreting()).replace(mm_block=16, mm_k=16)  # BK 16: two K tiles a tap at C=32
NHWC = (0, 2, 3, 1)

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def taps_graph(kind: str, n: int, c: int, o: int, hw: tuple[int, int], stride: int, groups: int = 1,
               layout: tuple | None = None):
    """`kind` with a 3x3 kernel, padding 1, c -> o channels; conv2d gets a relu epilogue."""
    attrs = dict(stride=[stride, stride], padding=[1, 1], dilation=[1, 1], groups=groups)
    g = conv_graph(kind, (n, c, *hw), (o, c // groups, 3, 3), attrs, layout)
    if kind == "conv2d":
        g.set_outputs([Builder(g)("relu", g.outputs[0])])
    return g


def blocked(k) -> bool:
    return k.meta.get("TAPS") == 1 and "kq = " in k.source


@pytest.mark.parametrize("kind,c,o,stride,groups,layout", [
    ("conv2d", 32, 16, 1, 1, None),  # two K tiles a tap
    ("conv2d", 16, 24, 2, 1, None),  # strided; N not a multiple of the tile
    ("conv2d", 32, 32, 1, 2, None),  # two groups of 16 channels (grid axis 1)
    ("conv2d", 32, 16, 1, 1, NHWC),
    ("conv2d_grad_input", 24, 32, 1, 1, None),
    ("conv2d_grad_input", 16, 16, 2, 1, None),  # four stride phases of 1, 2, 2, 4 taps
    ("conv2d_grad_input", 16, 32, 2, 1, NHWC),
    ("conv2d", 24, 24, 1, 1, None),  # 24 channels padded to 32
    ("conv2d_grad_input", 20, 50, 1, 1, None),  # its input gradient: 50 padded to 64
    ("conv2d_grad_input", 8, 24, 2, 1, NHWC),  # padded, per stride phase, channels-last
], ids=lambda v: str(v))
def test_blocked_taps_match_the_reference(kind, c, o, stride, groups, layout):
    g = taps_graph(kind, 2, c, o, (5, 6), stride, groups, layout)
    cg = check(g, blocks=SMALL, kind="contraction", rng=np.random.default_rng(c + o + stride))
    chain = [k for ln in cg.launches for k in ln.kernel.chain()]
    assert any(blocked(k) for k in chain), cg.kernels
    if stride == 2 and kind == "conv2d_grad_input":  # the phase of 4 taps is blocked, the 1-tap one need not be
        assert len(chain) == 4 and "kq = " in cg.kernels["fused_0"]
    channels = o if kind == "conv2d_grad_input" else c // groups
    assert ("mask_kc = " in cg.kernels["fused_0"]) == (channels % 16 != 0)


def test_taps_stay_per_element_where_padding_would_cost_too_much():
    """An RGB image (3 channels would pad to 16), 8 channels (to 16), LeNet's conv2 (20 to 32: more
    K steps for a small kernel) and the weight gradient (taps on N) keep the per-element form."""
    for g in (taps_graph("conv2d", 2, 3, 16, (6, 6), 1), taps_graph("conv2d_grad_input", 2, 16, 8, (6, 6), 1),
              taps_graph("conv2d", 2, 20, 16, (6, 6), 1),
              taps_graph("conv2d_grad_weight", 2, 16, 16, (5, 5), 1)):
        cg = check(g, blocks=SMALL, kind="contraction")
        assert not any(blocked(ln.kernel) for ln in cg.launches)


@pytest.mark.parametrize("c", [64, 24])
def test_split_k_with_blocked_taps(c):
    """A conv of few output tiles and a long K splits K; each chunk starts on a BK boundary, so its
    tiles still lie in one tap each (the tap of `k_lo + k0`), and the last chunk's steps past K
    (five chunks of 4 steps over 18, of 8 over 36) are masked off by a scalar tap test."""
    g = taps_graph("conv2d", 1, c, 16, (3, 3), 1)
    cg = check(g, blocks=SPLIT.replace(split_programs=5), kind="contraction", rng=np.random.default_rng(5))
    k = cg.launches[0].kernel
    steps, chunk = k.problem["k"] // k.meta["BK"], k.meta["KCHUNK"] // k.meta["BK"]
    assert blocked(k) and k.then is not None and k.grid[2] > 1 and f"(k_lo + k0) // {k.problem['kblock']}" in k.source
    assert steps % chunk and k.grid[2] * chunk > steps, (steps, chunk, k.grid)  # a ragged last chunk


def test_tuner_times_the_per_element_form_beside_the_blocked_one(tmp_path, rng):
    g = fuse(taps_graph("conv2d", 2, 32, 16, (5, 5), 1))
    cache = KernelCache(tmp_path)
    k0 = compile_graph(g, cache=cache, blocks=SMALL).launches[0].kernel
    cands = candidates(k0)
    assert blocked(k0) and any("TAPS" not in c.blocks for c in cands)
    assert all(c.blocks["BK"] <= 32 for c in cands if c.blocks.get("TAPS"))  # BK divides the 32 channels
    timer = PickTimer(lambda c: "TAPS" not in c.blocks)
    cg = compile_graph(g, cache=cache, blocks=SMALL, tuner=Tuner(timer, force=True, device="test-gpu"))
    k = cg.launches[0].kernel
    assert "TAPS" not in k.meta and "kq = " not in k.source and "TAPS=1" in " ".join(timer.labels)
    xs = [rng.standard_normal(v.shape).astype(np.float32) for v in g.inputs]
    from avalon.ir import interpret
    want = interpret(g, *xs)[0]
    got = cg(*xs)[0].numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < (1e-5 if interpreting() else 1e-2)  # GPU: tf32
    assert config_of(k).label == cg.tuning[k.name]["config"]

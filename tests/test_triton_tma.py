"""The TMA form of a plain matmul: A and B read by Hopper's tensor-memory accelerator through
tensor descriptors, an autotuner candidate only (its cost shows on a GPU). Checked in the
interpreter against the reference with the candidate forced, and compiled to sm_90 PTX."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import graph
from test_autotune import DEVICE, FakeTimer

from avalon.codegen.triton import KernelCache, compile_graph
from avalon.codegen.triton.autotune import SMEM_BYTES, Tuner, candidates, config_of
from avalon.codegen.triton.cache import interpreting
from avalon.codegen.triton.testing import fuse, random_inputs
from avalon.ir import interpret, to_numpy

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def linear(dtype: str, transposed: bool, m: int = 64, k: int = 48, n: int = 32):
    """relu(x @ w + b), w given as [n, k] and transposed inside the group when `transposed`."""
    g, b, (x, w, bias) = graph(((m, k), dtype), ((n, k) if transposed else (k, n), dtype), ((n,), dtype))
    y = b("matmul", x, b("transpose", w, perm=[1, 0]) if transposed else w)
    g.set_outputs([b("relu", b("add", y, b("broadcast", bias, shape=[m, n])))])
    return fuse(g)


@pytest.mark.parametrize("dtype,transposed,tol", [("f32", False, 1e-5), ("f16", False, 2e-3), ("f32", True, 1e-5),
                                                  ("bf16", True, 2e-2)])
def test_tma_candidate_computes_the_reference(tmp_path, dtype, transposed, tol):
    tma = _forced_tma(linear(dtype, transposed), tmp_path, tol, seed=0)
    assert all("SPLIT_K" not in c.blocks for c in tma)  # (small: the big tiles clip to the same)


def _forced_tma(g, tmp_path, tol: float, seed: int) -> list:
    """`g`'s kernel with its first TMA candidate chosen, checked against the reference; its TMA
    candidates."""
    cache = KernelCache(tmp_path)
    k0 = next(ln.kernel for ln in compile_graph(g, cache=cache).launches)
    assert k0.problem.get("tma") == 1, k0.problem
    tma = [c for c in candidates(k0) if c.blocks.get("TMA")]
    assert tma
    cg = compile_graph(g, cache=cache, tuner=Tuner(FakeTimer({tma[0].label: 0.1}), force=True, device=DEVICE))
    k = next(ln.kernel for ln in cg.launches)
    assert config_of(k) == tma[0] and k.source.count("tl.make_tensor_descriptor(") == 2
    _check(g, cg, tol, seed)
    return tma


def _check(g, cg, tol: float, seed: int) -> None:
    xs = random_inputs(g, np.random.default_rng(seed))
    want = interpret(g, *xs)[0].astype(np.float64)
    got = to_numpy(cg(*xs)[0]).astype(np.float64)
    tol = tol if interpreting() else max(tol, 2e-2)  # a GPU's f32 dots may be tf32
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def sequence_linear(dtype: str, B: int = 4, T: int = 16, C: int = 48, N: int = 32):
    """relu(x @ w) on a [B, T, C] sequence, seen as a [B*T, C] matrix (a transformer's Linear)."""
    g, b, (x, w) = graph(((B, T, C), dtype), ((C, N), dtype))
    y = b("matmul", b("reshape", x, shape=[B * T, C]), w)
    g.set_outputs([b("relu", b("reshape", y, shape=[B, T, N]))])
    return fuse(g)


def sequence_weight_grad(dtype: str, B: int = 4, T: int = 16, C: int = 48, N: int = 32):
    """A Linear's weight gradient on a sequence, x^T @ dy over the B*T rows: both operands reshaped,
    the first also transposed."""
    g, b, (x, dy) = graph(((B, T, C), dtype), ((B, T, N), dtype))
    xt = b("transpose", b("reshape", x, shape=[B * T, C]), perm=[1, 0])
    g.set_outputs([b("matmul", xt, b("reshape", dy, shape=[B * T, N]))])
    return fuse(g)


@pytest.mark.parametrize("make,dtype,tol", [(sequence_linear, "f32", 1e-5), (sequence_linear, "f16", 2e-3),
                                            (sequence_weight_grad, "f32", 1e-5)])
def test_tma_reads_sequences_through_their_row_merging_reshape(tmp_path, make, dtype, tol):
    _forced_tma(make(dtype), tmp_path, tol, seed=1)


def test_tma_with_split_k_reads_zeros_past_k(tmp_path, monkeypatch):
    """A weight gradient over 80 rows in 3 chunks of 32: the last chunk runs 16 rows past K, which
    the descriptor's bounds zero-fill; the epilogue sums the chunks."""
    from avalon.codegen.triton import autotune
    from avalon.codegen.triton.blocks import KernelConfig
    g = sequence_weight_grad("f32", B=5)
    cfg = KernelConfig.of({"BM": 16, "BN": 32, "BK": 16, "GROUP_M": 8, "TMA": 1, "SPLIT_K": 3, "KCHUNK": 32}, 4, 3)
    monkeypatch.setitem(autotune.CANDIDATES, "contraction", lambda k: [cfg])
    cg = compile_graph(g, cache=KernelCache(tmp_path), tuner=Tuner(FakeTimer({cfg.label: 0.1}), force=True,
                                                                  device=DEVICE))
    k = next(ln.kernel for ln in cg.launches)
    assert config_of(k) == cfg and k.then is not None and "tl.make_tensor_descriptor(" in k.source
    _check(g, cg, 1e-5, seed=2)


@pytest.mark.parametrize("dtype,tma,tol", [("f16", 1, 2e-3), ("f32", 1, 1e-5), ("f32", 0, 1e-5)])
def test_persistent_programs_walk_every_tile_once(tmp_path, monkeypatch, dtype, tma, tol):
    """PERSIST=3 programs over 4 x 2 output tiles (3, 3 and 2 each), the fused bias + relu in the
    tile loop; with and without TMA descriptors (made once, before the loop)."""
    from avalon.codegen.triton import autotune
    from avalon.codegen.triton.blocks import KernelConfig
    g = linear(dtype, True)
    cfg = KernelConfig.of({"BM": 16, "BN": 16, "BK": 16, "GROUP_M": 8, "PERSIST": 3, **({"TMA": 1} if tma else {})},
                          4, 3)
    monkeypatch.setitem(autotune.CANDIDATES, "contraction", lambda k: [cfg])
    cg = compile_graph(g, cache=KernelCache(tmp_path), tuner=Tuner(FakeTimer({cfg.label: 0.1}), force=True,
                                                                  device=DEVICE))
    k = next(ln.kernel for ln in cg.launches)
    assert config_of(k) == cfg and k.grid[0] == 3, (config_of(k), k.grid)
    loop = k.source.index("for tile in tl.range(")
    assert k.source.count("tl.make_tensor_descriptor(") == 2 * tma
    assert all(k.source.index(ln) < loop for ln in k.source.splitlines() if "make_tensor_descriptor" in ln)
    _check(g, cg, tol, seed=3)


def test_persistent_candidates_only_where_tiles_outnumber_the_sms():
    from avalon.codegen.triton.autotune import contraction_candidates
    from avalon.codegen.triton.kernel import Kernel

    def persistent(m, n, itemsize):
        k = Kernel("k", "contraction", "", [], {"BM": 128, "BN": 128, "BK": 32, "GROUP_M": 8}, (1,), num_warps=8,
                   num_stages=3, problem={"m": m, "n": n, "k": 4096, "groups": 1, "itemsize": itemsize, "tma": 1})
        return [c for c in contraction_candidates(k) if c.blocks.get("PERSIST")]
    assert len(persistent(4096, 4096, 2)) == 2  # 1024 and 512 tiles of 128x128 and 128x256
    assert not persistent(1024, 1024, 2)  # 64 tiles: a program each already
    assert not persistent(4096, 4096, 4)  # float32: its epilogue buffer leaves the big tiles no room


@pytest.mark.parametrize("shape", [(10, 7, 5), (64, 50, 30)])
def test_operands_tma_cannot_describe_get_no_tma_candidate(tmp_path, shape):
    """Row strides of 7 or 30 floats are not multiples of 16 bytes, which TMA requires."""
    g = linear("f32", False, *shape)
    k0 = next(ln.kernel for ln in compile_graph(g, cache=KernelCache(tmp_path)).launches)
    assert "tma" not in k0.problem and not any(c.blocks.get("TMA") for c in candidates(k0))


SCRIPT = textwrap.dedent('''
    import json, os, sys
    assert os.environ["TRITON_INTERPRET"] == "0"
    sys.path.insert(0, sys.argv[1])
    from test_triton_tma import linear
    from avalon.codegen.triton import BlockPolicy
    from avalon.codegen.triton.aot import compile_for_target
    from avalon.codegen.triton.blocks import KernelConfig
    from avalon.codegen.triton.build import build_kernel
    from avalon.codegen.triton.cache import KernelCache
    from avalon.codegen.triton.group import from_fusion
    g = linear("f16", True, 4096, 4096, 4096)
    got = {}
    for name, extra in (("tma", {}), ("persistent", {"PERSIST": 132})):
        cfg = KernelConfig.of({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8, "TMA": 1, **extra}, 8, 3)
        k = build_kernel(from_fusion(g.ops[0], f"fused_linear_{name}"), BlockPolicy.for_device(False), config=cfg)
        k.fn = KernelCache().load(k.name, k.source)
        ck = compile_for_target(k)
        ptx = ck.asm["ptx"]
        got[name] = {"tma": ptx.count("cp.async.bulk.tensor"), "wgmma": ptx.count("wgmma.mma_async"),
                     "shared": ck.metadata.shared, "grid": k.grid[0]}
    print(json.dumps(got))
''')


def test_tma_and_persistent_forms_compile_to_bulk_tensor_copies_for_h100(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "AVALON_CACHE_DIR": str(tmp_path / "avalon"),
           "TRITON_CACHE_DIR": str(tmp_path / "triton"),
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, os.path.dirname(__file__)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for form in got.values():
        assert form["tma"] > 0 and form["wgmma"] > 0, got
    assert got["persistent"]["grid"] == 132 and got["persistent"]["shared"] <= SMEM_BYTES, got

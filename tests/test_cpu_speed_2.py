"""backend='cpu' row-patch convolutions with their own, smaller workspace (`kernels.ROWS_CHUNK_BYTES`):
the chunk sizes the generated code takes, and the values of several chunks (a partial last one
included) against the reference interpreter and a float64 reference."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from avalon.codegen.numpy import GeneratedExecutable, kernels
from avalon.ir import Builder, Graph, TensorType, interpret

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="backend='cpu' needs a C compiler")


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path))


GEO = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)
ROWS = {"conv2d": "K.conv2d_rows(", "conv2d_grad_input": "K.conv2d_grad_input_rows(",
        "conv2d_grad_weight": "K.conv2d_grad_weight_rows("}


def _graph(kind: str, n: int, c: int, hw: int, o: int, dtype: str) -> tuple[Graph, list[np.ndarray]]:
    """One 3x3, padding-1 convolution op of `kind` and random (never zero) inputs for it."""
    rng = np.random.default_rng(n * 100 + c + o)
    f = np.float32 if dtype == "f32" else np.float64
    g = Graph("f")
    b = Builder(g)
    x = rng.standard_normal((n, c, hw, hw)).astype(f)
    w = rng.standard_normal((o, c, 3, 3)).astype(f)
    dy = rng.standard_normal((n, o, hw, hw)).astype(f)
    if kind == "conv2d":
        args = [x, w]
        out = b(kind, g.add_input(TensorType(x.shape, dtype), "x"), g.add_input(TensorType(w.shape, dtype), "w"), **GEO)
    elif kind == "conv2d_grad_input":
        args = [dy, w]
        out = b(kind, g.add_input(TensorType(dy.shape, dtype), "dy"), g.add_input(TensorType(w.shape, dtype), "w"),
                input_shape=[n, c, hw, hw], **GEO)
    else:
        args = [x, dy]
        out = b(kind, g.add_input(TensorType(x.shape, dtype), "x"), g.add_input(TensorType(dy.shape, dtype), "dy"),
                weight_shape=[o, c, 3, 3], **GEO)
    g.set_outputs([out])
    return g, args


def _workspace_rows(exe: GeneratedExecutable, kind: str) -> int:
    """Rows of the patch workspace (the call's sixth argument, a scratch view) the generated call passes."""
    call = next(line for line in exe.source.splitlines() if ROWS[kind] in line)
    name = call.split(ROWS[kind])[1].split(", ")[5]
    return exe.emission.views[name].type.shape[0]


def test_rows_chunk_is_bounded_by_both_budgets(monkeypatch):
    """ROWS_CHUNK_BYTES bounds a row workspace, CHUNK_BYTES too when it is smaller; never below one row."""
    assert kernels.ROWS_CHUNK_BYTES < kernels.CHUNK_BYTES
    assert kernels.rows_chunk(10 ** 6, 576) == kernels.ROWS_CHUNK_BYTES // 576
    assert kernels.rows_chunk(100, 576) == 100
    assert kernels.rows_chunk(100, 10 ** 9) == 1
    monkeypatch.setattr(kernels, "CHUNK_BYTES", 1 << 12)
    assert kernels.rows_chunk(10 ** 6, 64) == (1 << 12) // 64


@pytest.mark.parametrize("kind", list(ROWS))
def test_resnet_stage_one_convolution_takes_several_row_chunks(kind):
    """A narrow ResNet's first stage (16 channels, 32x32), 2 samples: 2048 positions of 576 bytes
    (f32) are ~1.1 MiB of patches, so the default workspace holds a part and the GEMMs run per chunk;
    the values match the reference interpreter and, relative to the magnitude, a float64 run."""
    g, args = _graph(kind, 2, 16, 32, 16, "f32")
    exe = GeneratedExecutable(g, native=True)
    assert ROWS[kind] in exe.source
    rows = kernels.rows_chunk(2 * 32 * 32, 16 * 9 * 4)
    assert 1 < rows < 2 * 32 * 32 and _workspace_rows(exe, kind) == rows
    want = interpret(g, *args)[0]
    g64, args64 = _graph(kind, 2, 16, 32, 16, "f64")
    ref = interpret(g64, *args64)[0]
    for _ in range(2):  # the workspaces are reused
        got = exe(*args)[0]
        assert got.dtype == np.float32 and got.shape == want.shape
        scale = float(np.abs(ref).max())
        assert float(np.abs(got - ref).max()) / scale < 1e-5
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("kind", list(ROWS))
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_small_row_workspace_partial_last_chunk(kind, dtype, monkeypatch):
    """A row workspace of 37 rows (CHUNK_BYTES left large): 2*9*9 = 162 positions are four full
    chunks and a partial one, each GEMM's rows landing in their place."""
    z = 4 if dtype == "f32" else 8
    monkeypatch.setattr(kernels, "ROWS_CHUNK_BYTES", 37 * 8 * 9 * z)
    g, args = _graph(kind, 2, 8, 9, 8, dtype)
    exe = GeneratedExecutable(g, native=True)
    assert ROWS[kind] in exe.source
    assert kernels.rows_chunk(162, 8 * 9 * z) == 37 and _workspace_rows(exe, kind) == 37
    want = interpret(g, *args)[0]
    tol = 2e-5 if dtype == "f32" else 1e-12
    for _ in range(2):
        got = exe(*args)[0]
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)

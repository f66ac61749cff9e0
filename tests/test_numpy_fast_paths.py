"""Fast paths of the numpy code generator that replaced reference-rule fallbacks or numpy passes:
`pad`, `one_hot` and `slice` emitters (bit for bit the interpreter, its errors included), the compiled
patch copy and input-gradient scatter of batch-first convolutions (`backend="cpu"`, bit for bit the
numpy backend's copies and per-tap adds), and the BLAS thread count generated calls run with (one thread inside,
the caller's count restored after)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import avalon as av
from avalon.codegen.numpy import GeneratedExecutable, kernels
from avalon.codegen.numpy.backend import NUMPY, CpuBackend
from avalon.ir import interpret, parse
from avalon.ir.reference.gather import IndexOutOfRangeError
from avalon.nn import functional as F

HAS_CC = shutil.which("cc") is not None or shutil.which("gcc") is not None
BACKENDS = [False, pytest.param(True, marks=pytest.mark.skipif(not HAS_CC, reason="backend='cpu' needs a C compiler"))]

MOVEMENT = """func @f(%x: tensor<3x4x5xf32>, %i: tensor<2x3xi64>, %b: tensor<4x5xf64>) -> (tensor<5x4x8xf32>, tensor<2x3x6xf32>, tensor<2x2x3xf32>, tensor<3x4x5xf32>, tensor<2x7x5xf64>) {
  %0 = pad %x {low = [1, 0, 2], high = [1, 0, 1], value = 1.5} : tensor<5x4x8xf32>
  %1 = one_hot %i {num_classes = 6} : tensor<2x3x6xf32>
  %2 = slice %x {start = [0, 1, 0], limit = [3, 4, 5], step = [2, 1, 2]} : tensor<2x3x3xf32>
  %3 = slice %2 {start = [0, 1, 0], limit = [2, 3, 3]} : tensor<2x2x3xf32>
  %4 = pad %x {low = [0, 0, 0], high = [0, 0, 0]} : tensor<3x4x5xf32>
  %5 = broadcast %b {shape = [2, 4, 5]} : tensor<2x4x5xf64>
  %6 = pad %5 {low = [0, 3, 0], high = [0, 0, 0], value = -2.0} : tensor<2x7x5xf64>
  return %0, %1, %3, %4, %6
}"""


@pytest.mark.parametrize("native", BACKENDS)
def test_pad_one_hot_slice_are_the_interpreters_bit_for_bit(native, tmp_path, monkeypatch):
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path))
    g = parse(MOVEMENT)
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((3, 4, 5)).astype(np.float32), rng.integers(0, 6, (2, 3)),
            rng.standard_normal((4, 5))]
    exe = GeneratedExecutable(g, None, CpuBackend.target if native else NUMPY, native)
    assert "_ev(" not in exe.source, exe.source  # no op left to a reference rule
    want = interpret(g, *args)
    for _ in range(2):  # twice: the buffers are reused
        for got, w in zip(exe(*args), want):
            assert got.dtype == w.dtype and got.shape == w.shape
            np.testing.assert_array_equal(got, w)
    with pytest.raises(IndexOutOfRangeError, match="index 6 is out of range for num_classes=6"):
        exe(args[0], np.array([[0, 1, 6], [0, 0, 0]]), args[2])
    with pytest.raises(IndexOutOfRangeError, match="index -1"):
        exe(args[0], np.array([[0, 1, 2], [0, -1, 0]]), args[2])


@pytest.mark.skipif(not HAS_CC, reason="backend='cpu' needs a C compiler")
@pytest.mark.parametrize("n,c,o,h,k,stride,pad,dil", [(3, 4, 5, 18, 3, 1, 1, 1), (2, 3, 4, 36, 3, 2, 1, 1),
                                                      (2, 3, 2, 24, 3, 1, 2, 2), (5, 2, 3, 20, 5, 1, 0, 1)])
def test_batch_first_conv_input_gradient_compiled_scatter(n, c, o, h, k, stride, pad, dil, tmp_path, monkeypatch):
    """Output planes of >= 256 positions take the batch-first layout; its patch copy and its taps'
    scatter are compiled on backend='cpu' and must give the numpy backend's results exactly, and
    torch's within float32."""
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "CHUNK_BYTES", 1 << 14)  # several chunks of samples
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = rng.standard_normal((o, c, k, k)).astype(np.float32)

    def f(x, w):
        return (F.conv2d(x, w, stride=stride, padding=pad, dilation=dil) ** 2).sum()

    got = {}
    for backend in ("numpy", "cpu"):
        step = av.compile(av.grad(f, argnums=(0, 1)), backend=backend)
        got[backend] = [np.asarray(t.numpy()) for t in step(x, w)]
        if backend == "cpu":  # the compiled scatter and patch copies are what ran
            src = step.inspect(x, w).source
            for kernel in ("conv2d_grad_input_bf", "conv2d_grad_weight_bf"):
                call = src.split(f"K.{kernel}(")[1].split("\n")[0]
                assert ", run" in call, call
            fwd = av.compile(lambda x, w: F.conv2d(x, w, stride=stride, padding=pad, dilation=dil), backend="cpu")
            np.testing.assert_array_equal(np.asarray(fwd(x, w).numpy()), np.asarray(
                av.compile(lambda x, w: F.conv2d(x, w, stride=stride, padding=pad, dilation=dil))(x, w).numpy()))
            assert ", run" in fwd.inspect(x, w).source.split("K.conv2d_bf(")[1].split("\n")[0]
    for a, b in zip(got["numpy"], got["cpu"]):
        np.testing.assert_array_equal(a, b)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    (torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad, dilation=dil) ** 2).sum().backward()
    for a, t in zip(got["cpu"], (tx.grad.numpy(), tw.grad.numpy())):
        assert np.abs(a - t).max() <= 1e-5 * np.abs(t).max()


class _FakeThreads:
    """Stands in for OpenBLAS's get/set of its thread count, recording every set."""

    def __init__(self, n: int):
        self.n, self.log = n, []

    def get(self) -> int:
        return self.n

    def set(self, n: int) -> None:
        self.n = n
        self.log.append(n)


def test_generated_calls_run_blas_on_one_thread_and_restore_the_callers_count(monkeypatch):
    fake = _FakeThreads(2)
    monkeypatch.setattr(kernels, "_CTL", [(fake.get, fake.set)])
    seen = []
    monkeypatch.setattr(kernels, "one_hot", lambda idx, out: (seen.append(fake.n), out.fill(0)))
    g = parse("""func @f(%i: tensor<4xi64>, %a: tensor<8x8xf32>) -> (tensor<4x3xf32>, tensor<8x8xf32>) {
  %0 = one_hot %i {num_classes = 3} : tensor<4x3xf32>
  %1 = matmul %a, %a : tensor<8x8xf32>
  return %0, %1
}""")
    exe = GeneratedExecutable(g)
    a = np.eye(8, dtype=np.float32)
    exe(np.zeros(4, np.int64), a)
    assert seen == [1] and fake.n == 2 and fake.log == [1, 2]  # one thread inside, the caller's 2 after
    assert "K.wide" not in exe.source  # an 8x8x8 GEMM stays on one thread
    monkeypatch.setattr(kernels, "PARALLEL_MIN_MNK", 1)
    exe2 = GeneratedExecutable(g)
    assert "K.wide(512)" in exe2.source
    fake.log.clear()
    np.testing.assert_array_equal(exe2(np.zeros(4, np.int64), a)[1], a)
    assert fake.log == [1, 2, 1, 2]  # in, widened for the GEMM, back to one, the caller's after
    fake.n = 1  # a caller on one thread: nothing is set
    fake.log.clear()
    exe2(np.zeros(4, np.int64), a)
    assert fake.log == []


def test_thread_count_is_restored_when_the_call_raises(monkeypatch):
    fake = _FakeThreads(3)
    monkeypatch.setattr(kernels, "_CTL", [(fake.get, fake.set)])
    g = parse("""func @f(%i: tensor<2xi64>) -> (tensor<2x3xf32>) {
  %0 = one_hot %i {num_classes = 3} : tensor<2x3xf32>
  return %0
}""")
    with pytest.raises(IndexOutOfRangeError):
        GeneratedExecutable(g)(np.array([0, 3]))
    assert fake.n == 3


def test_blas_threads_are_left_alone_on_larger_machines(monkeypatch):
    monkeypatch.setattr(kernels, "_CTL", [])
    monkeypatch.setattr(kernels, "SERIAL_MAX_CPUS", 0)  # this machine counts as a large one
    assert kernels.serial() == 0 and kernels._CTL == [None]
    assert kernels.wide(1 << 40) is False


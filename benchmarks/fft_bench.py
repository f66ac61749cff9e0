"""`av.fft` and `av.stft` on the CPU against torch.fft (pocketfft) in one process, rounds interleaved,
medians.

    python benchmarks/fft_bench.py [--rounds 7] [--reps 5] [--threads 2]

Avalon's transforms are products with DFT matrices (avalon/fft.py says why): O(n^2) per axis where
torch's FFT is O(n log n), so the ratio grows with n; the cases are the sizes models use: an FNO layer
(rfft2/irfft2 of a 64x64 grid, 16 channels), FNet mixing (fftn over 128 tokens x 64 features),
a spectral loss's STFT (n_fft 512 over one second at 16 kHz) and rfft/irfft round trips of 64 to 1024
points. Each compiled function (backend "cpu") is checked against torch (relative 1e-4) before timing;
forward and gradient are timed separately.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import avalon as av  # noqa: E402


def cases(rng: np.random.Generator) -> dict:
    """name -> (avalon fn, torch fn, inputs as numpy float32 arrays)."""
    out = {}
    for n in (64, 256, 1024):
        out[f"rfft+irfft 32x{n}"] = (lambda m, x, n=n: m.fft.irfft(m.fft.rfft(x) * 0.5, n=n),
                                     rng.standard_normal((32, n)))
    out["fno rfft2/irfft2 4x16x64x64"] = (lambda m, x: m.fft.irfft2(m.fft.rfft2(x)[..., :12, :12], s=(64, 64)),
                                          rng.standard_normal((4, 16, 64, 64)))
    out["fnet fftn 8x128x64 .real"] = (lambda m, x: m.fft.fftn(x, dim=(1, 2)).real, rng.standard_normal((8, 128, 64)))
    out["stft 4x16000 n_fft 512 |.|"] = (
        lambda m, x: m.stft(x, 512, 128, window=m.hann_window(512), return_complex=True).abs(),
        rng.standard_normal((4, 16000)))
    return {k: (f, x.astype(np.float32)) for k, (f, x) in out.items()}


def timed(fn, args, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    return (time.perf_counter() - t) / reps * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    av.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for name, (f, x) in cases(rng).items():
        ours = av.compile(lambda x, f=f: f(av, x), backend="cpu")
        ours_g = av.compile(av.grad(lambda x, f=f: (f(av, x) ** 2).sum()), backend="cpu")
        tx = torch.from_numpy(x)

        def theirs(tx, f=f):
            return f(torch, tx)

        def theirs_g(tx, f=f):
            t = tx.detach().requires_grad_(True)
            (f(torch, t) ** 2).sum().backward()
            return t.grad
        ax = av.tensor(x)
        for a, b in ((ours(ax), theirs(tx)), (ours_g(ax), theirs_g(tx))):
            a, b = a.numpy(), b.detach().numpy()
            assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), name
        times: dict[str, list[float]] = {k: [] for k in ("avalon", "torch", "avalon grad", "torch grad")}
        for _ in range(args.rounds):
            times["avalon"].append(timed(ours, (ax,), args.reps))
            times["torch"].append(timed(theirs, (tx,), args.reps))
            times["avalon grad"].append(timed(ours_g, (ax,), args.reps))
            times["torch grad"].append(timed(theirs_g, (tx,), args.reps))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((name, med))
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"median ms per call (ratio: Avalon / torch, lower is better)")
    print(f"{'case':32s} {'avalon':>9s} {'torch':>9s} {'ratio':>7s} {'grad av':>9s} {'grad tc':>9s} {'ratio':>7s}")
    for name, m in rows:
        print(f"{name:32s} {m['avalon']:9.3f} {m['torch']:9.3f} {m['avalon'] / m['torch']:7.2f} "
              f"{m['avalon grad']:9.3f} {m['torch grad']:9.3f} {m['avalon grad'] / m['torch grad']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

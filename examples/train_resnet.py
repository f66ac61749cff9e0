"""Train a small CIFAR-style ResNet on scikit-learn's handwritten digits, upsampled to 16x16.

    python examples/train_resnet.py [--epochs 6] [--backend numpy|triton] [--device cuda]

The digits ship with scikit-learn (1797 8x8 images, no download); they stand in for CIFAR here,
upsampled bilinearly to 16x16 one-channel images so that two stride-2 stages still leave a 4x4 map.
Each training step (forward, backward with batch norm in training mode, Adam update) runs as one
compiled graph. The script prints the loss per epoch and the final test accuracy.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the reference interpreter's many small matmuls

import numpy as np  # noqa: E402

import avalon as av  # noqa: E402
from avalon import optim, zoo  # noqa: E402
from avalon.nn import functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py lies beside us, however we are started
from _common import accuracy, parse_args  # noqa: E402


def objective(model, x, y):
    return F.cross_entropy(model(x), y)


def main(argv: list[str] | None = None) -> float:
    args = parse_args(__doc__, argv, epochs=6, lr=3e-3, width=8, size=16)
    av.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    X, y, X_test, y_test = zoo.datasets.digits(args.size, normalize="standard")
    model = zoo.ResNet(widths=(args.width, 2 * args.width, 4 * args.width), blocks=1, in_channels=1)
    device = av.device(args.device) if args.device else None
    if device is not None:
        model.to(device=device)
    if args.backend is None:
        args.backend = "triton" if device is not None and device.type == "cuda" else "numpy"
    opt = optim.Adam(model, lr=args.lr)

    def train_step(model, opt, x, y):
        loss, grads = av.value_and_grad(objective)(model, x, y)
        opt.step(grads)
        return loss

    step = av.compile(train_step, backend=args.backend)
    put = (lambda a: av.tensor(a, device=device)) if device is not None else (lambda a: a)
    start = time.perf_counter()
    history = []
    model.train()
    for _ in range(args.epochs):
        order = rng.permutation(len(X))
        n = len(X) // args.batch_size * args.batch_size  # whole batches: one compiled signature
        losses = [float(step(model, opt, put(X[b]), put(y[b])))
                  for b in np.split(order[:n], n // args.batch_size)]
        history.append(float(np.mean(losses)))
    train_s = time.perf_counter() - start
    print(f"training loss per epoch: {' '.join(f'{h:.4f}' for h in history)}")
    acc = accuracy(model, X_test, y_test, args)  # eval mode: batch norm uses its running statistics
    print(f"ResNet: test accuracy {acc:.3f} on {len(y_test)} digits ({args.size}x{args.size}); "
          f"training {train_s:.1f}s ({train_s / max(args.epochs, 1):.1f}s per epoch, first includes compilation)")
    return acc


if __name__ == "__main__":
    main()

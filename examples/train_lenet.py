"""Train LeNet (the README's CNN, `avalon.zoo.LeNet`) on scikit-learn's handwritten digits, upsampled to MNIST's 28x28.

    python examples/train_lenet.py [--epochs 3] [--backend numpy|triton] [--device cuda]

The data ships with scikit-learn (no download). Each training step (forward, backward, Adam update)
runs as one compiled graph; `av.fit` shows each epoch's loss on stderr and the script prints the
test accuracy.
"""
from __future__ import annotations

import sys
from pathlib import Path

import avalon as av
from avalon import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py lies beside us, however we are started
from _common import accuracy, fit, parse_args  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    args = parse_args(__doc__, argv, epochs=3, lr=1e-3, save=True)
    av.manual_seed(args.seed)
    X, y, X_test, y_test = zoo.datasets.digits(28, normalize="standard")
    model = zoo.LeNet()
    history, train_s = fit(model, X, y, zoo.nll, args)
    acc = accuracy(model, X_test, y_test, args)
    print(f"LeNet: test accuracy {acc:.3f} on {len(y_test)} digits, final loss {history[-1]:.4f}; "
          f"training {train_s:.1f}s ({train_s / max(args.epochs, 1):.1f}s per epoch, first includes compilation)")
    if args.save:
        av.save(model, args.save)
        print(f"saved {args.save}")
    return acc


if __name__ == "__main__":
    main()

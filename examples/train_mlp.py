"""Train an MLP classifier on scikit-learn's 8x8 handwritten digits.

    python examples/train_mlp.py [--epochs 20] [--backend numpy|triton] [--device cuda]
"""
from __future__ import annotations

import sys
from pathlib import Path

import avalon as av
from avalon import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py lies beside us, however we are started
from _common import accuracy, fit, parse_args  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    args = parse_args(__doc__, argv, epochs=20, lr=1e-3, dropout=0.1)
    av.manual_seed(args.seed)
    X, y, X_test, y_test = zoo.datasets.digits(8, normalize="standard")
    model = zoo.MLP(in_features=64, hidden=(128, 64), num_classes=10, dropout=args.dropout)
    history, train_s = fit(model, X, y, zoo.cross_entropy, args)
    acc = accuracy(model, X_test, y_test, args)
    print(f"MLP: test accuracy {acc:.3f} on {len(y_test)} digits, final loss {history[-1]:.4f}; "
          f"training {train_s:.1f}s")
    return acc


if __name__ == "__main__":
    main()

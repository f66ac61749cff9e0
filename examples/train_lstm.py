"""Train an LSTM sequence classifier on scikit-learn's digits, each 8x8 image read as a sequence of
8 rows of 8 pixels.

    python examples/train_lstm.py [--epochs 8] [--backend numpy|triton] [--device cuda]

The recurrence is unrolled by the tracer (8 steps), so one training step is still one graph.
"""
from __future__ import annotations

import sys
from pathlib import Path

import avalon as av
from avalon import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py lies beside us, however we are started
from _common import accuracy, fit, parse_args  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    args = parse_args(__doc__, argv, epochs=8, lr=5e-3, hidden=64)
    av.manual_seed(args.seed)
    X, y, X_test, y_test = zoo.datasets.digit_sequences()
    model = zoo.LSTMClassifier(input_size=8, hidden_size=args.hidden, num_classes=10)
    history, train_s = fit(model, X, y, zoo.cross_entropy, args)
    acc = accuracy(model, X_test, y_test, args)
    print(f"LSTM: test accuracy {acc:.3f} on {len(y_test)} digit sequences, final loss {history[-1]:.4f}; "
          f"training {train_s:.1f}s")
    return acc


if __name__ == "__main__":
    main()

"""Train an LSTM sequence classifier on scikit-learn's digits, each 8x8 image read as a sequence of
8 rows of 8 pixels.

    python examples/train_lstm.py [--epochs 8] [--backend numpy|triton] [--device cuda]

The recurrence is unrolled by the tracer (8 steps), so one training step is still one graph.
"""
from __future__ import annotations

import argparse
import time

import avalon as av
from avalon import optim, zoo
from avalon.train import predict


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--backend", choices=["numpy", "triton"], default=None,
                   help="compiler backend (default: triton on a GPU, numpy otherwise)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the CPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    av.manual_seed(args.seed)
    X, y, X_test, y_test = zoo.datasets.digit_sequences()
    model = zoo.LSTMClassifier(input_size=8, hidden_size=args.hidden, num_classes=10)
    start = time.perf_counter()
    history = av.fit(model, X, y, zoo.cross_entropy, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=optim.Adam(model, lr=args.lr), device=args.device, backend=args.backend,
                     seed=args.seed)
    train_s = time.perf_counter() - start
    for epoch, loss in enumerate(history, 1):
        print(f"epoch {epoch}: loss {loss:.4f}")
    accuracy = float((predict(model, X_test, backend=args.backend).argmax(1) == y_test).mean())
    print(f"LSTM: test accuracy {accuracy:.3f} on {len(y_test)} digit sequences; training {train_s:.1f}s")
    return accuracy


if __name__ == "__main__":
    main()

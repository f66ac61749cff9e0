"""Train an MLP classifier on scikit-learn's 8x8 handwritten digits.

    python examples/train_mlp.py [--epochs 20] [--backend numpy|triton] [--device cuda]
"""
from __future__ import annotations

import argparse
import time

import avalon as av
from avalon import optim, zoo
from avalon.train import predict


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--backend", choices=["numpy", "triton"], default=None,
                   help="compiler backend (default: triton on a GPU, numpy otherwise)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the CPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    av.manual_seed(args.seed)
    X, y, X_test, y_test = zoo.datasets.digits(8, normalize="standard")
    model = zoo.MLP(in_features=64, hidden=(128, 64), num_classes=10, dropout=args.dropout)
    start = time.perf_counter()
    history = av.fit(model, X, y, zoo.cross_entropy, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=optim.Adam(model, lr=args.lr), device=args.device, backend=args.backend,
                     seed=args.seed)
    train_s = time.perf_counter() - start
    print(f"loss: epoch 1 {history[0]:.4f} -> epoch {len(history)} {history[-1]:.4f}")
    accuracy = float((predict(model, X_test, backend=args.backend).argmax(1) == y_test).mean())
    print(f"MLP: test accuracy {accuracy:.3f} on {len(y_test)} digits; training {train_s:.1f}s")
    return accuracy


if __name__ == "__main__":
    main()

"""Train the seed's LeNet on scikit-learn's handwritten digits, upsampled to MNIST's 28x28.

    python examples/train_lenet.py [--epochs 3] [--backend numpy|triton] [--device cuda]

The data ships with scikit-learn (no download). Each training step (forward, backward, Adam update)
runs as one compiled graph; the script prints the loss per epoch and the test accuracy.
"""
from __future__ import annotations

import argparse
import time

import avalon as av
from avalon import optim, zoo
from avalon.train import predict


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backend", choices=["numpy", "triton"], default=None,
                   help="compiler backend (default: triton on a GPU, numpy otherwise)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: where the model is, the CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="write the trained weights to this checkpoint")
    args = p.parse_args(argv)

    av.manual_seed(args.seed)
    X, y, X_test, y_test = zoo.datasets.digits(28, normalize="standard")
    model = zoo.LeNet()
    start = time.perf_counter()
    history = av.fit(model, X, y, zoo.nll, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=optim.Adam(model, lr=args.lr), device=args.device, backend=args.backend,
                     seed=args.seed)
    train_s = time.perf_counter() - start
    for epoch, loss in enumerate(history, 1):
        print(f"epoch {epoch}: loss {loss:.4f}")
    accuracy = float((predict(model, X_test, backend=args.backend).argmax(1) == y_test).mean())
    print(f"LeNet: test accuracy {accuracy:.3f} on {len(y_test)} digits; "
          f"training {train_s:.1f}s ({train_s / max(args.epochs, 1):.1f}s per epoch, first includes compilation)")
    if args.save:
        av.save(model, args.save)
        print(f"saved {args.save}")
    return accuracy


if __name__ == "__main__":
    main()

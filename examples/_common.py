"""What the training examples share: their command line, the timed `av.fit` call with Adam, and the
test accuracy. Each script keeps only its data, its model and what it reports.

`av.fit` itself shows each epoch on stderr (a progress bar on a terminal, one line per epoch when
piped), so the scripts print only their summary on stdout, never the epochs again."""
from __future__ import annotations

import argparse
import time
from typing import Any

import avalon as av
from avalon import optim
from avalon.train import predict


def parse_args(doc: str | None, argv: list[str] | None, *, epochs: int, lr: float, save: bool = False,
               **extra: int | float) -> argparse.Namespace:
    """The options every example takes; `extra` adds model options (`hidden=64` is `--hidden`, typed
    like its default), and `save` adds `--save PATH`."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=lr)
    for name, default in extra.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    p.add_argument("--backend", choices=["numpy", "cpu", "triton"], default=None,
                   help="compiler backend (default: triton on a GPU, numpy otherwise)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the CPU)")
    p.add_argument("--seed", type=int, default=0)
    if save:
        p.add_argument("--save", default=None, help="write the trained weights to this checkpoint")
    return p.parse_args(argv)


def fit(model: Any, X: Any, y: Any, loss_fn: Any, args: argparse.Namespace, *, objective: Any = None
        ) -> tuple[list[float], float]:
    """Train with Adam as the command line says (`loss_fn(prediction, target)`, or a full `objective`
    as in `av.fit`); returns the loss per epoch and the seconds it took."""
    start = time.perf_counter()
    history = av.fit(model, X, y, loss_fn, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=optim.Adam(model, lr=args.lr), device=args.device, backend=args.backend,
                     seed=args.seed, objective=objective)
    return history, time.perf_counter() - start


def accuracy(model: Any, X_test: Any, y_test: Any, args: argparse.Namespace) -> float:
    """The fraction of the test set whose highest-scoring class is the label."""
    return float((predict(model, X_test, backend=args.backend).argmax(1) == y_test).mean())

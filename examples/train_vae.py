"""Train the variational autoencoder on scikit-learn's digits, upsampled to 28x28 (784 pixels in
[0, 1], the Bernoulli likelihood's range).

    python examples/train_vae.py [--epochs 10] [--backend numpy|triton] [--device cuda]

The loss is the negative ELBO per digit (binary cross-entropy summed over pixels plus the KL term);
the reparameterization noise is drawn inside the compiled step, fresh on every call.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import avalon as av
from avalon import optim, zoo
from avalon.train import predict


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent", type=int, default=20)
    p.add_argument("--backend", choices=["numpy", "triton"], default=None,
                   help="compiler backend (default: triton on a GPU, numpy otherwise)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the CPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    av.manual_seed(args.seed)
    X, _, X_test, _ = zoo.datasets.digits(28, normalize="unit")
    X, X_test = X.reshape(len(X), 784), X_test.reshape(len(X_test), 784)
    model = zoo.VAE(784, 400, args.latent)
    start = time.perf_counter()
    history = av.fit(model, X, None, zoo.elbo, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=optim.Adam(model, lr=args.lr), device=args.device, backend=args.backend,
                     seed=args.seed)
    train_s = time.perf_counter() - start
    for epoch, loss in enumerate(history, 1):
        print(f"epoch {epoch}: -ELBO per digit {loss:.2f}")
    recon = predict(model, X_test, backend=args.backend)[0]  # eval mode: z = mu
    bce = -np.mean(np.sum(X_test * np.log(np.clip(recon, 1e-7, 1)) + (1 - X_test) * np.log(np.clip(1 - recon, 1e-7, 1)),
                          axis=1))
    print(f"VAE: test reconstruction BCE per digit {bce:.2f} (z = mu); training {train_s:.1f}s")
    return float(history[-1])


if __name__ == "__main__":
    main()

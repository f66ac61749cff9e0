"""Train the variational autoencoder on scikit-learn's digits, upsampled to 28x28 (784 pixels in
[0, 1], the Bernoulli likelihood's range).

    python examples/train_vae.py [--epochs 10] [--backend numpy|triton] [--device cuda]

The loss is the negative ELBO per digit (binary cross-entropy summed over pixels plus the KL term), a
full objective of (model, x) since it needs the input beside the prediction;
the reparameterization noise is drawn inside the compiled step, fresh on every call.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import avalon as av
from avalon import zoo
from avalon.train import predict

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py lies beside us, however we are started
from _common import fit, parse_args  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    args = parse_args(__doc__, argv, epochs=10, lr=1e-3, latent=20)
    av.manual_seed(args.seed)
    X, _, X_test, _ = zoo.datasets.digits(28, normalize="unit")
    X, X_test = X.reshape(len(X), 784), X_test.reshape(len(X_test), 784)
    model = zoo.VAE(784, 400, args.latent)
    history, train_s = fit(model, X, None, None, args, objective=zoo.elbo)  # the ELBO needs x: an objective
    recon = predict(model, X_test, backend=args.backend)[0]  # eval mode: z = mu
    bce = -np.mean(np.sum(X_test * np.log(np.clip(recon, 1e-7, 1)) + (1 - X_test) * np.log(np.clip(1 - recon, 1e-7, 1)),
                          axis=1))
    print(f"VAE: final -ELBO per digit {history[-1]:.2f}; test reconstruction BCE per digit {bce:.2f} (z = mu); "
          f"training {train_s:.1f}s")
    return float(history[-1])


if __name__ == "__main__":
    main()

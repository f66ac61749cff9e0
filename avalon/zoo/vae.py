"""The variational autoencoder of PyTorch's examples (pytorch/examples, vae/main.py)."""
from __future__ import annotations

from typing import Any

from .. import nn, ops
from ..nn import functional as F
from ..random import next_seed
from ..tensor import Tensor


class VAE(nn.Module):
    """Encoder 784 -> 400 relu -> (mu, logvar) of `latent` each; decoder latent -> 400 relu -> 784
    sigmoid. `forward(x)` returns (reconstruction, mu, logvar), x of shape (N, 784) or (N, 1, 28, 28).

    In training mode z is sampled by reparameterization (z = mu + eps * exp(logvar / 2) with eps from
    `ops.random`, so the noise is part of the traced graph and fresh on every compiled step); in eval
    mode z = mu, a deterministic reconstruction.
    """

    def __init__(self, features: int = 784, hidden: int = 400, latent: int = 20, dtype: Any = None):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden, dtype=dtype)
        self.fc21 = nn.Linear(hidden, latent, dtype=dtype)
        self.fc22 = nn.Linear(hidden, latent, dtype=dtype)
        self.fc3 = nn.Linear(latent, hidden, dtype=dtype)
        self.fc4 = nn.Linear(hidden, features, dtype=dtype)

    def encode(self, x: Any) -> tuple[Tensor, Tensor]:
        h = F.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        if not self.training:
            return mu
        eps = ops.random(next_seed(), mu.shape, "normal", dtype=mu.dtype)
        return mu + eps * ops.exp(0.5 * logvar)

    def decode(self, z: Any) -> Tensor:
        return F.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x: Any) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x.reshape(x.shape[0], -1))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def vae_loss(recon_x: Tensor, x: Any, mu: Tensor, logvar: Tensor) -> Tensor:
    """Negative ELBO summed over the batch: BCE(recon_x, x, sum) + KL(N(mu, exp(logvar)) || N(0, 1))."""
    bce = F.binary_cross_entropy(recon_x, x.reshape(recon_x.shape), reduction="sum")
    kld = -0.5 * ops.sum(1.0 + logvar - mu * mu - ops.exp(logvar))
    return bce + kld


def elbo(model: VAE, x: Any) -> Tensor:
    """`vae_loss` per sample. It needs the input beside the prediction, so it is a full objective:
    `av.fit(model, X, None, objective=zoo.elbo)`."""
    recon, mu, logvar = model(x)
    return vae_loss(recon, x, mu, logvar) / x.shape[0]

"""Ready-made models with PyTorch semantics, ready to trace, compile and train.

`LeNet` (the README's CNN for 28x28 digits: Caffe's LeNet with 20 and 50 filters), `VAE` with
`vae_loss` (the VAE of PyTorch's examples), `MLP` (a plain classifier) and `LSTMClassifier` (a
sequence classifier). Each is an `nn.Module`. The losses beside them fit `av.fit` as they are:
`nll` and `cross_entropy` are criteria, `loss_fn(prediction, target)`
(`av.fit(model, X, Y, zoo.nll)`); `elbo(model, x)` needs the input as well as the prediction, so it is
a full objective (`av.fit(model, X, None, objective=zoo.elbo)`). `datasets` has small offline data
(scikit-learn's digits) for the examples and tests.
"""
from . import datasets
from .lenet import LeNet, nll
from .lstm import LSTMClassifier
from .mlp import MLP, cross_entropy
from .vae import VAE, elbo, vae_loss

__all__ = ["MLP", "VAE", "LSTMClassifier", "LeNet", "cross_entropy", "datasets", "elbo", "nll", "vae_loss"]

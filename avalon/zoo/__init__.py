"""Ready-made models, ported from the original Avalon's zoo and benchmarks, with PyTorch semantics.

`LeNet` (the seed's CNN for 28x28 digits), `VAE` with `vae_loss` (the PyTorch example's VAE), `MLP`
(a plain classifier), `LSTMClassifier` (a sequence classifier), `GPT` (a small character-level
transformer language model with `gpt_loss`) and `ResNet` (a small CIFAR-style residual network).
Each is an `nn.Module`; the loss functions beside them have the `loss_fn(model, x, y)` shape that
`av.fit` takes. `datasets` has small offline data (scikit-learn's digits) for the examples and tests.
"""
from . import datasets
from .gpt import GPT, GPTConfig, gpt_loss
from .lenet import LeNet, nll
from .lstm import LSTMClassifier
from .mlp import MLP, cross_entropy
from .resnet import BasicBlock, ResNet
from .vae import VAE, elbo, vae_loss

__all__ = ["GPT", "MLP", "VAE", "BasicBlock", "GPTConfig", "LSTMClassifier", "LeNet", "ResNet", "cross_entropy",
           "datasets", "elbo", "gpt_loss", "nll", "vae_loss"]

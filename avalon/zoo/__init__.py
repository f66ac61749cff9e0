"""Ready-made models with PyTorch semantics, ready to trace, compile and train.

`LeNet` (the README's CNN for 28x28 digits: Caffe's LeNet with 20 and 50 filters), `VAE` with
`vae_loss` (the VAE of PyTorch's examples), `MLP` (a plain classifier), `LSTMClassifier` (a
sequence classifier), `GPT` (a small character-level transformer language model) and `ResNet` (a
small CIFAR-style residual network). Each is an `nn.Module`. The losses beside them fit `av.fit` as
they are: `nll` and `cross_entropy` are criteria, `loss_fn(prediction, target)`
(`av.fit(model, X, Y, zoo.nll)`); `elbo(model, x)` and `gpt_loss(model, idx, targets)` need more
than the prediction, so they are full objectives (`av.fit(model, X, None, objective=zoo.elbo)`).
`datasets` has small offline data (scikit-learn's digits) for the examples and tests.
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

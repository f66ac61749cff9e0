"""`avalon.nn.modules`: where torch code imports module base classes from (`from torch.nn.modules.loss import
_WeightedLoss`); the layers themselves are `avalon.nn`'s."""
from ..module import Module
from . import batchnorm, loss, utils

__all__ = ["Module", "batchnorm", "loss", "utils"]

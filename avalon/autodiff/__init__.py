"""Reverse-mode autodiff as a transformation of the IR.

`rules.VJP` holds one vector-Jacobian rule per differentiable primitive (`NON_DIFFERENTIABLE` lists
the rest); `grad_graph` turns a graph with a scalar loss into one that also returns gradients;
`grad` / `value_and_grad` are the user-facing function transformations built on them.
"""
from .api import grad, value_and_grad
from .rules import INLINED, NON_DIFFERENTIABLE, VJP
from .transform import GradError, grad_graph

__all__ = ["INLINED", "NON_DIFFERENTIABLE", "VJP", "GradError", "grad", "grad_graph", "value_and_grad"]

"""Reverse-mode autodiff as a transformation of the IR.

`rules.VJP` holds one vector-Jacobian rule per differentiable primitive (`NON_DIFFERENTIABLE` lists
the rest); `grad_graph` turns a graph with a scalar loss into one that also returns gradients.
This package is the IR transform only: the user-facing `av.grad` / `av.value_and_grad`, which
trace, cache and run, are the compile driver's (`avalon.compiler.gradients`).
"""
from .rules import INLINED, NON_DIFFERENTIABLE, VJP
from .transform import GradError, grad_graph

__all__ = ["INLINED", "NON_DIFFERENTIABLE", "VJP", "GradError", "grad_graph"]

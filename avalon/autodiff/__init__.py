"""Autodiff as transformations of the IR: reverse mode and forward mode.

`rules.VJP` holds one vector-Jacobian rule per differentiable primitive (`NON_DIFFERENTIABLE` lists
the rest); `grad_graph` turns a graph with a scalar loss into one that also returns gradients.
`forward_rules.JVP` holds one Jacobian-vector rule per differentiable primitive; `jvp_graph` turns a
graph into one that also takes tangents of some inputs and returns its outputs' tangents.
This package is the IR transforms only: the user-facing `av.grad` / `av.value_and_grad` and
`avalon.func.jvp` / `jacfwd`, which trace, cache and run, are the compile driver's
(`avalon.compiler.gradients`, `avalon.compiler.forward`).
"""
from . import factorizations  # noqa: F401  (registers the factorizations' VJP and JVP rules)
from .forward import jvp_graph
from .forward_rules import JVP
from .rules import INLINED, NON_DIFFERENTIABLE, VJP
from .transform import GradError, grad_graph

__all__ = ["INLINED", "JVP", "NON_DIFFERENTIABLE", "VJP", "GradError", "grad_graph", "jvp_graph"]

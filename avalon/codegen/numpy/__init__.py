"""The numpy reference backend: per-op rules (`REFERENCE`) and the graph interpreter built on them.
It is the CPU execution path and the oracle every other backend is checked against."""
from .interpreter import Interpreter, interpret, to_numpy
from .reference import REFERENCE, evaluate, random_bits, round_bf16, to_result

__all__ = ["REFERENCE", "Interpreter", "evaluate", "interpret", "random_bits", "round_bf16", "to_numpy",
           "to_result"]

"""The numpy reference semantics of every primitive op: the oracle all other backends are checked against.

`REFERENCE[name](attrs, *arrays) -> np.ndarray` computes one op; `evaluate` runs a rule and returns
the op's exact result type (see `core` for the conventions every rule shares). The rules are split
by concept: `elementwise`, `shapes` (constants, broadcast, reductions, scans, shape ops),
`contraction` (matmul, conv), `pooling`, `gather` (take, one_hot, random numbers),
`collective` (all_reduce, through the process group `avalon.distributed` installs), `sorting`
(sort, argsort), `factorizations` (svd, eigh, qr, pinv: numpy.linalg). Importing this package registers all of them.
"""
from . import collective, contraction, elementwise, factorizations, gather, pooling, shapes, sorting  # noqa: F401  (register the rules)
from .core import REFERENCE, ReferenceFn, evaluate, round_bf16, rule, to_result
from .elementwise import CHECK_ERRORS, LinAlgCheckError, LinAlgError, ValueCheckError, check_error
from .gather import UNIFORM_BITS, IndexOutOfRangeError, fmix32, random_bits, seed_keys, uniform_from_bits

__all__ = ["REFERENCE", "UNIFORM_BITS", "IndexOutOfRangeError", "ValueCheckError", "LinAlgError", "LinAlgCheckError",
           "CHECK_ERRORS", "check_error",
           "ReferenceFn", "evaluate", "fmix32", "random_bits", "round_bf16", "rule",
           "seed_keys", "to_result", "uniform_from_bits"]

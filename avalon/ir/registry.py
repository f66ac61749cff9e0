"""The op registry: each op is declared once, as data, with its operands, attributes, traits and
shape/dtype inference. Other layers (reference interpreter, vjp, Triton lowering, folding) keep
their own rule tables keyed by the op name and register them here (`register_table`), so
`avalon ops --missing` and `tests/test_registry.py` can walk every op against every table."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from .dtypes import DType
from .dtypes import dtype as to_dtype
from .types import TensorType


class ShapeError(ValueError, RuntimeError):
    """Operand shapes or dtypes do not fit an op. Also a RuntimeError, the type torch raises for these
    (`x.view(5)` of 6 elements, mismatched matmul shapes), so ported `except RuntimeError:` fallbacks
    catch it; existing `except ValueError:` code still does."""


REQUIRED = object()

# attribute kinds: how a value is checked and coerced
_KINDS: dict[str, Callable[[Any], Any]] = {}


def _ints(v):
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return [int(v)]
    if not isinstance(v, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise TypeError(f"expected a list of ints, got {v!r}")
    return [int(i) for i in v]


def _int(v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an int, got {v!r}")
    return int(v)


def _float(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"expected a number, got {v!r}")
    return float(v)


def _bool(v):
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {v!r}")
    return v


def _str(v):
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _scalar_or_dense(v):
    import warnings

    import numpy as np
    if isinstance(v, bool) or isinstance(v, (int, float)):
        return v
    if isinstance(v, (list, tuple)):
        try:  # a ragged or mixed list is a TypeError like any other bad attribute, not numpy's ValueError
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                v = np.asarray(v)
        except (ValueError, TypeError, OverflowError, Warning):
            raise TypeError("expected a number or a rectangular array of numbers") from None
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biufc":
            raise TypeError(f"expected an array of numbers, got dtype {v.dtype}")
        return v
    raise TypeError(f"expected a number or an array, got {type(v).__name__}")


_KINDS.update(ints=_ints, int=_int, float=_float, bool=_bool, str=_str, dtype=to_dtype,
              value=_scalar_or_dense, any=lambda v: v)


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = REQUIRED


@dataclass
class OpDef:
    """What an op is. `operands` is a count, or `(min, None)` for variadic."""

    name: str
    operands: int | tuple[int, None]
    attrs: dict[str, Attr]
    infer: Callable[[list[TensorType], dict], list[TensorType] | None]
    traits: frozenset[str] = field(default_factory=frozenset)
    doc: str = ""
    symbol: str | None = None  # attribute printed as `@name` after the op name (fusion groups)

    def check_operand_count(self, n: int) -> str | None:
        if isinstance(self.operands, int):
            if n != self.operands:
                return f"expects {self.operands} operand(s), got {n}"
        elif n < self.operands[0]:
            return f"expects at least {self.operands[0]} operand(s), got {n}"
        return None

    def normalize_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults and coerce values; unknown or missing attributes raise TypeError."""
        out: dict[str, Any] = {}
        for k in attrs:
            if k not in self.attrs:
                known = ", ".join(self.attrs) or "none"
                raise TypeError(f"'{self.name}' has no attribute '{k}' (known: {known})")
        for k, a in self.attrs.items():
            if k in attrs:
                try:
                    out[k] = _KINDS[a.kind](attrs[k])
                except (TypeError, ValueError) as e:
                    raise TypeError(f"'{self.name}' attribute '{k}': {e}") from None
            elif a.default is REQUIRED:
                raise TypeError(f"'{self.name}' needs attribute '{k}'")
            else:
                out[k] = a.default
        return out

    def is_default(self, key: str, value: Any) -> bool:
        a = self.attrs.get(key)
        if a is None or a.default is REQUIRED:
            return False
        d = a.default
        try:
            return type(d) is type(value) and d == value or (isinstance(d, list) and list(value) == d)
        except Exception:
            return False


OPS: dict[str, OpDef] = {}
TERMINATORS = ("return", "yield")

TRAITS: dict[str, str] = {
    "pure": "no side effects: CSE may merge it, DCE may drop it when unused",
    "elementwise": "result element i depends only on operand elements i (all shapes equal)",
    "commutative": "a binary op whose operands may be swapped",
    "bool_as_int": "i1 operands act as the integers 0/1 and the result is cast back (add is or, mul is and)",
    "movement": "moves, replicates or fills elements by index math alone; computes nothing",
    "selects": "each result element is one element of its single operand (a splat in is a splat out)",
    "broadcast": "numpy-style broadcast of its operand to a larger shape",
    "view": "may be a zero-copy view of its operand, depending on layouts (see a backend's Target.is_view)",
    "reduction": "reduces its operand over some axes",
    "scan": "a running (inclusive prefix) reduction along one axis; the result has the operand's shape",
    "sort": "orders the elements along one axis (sort, argsort): stable, nan largest; a kernel of its own",
    "factorization": "a LAPACK matrix factorization of the last two axes (svd, eigh, qr, pinv), factors packed "
                     "in one result; no kernel of its own (the Triton backend runs it between launches)",
    "contraction": "a matmul or convolution: a sum of products, computed by a tiled GEMM-like kernel",
    "pool": "reads a window of its operand per result element",
    "nchw": "its result is an NCHW image activation (a conv or pool output): channels-last candidates",
    "gather": "reads its operand at data-dependent indices, or builds from indices",
    "scatter": "adds (maxes) its operand's rows into data-dependent rows of its result (index_add, index_max): a "
               "kernel of its own, "
               "never fused (its result is complete only once every row is in)",
    "random": "counter-based random numbers from an explicit seed",
    "region": "holds a region (a fused group)",
}
"""Every trait an op may declare, with what it promises. Passes and backends ask for traits
(`op.has_trait("movement")`) instead of keeping lists of op names, so a new op joins every
category by its declaration alone; `define_op` rejects a trait not listed here."""


class OpsWithTrait(Collection[str]):
    """The names of the ops declaring `trait`, as a live set: an op defined later joins it.

    For code that wants a set of op names (`name in ops_with("region")`) without keeping a list
    that a new op would have to be added to by hand."""

    def __init__(self, trait: str):
        if trait not in TRAITS:
            raise ValueError(f"unknown trait '{trait}'")
        self.trait = trait

    def __contains__(self, name: object) -> bool:
        d = OPS.get(name) if isinstance(name, str) else None
        return d is not None and self.trait in d.traits

    def __iter__(self):
        return iter([n for n, d in OPS.items() if self.trait in d.traits])

    def __len__(self) -> int:
        return sum(1 for d in OPS.values() if self.trait in d.traits)

    def __repr__(self) -> str:
        return f"ops_with({self.trait!r})"


def ops_with(trait: str) -> OpsWithTrait:
    """A live set of the names of the ops that declare `trait`."""
    return OpsWithTrait(trait)


def define_op(name: str, operands, infer, attrs: dict[str, Attr] | None = None, traits=(), doc: str = "",
              symbol: str | None = None) -> OpDef:
    """Declare an op. Users may call this for their own ops; every backend table must then add a rule."""
    if name in OPS or name in TERMINATORS:
        raise ValueError(f"op '{name}' is already defined")
    unknown = sorted(set(traits) - set(TRAITS))
    if unknown:
        raise ValueError(f"op '{name}': unknown trait(s) {', '.join(unknown)}; declare them in "
                         f"avalon.ir.registry.TRAITS (known: {', '.join(sorted(TRAITS))})")
    d = OpDef(name, operands, dict(attrs or {}), infer, frozenset(traits), doc, symbol)
    OPS[name] = d
    return d


def lookup(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op '{name}'") from None


def infer_types(name: str, types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Result types of `name` applied to operands of `types`; raises ShapeError when they do not fit."""
    d = lookup(name)
    msg = d.check_operand_count(len(types))
    if msg:
        raise ShapeError(f"{name}: {msg}")
    out = d.infer(types, attrs)
    if out is None:
        raise ShapeError(f"{name}: result types cannot be inferred from operands")
    return out


def same_dtype(name: str, types: list[TensorType]) -> DType:
    dts = {t.dtype for t in types}
    if len(dts) > 1:
        raise ShapeError(f"{name}: operand dtypes differ ({', '.join(str(t.dtype) for t in types)})")
    return types[0].dtype


# --- rule tables ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RuleTable:
    """One table of rules keyed by op name, as registered by the layer that owns it.

    `exempt` holds the ops that need no rule here, kept by reference so its owner may grow it
    (VJP's NON_DIFFERENTIABLE); `exempt_traits` exempts every op with one of those traits (a
    `region` op is run or differentiated through its body). A `required` table must cover every
    other op; an optional one (FOLD) may leave any op out. No table may hold a rule for an op the
    registry does not define.
    """

    name: str
    table: dict[str, Any]
    exempt: Collection[str] = frozenset()
    exempt_traits: tuple[str, ...] = ()
    required: bool = True
    module: str = ""

    def needs(self, op: str) -> bool:
        d = OPS[op]
        return self.required and op not in self.exempt and not any(t in d.traits for t in self.exempt_traits)

    def missing(self) -> list[str]:
        """The ops this table should have a rule for and does not."""
        return sorted(n for n in OPS if n not in self.table and self.needs(n))

    def unknown(self) -> list[str]:
        """Rules or exemptions for ops the registry does not define (stale entries)."""
        return sorted(n for n in {*self.table, *self.exempt} if n not in OPS)


TABLES: dict[str, RuleTable] = {}
"""Every registered rule table by name ("reference", "vjp", "lowering", "fold", ...)."""

TABLE_MODULES = ("avalon.ir.reference", "avalon.autodiff.rules", "avalon.batching.rules",
                 "avalon.codegen.triton.lowering", "avalon.passes.canonicalize", "avalon.mlir.linalg",
                 "avalon.autodiff.forward_rules")
"""Modules that register the built-in tables when imported (backends load lazily, so walkers import them)."""


def register_table(name: str, table: dict[str, Any], *, exempt: Collection[str] = frozenset(),
                   exempt_traits: tuple[str, ...] = (), required: bool = True) -> dict[str, Any]:
    """Register a rule table (its owner calls this where the table is defined); returns `table`."""
    for t in exempt_traits:
        if t not in TRAITS:
            raise ValueError(f"table '{name}': unknown exempt trait '{t}'")
    caller = sys._getframe(1).f_globals.get("__name__", "")
    TABLES[name] = RuleTable(name, table, exempt, tuple(exempt_traits), required, caller)
    return table


def load_tables() -> dict[str, RuleTable]:
    """Import the modules that own the built-in tables, then return every registered table
    (built-in ones first, in TABLE_MODULES order)."""
    for m in TABLE_MODULES:
        importlib.import_module(m)
    def rank(t: RuleTable) -> int:  # a stable order: built-in tables first
        return next((i for i, m in enumerate(TABLE_MODULES) if t.module == m or t.module.startswith(m + ".")),
                    len(TABLE_MODULES))
    return dict(sorted(TABLES.items(), key=lambda kv: rank(kv[1])))


def missing_rules() -> dict[str, list[str]]:
    """op -> the required tables that lack a rule for it (only ops lacking some); loads the tables."""
    out: dict[str, list[str]] = {}
    for t in load_tables().values():
        for n in t.missing():
            out.setdefault(n, []).append(t.name)
    return dict(sorted(out.items()))

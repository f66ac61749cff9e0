"""How each Avalon primitive is written as ONNX: the `onnx_export` rule table (registered with the
op registry, so `avalon ops --missing` names an op that lacks a mapping).

The table is optional in the registry's sense (a user's new op still compiles and trains without an
ONNX mapping, and the core tables' completeness checks stay about the core); `avalon ops --missing`
lists the ops it lacks all the same, and tests/test_onnx_io.py holds the built-in ops to it.

A rule is `fn(em, op, inputs) -> [output names]`: `em` appends ONNX nodes and constants, `inputs` are
the ONNX names of the op's operands. Gradient-only and random ops are exempt: ONNX has no
counterpart that reproduces them (Avalon's counter-based random bits), so exporting them is an error.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import numpy_helper

from ..ir.reference import evaluate
from ..ir.registry import register_table
from .dtypes import onnx_elem_type

ExportRule = Callable[[Any, Any, list[str]], list[str]]
EXPORT: dict[str, ExportRule] = register_table(
    "onnx_export", {}, exempt={"conv2d_grad_weight", "max_pool2d_grad", "avg_pool2d_grad", "random"},
    exempt_traits=("region", "factorization"), required=False)  # (ONNX has no SVD, eigensolver or QR)


def export_rule(*names: str) -> Callable[[ExportRule], ExportRule]:
    def deco(fn: ExportRule) -> ExportRule:
        for n in names:
            EXPORT[n] = fn
        return fn
    return deco


_SIMPLE = {"exp": "Exp", "log": "Log", "tanh": "Tanh", "sigmoid": "Sigmoid", "sqrt": "Sqrt", "erf": "Erf",
           "neg": "Neg", "abs": "Abs", "relu": "Relu", "sign": "Sign", "sin": "Sin", "cos": "Cos",
           "add": "Add", "mul": "Mul", "sub": "Sub", "div": "Div", "pow": "Pow", "maximum": "Max",
           "minimum": "Min", "eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater",
           "ge": "GreaterOrEqual", "logical_and": "And", "logical_or": "Or", "logical_not": "Not",
           "stop_gradient": "Identity", "where": "Where", "matmul": "MatMul"}
for _name, _onnx in _SIMPLE.items():
    export_rule(_name)(lambda em, op, ins, _onnx=_onnx: em.node(_onnx, ins))


@export_rule("bitcast")
def _bitcast(em: Any, op: Any, ins: list[str]) -> list[str]:
    """x.view(dtype) between non-boolean types of one width: ONNX's BitCast, which is opset 26 (the model
    then declares opset 26). A resized last dim (float32 -> uint8) or a bool (torch's byte) has no ONNX form."""
    from .table import UnsupportedOp
    src, to = op.operands[0].dtype, op.results[0].dtype
    if src.itemsize != to.itemsize or "i1" in (src.name, to.name):
        where = f" (from {op.loc})" if op.loc else ""
        raise UnsupportedOp(f"avalon.onnx.export: op 'bitcast'{where} from {src.name} to {to.name} has no ONNX form: "
                            "ONNX's BitCast keeps the shape, so only non-boolean types of the same width map")
    em.opset = max(em.opset, 26)
    return em.node("BitCast", ins, to=onnx_elem_type(to))


def _bool_arith(onnx_type: str) -> ExportRule:
    """ONNX arithmetic does not take booleans; Avalon's bool_as_int ops compute them as integers."""
    def rule(em: Any, op: Any, ins: list[str]) -> list[str]:
        if op.results[0].dtype.name != "i1":
            return em.node(onnx_type, ins)
        ints = [em.node("Cast", [i], to=6)[0] for i in ins]
        return em.node("Cast", em.node(onnx_type, ints), to=9)
    return rule


for _name in ("add", "mul", "sub", "maximum", "minimum", "neg", "abs", "relu", "sign"):
    EXPORT[_name] = _bool_arith(_SIMPLE[_name])


def _scalar(em: Any, value: float, dtype: Any) -> str:
    """A float scalar of `dtype` as a Constant node: an initializer would be read back by avalon.onnx.load
    as a parameter."""
    from .exporter import _stored
    return em.node("Constant", [], value=numpy_helper.from_array(_stored(np.array(value, dtype.np), dtype)))[0]


def _widened(onnx_type: str, dtypes: tuple[str, ...]) -> ExportRule:
    """ONNX's `onnx_type` takes none of `dtypes` (onnx's checker rejected the file): computed in int32, cast back
    (wrapping as Avalon's small-int arithmetic does)."""
    def rule(em: Any, op: Any, ins: list[str], **attrs: Any) -> list[str]:
        d = op.operands[0].dtype
        if d.name not in dtypes:
            return em.node(onnx_type, ins, **attrs)
        wide = [em.node("Cast", [i], to=6)[0] for i in ins[:len(op.operands)]] + ins[len(op.operands):]
        return em.node("Cast", em.node(onnx_type, wide, **attrs), to=onnx_elem_type(op.results[0].dtype))
    return rule


EXPORT["matmul"] = _widened("MatMul", ("i8", "ui8", "i16"))


@export_rule("relu")
def relu(em: Any, op: Any, ins: list[str]) -> list[str]:
    """Relu takes no unsigned type: an unsigned relu is the identity."""
    if op.operands[0].dtype.name.startswith("ui"):
        return em.node("Identity", ins)
    return _bool_arith("Relu")(em, op, ins)


@export_rule("neg")
def neg(em: Any, op: Any, ins: list[str]) -> list[str]:
    """ONNX's Neg takes no unsigned type (onnx's checker rejected the file; Avalon's unsigned `min` is a max
    of bitwise nots, -x - 1): 0 - x, which wraps as Avalon's does."""
    d = op.operands[0].dtype
    if d.name.startswith("ui"):
        return em.node("Sub", [em.const(np.zeros((), d.np)), ins[0]])
    return _bool_arith("Neg")(em, op, ins)


@export_rule("sign")
def sign(em: Any, op: Any, ins: list[str]) -> list[str]:
    """onnxruntime's Sign of NaN is NaN; Avalon's (torch's) is 0."""
    if not op.operands[0].dtype.is_float:
        return _bool_arith("Sign")(em, op, ins)
    zero = _scalar(em, 0.0, op.operands[0].dtype)
    return em.node("Where", [em.node("IsNaN", ins)[0], zero, em.node("Sign", ins)[0]])


@export_rule("rsqrt")
def rsqrt(em: Any, op: Any, ins: list[str]) -> list[str]:
    return em.node("Reciprocal", em.node("Sqrt", ins))


@export_rule("ne")
def ne(em: Any, op: Any, ins: list[str]) -> list[str]:
    return em.node("Not", em.node("Equal", ins))


@export_rule("cast")
def cast(em: Any, op: Any, ins: list[str]) -> list[str]:
    return em.node("Cast", ins, to=onnx_elem_type(op.attrs["dtype"]))


@export_rule("constant", "iota")
def constant(em: Any, op: Any, ins: list[str]) -> list[str]:
    """Constants (and iota, a constant of its shape) are evaluated now and stored."""
    t = op.results[0].type
    return [em.const(evaluate(op.name, op.attrs, [], t), t.dtype)]


@export_rule("broadcast")
def broadcast(em: Any, op: Any, ins: list[str]) -> list[str]:
    return em.node("Expand", [ins[0], em.ints(op.attrs["shape"])])


@export_rule("sum", "max")
def reduce(em: Any, op: Any, ins: list[str]) -> list[str]:
    """A boolean sum (`any`, `all` as not-any-of-not) or max is a logical or: ONNX reductions take no
    booleans (onnx's checker rejected the file), so it reduces the values as int32 by max."""
    if op.operands[0].dtype.name == "i1":
        x = em.node("Cast", [ins[0]], to=6)
        y = em.node("ReduceMax", [x[0], em.ints(op.attrs["axes"])], keepdims=int(op.attrs["keepdims"]))
        return em.node("Cast", y, to=9)
    if (op.name == "sum" and op.operands[0].dtype.name in ("i64", "i32")
            and all(op.operands[0].shape[a] for a in op.attrs["axes"])):
        # onnxruntime's integer ReduceSum accumulates in double (2**53 + 1 sums to 2**53; a bitwise or of
        # a negative int64, which Avalon computes as a weighted sum of bits, came out -1): a CumSum, exact,
        # and its last element along each axis
        x = ins[0]
        for axis in op.attrs["axes"]:
            c = em.node("CumSum", [x, em.ints(axis, scalar=True)])
            x = em.node("Slice", [c[0], em.ints([-1]), em.ints([op.operands[0].shape[axis]]), em.ints([axis])])[0]
        return em.node("Reshape", [x, em.ints(list(op.results[0].shape))])
    kind = "ReduceSum" if op.name == "sum" else "ReduceMax"
    axes = em.ints(op.attrs["axes"])
    out = _widened(kind, ("i16", "i8", "ui8") if kind == "ReduceSum" else ("i16",))(
        em, op, [ins[0], axes], keepdims=int(op.attrs["keepdims"]))
    if kind == "ReduceMax" and op.operands[0].dtype.is_float:
        # onnxruntime's ReduceMax skips NaNs (max([1, nan]) = 1); Avalon's max, like torch's, is NaN
        isnan = em.node("Cast", em.node("IsNaN", [ins[0]]), to=6)
        anynan = em.node("ReduceMax", [isnan[0], em.ints(op.attrs["axes"])], keepdims=int(op.attrs["keepdims"]))
        out = em.node("Where", [em.node("Cast", anynan, to=9)[0], _scalar(em, np.nan, op.operands[0].dtype), out[0]])
    return out


@export_rule("argmax")
def argmax(em: Any, op: Any, ins: list[str]) -> list[str]:
    kw = {"axis": op.attrs["axis"], "keepdims": int(op.attrs["keepdims"])}
    out = em.node("ArgMax", ins, **kw)
    if op.operands[0].dtype.is_float:
        # onnxruntime's ArgMax skips NaNs; Avalon's, like torch's, is the first NaN's index
        isnan = em.node("Cast", em.node("IsNaN", [ins[0]]), to=6)
        first = em.node("ArgMax", isnan, **kw)
        anynan = em.node("Cast", em.node("ReduceMax", [isnan[0], em.ints([op.attrs["axis"]])],
                                                 keepdims=kw["keepdims"]), to=9)
        out = em.node("Where", [anynan[0], first[0], out[0]])
    return out


@export_rule("cumsum")
def cumsum(em: Any, op: Any, ins: list[str]) -> list[str]:
    return em.node("CumSum", [ins[0], em.ints(op.attrs["axis"], scalar=True)], reverse=int(op.attrs["reverse"]))


@export_rule("reshape")
def reshape(em: Any, op: Any, ins: list[str]) -> list[str]:
    return em.node("Reshape", [ins[0], em.ints(op.attrs["shape"])])


@export_rule("transpose")
def transpose(em: Any, op: Any, ins: list[str]) -> list[str]:
    return em.node("Transpose", ins, perm=list(op.attrs["perm"]))


@export_rule("slice")
def slice_(em: Any, op: Any, ins: list[str]) -> list[str]:
    a = op.attrs
    rank = len(a["start"])
    step = a["step"] or [1] * rank
    return em.node("Slice", [ins[0], em.ints(a["start"]), em.ints(a["limit"]), em.ints(list(range(rank))),
                             em.ints(step)])


@export_rule("concat")
def concat(em: Any, op: Any, ins: list[str]) -> list[str]:
    return em.node("Concat", ins, axis=op.attrs["axis"])


@export_rule("pad")
def pad(em: Any, op: Any, ins: list[str]) -> list[str]:
    a = op.attrs
    value = em.const(np.array(a["value"], dtype=op.operands[0].dtype.np))
    return em.node("Pad", [ins[0], em.ints(list(a["low"]) + list(a["high"])), value])


def _conv_attrs(a: dict) -> dict[str, Any]:
    p = list(a["padding"])
    return {"strides": list(a["stride"]), "pads": p + p, "dilations": list(a["dilation"]), "group": a["groups"]}


@export_rule("conv2d")
def conv2d(em: Any, op: Any, ins: list[str]) -> list[str]:
    return em.node("Conv", ins, **_conv_attrs(op.attrs))


@export_rule("conv2d_grad_input")
def conv2d_grad_input(em: Any, op: Any, ins: list[str]) -> list[str]:
    """The input gradient of a convolution is a transposed convolution with the same weight."""
    a = op.attrs
    dy, w = op.operands
    out = []
    for i in range(2):
        k, s, d, p = w.shape[2 + i], a["stride"][i], a["dilation"][i], a["padding"][i]
        out.append(a["input_shape"][2 + i] - (s * (dy.shape[2 + i] - 1) + (k - 1) * d + 1 - 2 * p))
    return em.node("ConvTranspose", ins, output_padding=out, **_conv_attrs(a))


@export_rule("max_pool2d", "avg_pool2d")
def pool(em: Any, op: Any, ins: list[str]) -> list[str]:
    a = op.attrs
    p = list(a["padding"])
    kw: dict[str, Any] = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]), "pads": p + p}
    if op.name == "avg_pool2d":
        kw["count_include_pad"] = int(a["count_include_pad"])
        return em.node("AveragePool", ins, **kw)
    out = em.node("MaxPool", ins, **kw)
    if op.operands[0].dtype.is_float:
        # onnxruntime's MaxPool skips NaNs; Avalon's (torch's) window max is NaN where the window holds one
        isnan = em.node("Cast", em.node("IsNaN", [ins[0]]), to=onnx_elem_type(op.operands[0].dtype))
        anynan = em.node("Greater", [em.node("MaxPool", isnan, **kw)[0], _scalar(em, 0.0, op.operands[0].dtype)])
        out = em.node("Where", [anynan[0], _scalar(em, np.nan, op.operands[0].dtype), out[0]])
    return out


@export_rule("take")
def take(em: Any, op: Any, ins: list[str]) -> list[str]:
    return em.node("Gather", ins, axis=op.attrs["axis"])


@export_rule("one_hot")
def one_hot(em: Any, op: Any, ins: list[str]) -> list[str]:
    k = op.attrs["num_classes"]
    idx = em.node("Unsqueeze", [ins[0], em.ints([-1])])
    classes = em.const(np.arange(k, dtype=op.operands[0].dtype.np))
    return em.node("Cast", em.node("Equal", [idx[0], classes]), to=onnx_elem_type(op.attrs["dtype"]))


@export_rule("index_add", "index_max")
def index_add(em: Any, op: Any, ins: list[str]) -> list[str]:
    """ScatterND with reduction "add" (opset 16+) into zeros (size, *rest), or "max" (opset 18) into
    -inf: the values' rows combined at the rows the (M, 1) int64 indices address."""
    vals, idx = op.operands
    shape = [op.attrs["size"], *vals.shape[1:]]
    is_max = op.name == "index_max"
    start = em.node("Expand", [em.const(np.array(-np.inf, np.float32)), em.ints(shape)]) if is_max else \
        em.node("ConstantOfShape", [em.ints(shape)])
    start = em.node("Cast", start, to=onnx_elem_type(vals.dtype))
    rows = em.node("Unsqueeze", [ins[1], em.ints([-1])])
    if idx.dtype.name != "i64":
        rows = em.node("Cast", rows, to=7)
    return em.node("ScatterND", [start[0], rows[0], ins[0]], reduction="max" if is_max else "add")


@export_rule("sort", "argsort")
def sort(em: Any, op: Any, ins: list[str]) -> list[str]:
    """TopK with k = the axis length: sorted, largest first when descending, and ONNX orders equal
    elements by index in both directions (the stable order); i1 sorts as int32 (TopK takes no bool)."""
    x, ax = op.operands[0], op.attrs["axis"] % op.operands[0].type.rank
    src = ins[0] if x.dtype.name != "i1" else em.node("Cast", ins, to=6)[0]
    vals, idx = em.node("TopK", [src, em.ints([x.shape[ax]])], n_out=2, axis=ax,
                        largest=int(op.attrs["descending"]), sorted=1)
    if op.name == "argsort":
        return [idx]
    return [vals] if x.dtype.name != "i1" else em.node("Cast", [vals], to=9)


def missing_exports() -> list[str]:
    """Ops with no ONNX mapping that are not exempt."""
    from ..ir.registry import OPS, TABLES
    t = TABLES["onnx_export"]
    return sorted(n for n in OPS if n not in EXPORT and n not in t.exempt
                  and not any(tr in OPS[n].traits for tr in t.exempt_traits))


@export_rule("check")
def _check(em: Any, op: Any, ins: list[str]) -> list[str]:
    """The value: ONNX has no assertion, so the check (torch's value checks, binary_cross_entropy's [0, 1])
    is dropped from the model, as torch.onnx.export drops torch's."""
    return em.node("Identity", ins[:1])


@export_rule("all_reduce")
def _all_reduce(em: Any, op: Any, ins: list[str]) -> list[str]:
    """An ONNX model runs in one process, where the collective is the identity; over a group of
    several processes there is no ONNX op for it, so that is refused rather than dropped."""
    from avalon.ir.reference.collective import collective
    hook = collective()
    if hook is not None and hook.world_size(op.attrs["group"]) > 1:
        raise NotImplementedError(f"all_reduce over {hook.world_size(op.attrs['group'])} processes has no ONNX form "
                                  "(a model runs in one process); export the single-process step")
    return em.node("Identity", ins)


@export_rule("all_gather")
def _all_gather(em: Any, op: Any, ins: list[str]) -> list[str]:
    """The identity on one process (world_size 1), as `all_reduce`; over several it is refused."""
    if op.attrs["world_size"] > 1:
        raise NotImplementedError(f"all_gather over {op.attrs['world_size']} processes has no ONNX form "
                                  "(a model runs in one process); export the single-process step")
    return em.node("Identity", ins)

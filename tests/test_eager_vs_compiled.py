"""A differential sweep: eager (the numpy reference interpreter) against `av.compile` on each backend.

What is compared. A table of ~1100 calls of Tensor methods and functional ops: unary and binary math
over f32/f64/f16/bf16 (broadcasting, 0-d operands, Python scalars, inputs holding NaN, ±inf, -0.0,
a subnormal), mixed-dtype promotion, integer and bool arithmetic, bitwise ops and casts over
i32/i64/u8/i8/bool, reductions with dim/keepdim/negative/tuple dims, empty and 0-d tensors, shape
ops, matmuls, and in-place methods inside the compiled function (`x.add_(y)`, `x[0] = y`, writes
through views `x[:, 1:].mul_(2)`, `x.t()[1].fill_(7)`, a view read after its base was written).
Calls sharing their inputs are one compiled function returning every call's result (so the cpu
backend builds one C library per group, and fusion sees the ops side by side); when a group
disagrees, each of its calls is checked alone to name the one at fault. For each group and backend
("numpy", "cpu": its C loops forced on for these tiny shapes) the compiled results must have
eager's dtype and shape, and:

* integer and bool results: equal;
* float results: NaN in the same places, infinities equal (sign included); then
  - bit for bit (-0.0 kept apart from 0.0) on the numpy backend in the elementwise groups
    (README, "Backends": the numpy backend is bit for bit the interpreter on elementwise work);
  - otherwise within `16 * eps(dtype) * (|eager| + max|eager|)`: relative, in units of the
    dtype's epsilon (cpu's libm/libmvec functions are ulps from numpy's; reductions and matmuls
    may be reassociated);
* arguments changed in place: the same after the call as after the eager call;
* gradients: `av.grad` of a weighted sum of a group's float results, eagerly and inside
  `av.compile`, within the tolerance above (for the differentiable float groups).

A tiny subset (~20 calls) also goes through `backend="triton"` (Triton's interpreter on a machine
without a GPU), within the same tolerance.
"""
from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is created

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import avalon as av  # noqa: E402
import avalon.nn.functional as F  # noqa: E402
from avalon.codegen.numpy import native  # noqa: E402
from avalon.codegen.numpy import ops as numpy_ops  # noqa: E402

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

DT = {"f32": av.float32, "f64": av.float64, "f16": av.float16, "bf16": av.bfloat16, "i32": av.int32,
      "i64": av.int64, "u8": av.uint8, "i8": av.int8, "bool": av.bool}
FLOATS = ("f32", "f64", "f16", "bf16")
INTS = ("i32", "i64", "u8", "i8")
EPS = {av.float32: 2.0 ** -23, av.float64: 2.0 ** -52, av.float16: 2.0 ** -10, av.bfloat16: 2.0 ** -7}
SPECIAL = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-40, 3.5, -2.5, 0.5, -1.0, 1.0, 100.0]


def data(dtype: str, shape: tuple[int, ...], seed: int, special: bool = False, pos: bool = False,
         unit: bool = False) -> av.Tensor:
    """Random values of `dtype`; `special` puts NaN, ±inf, ±0, a subnormal first; `pos` keeps them
    positive (away from 0), `unit` inside (-0.9, 0.9)."""
    r = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dtype in FLOATS:
        a = r.standard_normal(n) * 2
        if pos:
            a = np.abs(a) + 0.1
        if unit:
            a = np.tanh(a) * 0.9
        if special:
            a[:min(n, len(SPECIAL))] = SPECIAL[:n]
        return av.tensor(a.reshape(shape).astype(np.float64 if dtype == "f64" else np.float32), dtype=DT[dtype])
    if dtype == "bool":
        return av.tensor(r.random(n).reshape(shape) > 0.5)
    lo, hi = {"i32": (-50, 50), "i64": (-50, 50), "u8": (0, 255), "i8": (-128, 127)}[dtype]
    return av.tensor(r.integers(1 if pos else lo, hi + 1, n).reshape(shape), dtype=DT[dtype])


# -- the table --------------------------------------------------------------------------------------

UNARY = {
    "abs": lambda x: x.abs(), "neg": lambda x: -x, "exp": lambda x: x.exp(), "log": lambda x: x.log(),
    "sqrt": lambda x: x.sqrt(), "rsqrt": lambda x: x.rsqrt(), "tanh": lambda x: x.tanh(),
    "sigmoid": lambda x: x.sigmoid(), "sin": lambda x: x.sin(), "cos": lambda x: x.cos(), "tan": lambda x: x.tan(),
    "relu": lambda x: x.relu(), "floor": lambda x: x.floor(), "ceil": lambda x: x.ceil(),
    "round": lambda x: x.round(), "trunc": lambda x: x.trunc(), "sign": lambda x: x.sign(),
    "log1p": lambda x: x.log1p(), "expm1": lambda x: x.expm1(), "exp2": lambda x: av.exp2(x),
    "log2": lambda x: x.log2(), "reciprocal": lambda x: x.reciprocal(), "square": lambda x: x.square(),
    "erf": lambda x: x.erf(), "erfc": lambda x: av.erfc(x), "atan": lambda x: x.atan(), "asin": lambda x: x.asin(),
    "sinh": lambda x: x.sinh(), "asinh": lambda x: x.asinh(), "atanh": lambda x: x.atanh(),
    "frac": lambda x: x.frac(), "nan_to_num": lambda x: x.nan_to_num(), "clamp": lambda x: x.clamp(-1.0, 2.0),
    "clamp_min": lambda x: x.clamp(min=0.5), "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu, "softplus": F.softplus, "elu": F.elu, "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "hardtanh": F.hardtanh, "hardsigmoid": F.hardsigmoid, "mish": F.mish, "logit": lambda x: x.logit(),
    "relu6": F.relu6, "selu": F.selu, "softsign": F.softsign, "hardswish": F.hardswish, "logsigmoid": F.logsigmoid,
    "sinc": lambda x: av.sinc(x), "pow2": lambda x: x ** 2, "pow3": lambda x: x.pow(3), "pow_half": lambda x: x ** 0.5,
    "rpow": lambda x: 2 ** x, "add_s": lambda x: x + 2, "rsub_s": lambda x: 2 - x, "mul_s": lambda x: x * 0.5,
    "div_s": lambda x: x / 3, "rdiv_s": lambda x: 1 / x, "mod_s": lambda x: x % 1.5, "fdiv_s": lambda x: x // 1.5,
    "gt_s": lambda x: x > 0.5, "eq_s": lambda x: x == 0, "isnan": lambda x: x.isnan(), "isinf": lambda x: x.isinf(),
    "isfinite": lambda x: x.isfinite(), "signbit": lambda x: x.signbit(), "to_f64": lambda x: x.double(),
    "to_f16": lambda x: x.half(), "to_bf16": lambda x: x.bfloat16(), "to_f32": lambda x: x.float(),
    "sin_exp": lambda x: (x.sin() * 2).exp() + x.cos(),  # a chain: one C loop on cpu
}
UNARY_NOGRAD = {"floor", "ceil", "round", "trunc", "sign", "isnan", "isinf", "isfinite", "signbit", "gt_s",
                "eq_s", "fdiv_s"}
UNARY_SHORT = {"exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "sin", "cos", "tan", "round", "sign", "log1p",
               "expm1", "erf", "atan", "frac", "nan_to_num", "gelu", "silu", "softplus", "mish", "pow_half", "rpow",
               "mod_s", "fdiv_s", "isinf", "signbit", "to_f16", "to_bf16", "sin_exp"}  # f64 and bf16 run these
UNARY_GRAD_SKIP = {"abs", "neg", "relu", "square", "clamp_min", "add_s", "rsub_s", "mul_s", "div_s", "to_f16",
                   "to_f64", "relu6", "hardtanh", "leaky_relu", "pow2", "sinh", "asin", "log2", "exp2", "frac",
                   "nan_to_num", "selu", "celu"}  # plain chain-rule cases, kept out of the f32 gradient group for time
FINITE_ONLY = {"to_i32": lambda x: x.to(av.int32), "to_bool": lambda x: x.bool(), "to_u8": lambda x: x.abs().to(av.uint8)}

BINARY = {
    "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y, "div": lambda x, y: x / y,
    "pow": lambda x, y: x.abs() ** y, "maximum": av.maximum, "minimum": av.minimum, "fmax": av.fmax,
    "fmin": av.fmin, "atan2": av.atan2, "rem": lambda x, y: x % y, "fmod": av.fmod, "copysign": av.copysign,
    "hypot": av.hypot, "where": lambda x, y: av.where(x > y, x, y), "lerp": lambda x, y: av.lerp(x, y, 0.3),
    "addcmul": lambda x, y: av.addcmul(x, x, y, value=0.5), "addcdiv": lambda x, y: av.addcdiv(x, x, y, value=0.5),
    "logaddexp": av.logaddexp, "xlogy": av.xlogy, "sub_alpha": lambda x, y: av.sub(x, y, alpha=2),
    "fdiv": lambda x, y: x // y, "div_trunc": lambda x, y: av.div(x, y, rounding_mode="trunc"),
    "eq": lambda x, y: x == y, "ne": lambda x, y: x != y, "lt": lambda x, y: x < y, "le": lambda x, y: x <= y,
    "gt": lambda x, y: x > y, "ge": lambda x, y: x >= y,
    "logical_and": av.logical_and, "logical_or": av.logical_or,
}
BINARY_NOGRAD = {"fdiv", "div_trunc", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or"}

MIXED = [("f32", "f64"), ("f16", "f32"), ("bf16", "f16"), ("i32", "f32"), ("u8", "i8"), ("i64", "f16"),
         ("bool", "f32"), ("bool", "i32"), ("u8", "bool"), ("i32", "i64"), ("bf16", "i64")]
MIXED_OPS = ("add", "mul", "div", "maximum", "lt", "where")

INTEGER = {
    "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y, "div": lambda x, y: x / y,
    "fdiv": lambda x, y: x // y, "rem": lambda x, y: x % y, "and": lambda x, y: x & y, "or": lambda x, y: x | y,
    "xor": lambda x, y: x ^ y, "maximum": av.maximum, "minimum": av.minimum, "lt": lambda x, y: x < y,
    "eq": lambda x, y: x == y, "shl": lambda x, y: x << (y % 5), "shr": lambda x, y: x >> (y % 5),
    "pow": lambda x, y: x ** (y % 3), "add_s": lambda x, y: x + 3, "mul_sf": lambda x, y: x * 1.5,
    "rsub_s": lambda x, y: 7 - x, "div_s": lambda x, y: x / 2, "fdiv_s": lambda x, y: x // 3,
    "rem_s": lambda x, y: x % 3, "neg": lambda x, y: -x, "abs": lambda x, y: x.abs(), "not": lambda x, y: ~x,
    "sign": lambda x, y: x.sign(), "clamp": lambda x, y: x.clamp(-3, 40), "gcd": av.gcd, "square": lambda x, y: x.square(),
    "to_f32": lambda x, y: x.float(), "to_f16": lambda x, y: x.half(), "to_u8": lambda x, y: x.to(av.uint8),
    "to_i8": lambda x, y: x.to(av.int8), "to_bool": lambda x, y: x.bool(),
}
BOOL_OPS = ("and", "or", "xor", "not", "add_s", "eq", "lt", "maximum", "to_f32", "to_u8", "mul_sf")

REDUCE = {
    "sum": lambda x: x.sum(), "sum1": lambda x: x.sum(1), "sum0k": lambda x: x.sum(0, keepdim=True),
    "sum_neg": lambda x: x.sum(-1, keepdim=True), "sum_02": lambda x: x.sum((0, 2)), "mean": lambda x: x.mean(),
    "mean1k": lambda x: x.mean(1, keepdim=True), "amax": lambda x: x.amax(1), "amin": lambda x: x.amin((0, 1)),
    "max1": lambda x: x.max(1)[0], "min0k": lambda x: x.min(0, keepdim=True)[0], "max": lambda x: x.max(),
    "prod": lambda x: x.prod(1), "std": lambda x: x.std(1), "var": lambda x: x.var(0, unbiased=False),
    "logsumexp": lambda x: x.logsumexp(1), "norm": lambda x: x.norm(), "norm1": lambda x: x.norm(p=1, dim=1),
    "cumsum": lambda x: x.cumsum(1), "cumprod": lambda x: x.cumprod(0), "softmax": lambda x: x.softmax(-1),
    "log_softmax": lambda x: F.log_softmax(x, 1), "nansum": lambda x: av.nansum(x, 1),
    "cummax": lambda x: av.cummax(x, 1)[0],
}
REDUCE_INDEX = {"maxidx": lambda x: x.max(1)[1], "argmax": lambda x: x.argmax(),
                "argmax1k": lambda x: x.argmax(1, keepdim=True), "argmin": lambda x: x.argmin(-1),
                "all": lambda x: x.all(1), "any": lambda x: x.any(), "count_nonzero": lambda x: av.count_nonzero(x, 1)}
INT_REDUCE = ("sum", "sum1", "sum0k", "amax", "max1", "min0k", "prod", "cumsum", "maxidx", "argmax1k", "all", "any",
              "count_nonzero")

SHAPE = {
    "transpose": lambda x: x.transpose(0, 1) * 2, "permute": lambda x: x.permute(2, 0, 1) + 1,
    "flip": lambda x: x.flip(1), "roll": lambda x: x.roll(1, 2), "cat": lambda x: av.cat([x, x * 2], 1),
    "stack": lambda x: av.stack([x, -x], -1), "expand": lambda x: x[:, :1].expand(2, 3, 4) * 1,
    "repeat": lambda x: x.repeat(1, 2, 1), "squeeze": lambda x: x[:, :1].squeeze(1), "narrow": lambda x: x.narrow(2, 1, 2),
    "index": lambda x: x[1, ::2, 1:], "gather": lambda x: x.gather(2, x.abs().argmax(2, keepdim=True)),
    "tril": lambda x: x[0].tril(), "triu": lambda x: x[0].triu(1), "flatten": lambda x: x.flatten(1),
    "chunk": lambda x: x.chunk(2, 2)[1] * 3, "pad": lambda x: F.pad(x, (1, 2)),
    "contiguous": lambda x: x.transpose(1, 2).contiguous().view(-1), "diagonal": lambda x: x[0, :, :3].diagonal(),
    "masked_fill": lambda x: x.masked_fill(x > 0, 0), "sort": lambda x: x.sort(-1)[0], "topk": lambda x: x.topk(2, -1)[0],
}
SHAPE_DTYPES = ("f32", "bf16", "i32", "u8")

INPLACE = {
    "add_": lambda x, y: x.add_(y), "mul_": lambda x, y: x.mul_(y), "sub_alpha_": lambda x, y: x.sub_(y, alpha=2),
    "clamp_": lambda x, y: x.clamp_(0, 1), "iadd": lambda x, y: x.__iadd__(y), "div_": lambda x, y: x.div_(2),
    "masked_fill_": lambda x, y: x.masked_fill_(y > 0, 5), "setitem_row": lambda x, y: x.__setitem__(0, y) or x,
    "setitem_col": lambda x, y: x.__setitem__((slice(None), 1), 3) or x,
    "view_mul_": lambda x, y: (x[:, 1:].mul_(2), x)[1], "t_fill_": lambda x, y: (x.t()[1].fill_(7), x)[1],
    "view_read": lambda x, y: (lambda v: (x.add_(1), v * 1))(x[0]), "zero_": lambda x, y: x.zero_(),
    "relu_inplace": lambda x, y: F.relu(x, inplace=True), "copy_": lambda x, y: x.copy_(y.expand(3, 4)),
    "clone_add_": lambda x, y: x.clone().add_(y) + x, "neg_": lambda x, y: x.neg_(),
}
INPLACE_DTYPES = ("f32", "f64", "f16", "i32", "u8")


def at(f, *idx):
    """`f` called on the inputs numbered `idx` of a group's function."""
    return lambda *xs: f(*(xs[i] for i in idx))


def _matmuls(x, w):
    return x @ w, x @ w[:, 0], av.bmm(x.unsqueeze(0), w.unsqueeze(0))


class Group:
    """Calls over the same inputs, compiled as one function. `calls`: name -> fn(*inputs).
    `exact`: bit for bit on the numpy backend; `grad`: gradients compared; `inplace`: the inputs'
    values after the call compared too."""

    def __init__(self, name: str, inputs: list[av.Tensor], calls: dict, exact: bool = True, grad: bool = False,
                 inplace: bool = False, wrt: tuple[int, ...] | None = None):
        self.name, self.inputs, self.calls = name, inputs, calls
        self.exact, self.grad, self.inplace = exact, grad, inplace
        self.wrt = wrt if wrt is not None else tuple(range(len(inputs)))

    def fn(self, calls=None):
        calls = self.calls if calls is None else calls
        return lambda *xs: tuple(f(*xs) for f in calls.values())


def _unary_groups() -> list[Group]:
    out = []
    for d in FLOATS:
        x = data(d, (3, 4), 1, special=True)
        calls = {f"{k}[{d}]": at(f, 0) for k, f in UNARY.items() if d in ("f32", "f16") or k in UNARY_SHORT}
        calls.update({f"{k}[{d},finite]": at(f, 1) for k, f in FINITE_ONLY.items()})
        out.append(Group(f"unary-{d}", [x, data(d, (3, 4), 2)], calls))
    calls = {f"{k}[f32]": f for k, f in UNARY.items() if k not in UNARY_NOGRAD and k not in UNARY_GRAD_SKIP}
    out.append(Group("unary-grad-f32", [data("f32", (3, 4), 3, unit=True)], calls, grad=True))
    calls = {f"{k}[f64]": UNARY[k] for k in ("exp", "tanh", "sigmoid", "tan", "atanh", "softplus", "mish", "gelu",
                                             "logit", "pow_half", "to_f32", "sin_exp")}
    out.append(Group("unary-grad-f64", [data("f64", (3, 4), 3, unit=True)], calls, grad=True))
    return out


def _binary_groups() -> list[Group]:
    out = []
    for d in FLOATS:
        # x: (3, 1, 4) with specials, y: (2, 1) broadcast against it, s: a 0-d operand
        ins = [data(d, (3, 1, 4), 4, special=True), data(d, (2, 1), 5), data(d, (), 6)]
        calls = {f"{k}[{d},bcast]": at(f, 0, 1) for k, f in BINARY.items()}
        if d in ("f32", "f16"):
            calls.update({f"{k}[{d},0d]": at(f, 1, 2) for k, f in BINARY.items()})
        out.append(Group(f"binary-{d}", ins, calls))
    for d in ("f32", "f64"):
        ins = [data(d, (3, 4), 7, pos=True), data(d, (4,), 8, pos=True)]
        calls = {f"{k}[{d}]": f for k, f in BINARY.items() if k not in BINARY_NOGRAD}
        out.append(Group(f"binary-grad-{d}", ins, calls, grad=True))
    ins, calls = [], {}
    for j, (a, b) in enumerate(MIXED):
        ins += [data(a, (2, 3), 9 + j), data(b, (3,), 30 + j)]
        for k in MIXED_OPS:
            calls[f"{k}[{a},{b}]"] = at(BINARY[k], 2 * j, 2 * j + 1)
    out.append(Group("mixed-dtypes", ins, calls))
    ins, calls = [], {}
    for j, d in enumerate(("i32", "i8", "bool")):  # i64, u8: in the mixed, reduction and in-place groups
        ins += [data(d, (3, 4), 11 + j), data(d, (4,), 40 + j, pos=True)]
        for k, f in INTEGER.items():
            if d != "bool" or k in BOOL_OPS:
                calls[f"{k}[{d}]"] = at(f, 2 * j, 2 * j + 1)
    out.append(Group("integer-bool", ins, calls))
    return out


def _reduce_groups() -> list[Group]:
    out = []
    ins, calls = [], {}
    for j, d in enumerate(FLOATS):
        ins += [data(d, (2, 3, 4), 17 + j), data(d, (2, 3, 4), 50 + j, special=True)]
        for k, f in {**REDUCE, **REDUCE_INDEX}.items():
            calls[f"{k}[{d}]"] = at(f, 2 * j)
            if d == "f32":
                calls[f"{k}[{d},special]"] = at(f, 2 * j + 1)
    out.append(Group("reductions-float", ins, calls, exact=False))
    for d in ("f32", "f64"):
        calls = {f"{k}[{d}]": f for k, f in REDUCE.items()}
        out.append(Group(f"reductions-grad-{d}", [data(d, (2, 3, 4), 19, pos=True)], calls, exact=False, grad=True))
    ins, calls = [], {}
    for j, d in enumerate(INTS + ("bool",)):
        ins.append(data(d, (2, 3, 4), 20 + j))
        for k in INT_REDUCE:
            f = {**REDUCE, **REDUCE_INDEX}[k]
            calls[f"{k}[{d}]"] = at(f, j)
        calls[f"mean_f[{d}]"] = at(lambda x: x.float().mean(1), j)
    out.append(Group("reductions-integer", ins, calls, exact=False))
    ins, calls = [], {}
    for j, d in enumerate(("f32", "i64", "bool", "f16")):
        ins += [data(d, (0, 3), 21 + j), data(d, (), 60 + j)]

        def empty(x):
            return (x + x, x.sum(0), x.sum(1), x * 2, x.reshape(3, 0), x.any(0), x.amax(1))

        def zero_d(x):
            return (x + x, x.sum(), x * 2, x.reshape(1, 1), x.unsqueeze(0), x if x.dtype == av.bool else x.abs())
        calls[f"empty[{d}]"] = at(empty, 2 * j)
        calls[f"zero_d[{d}]"] = at(zero_d, 2 * j + 1)
    calls["empty_mean_prod[f32]"] = lambda *xs: (xs[0].mean(), xs[0].mean(0), xs[0].prod(0), xs[0].prod())
    out.append(Group("empty-and-0d", ins, calls, exact=False))
    return out


def _shape_groups() -> list[Group]:
    ins, calls = [], {}
    for j, d in enumerate(SHAPE_DTYPES):
        ins.append(data(d, (2, 3, 4), 23 + j))
        for k, f in SHAPE.items():
            calls[f"{k}[{d}]"] = at(f, j)
    out = [Group("shape-ops", ins, calls),
           Group("shape-grad-f32", [data("f32", (2, 3, 4), 70)],
                 {f"{k}[f32]": f for k, f in SHAPE.items() if k not in ("sort", "topk")}, grad=True)]
    ins, calls = [], {}
    for j, d in enumerate(("f32", "f64", "f16", "bf16", "i32", "i64")):
        ins += [data(d, (3, 4), 24 + j), data(d, (4, 2), 80 + j)]
        calls[f"matmul[{d}]"] = at(_matmuls, 2 * j, 2 * j + 1)
    out.append(Group("matmuls", ins, calls, exact=False))
    out.append(Group("matmul-grad", [data("f32", (3, 4), 90), data("f64", (4, 2), 91)],
                     {"matmul[f32]": lambda x, w: x @ w.float(), "linear[f64]": lambda x, w: F.linear(x.double(), w.t())},
                     exact=False, grad=True))
    return out


def _inplace_groups() -> list[Group]:
    ins, calls = [], {}
    for d in INPLACE_DTYPES:
        for k, f in INPLACE.items():
            if k == "div_" and d not in FLOATS:  # torch's error: an integer tensor can't hold the quotient
                continue
            j = len(ins)
            ins += [data(d, (3, 4), 100 + j), data(d, (4,), 101 + j)]
            calls[f"{k}[{d}]"] = at(f, j, j + 1)
    return [Group("in-place", ins, calls, inplace=True)]


GROUPS = _unary_groups() + _binary_groups() + _reduce_groups() + _shape_groups() + _inplace_groups()


# -- comparing --------------------------------------------------------------------------------------

def disagreement(want, got, exact: bool) -> str | None:
    """None when `got` (compiled) agrees with `want` (eager) under the module's rules, else why not."""
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"structure {type(want).__name__}[{len(want)}] vs {got!r:.80}"
        return next((f"[{k}] {m}" for k, (w, g) in enumerate(zip(want, got))
                     if (m := disagreement(w, g, exact)) is not None), None)
    if not isinstance(want, av.Tensor):
        return None if want == got else f"{want!r} vs {got!r}"
    if not isinstance(got, av.Tensor):
        return f"a Tensor vs {type(got).__name__}"
    if want.dtype != got.dtype or tuple(want.shape) != tuple(got.shape):
        return f"{want.dtype}{tuple(want.shape)} vs {got.dtype}{tuple(got.shape)}"
    a, b = np.asarray(want.numpy()), np.asarray(got.numpy())  # bf16 comes back as its float32 values
    if a.dtype.kind != "f":
        return None if np.array_equal(a, b) else f"values {a.ravel()[:8]} vs {b.ravel()[:8]}"
    nan = np.isnan(a)
    if not np.array_equal(nan, np.isnan(b)):
        return f"NaN positions: {a.ravel()[:12]} vs {b.ravel()[:12]}"
    a, b = a[~nan], b[~nan]
    if exact:
        bad = (a != b) | (np.signbit(a) != np.signbit(b))
        return f"not bit for bit: {a[bad][:4]} vs {b[bad][:4]}" if bad.any() else None
    inf = np.isinf(a)
    if not np.array_equal(a[inf], b[inf]) or np.isinf(b[~inf]).any():
        return f"infinities: {a[:12]} vs {b[:12]}"
    a, b = a[~inf].astype(np.float64), b[~inf].astype(np.float64)
    if not a.size:
        return None
    err = np.abs(a - b) - 16 * EPS[want.dtype] * (np.abs(a) + np.abs(a).max())
    return None if (err <= 0).all() else f"{a[err > 0][:4]} vs {b[err > 0][:4]}"


def _clones(xs: list[av.Tensor]) -> list[av.Tensor]:
    return [x.clone() for x in xs]


def _weighted_loss(fn):
    """A scalar of every float result: each weighted by 1, 1.1, 1.2, ... so no gradient is uniform."""
    def loss(*xs):
        total = 0
        for o in _leaves(fn(*xs)):
            if isinstance(o, av.Tensor) and o.dtype.is_float and o.numel():
                w = av.arange(o.numel(), dtype=o.dtype).reshape(o.shape) * 0.1 + 1
                total = total + (o * w).sum().float()
        return total
    return loss


def _leaves(t):
    if isinstance(t, (tuple, list)):
        return [x for e in t for x in _leaves(e)]
    return [t]


def _raising(group: Group, calls: dict) -> tuple[dict, dict]:
    """`calls` split into those that run eagerly and those that raise there (torch's errors: argmax of a
    bool tensor, ...), each with its exception."""
    ok, bad = {}, {}
    for name, f in calls.items():
        try:
            f(*_clones(group.inputs))
            ok[name] = f
        except Exception as e:  # noqa: BLE001 - compared with the compiled call below
            bad[name] = e
    return ok, bad


def check(group: Group, backend: str, calls=None) -> str | None:
    """Run one group (or `calls` of it) eagerly and compiled on `backend`; None, or what differed. A call
    that raises eagerly must raise compiled too (nothing fails, or succeeds, silently)."""
    whole = calls is None
    calls, raising = _raising(group, group.calls if whole else calls)
    for name, err in raising.items():
        try:
            av.compile(group.fn({name: group.calls[name]}), backend=backend)(*_clones(group.inputs))
        except Exception:  # noqa: BLE001, S110 - raised, as eagerly
            continue
        return f"{name}: eager raised {type(err).__name__}: {err}, compiled returned"
    if not calls:
        return None if not whole else "every call raised eagerly: " + "; ".join(f"{k}: {e}" for k, e in raising.items())[:400]
    fn = group.fn(calls)
    exact = group.exact and backend == "numpy"
    eager_in = _clones(group.inputs)
    want = fn(*eager_in)
    compiled = av.compile(fn, backend=backend)
    for run in range(2):  # twice: the second call reuses the signature's buffers
        got_in = _clones(group.inputs)
        got = compiled(*got_in)
        m = disagreement(want, got, exact)
        if m is None and group.inplace:
            m = disagreement(tuple(eager_in), tuple(got_in), exact)
            m = m and "inputs after the call: " + m
        if m is not None:
            return f"run {run}: {m}"
    if group.grad:
        g = av.grad(_weighted_loss(fn), argnums=group.wrt)
        want = g(*_clones(group.inputs))
        got = av.compile(lambda *xs: g(*xs), backend=backend)(*_clones(group.inputs))
        m = disagreement(want, got, exact=False)
        if m is not None:
            return f"gradient: {m}"
    return None


def culprits(group: Group, backend: str) -> list[str]:
    """The calls of a disagreeing group that disagree alone (the group may fail only together)."""
    bad = []
    for name, f in group.calls.items():
        try:
            m = check(group, backend, {name: f})
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            m = f"{type(e).__name__}: {e}"
        if m is not None:
            bad.append(f"{name}: {m}")
    return bad


@pytest.fixture
def cpu_loops_everywhere(monkeypatch):
    """backend='cpu' compiles runs of any size (these shapes are far below its thresholds)."""
    monkeypatch.setattr(native, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(numpy_ops, "MAX_MIN_ELEMENTS", 0)


def test_the_table_is_the_size_it_says():
    assert 1000 <= sum(len(g.calls) for g in GROUPS) <= 1500


CPU_ON_NUMPY_ONLY = {"unary-grad-f32"}
"""Groups whose `cpu` run repeats the numpy run's graph with ~40 more C loops (4 s of compiles): the
f64 gradient group keeps the cpu backend's gradients covered within the suite's time budget."""


@pytest.mark.parametrize("group,backend", [(g, b) for g in GROUPS for b in ("numpy", "cpu")
                                           if not (b == "cpu" and g.name in CPU_ON_NUMPY_ONLY)],
                         ids=lambda v: v.name if isinstance(v, Group) else v)
def test_compiled_agrees_with_eager(group, backend, cpu_loops_everywhere):
    try:
        m = check(group, backend)
    except Exception as e:  # noqa: BLE001 - a group that fails to compile is named call by call
        m = f"{type(e).__name__}: {e}"
    if m is not None:
        detail = culprits(group, backend)
        pytest.fail(f"{group.name} on {backend}: {m}\n" + "\n".join(detail or ["(only as a group)"]))


# -- a few regressions found by the sweep, named --------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_pow_half_is_ieee_pow_whatever_the_exponent_layout(backend):
    """numpy's power takes a scalar/stride-0 exponent of 0.5 through sqrt (sqrt(-inf) = nan, sqrt(-0.) = -0.),
    its general loop says pow(-inf, .5) = inf, pow(-0., .5) = 0.: the compiled constant exponent went the
    first way, the eager materialized one the second."""
    x = av.tensor(np.array([-np.inf, -0.0, 4.0, 2.0], np.float32))
    for f in (lambda x: x ** 0.5, lambda x: x ** av.tensor(0.5), lambda x: x ** 2 + x ** -1.0):
        assert disagreement(f(x), av.compile(f, backend=backend)(x), exact=backend == "numpy") is None
    np.testing.assert_array_equal((x ** 0.5).numpy(), [np.inf, 0.0, 2.0, np.sqrt(np.float32(2))])


def test_a_reference_fallback_inside_a_compiled_loop_is_allocated(cpu_loops_everywhere):
    """sin and cos have no numpy emitter (the reference rule runs), but are C in a cpu loop; when the loop
    stores them for a later op, their arrays must exist before the loop (they were `v = _ev(...)` lines
    inside it, replaced by the call: NameError)."""
    x = data("f32", (3, 4), 3, unit=True)

    def loss(x):
        w = av.arange(12, dtype=av.float32).reshape(3, 4) * 0.1 + 1
        return (x.tan() * w).sum()
    f = av.compile(lambda x: av.grad(loss)(x), backend="cpu")
    assert disagreement(av.grad(loss)(x), f(x), exact=False) is None


# -- Triton's interpreter: a tiny subset -----------------------------------------------------------

TRITON_CALLS = {
    "add_bcast": lambda x, y, i: x + y, "mul_s": lambda x, y, i: x * 0.5, "div": lambda x, y, i: x / y,
    "exp": lambda x, y, i: x.exp(), "log": lambda x, y, i: x.abs().log(), "tanh": lambda x, y, i: x.tanh(),
    "sigmoid": lambda x, y, i: x.sigmoid(), "maximum_nan": lambda x, y, i: av.maximum(x, y),
    "where": lambda x, y, i: av.where(x > 0, x, y), "pow_half": lambda x, y, i: x ** 0.5,
    "relu": lambda x, y, i: F.relu(x), "sum1": lambda x, y, i: x.sum(1), "amax_k": lambda x, y, i: x.amax(0, keepdim=True),
    "softmax": lambda x, y, i: x.softmax(-1), "lt": lambda x, y, i: x < y, "isnan": lambda x, y, i: x.isnan(),
    "int_add": lambda x, y, i: i + 3, "int_fdiv": lambda x, y, i: i // 3, "int_to_f": lambda x, y, i: i.float() * x,
    "transpose": lambda x, y, i: x.t() + 1, "clamp": lambda x, y, i: x.clamp(-1, 1),
}


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (the [gpu] extra)")
def test_triton_subset_agrees_with_eager():
    x = data("f32", (3, 4), 200, special=True)
    y, i = data("f32", (4,), 201), data("i32", (3, 4), 202)
    g = Group("triton", [x, y, i], TRITON_CALLS, exact=False)
    m = check(g, "triton")
    assert m is None, f"{m}\n" + "\n".join(culprits(g, "triton"))
    gg = Group("triton-grad", [data("f32", (3, 4), 203, unit=True), y],
               {k: at(TRITON_CALLS[k], 0, 1, 1)  # these calls ignore the third operand
                for k in ("add_bcast", "div", "exp", "tanh", "sigmoid", "sum1", "softmax", "clamp")}, exact=False, grad=True)
    m = check(gg, "triton")
    assert m is None, f"{m}\n" + "\n".join(culprits(gg, "triton"))

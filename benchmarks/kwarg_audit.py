"""Keyword-argument parity audit: which parameter names torch accepts by keyword that Avalon does not.

    python benchmarks/kwarg_audit.py [--all] [--only tensor|av|F] [--names pow,sum,...] [--json OUT]

Ported code calls torch with keywords (`x.pow(exponent=2)`, `x.permute(dims=(0, 2, 1))`,
`torch.sum(input=x, dim=1, keepdim=True)`, `F.softmax(x, dim=-1)`), and Avalon promises torch's
parameter names (docs: README's porting section, DESIGN.md 1b). For every public `torch.Tensor`
method, `torch.*` function and `torch.nn.functional` function that Avalon also has (`av.Tensor.X`,
`av.X`, `F.X`), this script reads both signatures and reports the names torch accepts by keyword
that Avalon's signature does not take, and (where both give a default) defaults that differ.

torch's side, the union of every overload found by:
  - `inspect.signature` (torch's Python functions: most of `torch.nn.functional`, `Tensor.split`, ...);
  - the argument parser's own list of overloads, which a builtin prints when called with an unknown
    keyword (`pow() received an invalid combination of arguments ... expected one of: * (Tensor
    input, Tensor exponent, *, Tensor out = None)`): nothing runs, the parser refuses the call first;
  - the docstring's signature lines (`pow(input, exponent, *, out=None) -> Tensor`, the `..
    function::` overloads below it; `Tensor.pow.__doc__` starts `pow(exponent) -> Tensor`).
A `*dims`-style varargs of torch's (`permute(*dims)`) is a list argument torch also takes by keyword
(`x.permute(dims=(1, 0))`), so it counts as the keyword `dims`; `self` is never a keyword.

Avalon's side: `inspect.signature`, looking through the Tensor method wrappers (`_method("pow")` calls
`avalon.ops.pow(self, ...)`, the in-place `add_` calls `ops.add`), the first parameter then being
self. A `**kwargs` takes every name. Keywords that ported model code rarely passes (`out`, `layout`,
`pin_memory`, `memory_format`, `names`, ...) are reported apart as minor.

The default report lists the curated common names (`COMMON`, also what tests/test_kwarg_parity.py holds
to no gap) plus a count over everything; `--all` prints the table for every name found in both.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import avalon as av  # noqa: E402
import avalon.nn.functional as AF  # noqa: E402
from avalon import ops as _ops  # noqa: E402

MINOR = frozenset({"out", "layout", "pin_memory", "memory_format", "names", "sparse_grad", "non_blocking",
                   "requires_grad", "implicit", "generator", "device", "dtype", "inplace", "out_dtype"})
"""Keywords reported apart: rarely passed by model code, or options Avalon takes elsewhere. (A missing
`dtype`/`device`/`generator`/`inplace` on a creation function or an F. layer still shows, as minor.)"""

COMMON: dict[str, tuple[str, ...]] = {
    "tensor": ("add", "sub", "mul", "div", "pow", "matmul", "clamp", "clip", "exp", "log", "sqrt", "abs",
               "sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "std", "var", "prod",
               "logsumexp", "cumsum", "norm", "all", "any", "softmax", "log_softmax",
               "reshape", "view", "permute", "transpose", "expand", "repeat", "flatten", "squeeze", "unsqueeze",
               "split", "chunk", "narrow", "flip", "roll", "gather", "scatter", "scatter_add", "index_select",
               "masked_fill", "where", "topk", "sort", "argsort", "tril", "triu", "new_zeros", "new_ones",
               "new_full", "to", "type", "eq", "ne", "lt", "le", "gt", "ge", "maximum", "minimum", "lerp",
               "addcmul", "addcdiv", "remainder", "fmod", "movedim", "unbind", "repeat_interleave", "diagonal",
               "fill_", "add_", "mul_", "clamp_", "masked_fill_", "copy_", "normal_", "uniform_", "zero_"),
    "av": ("tensor", "zeros", "ones", "full", "empty", "arange", "linspace", "eye", "rand", "randn", "randint",
           "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "cat", "stack", "where", "sum",
           "mean", "max", "min", "pow", "exp", "log", "sqrt", "abs", "clamp", "matmul", "bmm", "einsum",
           "softmax", "log_softmax", "sigmoid", "tanh", "gather", "topk", "sort", "argmax", "argmin", "cumsum",
           "flatten", "reshape", "transpose", "permute", "squeeze", "unsqueeze", "split", "chunk", "add",
           "sub", "mul", "div", "maximum", "minimum", "std", "var", "norm", "allclose", "isclose",
           "masked_fill", "index_select", "tril", "triu", "logsumexp", "outer", "multinomial", "roll", "flip",
           "meshgrid", "clone", "lerp"),
    "F": ("relu", "gelu", "silu", "leaky_relu", "elu", "softplus", "sigmoid", "tanh", "softmax", "log_softmax",
          "linear", "conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
          "dropout", "batch_norm", "layer_norm", "group_norm", "embedding", "one_hot", "pad", "interpolate",
          "normalize", "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss",
          "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "cosine_similarity",
          "scaled_dot_product_attention", "gumbel_softmax", "unfold", "glu", "hardtanh"),
}
"""The ~80 Tensor methods, av.* and F.* functions ported code calls most (several hundred names across the
three groups): the test holds these to no missing keyword (minor ones aside)."""


@dataclass
class Params:
    """One side's parameters: names in order (per overload for torch), which are keywords, defaults."""
    overloads: list[list[str]] = field(default_factory=list)
    keywords: set[str] = field(default_factory=set)
    defaults: dict[str, str] = field(default_factory=dict)
    var_kw: bool = False
    source: str = ""

    def text(self) -> str:
        if not self.overloads:
            return "?"
        return " | ".join("(" + ", ".join(o) + ")" for o in self.overloads) + (" **kw" if self.var_kw else "")


# -- torch's side ------------------------------------------------------------------------------------

_PARSER_LINE = re.compile(r"^\s*\* \((.*)\)\s*$")
_DOC_LINE = re.compile(r"^\s*(?:\.\. (?:function|method):: )?(?:[\w.]+\.)?(\w+)\((.*)\)\s*->")


def _split_top(s: str) -> list[str]:
    """Split at top-level commas (defaults like `(1, 2)` or `[]` keep theirs)."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return [p.strip() for p in out if p.strip()]


def _add_overload(p: Params, items: list[tuple[str, str | None]]) -> None:
    names = []
    for name, default in items:
        if name in ("self", "*", "/", "") or name.startswith("**"):
            continue
        name = name.lstrip("*")
        if not name.isidentifier():
            continue
        names.append(name)
        p.keywords.add(name)
        if default is not None:
            p.defaults.setdefault(name, default)
    if names not in p.overloads:
        p.overloads.append(names)


def _parser_overloads(text: str) -> list[list[tuple[str, str | None]]]:
    """The overloads in a `received an invalid combination of arguments` message."""
    result = []
    for line in text.splitlines():
        m = _PARSER_LINE.match(line)
        if not m:
            continue
        items = []
        for part in _split_top(m.group(1)):
            if part == "*":
                continue
            decl, _, default = part.partition("=")  # `Tensor out = None` (messages), `bool keepdim=False`
            items.append((decl.split()[-1], default.strip() or None))
        result.append(items)
    return result


def _doc_overloads(doc: str, name: str) -> list[list[tuple[str, str | None]]]:
    result = []
    for line in (doc or "").splitlines()[:80]:
        m = _DOC_LINE.match(line)
        if not m or m.group(1) != name:
            continue
        items = []
        for part in _split_top(m.group(2)):
            part = part.split(":")[0] if "=" not in part else part  # `input (Tensor)` annotations: rare
            n, _, default = part.partition("=")
            items.append((n.strip(), default.strip() or None))
        result.append(items)
    return result


def _sig_items(sig: inspect.Signature, drop_first: bool = False) -> tuple[list[tuple[str, str | None]], bool]:
    items, var_kw = [], False
    params = list(sig.parameters.values())[1 if drop_first else 0:]
    for q in params:
        if q.kind is q.VAR_KEYWORD:
            var_kw = True
            continue
        if q.kind is q.POSITIONAL_ONLY:
            continue
        if q.kind is q.VAR_POSITIONAL:  # `*args` in Python takes no keyword
            continue
        items.append((q.name, None if q.default is q.empty else repr(q.default)))
    return items, var_kw


_PROBE = "_kwarg_audit_probe_"


class _Sentinel:
    """A value no torch argument takes: the parser names the argument it reached."""


def _probe(fn, name: str, method: bool, kwargs: dict) -> str:
    """The TypeError text of calling torch's builtin with these keywords ('' if it ran)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (getattr(torch.zeros(2, 2), name) if method else fn)(**kwargs)
    except Exception as e:  # noqa: BLE001 (the parser's message is what we read)
        return str(e)
    return ""


_BINARY: dict[str, list[str]] | None = None
_BIN_SIG = re.compile(rb"(?<=\x00)([a-z_][a-z0-9_]*)\(([^()\x00\n]*)\)(?=\x00)")
_BIN_PART = re.compile(r"^(\*|[A-Za-z][\w:\[\]?]*\?? [a-z_]\w*(=.*)?)$")


def _binary_signatures() -> dict[str, list[str]]:
    """The Python-binding signatures compiled into libtorch_python (`mul(Tensor other)`, `pow(Tensor input,
    Tensor exponent, *, Tensor out=None)`), methods' and functions' together, by name."""
    global _BINARY
    if _BINARY is None:
        _BINARY = {}
        path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_python.so")
        try:
            data = open(path, "rb").read()
        except OSError:
            return _BINARY
        for m in _BIN_SIG.finditer(data):
            body = m.group(2).decode("latin1")
            parts = _split_top(body)
            if all(_BIN_PART.match(q) for q in parts):
                _BINARY.setdefault(m.group(1).decode(), []).append(body)
    return _BINARY


def _binary_overloads(name: str, method: bool) -> list[list[tuple[str, str | None]]]:
    """A method's overloads are those without `input`/`self`, a function's those with (or all, for
    functions that take no tensor: `zeros(SymIntArrayRef size, ...)`)."""
    parsed = _parser_overloads("\n".join(f" * ({b})" for b in _binary_signatures().get(name, [])))
    with_input = [o for o in parsed if any(n in ("input", "self") for n, _ in o)]
    if method:
        return [o for o in parsed if o not in with_input]
    return with_input or parsed


def torch_params(fn, name: str, method: bool) -> Params:
    p = Params()
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        subs = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())
                if inspect.isfunction(c.cell_contents)]
        params = list(sig.parameters.values())
        if subs and all(q.kind in (q.VAR_POSITIONAL, q.VAR_KEYWORD) for q in params):
            for sub in subs:  # torch's boolean_dispatch (F.max_pool2d): both functions' parameters
                items, _ = _sig_items(inspect.signature(sub))
                _add_overload(p, items)
            p.source = "inspect(dispatch)"
            return p
        items, p.var_kw = _sig_items(sig, drop_first=method)
        _add_overload(p, items)
        p.source = "inspect"
        return p
    for items in _parser_overloads(_probe(fn, name, method, {_PROBE: 1})):  # several overloads: listed
        _add_overload(p, items)
        p.source = "parser"
    if p.overloads:
        return p
    for items in _binary_overloads(name, method):
        _add_overload(p, items)
        p.source = "binary"
    if p.overloads:
        return p
    for items in _doc_overloads(getattr(fn, "__doc__", "") or "", name):
        # a docstring can be stale (`Tensor.mul.__doc__` says `mul(value)`; torch takes `other`): keep
        # an overload only if the parser, given all its names, neither misses nor refuses one
        names = [n.lstrip("*") for n, _ in items if n not in ("self", "*", "/") and not n.startswith("**")]
        msg = _probe(fn, name, method, {n: _Sentinel() for n in names if n.isidentifier()})
        if "missing" in msg or "unexpected keyword" in msg or "incorrect" in msg:
            continue
        _add_overload(p, items)
        p.source = "doc"
    return p


# -- Avalon's side ----------------------------------------------------------------------------------

def _resolve(fn, method: bool):
    """Look through Avalon's method wrappers: (function, drop_first)."""
    for _ in range(4):
        cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
        code = getattr(fn, "__code__", None)
        if code is None or not (code.co_flags & inspect.CO_VARARGS and code.co_flags & inspect.CO_VARKEYWORDS):
            break
        funcs = [c for c in cells if callable(c) and not isinstance(c, type)]
        names = [c for c in cells if isinstance(c, str)]
        if funcs:
            fn = funcs[0]
            continue
        if names and hasattr(_ops, names[0]) and "getattr" in code.co_names:
            fn = getattr(_ops, names[0])
            return fn, True
        break
    return fn, method


def avalon_params(fn, method: bool) -> Params:
    p = Params()
    fn, drop = _resolve(fn, method)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        p.source = "no signature"
        p.var_kw = True
        return p
    items, p.var_kw = _sig_items(sig, drop_first=drop)
    _add_overload(p, items)
    p.source = getattr(fn, "__module__", "") + "." + getattr(fn, "__qualname__", "")
    return p


# -- comparing ----------------------------------------------------------------------------------------

_CANON = {"True": "True", "False": "False", "None": "None"}


def _norm_default(s: str) -> str:
    s = s.strip().strip("'\"").replace("{", "(").replace("}", ")").replace(" ", "")  # C++ {0,1} is (0, 1)
    s = _CANON.get(s, s)
    try:
        v = float(s)
        return repr(int(v)) if v == int(v) else repr(v)
    except ValueError:
        return s


@dataclass
class Row:
    group: str
    name: str
    torch: Params
    avalon: Params
    missing: list[str]
    minor: list[str]
    defaults: list[str]


def compare(group: str, name: str, tp: Params, ap: Params) -> Row:
    gone = [] if ap.var_kw else sorted(tp.keywords - ap.keywords)
    missing = [k for k in gone if k not in MINOR]
    minor = [k for k in gone if k in MINOR]
    diffs = []
    for k, d in tp.defaults.items():
        if k in ap.defaults and k not in MINOR:
            a, t = _norm_default(ap.defaults[k]), _norm_default(d)
            # (`at::Reduction::Mean` in a binding's text is not what the Python call defaults to: torch.kl_div(x, y)
            # reduces nothing; C++ enum defaults are skipped)
            if a != t and "None" not in (a, t) and not t.startswith(("torch.", "<", "at::")):
                diffs.append(f"{k}: torch {t}, avalon {a}")
    return Row(group, name, tp, ap, missing, minor, diffs)


def _public(obj) -> list[str]:
    return sorted(n for n in dir(obj) if not n.startswith("_"))


def audit(groups=("tensor", "av", "F"), names=None) -> list[Row]:
    rows = []
    if "tensor" in groups:
        for n in names or _public(torch.Tensor):
            t, a = getattr(torch.Tensor, n, None), getattr(av.Tensor, n, None)
            if not (callable(t) and callable(a)) or isinstance(t, type) or isinstance(inspect.getattr_static(
                    torch.Tensor, n, None), property):
                continue
            rows.append(compare("tensor", n, torch_params(t, n, True), avalon_params(a, True)))
    if "av" in groups:
        for n in names or _public(torch):
            t, a = getattr(torch, n, None), getattr(av, n, None)
            if not (callable(t) and callable(a)) or isinstance(t, type) or isinstance(a, type):
                continue
            rows.append(compare("av", n, torch_params(t, n, False), avalon_params(a, False)))
    if "F" in groups:
        for n in names or _public(TF):
            t, a = getattr(TF, n, None), getattr(AF, n, None)
            if not (callable(t) and callable(a)) or isinstance(t, type) or isinstance(a, type):
                continue
            if getattr(t, "__module__", "").startswith("typing"):
                continue
            rows.append(compare("F", n, torch_params(t, n, False), avalon_params(a, False)))
    return rows


def audit_common() -> list[Row]:
    """The audit of the curated COMMON names (what the test holds to no gap)."""
    rows = []
    for g, ns in COMMON.items():
        rows += audit((g,), ns)
    return rows


def _table(rows: list[Row], width: int = 70) -> str:
    def cut(s: str) -> str:
        return s if len(s) <= width else s[:width - 3] + "..."
    head = f"{'name':<28} {'torch params':<{width}} {'avalon params':<{width}} missing keywords"
    lines = [head, "-" * len(head)]
    for r in rows:
        label = {"tensor": "Tensor.", "av": "av.", "F": "F."}[r.group] + r.name
        miss = ", ".join(r.missing) + (f" (minor: {', '.join(r.minor)})" if r.minor else "")
        lines.append(f"{label:<28} {cut(r.torch.text()):<{width}} {cut(r.avalon.text()):<{width}} {miss}")
        for d in r.defaults:
            lines.append(f"{'':<28} default differs: {d}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--all", action="store_true", help="table for every name in both libraries")
    ap.add_argument("--only", choices=("tensor", "av", "F"), help="one group")
    ap.add_argument("--names", help="comma-separated names to audit (with --only, or in every group)")
    ap.add_argument("--gaps", action="store_true", help="list only names with a missing (non-minor) keyword")
    ap.add_argument("--json", help="write every row as JSON here")
    args = ap.parse_args(argv)
    groups = (args.only,) if args.only else ("tensor", "av", "F")
    names = args.names.split(",") if args.names else None
    everything = audit(groups, names)
    common = [r for r in audit_common() if r.group in groups] if not names else everything
    shown = everything if (args.all or names) else common
    if args.gaps:
        shown = [r for r in shown if r.missing]
    print(_table(shown))
    print()
    for g in groups:
        rs = [r for r in everything if r.group == g]
        cs = [r for r in common if r.group == g]
        print(f"{g:>6}: {len(rs)} names in both, {sum(bool(r.missing) for r in rs)} with a missing keyword "
              f"({sum(len(r.missing) for r in rs)} keywords), {sum(bool(r.minor) for r in rs)} with minor ones, "
              f"{sum(bool(r.defaults) for r in rs)} with a differing default; curated: {len(cs)} names, "
              f"{sum(bool(r.missing) for r in cs)} with a missing keyword")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"group": r.group, "name": r.name, "torch": r.torch.overloads, "avalon": r.avalon.overloads,
                        "missing": r.missing, "minor": r.minor, "defaults": r.defaults} for r in everything], f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

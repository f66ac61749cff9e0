"""`einsum` with torch's equations, lowered to the primitives a compiler can see through.

Each operand first loses what concerns it alone: a repeated label becomes a diagonal (a strided
slice), a size-1 label that another operand has at full size is dropped (broadcasting), and a
label no other operand and not the output needs is summed. The operands are then contracted left
to right, as torch does: the labels of a pair are sorted into batch (kept, in both), contracted
(in both, needed by nobody later), left-only and right-only, each side is transposed and reshaped
to (batch, M, K) and (batch, K, N), and one `matmul` does the pair. A pair with nothing to
contract is an outer product, a broadcast `mul`. Last, labels the output omits are summed and the
result is transposed into the output's order."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..tensor import Tensor
from ..trace import located, user_location
from .core import _tensor, matmul, mul, permute, reshape, same_dtype, sum
from .shaping import _diagonal

Label = str | int  # a letter, or the position of an ellipsis dim (right-aligned across operands)


def _error(msg: str) -> Exception:
    return located(ValueError(f"einsum(): {msg}"), user_location())


def _letters(term: str, where: str) -> list[str]:
    for c in term:
        if not c.isalpha():
            raise _error(f"invalid subscript '{c}' in {where}: subscripts must be letters a-z, A-Z")
    return list(term)


def _split_ellipsis(term: str, where: str) -> tuple[list[str], list[str]] | tuple[list[str], None]:
    if term.count("...") > 1 or "." in term.replace("...", ""):
        raise _error(f"{where} may contain at most one ellipsis ('...')")
    if "..." not in term:
        return _letters(term, where), None
    left, right = term.split("...")
    return _letters(left, where), _letters(right, where)


def _from_sublists(args: Sequence[Any]) -> tuple[str, list[Any]]:
    """torch.einsum(op1, [0, 1], op2, [1, 2], [0, 2]): integer labels (Ellipsis for '...')."""
    def term(sub: Any) -> str:
        out = []
        for s in sub:
            if s is Ellipsis:
                out.append("...")
            elif isinstance(s, int) and 0 <= s < 52:
                out.append("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[s])
            else:
                raise _error(f"sublist labels must be integers in [0, 52) or Ellipsis, got {s!r}")
        return "".join(out)
    args = list(args)
    out = args.pop() if len(args) % 2 else None
    lhs = ",".join(term(s) for s in args[1::2])
    return (lhs if out is None else f"{lhs}->{term(out)}"), args[0::2]


def einsum(equation: Any, *operands: Any) -> Tensor:
    """torch.einsum: implicit or explicit output, '...' (broadcast like torch), repeated labels
    (diagonals; traces with an empty output), and the sublist form."""
    if not isinstance(equation, str):
        equation, operands = _from_sublists((equation, *operands))
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    xs = [_tensor(x) for x in operands]
    if not xs:
        raise _error("must provide at least one operand")
    eq = equation.replace(" ", "")
    if eq.count("->") > 1:
        raise _error("more than one '->' in the equation")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(xs):
        raise _error(f"{len(terms)} subscripts in the equation for {len(xs)} operands")

    parsed = [_split_ellipsis(t, f"operand {i}'s subscripts") for i, t in enumerate(terms)]
    ell = []
    for i, ((left, right), x) in enumerate(zip(parsed, xs)):
        named = len(left) + len(right or [])
        if named > x.ndim or (right is None and named != x.ndim):
            raise _error(f"operand {i} has {x.ndim} dims but its subscripts '{terms[i]}' name {named}")
        ell.append(x.ndim - named if right is not None else 0)
    n_ell = max(ell)
    labels: list[list[Label]] = [
        left + list(range(n_ell - e, n_ell)) + (right or []) for (left, right), e in zip(parsed, ell)]

    counts: dict[Label, int] = {}
    for ls in labels:
        for lab in ls:
            counts[lab] = counts.get(lab, 0) + 1
    if arrow:
        left, right = _split_ellipsis(rhs, "the output subscripts")
        out: list[Label] = left + (list(range(n_ell)) + right if right is not None else [])
        for lab in out:
            if isinstance(lab, str) and lab not in counts:
                raise _error(f"output subscript '{lab}' does not appear in the equation for any input operand")
        if len(set(out)) != len(out):
            raise _error(f"output subscripts '{rhs}' repeat a letter")
    else:
        out = list(range(n_ell)) + sorted(lab for lab, c in counts.items() if isinstance(lab, str) and c == 1)

    same_dtype("einsum", *xs)
    sizes: dict[Label, int] = {}
    for i, (x, ls) in enumerate(zip(xs, labels)):
        for lab, s in zip(ls, x.shape):
            have = sizes.get(lab, 1)
            if s != have and s != 1 and have != 1:
                name = "'...'" if isinstance(lab, int) else f"'{lab}'"
                raise _error(f"operand {i} has size {s} for subscript {name}, which does not broadcast with "
                             f"size {have} of an earlier operand")
            sizes[lab] = max(have, s)

    prepared = [_prepare(x, ls, sizes, out, labels[:i] + labels[i + 1:]) for i, (x, ls) in
                enumerate(zip(xs, labels))]
    acc, acc_labels = prepared[0]
    for i in range(1, len(prepared)):
        later = {lab for ls in labels[i + 1:] for lab in ls} | set(out)
        acc, acc_labels = _contract(acc, acc_labels, *prepared[i], later)
    extra = [k for k, lab in enumerate(acc_labels) if lab not in out]
    if extra:
        acc = sum(acc, extra)
        acc_labels = [lab for lab in acc_labels if lab in out]
    missing = [lab for lab in out if lab not in acc_labels]
    if missing:  # an ellipsis dim no operand has at full size (all size 1 or absent)
        acc = reshape(acc, acc.shape + (1,) * len(missing))
        acc_labels = acc_labels + missing
    return permute(acc, [acc_labels.index(lab) for lab in out])


def _prepare(x: Tensor, ls: list[Label], sizes: dict[Label, int], out: list[Label],
             others: list[list[Label]]) -> tuple[Tensor, list[Label]]:
    """One operand with unique labels, broadcast dims dropped and private labels summed."""
    ls = list(ls)
    while len(set(ls)) != len(ls):
        lab = next(lab for lab in ls if ls.count(lab) > 1)
        p = ls.index(lab)
        q = ls.index(lab, p + 1)
        if x.shape[p] != x.shape[q]:
            raise _error(f"subscript '{lab}' is repeated for an operand but the sizes {x.shape[p]} and "
                         f"{x.shape[q]} do not match")
        x = _diagonal(x, 0, p, q)
        ls = [lb for k, lb in enumerate(ls) if k not in (p, q)] + [lab]
    drop = [k for k, lab in enumerate(ls) if x.shape[k] == 1 and sizes[lab] != 1]
    if drop:
        x = reshape(x, [s for k, s in enumerate(x.shape) if k not in drop])
        ls = [lab for k, lab in enumerate(ls) if k not in drop]
    needed = set(out).union(*map(set, others))
    private = [k for k, lab in enumerate(ls) if lab not in needed]
    if private:
        x = sum(x, private)
        ls = [lab for k, lab in enumerate(ls) if k not in private]
    return x, ls


def _contract(a: Tensor, la: list[Label], b: Tensor, lb: list[Label],
              keep: set[Label]) -> tuple[Tensor, list[Label]]:
    """The product of two operands, summed over the labels both have and nobody later needs."""
    sb = set(lb)
    own_b = [k for k, lab in enumerate(lb) if lab not in la and lab not in keep]
    if own_b:  # a label of b's that only an earlier operand needed has been used up
        b = sum(b, own_b)
        lb = [lab for k, lab in enumerate(lb) if k not in own_b]
        sb = set(lb)
    own_a = [k for k, lab in enumerate(la) if lab not in sb and lab not in keep]
    if own_a:
        a = sum(a, own_a)
        la = [lab for k, lab in enumerate(la) if k not in own_a]
    batch = [lab for lab in la if lab in sb and lab in keep]
    summed = [lab for lab in la if lab in sb and lab not in keep]
    left = [lab for lab in la if lab not in sb]
    right = [lab for lab in lb if lab not in la]
    size = dict(zip(la, a.shape)) | dict(zip(lb, b.shape))
    a = permute(a, [la.index(lab) for lab in batch + left + summed])
    b = permute(b, [lb.index(lab) for lab in batch + summed + right])
    bshape = tuple(size[lab] for lab in batch)
    lshape, rshape = tuple(size[lab] for lab in left), tuple(size[lab] for lab in right)
    if not summed:  # an outer product over the batch: broadcasting, no contraction
        a = reshape(a, bshape + lshape + (1,) * len(right))
        b = reshape(b, bshape + (1,) * len(left) + rshape)
        return mul(a, b), batch + left + right
    k = math.prod(size[lab] for lab in summed)
    # batch labels stay leading dims of one N-d matmul (`bhld,bhsd->bhls` is the [B, H, L, S]
    # matmul attention's matcher knows), only multi-label groups are flattened
    a3 = reshape(a, bshape + (math.prod(lshape), k))
    b3 = reshape(b, bshape + (k, math.prod(rshape)))
    return reshape(matmul(a3, b3), bshape + lshape + rshape), batch + left + right


__all__ = ["einsum"]

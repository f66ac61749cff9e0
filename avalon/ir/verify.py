"""The verifier: every op registered, operand counts and types right, attributes valid, values
defined before use, regions consistent with their ops. Errors name the op at fault.

Linear in the size of the graph: membership checks are set/dict lookups (`Value.uses` is a dict
keyed by `(op, operand index)`), so 16,000 uses of one value cost 16,000 lookups, not a scan each.
Any graph gives `VerifyError` or passes: an inference rule's plain exception becomes a VerifyError
naming the op."""
from __future__ import annotations

from .core import Block, Graph, Op
from .printer import Namer, format_op, name_values
from .registry import OPS, ShapeError


class VerifyError(ValueError):
    def __init__(self, msg: str, op: Op | None = None):
        self.op = op
        super().__init__(msg)


def _where(op: Op, namer: Namer) -> str:
    loc = f" (from {op.loc})" if op.loc else ""
    return f"'{op.name}' op `{format_op(op, namer)}`{loc}"


def _check_block(block: Block, defined: set[int], namer: Namer) -> None:
    for a in block.args:
        defined.add(id(a))
    for op in block.ops:
        if op.parent is not block:
            raise VerifyError(f"{_where(op, namer)}: its parent link does not point to its block", op)
        d = OPS.get(op.name)
        if d is None:
            raise VerifyError(f"{_where(op, namer)}: unknown op", op)
        for i, v in enumerate(op.operands):
            if id(v) not in defined:
                raise VerifyError(f"{_where(op, namer)}: operand #{i} is used before it is defined "
                                  "(or comes from outside this region)", op)
            if (op, i) not in v.uses:
                raise VerifyError(f"{_where(op, namer)}: operand #{i}'s use list does not record this use", op)
        msg = d.check_operand_count(len(op.operands))
        if msg:
            raise VerifyError(f"{_where(op, namer)}: {msg}", op)
        try:
            attrs = d.normalize_attrs(op.attrs)
        except (TypeError, ValueError) as e:
            raise VerifyError(f"{_where(op, namer)}: {e}", op) from None
        if attrs.keys() != op.attrs.keys():
            missing = sorted(set(attrs) - set(op.attrs))
            raise VerifyError(f"{_where(op, namer)}: attributes {missing} are not set "
                              "(build ops through the builder or normalize_attrs)", op)
        try:
            want = d.infer([v.type for v in op.operands], attrs)
        except ShapeError as e:
            raise VerifyError(f"{_where(op, namer)}: {e}", op) from None
        except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError) as e:
            # an inference rule (perhaps a user's) that did not anticipate these attributes: still
            # an error about this op, never a crash of the verifier
            raise VerifyError(f"{_where(op, namer)}: attributes or operand types rejected "
                              f"({type(e).__name__}: {e})", op) from None
        got = [r.type for r in op.results]
        if want is not None:
            if len(want) != len(got):
                raise VerifyError(f"{_where(op, namer)}: has {len(got)} result(s), expected {len(want)}", op)
            for i, (w, g) in enumerate(zip(want, got)):
                if (w.shape, w.dtype) != (g.shape, g.dtype):
                    raise VerifyError(f"{_where(op, namer)}: result #{i} has type {g}, expected {w}", op)
        if "region" in d.traits:
            _check_region_op(op, namer)
        elif op.regions:  # run by nobody but an interpreter that would take it for the op's meaning
            raise VerifyError(f"{_where(op, namer)}: has {len(op.regions)} region(s) but '{op.name}' "
                              "takes none", op)
        for r in op.results:
            defined.add(id(r))
    t = block.terminator
    if t is None:
        raise VerifyError("a block has no terminator")
    for i, v in enumerate(t.operands):
        if id(v) not in defined:
            raise VerifyError(f"'{t.name}': operand #{i} is not defined in this block", t)


def _check_region_op(op: Op, namer: Namer) -> None:
    if op.name == "custom_vjp":
        _check_custom_vjp(op, namer)
        return
    if len(op.regions) != 1:
        raise VerifyError(f"{_where(op, namer)}: needs exactly one region, has {len(op.regions)}", op)
    region = op.regions[0]
    if [a.type for a in region.args] != [v.type for v in op.operands]:
        raise VerifyError(f"{_where(op, namer)}: region argument types "
                          f"({', '.join(str(a.type) for a in region.args)}) differ from operand types", op)
    if region.terminator is None or region.terminator.name != "yield":
        raise VerifyError(f"{_where(op, namer)}: region must end in 'yield'", op)
    _check_block(region, set(), namer)
    ys = [v.type for v in region.results]
    rs = [r.type for r in op.results]
    if ys != rs:
        raise VerifyError(f"{_where(op, namer)}: region yields ({', '.join(map(str, ys))}) "
                          f"but the op's results are ({', '.join(map(str, rs))})", op)


def _check_custom_vjp(op: Op, namer: Namer) -> None:
    """Region 0 as a fusion's (operands in, results out); region 1 takes the saved results and one
    cotangent per output and yields a cotangent for each operand listed in `grads`; an optional
    region 2 (forward mode) takes the saved results and one tangent per `grads` operand and yields
    one tangent per output."""
    where = _where(op, namer)
    if len(op.regions) not in (2, 3):
        raise VerifyError(f"{where}: needs a forward and a backward region (and optionally a jvp region), has "
                          f"{len(op.regions)}", op)
    n = op.attrs["outputs"]
    if not 0 < n <= len(op.results):
        raise VerifyError(f"{where}: outputs = {n}, but the op has {len(op.results)} result(s)", op)
    fwd, bwd = op.regions[:2]
    saved = [r.type for r in op.results[n:]]
    checks = [(fwd, [v.type for v in op.operands], [r.type for r in op.results], "forward"),
              (bwd, saved + [r.type for r in op.results[:n]], None, "backward")]
    if len(op.regions) == 3:
        checks.append((op.regions[2], saved + [op.operands[i].type for i in op.attrs["grads"]],
                       [r.type for r in op.results[:n]], "jvp"))
    for region, args, ys, what in checks:
        if [a.type for a in region.args] != args:
            raise VerifyError(f"{where}: {what} region argument types "
                              f"({', '.join(str(a.type) for a in region.args)}) differ from "
                              f"({', '.join(map(str, args))})", op)
        if region.terminator is None or region.terminator.name != "yield":
            raise VerifyError(f"{where}: {what} region must end in 'yield'", op)
        _check_block(region, set(), namer)
        got = [v.type for v in region.results]
        want = ys if ys is not None else [op.operands[i].type for i in op.attrs["grads"]]
        if got != want:
            raise VerifyError(f"{where}: {what} region yields ({', '.join(map(str, got))}), expected "
                              f"({', '.join(map(str, want))})", op)


def verify(graph: Graph) -> Graph:
    """Check the graph; raise VerifyError naming the first op at fault. Returns the graph."""
    namer = name_values(graph)
    if graph.body.terminator is None or graph.body.terminator.name != "return":
        raise VerifyError("the function body must end in 'return'")
    _check_block(graph.body, set(), namer)
    return graph



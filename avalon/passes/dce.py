"""dce: dead-code elimination. A pure op none of whose results is used can go; so can what only it
used. Inside fusion groups it also drops results nothing reads (and the region ops computing only
them) and region arguments the body does not read, so a fused kernel loads and stores only what is
needed. Graph inputs and outputs are never touched: they are the function's signature.
"""
from __future__ import annotations

from avalon.ir import Block, Graph, Op

from .registry import register
from .rewriter import is_trivially_dead


def _prune_results(op: Op) -> bool:
    region = op.regions[0]
    keep = [i for i, r in enumerate(op.results) if r.uses]
    if len(keep) == len(op.results):
        return False
    yielded = region.results
    loc = region.terminator.loc
    region.set_terminator("yield", [yielded[i] for i in keep])
    region.terminator.loc = loc
    op.results = [op.results[i] for i in keep]
    for i, r in enumerate(op.results):
        r.index = i
    return True


def _prune_args(op: Op) -> bool:
    region = op.regions[0]
    keep = [i for i, a in enumerate(region.args) if a.uses]
    if len(keep) == len(region.args):
        return False
    region.args = [region.args[i] for i in keep]
    for i, a in enumerate(region.args):
        a.index = i
    op.set_operands([op.operands[i] for i in keep])
    return True


def dce_block(block: Block) -> bool:
    """One backward sweep over `block`: users come after producers, so chains of dead ops fall at once."""
    changed = False
    for op in reversed(list(block.ops)):
        if is_trivially_dead(op):
            op.erase()
            changed = True
        elif op.has_trait("region") and len(op.regions) == 1:
            changed |= _prune_results(op)
            while dce_block(op.regions[0]):
                changed = True
            changed |= _prune_args(op)
        else:
            for region in op.regions:
                while dce_block(region):
                    changed = True
    return changed


@register("dce")
def dce(graph: Graph) -> bool:
    """Remove pure ops whose results are unused, to a fixpoint, fusion bodies included."""
    changed = False
    while dce_block(graph.body):
        changed = True
    return changed

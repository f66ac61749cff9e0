"""Passes over the IR: a registry of named passes with typed options, a pass manager that runs
pipeline strings with verification, printing and timing, a pattern rewriter, and the standard
passes, one module each (canonicalize, cse, dce, ...). See docs/writing-a-pass.md."""
from . import attention as _attention  # noqa: F401  (registers the attention kernel kind)
from . import attention_bwd as _attention_bwd  # noqa: F401  (and the backward kind)
from . import bucket as _bucket  # noqa: F401  (each import registers its pass)
from . import canonicalize as _canonicalize  # noqa: F401
from . import cse as _cse  # noqa: F401
from . import dce as _dce  # noqa: F401
from . import fuse as _fuse  # noqa: F401
from . import layout as _layout  # noqa: F401
from . import memory_plan as _memory_plan  # noqa: F401
from .canonicalize import FOLD
from .canonicalize import PATTERNS as CANONICALIZE_PATTERNS
from .manager import PassManager, PassRecord, PassVerifyError, parse_pipeline
from .registry import PASSES, Option, PassInfo, PipelineError, get_pass, register, unregister
from .rewriter import (
    Const,
    Listener,
    Match,
    P,
    Pat,
    RewritePattern,
    Rewriter,
    Rule,
    Var,
    apply_patterns,
    constant_value,
    is_trivially_dead,
    match,
    pattern,
    producer,
    splat_value,
    walk_blocks,
)

DEFAULT_PIPELINE = "canonicalize,cse,dce,fuse,memory-plan"
"""The standard pipeline `av.compile` runs: clean up, then group ops into kernels (`fuse` leaves no
dead code behind, so no trailing dce is needed)."""


def run_pipeline(graph, pipeline: str = DEFAULT_PIPELINE, **options) -> bool:
    """Parse `pipeline` and run it on `graph` (keyword options go to PassManager); True if it changed."""
    return PassManager.parse(pipeline, **options).run(graph)


__all__ = [
    "CANONICALIZE_PATTERNS", "Const", "DEFAULT_PIPELINE", "FOLD", "Listener", "Match", "Option", "P", "PASSES",
    "Pat", "PassInfo", "PassManager", "PassRecord", "PassVerifyError", "PipelineError", "RewritePattern",
    "Rewriter", "Rule", "Var", "apply_patterns", "constant_value", "get_pass", "is_trivially_dead", "match",
    "parse_pipeline", "pattern", "producer", "register", "run_pipeline", "splat_value", "unregister",
    "walk_blocks",
]

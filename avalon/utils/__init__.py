"""torch.utils's counterparts that ported code imports: `avalon.utils.data` (datasets and the loader)
and `avalon.utils.checkpoint` (activation checkpointing, which here is the compiler's job)."""
from . import checkpoint, data

"""torch.utils's counterparts that ported code imports: `avalon.utils.data` (datasets and the loader)."""
from . import data

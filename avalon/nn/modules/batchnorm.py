"""`avalon.nn.modules.batchnorm` and `.instancenorm`'s base classes, under torch's paths: code that
subclasses `torch.nn.modules.batchnorm._BatchNorm` (a custom norm layer) or tests `isinstance(m,
_BatchNorm)` (or `_NormBase`, which instance norms share) to find every batch norm (weight decay exclusions, BN
freezing) ports by renaming."""
from ..layers import _BatchNorm, _NormBase
from ..layers_extra import _InstanceNorm
from ..sync_batchnorm import SyncBatchNorm

__all__ = ["SyncBatchNorm", "_BatchNorm", "_InstanceNorm", "_NormBase"]

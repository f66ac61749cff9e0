"""`avalon.nn.parameter`: where torch code names the parameter classes by their module, as torch.nn.parameter
(DeepCTR-Torch's BaseModel: `isinstance(weight_list, torch.nn.parameter.Parameter)`); the classes are avalon.nn's."""
from __future__ import annotations

from .module import NnBuffer as Buffer
from .module import Parameter
from .torch_surface import UninitializedBuffer, UninitializedParameter


def is_lazy(param: object) -> bool:
    """torch.nn.parameter.is_lazy: whether `param` is an uninitialized (lazy) parameter or buffer."""
    return isinstance(param, (UninitializedParameter, UninitializedBuffer))


__all__ = ["Buffer", "Parameter", "UninitializedBuffer", "UninitializedParameter", "is_lazy"]

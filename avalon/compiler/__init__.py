"""`av.compile` and what it is made of: the per-signature cache and inspection (`core`), the
backends it runs graphs on (`backends`), check mode (`check`) and test helpers (`testing`)."""
from .backends import BACKENDS, BackendUnavailable, get_backend
from .check import TOLERANCES, CheckError
from .core import CacheInfo, Compiled, Inspection, compile

__all__ = ["BACKENDS", "BackendUnavailable", "CacheInfo", "CheckError", "Compiled", "Inspection", "TOLERANCES",
           "compile", "get_backend"]

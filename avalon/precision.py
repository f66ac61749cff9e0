"""How float32 products are computed on tensor cores: torch's knobs, under torch's names.

    av.set_float32_matmul_precision("high")      # as torch.set_float32_matmul_precision
    av.backends.cudnn.allow_tf32 = False         # as torch.backends.cudnn.allow_tf32

Defaults are torch's, so code ported by renaming imports computes what it computed under torch:
float32 matmuls (and attention, a matmul pair) in full float32 ("highest"), float32 convolutions
in TF32 (cuDNN's default, ~1e-3 relative). "high" and "medium" let matmuls use TF32, 3-7x faster
on an H100's tensor cores; torch allows bfloat16 for "medium", Avalon keeps TF32 there (more
precise, which "medium" permits).

Only generated GPU kernels read this: the numpy reference and the CPU backends always multiply in
full precision, and so does Triton's interpreter. The setting is read when a function is
compiled, and it is part of `av.compile`'s cache key, so changing it compiles anew.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

from avalon.channels import get_logger

PRECISIONS = ("highest", "high", "medium")
_state: dict = {"matmul": "highest", "conv_tf32": True, "hinted": False}


def set_float32_matmul_precision(precision: str) -> None:
    """`"highest"` (full float32 products), `"high"` or `"medium"` (TF32 tensor cores) for float32
    matmuls and attention in generated GPU kernels. torch ignores an unknown value with a warning;
    Avalon refuses it."""
    if precision not in PRECISIONS:
        raise ValueError(f"float32 matmul precision {precision!r} is not one of {', '.join(map(repr, PRECISIONS))}")
    _state["matmul"] = precision


def get_float32_matmul_precision() -> str:
    return _state["matmul"]


def dot_precisions() -> tuple[str, str]:
    """Triton's `input_precision` for float32 (matmul and attention, convolution) products: what
    generated kernels bake in, so also part of `av.compile`'s cache key ("high" and "medium" share
    their kernels)."""
    return ("ieee" if _state["matmul"] == "highest" else "tf32"), ("tf32" if _state["conv_tf32"] else "ieee")


def hint_tf32() -> None:
    """Said once per process, as torch.compile does: float32 matmuls on a GPU multiply in full
    float32, which leaves the tensor cores' TF32 speed unused."""
    if not _state["hinted"]:
        _state["hinted"] = True
        get_logger("triton").warning(
            "float32 matmuls run in full float32 precision on the GPU (torch's default); "
            "av.set_float32_matmul_precision('high') lets them use TF32 tensor cores, several times faster")


class _Knobs:
    """A namespace of torch's switches that Avalon has; setting any other one (`cudnn.benchmark`,
    `cudnn.deterministic`: Avalon runs no cuDNN) is an error, not a silent no-op."""

    __slots__ = ()
    _where = ""

    def __setattr__(self, name: str, value: object) -> None:
        if not isinstance(getattr(type(self), name, None), property):
            raise AttributeError(f"av.backends.{self._where} has no setting {name!r} (Avalon has "
                                 f"{', '.join(k for k, v in vars(type(self)).items() if isinstance(v, property))})")
        object.__setattr__(self, name, value)


class _Matmul(_Knobs):
    """`av.backends.cuda.matmul.allow_tf32`: torch's older spelling of the matmul precision
    (True is "high", False "highest")."""

    __slots__ = ()
    _where = "cuda.matmul"

    @property
    def allow_tf32(self) -> bool:
        return _state["matmul"] != "highest"

    @allow_tf32.setter
    def allow_tf32(self, on: bool) -> None:
        _state["matmul"] = "high" if on else "highest"


class _Cudnn(_Knobs):
    """`av.backends.cudnn.allow_tf32`: TF32 in float32 convolutions (True by default, as in torch)."""

    __slots__ = ()
    _where = "cudnn"

    @property
    def allow_tf32(self) -> bool:
        return _state["conv_tf32"]

    @allow_tf32.setter
    def allow_tf32(self, on: bool) -> None:
        _state["conv_tf32"] = bool(on)

    @staticmethod
    @contextlib.contextmanager
    def flags(enabled: bool = False, benchmark: bool = False, benchmark_limit: int = 10,
              deterministic: bool = False, allow_tf32: bool = True) -> Iterator[None]:
        """torch.backends.cudnn.flags, with torch's defaults: Hugging Face's CTC heads (Wav2Vec2ForCTC,
        HubertForCTC, ...) wrap ctc_loss in `flags(enabled=False)`. Avalon runs no cuDNN, so `enabled`
        changes nothing; `allow_tf32` holds for the block, as torch's; benchmark or deterministic mode,
        which Avalon does not have, is an error (as setting them is)."""
        for name, on in (("benchmark", benchmark), ("deterministic", deterministic)):
            if on:
                raise AttributeError(f"av.backends.cudnn has no setting {name!r} (Avalon runs no cuDNN)")
        before = _state["conv_tf32"]
        _state["conv_tf32"] = bool(allow_tf32)
        try:
            yield
        finally:
            _state["conv_tf32"] = before


class _Mps:
    """`av.backends.mps`: Apple's Metal backend, for which Avalon generates no kernels."""

    __slots__ = ()

    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def is_built() -> bool:
        return False


backends = SimpleNamespace(cuda=SimpleNamespace(matmul=_Matmul()), cudnn=_Cudnn(), mps=_Mps())


# -- deterministic algorithms (torch.use_deterministic_algorithms) --------------------------------------

_determinism: dict = {"on": False, "warn_only": False}


def use_deterministic_algorithms(mode: bool, *, warn_only: bool = False) -> None:
    """torch.use_deterministic_algorithms. The numpy and cpu backends are deterministic already (the
    same inputs give the same bits on every call); the Triton backend's scatters (`index_add`,
    `index_max`: embedding and gather gradients, `scatter_add`) add with atomics in no fixed order, so
    with the mode on compiling one for Triton raises as torch's nondeterministic CUDA ops do (or warns
    with `warn_only`)."""
    _determinism["on"], _determinism["warn_only"] = bool(mode), bool(warn_only)


def are_deterministic_algorithms_enabled() -> bool:
    return _determinism["on"]


def is_deterministic_algorithms_warn_only_enabled() -> bool:
    return _determinism["on"] and _determinism["warn_only"]


def set_deterministic_debug_mode(debug_mode: str | int) -> None:
    """torch's: "default"/0 off, "warn"/1 warn only, "error"/2 on."""
    levels = {"default": 0, "warn": 1, "error": 2}
    level = levels.get(debug_mode, debug_mode) if isinstance(debug_mode, str) else int(debug_mode)
    if level not in (0, 1, 2):
        raise RuntimeError(f"invalid value of debug_mode, expected one of 'default', 'warn', 'error', 0, 1, 2, "
                           f"but got {debug_mode!r}")
    use_deterministic_algorithms(level > 0, warn_only=level == 1)


def get_deterministic_debug_mode() -> int:
    return 0 if not _determinism["on"] else 1 if _determinism["warn_only"] else 2


def check_deterministic(what: str) -> None:
    """Called by a backend about to emit `what`, which is not deterministic."""
    if not _determinism["on"]:
        return
    msg = (f"{what} does not have a deterministic implementation, but you set "
           "'av.use_deterministic_algorithms(True)' (run it with backend='numpy' or 'cpu', which are deterministic)")
    if _determinism["warn_only"]:
        import warnings
        warnings.warn(msg, UserWarning, stacklevel=3)
        return
    raise RuntimeError(msg)

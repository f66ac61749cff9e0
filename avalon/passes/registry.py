"""The pass registry: every pass a pipeline string can name, with its version and typed options.

A pass is either a function `(graph) -> bool` (keyword-only parameters after `graph` are its options)
or a class with `name`, `version` and `run(self, graph) -> bool` whose options are dataclass fields
or annotated `__init__` keyword arguments. Options are declared once, as Python annotations, so the
pipeline parser can convert `fuse{max-ops=16}` to `max_ops=16` and report bad input with the
list of what the pass accepts.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from avalon.ir import Graph


class PipelineError(ValueError):
    """A pipeline string or a pass option that cannot be used as given."""


@runtime_checkable
class Pass(Protocol):
    """What the pass manager runs: `run` returns True when it changed the graph."""

    def run(self, graph: Graph) -> bool: ...


_REQUIRED = dataclasses.MISSING


@dataclass(frozen=True)
class Option:
    """One typed pass option. `flag` is its pipeline spelling (`max-ops` for `max_ops`)."""

    name: str
    type: Any
    default: Any = _REQUIRED
    doc: str = ""

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        d = "" if self.required else f" = {format_value(self.default)}"
        return f"{self.flag}: {type_name(self.type)}{d}"

    def coerce(self, value: Any) -> Any:
        """`value` (pipeline text or a Python value) as this option's type; raises ValueError."""
        return _coerce(self.type, value)


def type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return " | ".join(format_value(a) for a in typing.get_args(t))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(t))
    if origin in (list, tuple):
        return f"[{type_name(typing.get_args(t)[0])}, ...]"
    if t is type(None):
        return "none"
    return getattr(t, "__name__", str(t))


def format_value(v: Any) -> str:
    """An option value as pipeline text (parses back to the same value)."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    return str(v)


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _split_list(text: str) -> list[str]:
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    return [p.strip() for p in body.split(",") if p.strip()]


def _coerce(t: Any, v: Any) -> Any:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is Any:
        return v
    if origin is Literal:
        for a in args:
            if v == a or (isinstance(v, str) and v == format_value(a)):
                return a
        raise ValueError(f"expected one of {', '.join(format_value(a) for a in args)}, got {v!r}")
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (v is None or (isinstance(v, str) and v.lower() == "none")):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, v)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin in (list, tuple):
        items = _split_list(v) if isinstance(v, str) else v
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"expected a list, got {v!r}")
        out = [_coerce(args[0] if args else Any, x) for x in items]
        return tuple(out) if origin is tuple else out
    if t is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in _TRUE + _FALSE:
            return v.lower() in _TRUE
        raise ValueError(f"expected true or false, got {v!r}")
    if t is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, str):
            try:
                return int(v)
            except ValueError:
                pass
        raise ValueError(f"expected an int, got {v!r}")
    if t is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {v!r}")
    if t is str:
        if isinstance(v, str):
            return v
        raise ValueError(f"expected a string, got {v!r}")
    if isinstance(v, t if isinstance(t, type) else object):
        return v
    try:
        return t(v)
    except Exception as e:
        raise ValueError(f"expected {type_name(t)}, got {v!r}") from e


_SIMPLE = {"int": int, "float": float, "bool": bool, "str": str}


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # unresolvable forward refs: fall back to the raw (string) annotations
        raw = getattr(obj, "__annotations__", {})
        return {k: _SIMPLE.get(v, v) if isinstance(v, str) else v for k, v in raw.items()}


def _options_of_class(cls: type) -> dict[str, Option]:
    if dataclasses.is_dataclass(cls):
        hints = _hints(cls)
        opts = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default if f.default is not _REQUIRED else (
                f.default_factory() if f.default_factory is not _REQUIRED else _REQUIRED)
            opts[f.name] = Option(f.name, hints.get(f.name, Any), default, f.metadata.get("doc", ""))
        return opts
    if cls.__init__ is object.__init__:
        return {}
    return _options_of_signature(cls.__init__, skip=1)


def _options_of_signature(fn: Callable, skip: int) -> dict[str, Option]:
    hints = _hints(fn)
    opts = {}
    params = list(inspect.signature(fn).parameters.values())[skip:]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "target":  # the pipeline's, not an option
            continue
        default = _REQUIRED if p.default is p.empty else p.default
        opts[p.name] = Option(p.name, hints.get(p.name, Any), default)
    return opts


def takes_target(fn: Callable) -> bool:
    """Does a pass function or `run` method accept the pipeline's backend `Target` (a `target` keyword)?"""
    try:
        return "target" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class FunctionPass:
    """A registered function with its option values bound; what `@register` makes of a function."""

    def __init__(self, info: PassInfo, fn: Callable[..., bool | None], options: dict[str, Any]):
        self.name, self.version = info.name, info.version
        self._fn, self._options = fn, options
        self._takes_target = takes_target(fn)

    def run(self, graph: Graph, target: Any = None) -> bool | None:
        if self._takes_target:
            return self._fn(graph, **self._options, target=target)
        return self._fn(graph, **self._options)

    def __repr__(self) -> str:
        return f"<pass {self.name} {self._options}>"


@dataclass
class PassInfo:
    """A registered pass: how to make it, its version and options. Calling it runs it with defaults."""

    name: str
    version: int | str
    factory: Callable[..., Pass]
    options: dict[str, Option] = field(default_factory=dict)
    doc: str = ""
    origin: str = ""  # module.qualname of what was registered

    def create(self, **options: Any) -> Pass:
        """A runnable pass with `options` (Python names or hyphenated spellings) checked and converted."""
        return self.factory(**self.check_options(options))

    def check_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Convert option values to their declared types; a clear PipelineError for anything off."""
        out: dict[str, Any] = {}
        for key, value in given.items():
            name = key.replace("-", "_")
            opt = self.options.get(name)
            if opt is None:
                raise PipelineError(f"pass '{self.name}' has no option '{key.replace('_', '-')}'; "
                                    f"{self.describe_options()}")
            try:
                out[name] = opt.coerce(value)
            except ValueError as e:
                raise PipelineError(f"pass '{self.name}' option '{opt.flag}': {e}; {self.describe_options()}") from None
        for name, opt in self.options.items():
            if opt.required and name not in out:
                raise PipelineError(f"pass '{self.name}' needs option '{opt.flag}'; {self.describe_options()}")
        return out

    def describe_options(self) -> str:
        if not self.options:
            return "it takes no options"
        return "its options: " + ", ".join(o.describe() for o in self.options.values())

    def __call__(self, graph: Graph, **options: Any) -> bool:
        """Run the pass once on `graph` (a convenience for tests and notebooks)."""
        return bool(self.create(**options).run(graph))


PASSES: dict[str, PassInfo] = {}


def _info_for(obj: Any, name: str | None, version: int | str | None) -> PassInfo:
    origin = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    doc = inspect.cleandoc(obj.__doc__ or "").split("\n\n")[0]
    if isinstance(obj, type):
        pname = name or getattr(obj, "name", None)
        if not isinstance(pname, str) or not pname:
            raise ValueError(f"pass class {obj.__qualname__} needs a name: @register('my-pass') or a class "
                             "attribute name = 'my-pass'")
        if not callable(getattr(obj, "run", None)):
            raise TypeError(f"pass class {obj.__qualname__} needs a method run(self, graph) -> bool")
        if getattr(obj, "name", None) is None:
            obj.name = pname
        ver = version if version is not None else getattr(obj, "version", 1)
        if not hasattr(obj, "version"):
            obj.version = ver
        return PassInfo(pname, ver, obj, _options_of_class(obj), doc, origin)
    if callable(obj):
        pname = name or obj.__name__.replace("_", "-")
        params = list(inspect.signature(obj).parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            raise TypeError(f"pass function {obj.__qualname__} must take the graph as its first argument")
        info = PassInfo(pname, version if version is not None else 1, None, _options_of_signature(obj, 1),  # type: ignore[arg-type]
                        doc, origin)
        info.factory = lambda **opts: FunctionPass(info, obj, opts)
        return info
    raise TypeError(f"cannot register {obj!r} as a pass: expected a function (graph) -> bool or a pass class")


def register(name: str | Callable | type | None = None, *, version: int | str | None = None,
             replace: bool = False):
    """Register a pass under `name` so pipeline strings can name it.

    Use as `@register("my-pass")`, `@register("my-pass", version=2)`, or bare `@register` on a class
    with a `name` attribute (or a function, named after it with `_` as `-`). Bump `version` whenever
    the pass's output changes: it is part of compiled-kernel cache keys. Registering a name twice is an
    error unless `replace=True`, or it is the same module's same object (a plugin imported again).
    """
    def deco(obj):
        info = _info_for(obj, name if isinstance(name, str) else None, version)
        old = PASSES.get(info.name)
        if old is not None and not replace and old.origin != info.origin:
            raise ValueError(f"pass '{info.name}' is already registered (by {old.origin}); "
                             "use register(..., replace=True) to override it")
        PASSES[info.name] = info
        return obj

    if name is not None and not isinstance(name, str):
        return deco(name)  # bare @register
    return deco


def unregister(name: str) -> None:
    """Forget a pass (tests and plugin reloads)."""
    PASSES.pop(name, None)


def get_pass(name: str) -> PassInfo:
    """The registered pass called `name`; an unknown name raises PipelineError listing the known ones."""
    try:
        return PASSES[name]
    except KeyError:
        close = difflib.get_close_matches(name, PASSES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PipelineError(f"unknown pass '{name}'{hint}; known passes: {', '.join(sorted(PASSES))}") from None

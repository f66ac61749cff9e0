"""Checkpoints: `av.save(model_or_state_dict, path)` and `av.load(path) -> {name: Tensor}`.

The file is a plain safetensors file (https://github.com/huggingface/safetensors): an 8-byte
little-endian header length, a JSON header naming each tensor's dtype, shape and byte range, then the
raw little-endian bytes. So any safetensors reader (Python, Rust, JS) opens it, nothing in it is code
(no pickle), and bf16 is stored as real 2-byte bf16. Avalon adds string metadata:

    crc32 = "1a2b3c4d", format = "avalon", format_version = "2", avalon_version = "0.1.0"

`format_version` is what later versions key on to keep reading old files. Version 2 (written now)
puts `__metadata__` first in the header and `crc32` first in it, and that CRC covers every byte
after the 8-byte length (header with the CRC's own 8 hex digits read as "00000000", then the
data): a header edit (a dtype F32->I32, two swapped `data_offsets`) is caught like a flipped data
byte. Raw bytes rather than a re-serialized header, so the check needs no canonical JSON form.
Version 1 files (a `data_crc32` over the data only) still load; their CRC is mandatory too (every
version-1 writer wrote it). Whatever the version, dtypes, shapes, byte ranges and the file size
are checked against each other: ranges tile the data exactly, no overlap, no gap.
We write and parse the format ourselves (it is ~30 lines
each way) rather than through the safetensors package so that every problem becomes one
`CheckpointError` naming the file and what is wrong, and so bf16 needs no torch round trip; the tests
check that the safetensors package reads our files and that we read a committed file of version 1.

Saving is atomic: the bytes go to a temporary file `.<name>.tmp-<pid>-<random>` in the target's
directory which then replaces the target (`os.replace`), so a crash mid-save leaves the old
checkpoint intact; the next save to that path removes temp files whose writer process is gone
(a SIGKILL cannot clean up after itself). Only regular files are read: the file is opened with
O_NONBLOCK (a FIFO would block) and refused after `fstat` unless regular (a symlink to /dev/zero
would read forever), and every problem, OS errors included, is a `CheckpointError`. Loading validates the
whole file before building any tensor and never touches the model; `nn.load_state_dict(model,
av.load(path))` restores one.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import stat
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from .ir import dtypes as dt
from .tensor import Tensor, as_array

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "load", "read_metadata", "save"]

FORMAT = "avalon"
FORMAT_VERSION = 2
_CRC_PREFIX = b'{"__metadata__":{"crc32":"'  # how a version-2 header starts
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors limit; a larger length means a broken or foreign file

# Avalon dtype <-> safetensors dtype name
_ST_NAME = {dt.bool_: "BOOL", dt.uint8: "U8", dt.int8: "I8", dt.int16: "I16", dt.int32: "I32", dt.int64: "I64",
            dt.float16: "F16", dt.bfloat16: "BF16", dt.float32: "F32", dt.float64: "F64"}
_FROM_ST = {v: k for k, v in _ST_NAME.items()}
_STORAGE = {"BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"), "I16": np.dtype("<i2"),
            "I32": np.dtype("<i4"), "I64": np.dtype("<i8"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
            "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}


class CheckpointError(ValueError):
    """A file that is not a readable Avalon checkpoint: truncated, corrupted, foreign or too new."""

    def __init__(self, path: Any, problem: str):
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path, self.problem = os.fspath(path), problem


# -- saving -------------------------------------------------------------------------------------

def _state_of(obj: Any) -> Mapping[str, Any]:
    """A state dict: the mapping itself, or a model's parameters and buffers."""
    if isinstance(obj, Mapping):
        return obj
    try:
        from .nn import state_dict
    except ImportError:
        state_dict = None
    if state_dict is not None:
        return state_dict(obj)
    from .tree import named_tensors
    return dict(named_tensors(obj))


def _encode(name: str, value: Any) -> tuple[str, tuple[int, ...], bytes]:
    if isinstance(value, Tensor):
        if value.is_traced:
            raise TypeError(f"cannot save {name!r}: it is a traced tensor (save outside the traced function)")
        d = value.dtype
    elif hasattr(value, "detach") and hasattr(value, "dtype"):  # torch tensor
        d = dt.dtype(value.dtype)
    else:
        value = np.asarray(value)
        try:
            d = dt.dtype(value.dtype)
        except TypeError as e:
            raise TypeError(f"cannot save {name!r}: {e}") from None
    arr = np.asarray(as_array(value, d), order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
    if d is dt.bfloat16:  # the upper half of a bf16-rounded float32 is the bf16 bit pattern
        data = (arr.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    else:
        data = arr.astype(_STORAGE[_ST_NAME[d]], copy=False).tobytes()
    return _ST_NAME[d], tuple(int(s) for s in arr.shape), data


def _is_tensor(x: Any) -> bool:
    return isinstance(x, (Tensor, np.ndarray, np.generic)) or (hasattr(x, "detach") and hasattr(x, "dtype"))


def _complex_parts(name: str, value: Any) -> list[tuple[str, Any]]:
    """A complex value (a ComplexTensor, a torch or numpy complex tensor) as the two real entries Avalon's
    state dicts name it by, `name.real` and `name.imag` (avalon/complex.py), which `nn.load_state_dict`
    reads back into a complex parameter; any other value as it is. (Saving one failed: no complex dtype.)"""
    from .complex import from_data, is_complex_like
    if isinstance(value, (list, tuple)) or not is_complex_like(value):
        return [(name, value)]
    z = from_data(value) if not hasattr(value, "_complex_pair") else value
    return [(f"{name}.real", z.real), (f"{name}.imag", z.imag)]


def _flatten_tree(obj: Any, path: str, tensors: dict[str, Any]) -> Any:
    """torch.save's usual checkpoint, `{"model": sd, "optimizer": ..., "epoch": 3}`, as data: tensors
    go to `tensors` under their dotted path, everything else into a JSON tree that names them (no
    pickle: loading reads JSON and never runs code). A complex tensor is its two parts, `{"c": [re, im]}`."""
    if _is_tensor(obj) and len(parts := _complex_parts(path or "tensor", obj)) == 2:
        return {"c": [_flatten_tree(v, n, tensors) for n, v in parts]}
    if _is_tensor(obj):
        name, k = path or "tensor", 1
        while name in tensors:  # {"a.b": x} beside {"a": {"b": y}}
            name, k = f"{path}#{k}", k + 1
        tensors[name] = obj
        return {"t": name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"v": obj}
    if isinstance(obj, Mapping):
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"cannot save {path or 'the object'}: keys must be strings or ints, got {k!r}")
        return {"d": [[k, _flatten_tree(v, f"{path}.{k}" if path else str(k), tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten_tree(v, f"{path}.{i}" if path else str(i), tensors) for i, v in enumerate(obj)]
        return {"l" if isinstance(obj, list) else "u": items}
    raise TypeError(f"cannot save {path or 'the object'}: a {type(obj).__name__}; av.save stores tensors, numbers, "
                    "strings, None and dicts, lists and tuples of them (a model: save it or its state_dict)")


def _unflatten_tree(path: Any, node: Any, tensors: dict[str, Tensor], used: set[str], depth: int = 0) -> Any:
    bad = CheckpointError(path, f"corrupted: bad structure entry {str(node)[:80]!r} in the metadata 'tree'")
    if depth > 64 or not isinstance(node, dict) or len(node) != 1:
        raise bad
    (kind, val), = node.items()
    if kind == "t":
        if not isinstance(val, str) or val not in tensors or val in used:
            raise CheckpointError(path, f"corrupted: the metadata 'tree' names tensor {val!r}, which the file "
                                        "does not hold (or names it twice)")
        used.add(val)
        return tensors[val]
    if kind == "v" and (val is None or isinstance(val, (bool, int, float, str))):
        return val
    if kind == "c" and isinstance(val, list) and len(val) == 2 and all(isinstance(v, dict) and "t" in v for v in val):
        from .complex import ComplexTensor
        return ComplexTensor(*(_unflatten_tree(path, v, tensors, used, depth + 1) for v in val))
    if kind in ("l", "u") and isinstance(val, list):
        items = [_unflatten_tree(path, v, tensors, used, depth + 1) for v in val]
        return items if kind == "l" else tuple(items)
    if kind == "d" and isinstance(val, list) and all(isinstance(kv, list) and len(kv) == 2 for kv in val):
        return {(k if isinstance(k, (str, int)) and not isinstance(k, bool) else _raise(bad)):
                _unflatten_tree(path, v, tensors, used, depth + 1) for k, v in val}
    raise bad


def _is_data(obj: Any, depth: int = 0) -> bool:
    """Whether `obj` is plain data `_flatten_tree` stores as it is (no model inside): a tensor, a
    number, a string, None, or a dict, list or tuple of them."""
    if _is_tensor(obj) or obj is None or isinstance(obj, (bool, int, float, str)):
        return True
    if depth > 64:
        return False
    if isinstance(obj, Mapping):
        return all(_is_data(v, depth + 1) for v in obj.values())
    return isinstance(obj, (list, tuple)) and all(_is_data(v, depth + 1) for v in obj)


def _raise(e: Exception) -> Any:
    raise e


def save(obj: Any, path: str | os.PathLike) -> None:
    """Write a model's state (or a state dict of Tensors, numpy arrays or torch tensors) to `path`.
    A nested checkpoint, `{"model": sd, "optimizer": opt.state_dict(), "epoch": 3}` as torch code
    writes it, is saved too (tensors as tensors, the rest as a JSON tree) and `load` returns it."""
    from .version import __version__
    tree_json = None
    if (isinstance(obj, Mapping) and not all(_is_tensor(v) and isinstance(k, str) for k, v in obj.items())) \
            or (not isinstance(obj, Mapping) and _is_data(obj)):
        # torch.save's round trip: a tensor, a list or a tuple, a number, a string or None comes back as
        # itself (not as a state dict, which lost torch tensors in a list and made a tensor `{'': t}`);
        # so does a dict with int keys
        tensors: dict[str, Any] = {}
        tree_json = json.dumps(_flatten_tree(obj, "", tensors), separators=(",", ":"))
        state: Mapping[str, Any] = tensors
    else:
        state = {k: v for name, value in _state_of(obj).items() for k, v in _complex_parts(name, value)}
    header: dict[str, Any] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be strings, got {name!r}")
        st_dtype, shape, data = _encode(name, value)
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    meta = {"crc32": "00000000", "format": FORMAT, "format_version": str(FORMAT_VERSION),
            "avalon_version": __version__}
    if tree_json is not None:
        meta["tree"] = tree_json
    head = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the spec allows trailing spaces; 8-byte alignment of the data
    assert head.startswith(_CRC_PREFIX)
    crc = zlib.crc32(head)
    for c in chunks:
        crc = zlib.crc32(c, crc)
    n = len(_CRC_PREFIX)
    head = head[:n] + f"{crc:08x}".encode() + head[n + 8:]
    _write_atomic(os.fspath(path), [struct.pack("<Q", len(head)), head, *chunks])


_TMP = ".tmp-"


def _remove_stale_temps(directory: str, base: str) -> None:
    """Delete temp files of earlier saves to this path whose writing process no longer exists."""
    prefix = f".{base}{_TMP}"
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for n in names:
        if not n.startswith(prefix):
            continue
        pid_text = n[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # still running: maybe saving right now
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, OSError):
            continue  # alive under another user, or not a pid we can ask about
        try:
            os.unlink(os.path.join(directory, n))
        except OSError:
            pass


def _write_atomic(path: str, parts: list[bytes]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if not os.path.isdir(directory):  # said about the user's path, not the temp file's
        raise FileNotFoundError(f"cannot save {path}: the directory {os.path.dirname(path) or directory} "
                                "does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save {path}: it is a directory; give a file name in it")
    _remove_stale_temps(directory, base)
    tmp = os.path.join(directory, f".{base}{_TMP}{os.getpid()}-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            for p in parts:
                f.write(p)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not every platform can open a directory
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# -- loading ------------------------------------------------------------------------------------

def _foreign_hint(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return (" (it looks like a zip archive, e.g. a torch.save file; Avalon never unpickles: read it with "
                "torch.load(path, weights_only=True) and give that state dict to av.nn.load_state_dict(model, sd), "
                "which takes torch tensors, or convert it once with av.save)")
    if head[:1] == b"\x80":
        return (" (it looks like a Python pickle; Avalon never unpickles: read it with torch.load(path, "
                "weights_only=True) and give that state dict to av.nn.load_state_dict(model, sd))")
    if head.startswith(b"\x89HDF"):
        return " (it looks like an HDF5 file)"
    return ""


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, refusing anything that is not a regular file before reading a byte."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise CheckpointError(path, "no such file (or a symlink to a missing file)") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a directory, not a checkpoint file") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot open: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise CheckpointError(path, "is a directory, not a checkpoint file")
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(path, "not a regular file (a device, FIFO or socket); refused without reading")
        chunks, left = [], st.st_size
        while left > 0:  # at most the size fstat gave: a file growing under us is not read without bound
            b = os.read(fd, min(left, 1 << 24))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str], bytes]:
    """Parse and validate the whole file: (tensor entries, metadata, data bytes)."""
    try:
        return _validate(path, _read_bytes(path))
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as e:
        # a safety net: every check above should already have named the problem
        raise CheckpointError(path, f"corrupted: {type(e).__name__}: {e}") from None


def _validate(path: str | os.PathLike, raw: bytes) -> tuple[dict[str, Any], dict[str, str], bytes]:
    if len(raw) < 8:
        raise CheckpointError(path, f"not an Avalon checkpoint: only {len(raw)} bytes (truncated or empty)"
                              + _foreign_hint(raw))
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER:
        raise CheckpointError(path, "not a safetensors file: its first 8 bytes do not give a plausible header "
                                    "length" + _foreign_hint(raw))
    if 8 + n > len(raw):
        raise CheckpointError(path, f"truncated: the header needs {n} bytes, the file has {len(raw) - 8} after the "
                                    "length field")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(path, f"corrupted or foreign: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "corrupted or foreign: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(path, f"a safetensors file, but not an Avalon checkpoint (metadata format={fmt!r}); "
                                    "to import foreign weights, read them with safetensors and pass them to "
                                    "nn.load_state_dict")
    fv = meta.get("format_version")
    if not (isinstance(fv, str) and fv.isascii() and fv.isdigit() and len(fv) < 10):
        raise CheckpointError(path, f"corrupted: bad format_version {fv!r}")
    version = int(fv)
    if version > FORMAT_VERSION:
        raise CheckpointError(path, f"written by a newer Avalon ({meta.get('avalon_version', '?')}, checkpoint format "
                                    f"{version}); this version reads formats up to {FORMAT_VERSION}")
    if version < 1:
        raise CheckpointError(path, f"corrupted: bad format_version {fv!r}")
    if any(not isinstance(v, str) for v in meta.values()):
        raise CheckpointError(path, "corrupted: metadata values must be strings")
    data = raw[8 + n:]
    spans = []
    for name, e in header.items():
        ok = (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"} and e["dtype"] in _FROM_ST
              and isinstance(e["shape"], list) and all(_is_count(s) for s in e["shape"])
              and isinstance(e["data_offsets"], list) and len(e["data_offsets"]) == 2
              and all(_is_count(o) for o in e["data_offsets"]))
        if not ok:
            raise CheckpointError(path, f"corrupted: bad header entry for {name!r}: {e!r}")
        begin, end = e["data_offsets"]
        need = math.prod(e["shape"]) * _STORAGE[e["dtype"]].itemsize
        if end < begin or end - begin != need:
            raise CheckpointError(path, f"corrupted: {name!r} of shape {tuple(e['shape'])} {e['dtype']} needs {need} "
                                        f"bytes, its byte range holds {end - begin}")
        if end > len(data):
            raise CheckpointError(path, f"truncated: {name!r} needs bytes up to {end}, the file holds {len(data)}")
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise CheckpointError(path, f"corrupted: the byte range of {name!r} does not follow the previous tensor "
                                        "(ranges overlap or leave a gap)")
        pos = end
    if pos < len(data):
        raise CheckpointError(path, f"corrupted: {len(data) - pos} unexpected bytes after the last tensor")
    _check_crc(path, version, raw[8:8 + n], data, meta)
    return header, meta, data


def _check_crc(path: Any, version: int, head: bytes, data: bytes, meta: dict[str, str]) -> None:
    """Version 2: one CRC over header (its own digits zeroed) and data. Version 1: data only."""
    if version >= 2:
        n = len(_CRC_PREFIX)
        want = head[n:n + 8]
        if not head.startswith(_CRC_PREFIX) or meta.get("crc32", "").encode() != want:
            raise CheckpointError(path, "corrupted: the header does not start with its checksum (crc32), which "
                                        "format version 2 requires")
        got = zlib.crc32(data, zlib.crc32(head[:n] + b"00000000" + head[n + 8:]))
        if f"{got:08x}".encode() != want:
            raise CheckpointError(path, "corrupted: the header and tensor data do not match their checksum (crc32)")
        return
    want1 = meta.get("data_crc32")
    if want1 is None:
        raise CheckpointError(path, "corrupted: the data checksum (data_crc32) is missing")
    if f"{zlib.crc32(data):08x}" != want1:
        raise CheckpointError(path, "corrupted: the tensor data does not match its checksum (data_crc32)")


def load(path: str | os.PathLike, map_location: Any = None, pickle_module: Any = None, *,
         weights_only: bool | None = None, mmap: bool | None = None, **pickle_load_args: Any) -> dict[str, Any]:
    """Read a checkpoint into a state dict of CPU Tensors (in the order they were saved), or the
    nested dict that was saved. Raises `CheckpointError` for anything that is not a complete, intact
    Avalon checkpoint.

    torch.load's keywords are accepted. `map_location` places the tensors: a device ("cpu",
    "cuda:0", `av.device(...)`, a torch.device) moves every tensor there; a dict maps a saved device
    to a new one, and since an Avalon checkpoint records no device (tensors load on the CPU) only its
    "cpu" entry applies; a callable is called as torch's is, `fn(tensor, "cpu")`, and a Tensor it
    returns replaces the loaded one. `weights_only` needs nothing: Avalon never unpickles, a checkpoint
    holds only tensors and JSON. `mmap` is ignored: the file is read whole and validated (its CRC
    covers every byte) before any tensor is built, and each tensor owns its memory. `pickle_module`
    and torch's pickle arguments are ignored for the same reason."""
    header, meta, data = _read(path)
    out: dict[str, Tensor] = {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        d = _FROM_ST[e["dtype"]]
        try:
            arr = np.frombuffer(data[begin:end], dtype=_STORAGE[e["dtype"]]).reshape(e["shape"])
        except (ValueError, MemoryError) as err:  # the checks above should make this unreachable
            raise CheckpointError(path, f"corrupted: cannot read {name!r}: {err}") from None
        if d is dt.bfloat16:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = Tensor(arr.astype(d.np), dtype=d)  # a native-endian, writable copy
    if map_location is not None:
        out = {k: _placed(t, map_location) for k, t in out.items()}
    if "tree" not in meta:
        return out
    try:
        tree = json.loads(meta["tree"])
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(path, f"corrupted: the metadata 'tree' is not valid JSON ({e})") from None
    used: set[str] = set()
    nested = _unflatten_tree(path, tree, out, used)
    if used != set(out):
        raise CheckpointError(path, f"corrupted: tensors {sorted(set(out) - used)[:5]} are in no place of the "
                                    "metadata 'tree'")
    return nested


def _placed(t: Tensor, map_location: Any) -> Tensor:
    """A loaded (CPU) tensor where `map_location` says (see `load`)."""
    if callable(map_location) and not isinstance(map_location, (str, Mapping)):
        new = map_location(t, "cpu")
        return new if isinstance(new, Tensor) else t
    if isinstance(map_location, Mapping):
        target = {str(k): v for k, v in map_location.items()}.get("cpu")
        return t if target is None else t.to(_device(target))
    return t.to(_device(map_location))


def _device(where: Any) -> Any:
    from .device import device
    return device(str(where) if not isinstance(where, str) and hasattr(where, "type") and
                  hasattr(where, "index") and not hasattr(where, "torch") else where)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The checkpoint's metadata (format, format_version, avalon_version, ...), after validating it."""
    return dict(_read(path)[1])

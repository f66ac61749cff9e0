"""Checkpoint integrity (issue 13): the version-2 CRC covers the header too, header fields are
checked against each other and the file size, only CheckpointError comes out of `load` (also for
files that are not regular files), and temp files of a killed save are removed by the next save."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

import avalon as av
from avalon.checkpoint import FORMAT_VERSION, CheckpointError, load, read_metadata, save
from tests.test_checkpoint import FIXTURE


def _parts(path) -> tuple[dict, bytes]:
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header: dict, data: bytes, version: int = FORMAT_VERSION, fix_crc: bool = True) -> None:
    """Write `header` + `data`, recomputing the checksum the way a careful forger would (so the
    structural checks, not the CRC, must catch what is wrong) unless `fix_crc` is False."""
    meta = header["__metadata__"]
    body = {k: v for k, v in header.items() if k != "__metadata__"}
    if version == 1:
        meta["data_crc32"] = f"{zlib.crc32(data):08x}" if fix_crc else meta.get("data_crc32", "0")
        head = json.dumps({"__metadata__": meta, **body}, separators=(",", ":")).encode()
    else:
        meta = {"crc32": "00000000", **{k: v for k, v in meta.items() if k != "crc32"}}
        head = json.dumps({"__metadata__": meta, **body}, separators=(",", ":")).encode()
        if fix_crc:
            crc = zlib.crc32(data, zlib.crc32(head))
            head = head.replace(b'"crc32":"00000000"', f'"crc32":"{crc:08x}"'.encode(), 1)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + data)


@pytest.fixture
def good(tmp_path):
    p = tmp_path / "good.safetensors"
    rng = np.random.default_rng(0)
    save({"a": rng.standard_normal((2, 3)).astype(np.float32), "b": rng.standard_normal((2, 3)).astype(np.float32),
          "i": np.arange(4, dtype=np.int64)}, p)
    return p


def test_new_files_are_version_2_with_a_header_crc(good):
    assert read_metadata(good)["format_version"] == str(FORMAT_VERSION) == "2"
    raw = good.read_bytes()
    assert raw[8:].startswith(b'{"__metadata__":{"crc32":"')


@pytest.mark.parametrize("edit", ["dtype", "swap", "shape", "name"])
def test_header_edits_fail_the_checksum(good, tmp_path, edit):
    """The issue's attacks without re-forging the CRC: a dtype change, swapped offsets."""
    raw = bytearray(good.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    head = raw[8:8 + n].decode()
    if edit == "dtype":
        head = head.replace('"dtype":"I64"', '"dtype":"F64"', 1)
    elif edit == "swap":
        head = head.replace("[0,24]", "[XX]").replace("[24,48]", "[0,24]").replace("[XX]", "[24,48]")
    elif edit == "shape":
        head = head.replace("[2,3]", "[3,2]", 1)
    else:
        head = head.replace('"a"', '"c"', 1)
    assert len(head) == n and head != raw[8:8 + n].decode()
    p = tmp_path / "edited.safetensors"
    p.write_bytes(bytes(raw[:8]) + head.encode() + bytes(raw[8 + n:]))
    with pytest.raises(CheckpointError, match="checksum"):
        load(p)


def test_data_byte_flip_and_missing_crc(good, tmp_path):
    raw = bytearray(good.read_bytes())
    raw[-1] ^= 1
    (tmp_path / "f.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        load(tmp_path / "f.safetensors")
    header, data = _parts(FIXTURE)  # version 1 without its data_crc32: refused, not loaded unchecked
    del header["__metadata__"]["data_crc32"]
    head = json.dumps(header).encode()
    (tmp_path / "v1.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + data)
    with pytest.raises(CheckpointError, match="data_crc32"):
        load(tmp_path / "v1.safetensors")


@pytest.mark.parametrize("version", [1, 2])
def test_structural_checks_even_with_a_forged_crc(good, tmp_path, version):
    header, data = _parts(good)
    p = tmp_path / "x.safetensors"
    cases = {
        "dtype I32 on 8-byte range": ("i", {"dtype": "I32"}, "needs 16 bytes"),
        "overlap": ("b", {"data_offsets": [0, 24]}, "overlap or leave a gap"),
        "negative": ("a", {"data_offsets": [-24, 0]}, "bad header entry"),
        "bool shape": ("a", {"shape": [True, 6]}, "bad header entry"),
        "extra key": ("a", {"note": 1}, "bad header entry"),
        "past the end": ("i", {"data_offsets": [48, 56], "shape": [1]}, "truncated|gap|unexpected"),
    }
    for why, (name, change, match) in cases.items():
        h = json.loads(json.dumps(header))
        h[name].update(change)
        _write(p, h, data, version)
        with pytest.raises(CheckpointError, match=match):
            load(p)
        assert why


@pytest.mark.parametrize("fv", [None, [2], 2, "", "2.0", "-1", "0", "1" * 50, True])
def test_bad_format_version_is_a_checkpoint_error(good, tmp_path, fv):
    header, data = _parts(good)
    header["__metadata__"]["format_version"] = fv
    p = tmp_path / "v.safetensors"
    _write(p, header, data)
    with pytest.raises(CheckpointError, match="format_version|newer"):
        load(p)


def test_non_regular_files_are_refused_without_reading(tmp_path):
    cases = {}
    (tmp_path / "dir").mkdir()
    cases["dir"] = "directory"
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    cases["dangling"] = "no such file"
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    cases["loop"] = "cannot open"
    os.symlink("/dev/zero", tmp_path / "zero")
    cases["zero"] = "not a regular file"
    os.mkfifo(tmp_path / "fifo")
    cases["fifo"] = "not a regular file"
    for name, match in cases.items():
        with pytest.raises(CheckpointError, match=match):
            load(tmp_path / name)
    os.chmod(tmp_path / "dir", 0o700)


def test_a_killed_save_leaves_temps_the_next_save_removes(tmp_path):
    """A save SIGKILLed after writing its temp file: the next save to that path cleans up, and
    leaves temp files of other targets (and of live writers) alone."""
    target = tmp_path / "m.safetensors"
    code = ("import os, signal, numpy as np, avalon.checkpoint as ck\n"
            "real = ck.os.replace\n"
            "def die(a, b): os.kill(os.getpid(), signal.SIGKILL)\n"
            "ck.os.replace = die\n"
            f"ck.save({{'w': np.ones(1000, np.float32)}}, {str(target)!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    seen = set()
    for _ in range(2):  # the second killed save already removed the first one's orphan
        r = subprocess.run([sys.executable, "-c", code], env=env)
        assert r.returncode == -9
        orphans = [n for n in os.listdir(tmp_path) if ".tmp-" in n]
        assert len(orphans) == 1 and orphans[0].startswith(".m.safetensors.tmp-") and orphans[0] not in seen
        seen.add(orphans[0])
    live = tmp_path / f".m.safetensors.tmp-{os.getppid()}-abc"  # a live process's temp: kept
    other = tmp_path / ".other.safetensors.tmp-999999999-abc"
    live.write_bytes(b"x")
    other.write_bytes(b"x")
    save({"w": np.zeros(3, np.float32)}, target)
    assert sorted(os.listdir(tmp_path)) == sorted(["m.safetensors", live.name, other.name])
    np.testing.assert_array_equal(load(target)["w"].numpy(), np.zeros(3))


def test_old_version_file_still_loads_and_round_trip_keeps_order(tmp_path):
    assert read_metadata(FIXTURE)["format_version"] == "1"
    state = load(FIXTURE)
    save(state, tmp_path / "again.safetensors")
    got = load(tmp_path / "again.safetensors")
    assert list(got) == list(state)
    for k in state:
        np.testing.assert_array_equal(got[k].numpy(), state[k].numpy())
    assert isinstance(av.load(tmp_path / "again.safetensors")["fc.weight"], av.Tensor)


def test_a_nested_checkpoint_round_trips_as_torch_code_writes_it(tmp_path):
    """`av.save({"model": sd, "optimizer": ..., "epoch": 3})`: tensors stored as tensors, the rest as
    a JSON tree in the CRC-covered metadata; `load` gives the same nesting back (int keys and
    tuples included) and no pickle is involved."""
    rng = np.random.default_rng(1)
    m = av.nn.Linear(3, 2)
    ck = {"model": av.nn.state_dict(m), "optimizer": {"state": {0: {"momentum": rng.standard_normal(3)}}},
          "epoch": 3, "best": float("inf"), "tag": "run-1", "hist": [0.5, None, True], "pair": (1, "x"),
          "model.weight": av.tensor(rng.standard_normal((2, 2)))}  # a flat key beside a nested one
    p = tmp_path / "ck.safetensors"
    save(ck, p)
    back = load(p)
    assert list(back) == list(ck) and back["epoch"] == 3 and back["best"] == float("inf")
    assert back["tag"] == "run-1" and back["hist"] == [0.5, None, True] and back["pair"] == (1, "x")
    assert list(back["optimizer"]["state"]) == [0]
    np.testing.assert_array_equal(back["optimizer"]["state"][0]["momentum"].numpy(), ck["optimizer"]["state"][0]["momentum"])
    np.testing.assert_array_equal(back["model"]["weight"].numpy(), m.weight.numpy())
    np.testing.assert_array_equal(back["model.weight"].numpy(), ck["model.weight"].numpy())
    av.nn.load_state_dict(av.nn.Linear(3, 2), back["model"])
    header, data = _parts(p)  # a forged tree (CRC fixed up) is still a CheckpointError
    for bad in ('{"t":"nope"}', '{"d":[["a",{"x":1}]]}', '[1]', '{"l":[{"t":"epoch"}]}', "{"):
        header["__metadata__"]["tree"] = bad
        _write(p, header, data)
        with pytest.raises(CheckpointError, match="tree"):
            load(p)
    with pytest.raises(TypeError, match="opt: a object"):
        save({"opt": object()}, tmp_path / "x.safetensors")

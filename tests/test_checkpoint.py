"""Checkpoints: round trips for every dtype, other tools read them, old files keep loading, and bad
files fail with a CheckpointError that names the path and the problem."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import avalon as av
from avalon.checkpoint import CheckpointError, load, read_metadata, save

FIXTURE = Path(__file__).parent / "data" / "checkpoint_v1.safetensors"


def fixture_state() -> dict[str, av.Tensor]:
    """The contents of tests/data/checkpoint_v1.safetensors (regenerate: python tests/test_checkpoint.py)."""
    rng = np.random.default_rng(20240611)
    return {
        "conv1.weight": av.tensor(rng.standard_normal((2, 1, 3, 3)), dtype=av.float32),
        "conv1.bias": av.tensor(rng.standard_normal(2), dtype=av.float32),
        "fc.weight": av.tensor(rng.standard_normal((3, 4)), dtype=av.float64),
        "half": av.tensor(rng.standard_normal(5), dtype=av.float16),
        "brain": av.tensor(rng.standard_normal((2, 3)), dtype=av.bfloat16),
        "bn.num_batches_tracked": av.tensor(np.int64(7)),
        "ids": av.tensor(rng.integers(-100, 100, (2, 2)).astype(np.int32)),
        "mask": av.tensor(rng.random(4) > 0.5),
        "scalar": av.tensor(np.float32(rng.standard_normal())),
        "empty": av.tensor(np.zeros((0, 3), np.float32)),
    }


def _assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy(), err_msg=k)


def test_committed_v1_file_still_loads():
    _assert_same(load(FIXTURE), fixture_state())
    meta = read_metadata(FIXTURE)
    assert meta["format"] == "avalon" and meta["format_version"] == "1"


def test_roundtrip_every_dtype(tmp_path):
    state = fixture_state()
    save(state, tmp_path / "c.safetensors")
    _assert_same(load(tmp_path / "c.safetensors"), state)
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_other_tools_read_it(tmp_path):
    state = fixture_state()
    save(state, tmp_path / "c.safetensors")
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "avalon"
        assert f.metadata()["avalon_version"] == av.__version__
        brain = f.get_tensor("brain")
        assert brain.dtype == torch.bfloat16  # real bf16, not widened
        np.testing.assert_array_equal(brain.float().numpy(), state["brain"].numpy())
        np.testing.assert_array_equal(f.get_tensor("fc.weight").numpy(), state["fc.weight"].numpy())
        assert f.get_tensor("mask").dtype == torch.bool


def test_save_model_and_torch_values(tmp_path):
    class Net:
        def __init__(self):
            self.fc = type("Lin", (), {})()
            self.fc.weight = av.tensor(np.arange(6.0).reshape(2, 3), dtype=av.float32)
            self.fc.bias = av.tensor(np.ones(2), dtype=av.float32)
            self.running = av.Buffer(np.zeros(2, np.float32))

    net = Net()
    save(net, tmp_path / "m.safetensors")
    got = load(tmp_path / "m.safetensors")
    assert set(got) == {"fc.weight", "fc.bias", "running"}
    np.testing.assert_array_equal(got["fc.weight"].numpy(), net.fc.weight.numpy())

    save({"t": torch.arange(4, dtype=torch.bfloat16), "n": np.arange(3, dtype=np.int32)}, tmp_path / "t.safetensors")
    got = load(tmp_path / "t.safetensors")
    assert got["t"].dtype == av.bfloat16 and got["n"].dtype == av.int32
    np.testing.assert_array_equal(got["t"].numpy(), [0, 1, 2, 3])


def test_overwrite_is_atomic(tmp_path, monkeypatch):
    """A save that fails midway leaves the previous checkpoint intact and no temp file behind."""
    path = tmp_path / "c.safetensors"
    save({"a": np.ones(3, np.float32)}, path)
    import avalon.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save({"a": np.zeros(3, np.float32)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(load(path)["a"].numpy(), np.ones(3))
    assert os.listdir(tmp_path) == ["c.safetensors"]


def _bad(tmp_path, data: bytes, match: str):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(data)
    with pytest.raises(CheckpointError, match=match) as ei:
        load(p)
    assert str(p) in str(ei.value)


def test_truncated(tmp_path):
    good = FIXTURE.read_bytes()
    _bad(tmp_path, good[:-5], "truncated")
    _bad(tmp_path, good[:100], "truncated")
    _bad(tmp_path, good[:3], "truncated")
    _bad(tmp_path, b"", "truncated")


def test_corrupted(tmp_path):
    good = bytearray(FIXTURE.read_bytes())
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF
    _bad(tmp_path, bytes(flipped), "checksum")
    n = struct.unpack("<Q", good[:8])[0]
    broken = bytearray(good)
    broken[8 + n // 2] = ord("}")
    _bad(tmp_path, bytes(broken), "not valid JSON|corrupted")
    _bad(tmp_path, bytes(good) + b"xx", "unexpected bytes")


def test_foreign(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "x.pt")
    _bad(tmp_path, (tmp_path / "x.pt").read_bytes(), r"zip archive.*torch.load\(path, weights_only=True\)")
    _bad(tmp_path, b"hello world, this is text", "not a safetensors file")
    from safetensors.torch import save_file
    save_file({"w": torch.ones(2)}, str(tmp_path / "hf.safetensors"), metadata={"format": "pt"})
    _bad(tmp_path, (tmp_path / "hf.safetensors").read_bytes(), "not an Avalon checkpoint")


def test_newer_format_is_refused(tmp_path):
    good = FIXTURE.read_bytes()
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8:8 + n])
    header["__metadata__"]["format_version"] = str(av.checkpoint.FORMAT_VERSION + 1)
    head = json.dumps(header).encode()
    _bad(tmp_path, struct.pack("<Q", len(head)) + head + good[8 + n:], "newer Avalon")


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    save(fixture_state(), FIXTURE)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


def test_restores_a_model_with_buffers(tmp_path):
    from avalon import nn

    av.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    model(av.tensor(np.random.default_rng(0).standard_normal((5, 4)), dtype=av.float32))  # moves running stats
    save(model, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    nn.load_state_dict(fresh, load(tmp_path / "m.safetensors"))
    for (k, a), (_, b) in zip(nn.state_dict(model).items(), nn.state_dict(fresh).items()):
        assert a.dtype == b.dtype, k
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
    assert "1.running_mean" in load(tmp_path / "m.safetensors")

    before = {k: v.numpy().copy() for k, v in nn.state_dict(fresh).items()}
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "m.safetensors").read_bytes()[:-8])
    with pytest.raises(CheckpointError):
        nn.load_state_dict(fresh, load(tmp_path / "bad.safetensors"))
    for k, v in nn.state_dict(fresh).items():
        np.testing.assert_array_equal(v.numpy(), before[k])  # a failed load changes nothing

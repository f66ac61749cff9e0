"""Data parallelism across two real processes on localhost (gloo), launched as torchrun would:
environment variables and a free port. Every wait is bounded: the group's timeout (AVALON_DIST_TIMEOUT)
inside the ranks, `subprocess` timeouts outside. The ranks are `tests/ddp_worker.py`."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "ddp_worker.py"
GROUP_TIMEOUT_S = 30
sys.path.insert(0, str(HERE))

import ddp_worker  # noqa: E402
from helpers import launch_ranks  # noqa: E402

from avalon import nn  # noqa: E402


def launch(mode: str, out: Path, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run both ranks of `mode` to completion (killed at `timeout`); their results in rank order."""
    return launch_ranks([str(WORKER), mode, str(out)], timeout, AVALON_DIST_TIMEOUT=str(GROUP_TIMEOUT_S))


def _ok(results: list[subprocess.CompletedProcess]) -> None:
    for r, res in enumerate(results):
        assert res.returncode == 0, f"rank {r} failed:\n{res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _ok(launch("train", out))
    return out


@pytest.mark.parametrize("kind,opt", ddp_worker.CONFIGS)
def test_two_ranks_with_batch_b_match_one_process_with_batch_2b(trained, kind, opt):
    params, history = ddp_worker.run(kind, opt, 2 * ddp_worker.B, 2, init_seed=100)  # rank 0's init
    ranks = [np.load(trained / f"{kind}-{opt}.rank{r}.npz") for r in range(2)]
    for name, want in params.items():
        for r, got in enumerate(ranks):
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=f"rank {r} {name}")
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name])  # one update, applied everywhere
    init = {k: v.numpy() for k, v in nn.state_dict(ddp_worker.make(kind, opt, 100)[0]).items()}
    assert all(not np.allclose(params[k], init[k]) for k in init)  # it trained: the comparison means something
    for got in ranks:  # the same history on every rank: the mean over all ranks' samples
        np.testing.assert_allclose(got["history"], history, rtol=1e-5)


def test_a_model_wrapped_in_distributed_data_parallel_trains_as_one_process_with_the_whole_batch(trained):
    """torch's `DDP(model)` in a custom loop: gradients averaged by the wrapper, rank 0's initial weights;
    at the start of every forward the wrapper gives every rank rank 0's buffers (torch's broadcast_buffers)."""
    want = ddp_worker.wrapper_run(0, 1, init_seed=100)
    ranks = [np.load(trained / f"wrapper.rank{r}.npz") for r in range(2)]
    for name, w in want.items():
        for r, got in enumerate(ranks):
            np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-6, err_msg=f"rank {r} {name}")
    init = ddp_worker.wrapper_run(0, 1, init_seed=100, steps=0)
    assert not np.allclose(want["0.weight"], init["0.weight"])
    bufs = [np.load(trained / f"buffers.rank{r}.npz") for r in range(2)]
    np.testing.assert_array_equal(bufs[1]["running_mean"], np.ones(8, np.float32))  # rank 0's, not its own 2s
    np.testing.assert_array_equal(bufs[0]["y"], bufs[1]["y"])


def test_a_rank_that_dies_fails_the_others_and_training_resumes_from_the_checkpoint(trained, tmp_path):
    started = time.monotonic()
    dead = launch("die", tmp_path, timeout=GROUP_TIMEOUT_S + 60)
    assert dead[1].returncode == 3, dead[1].stderr[-3000:]
    assert dead[0].returncode != 0, "rank 0 went on although rank 1 died"
    assert "DistributedError" in dead[0].stderr and "another process died" in dead[0].stderr, dead[0].stderr[-3000:]
    assert time.monotonic() - started < GROUP_TIMEOUT_S + 60

    assert (tmp_path / "ckpt.safetensors").exists()
    _ok(launch("resume", tmp_path))
    for r in range(2):
        full = np.load(trained / f"full.rank{r}.npz")
        resumed = np.load(tmp_path / f"resumed.rank{r}.npz")
        assert sorted(full.files) == sorted(resumed.files)
        for name in full.files:  # the very same computation: bit for bit
            np.testing.assert_array_equal(resumed[name], full[name], err_msg=f"rank {r} {name}")

"""torch DDP training scripts ported to Avalon by renaming imports, against the torch originals run in the
same two processes (gloo on the CPU, one process group that torch's DDP and Avalon share), step by step:
losses, gradients, parameters, optimizer state. The ranks are tests/distributed_ports_worker.py (its
docstring lists what each mode ports); each rank records its checks in OUT/rank<r>.json.

Three launches (spawned processes are slow): `ports` (the getting-started DDP script with no_sync
accumulation and a rank-0 checkpoint; a SimCLR/CLIP loss over features gathered with gradients;
SyncBatchNorm + find_unused_parameters + ZeroRedundancyOptimizer), `faults` (torch's error paths) and,
at the same time, `world-size` (ranks started with different WORLD_SIZEs)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import launch_ranks

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = str(HERE / "distributed_ports_worker.py")


def _results(out: Path, results, ranks=(0, 1)) -> None:
    for r in ranks:
        path = out / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote nothing:\n{results[r].stderr[-3000:]}"
        got = json.loads(path.read_text())
        assert not got["failures"], f"rank {r}:\n" + "\n".join(got["failures"])
        assert got["checks"] > 0


def test_torch_ddp_scripts_ported_by_renaming_match_torch_step_by_step(tmp_path):
    out = tmp_path / "ports"
    out.mkdir()
    results = launch_ranks([WORKER, "ports", str(out)], 120, TORCH_DISTRIBUTED_DEBUG="OFF")
    _results(out, results)
    for r, res in enumerate(results):
        assert res.returncode == 0, f"rank {r}:\n{res.stderr[-3000:]}"


def _start_world_size_mismatch(out: Path) -> list[subprocess.Popen]:
    """Two ranks that disagree on WORLD_SIZE (the worker sets rank 1's to 3); rank 0 then waits in
    gloo's own connect timeout, so only rank 1's error is read and rank 0 is killed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(2):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, WORKER, "world-size", str(out)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def test_torch_error_paths_are_clear_errors_and_bounded_by_the_group_timeout(tmp_path):
    mismatch_out = tmp_path / "world"
    mismatch_out.mkdir()
    mismatch = _start_world_size_mismatch(mismatch_out)
    try:
        out = tmp_path / "faults"
        out.mkdir()
        results = launch_ranks([WORKER, "faults", str(out)], 60, TORCH_DISTRIBUTED_DEBUG="DETAIL")
        _results(out, results)
        assert results[0].returncode == 0, results[0].stderr[-3000:]
        assert results[1].returncode == 1, results[1].stderr[-3000:]  # it raised in its own code
        _, err = mismatch[1].communicate(timeout=60)
        _results(mismatch_out, [None, subprocess.CompletedProcess([], mismatch[1].returncode, "", err)], ranks=(1,))
    finally:
        for p in mismatch:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)


def test_no_sync_turns_off_the_averaging_and_a_synchronized_step_after_it_warns(monkeypatch):
    """With a (fake) second rank: under no_sync the gradient is this rank's own; torch averages the
    accumulated .grad at the next synchronized backward, which values cannot do: that step warns."""
    import avalon as av
    from avalon import nn
    from avalon.ir.reference.collective import set_collective
    from avalon.nn.parallel import DistributedDataParallel
    sys.path.insert(0, str(HERE))
    from test_distributed_collectives import FakeGroup
    old = set_collective(FakeGroup(0))
    try:
        net = nn.Linear(3, 2)
        ddp = DistributedDataParallel(net)
        x = av.tensor(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
        loss = av.grad(lambda m, x: (m(x) ** 2).sum())
        local = loss(net, x)
        with ddp.no_sync():
            assert not ddp.require_backward_grad_sync
            mine = loss(ddp, x)
        assert ddp.require_backward_grad_sync
        for k, v in local.items():
            np.testing.assert_allclose(mine[f"module.{k}"].numpy(), v.numpy(), rtol=1e-6)
        with pytest.warns(RuntimeWarning, match="no_sync"):
            synced = loss(ddp, x)
        for k, v in local.items():  # the fake group's mean of (g, 2g + 1)
            np.testing.assert_allclose(synced[f"module.{k}"].numpy(), 1.5 * v.numpy() + 0.5, rtol=1e-5, atol=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss(ddp, x)  # once only
    finally:
        set_collective(old)


def test_collectives_before_init_under_a_launcher_raise_torchs_error(monkeypatch):
    import avalon as av
    import avalon.distributed as dist
    from avalon import nn
    from avalon.nn.parallel import DistributedDataParallel
    monkeypatch.setenv("WORLD_SIZE", "2")
    for call in (lambda: dist.all_reduce(av.ones(2)), lambda: dist.all_reduce({"w": av.ones(2)}),
                 lambda: dist.broadcast(av.ones(2), 0), dist.barrier, dist.get_rank,
                 lambda: DistributedDataParallel(nn.Linear(2, 2))):
        with pytest.raises(RuntimeError, match="init_process_group"):
            call()
    monkeypatch.setenv("WORLD_SIZE", "1")  # started alone: the identity, as documented
    t = av.ones(2)
    dist.all_reduce(t)
    np.testing.assert_array_equal(t.numpy(), [1.0, 1.0])
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(ValueError, match="RANK=2 is not a rank of WORLD_SIZE=2"):
        dist.init_process_group("gloo")

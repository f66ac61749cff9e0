"""nn.SyncBatchNorm: within one process (it is BatchNorm; its collective in the IR) and across two
real processes on gloo (tests/syncbn_worker.py), where every rank's output, input gradient, summed
weight/bias gradients and running statistics must be those of torch's plain BatchNorm over the
concatenated global batch (float64), eagerly, under av.grad, under av.compile and in av.fit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import avalon as av
from avalon import nn
from avalon.ir.reference.collective import set_collective

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import syncbn_worker as W  # noqa: E402
from helpers import launch_ranks  # noqa: E402

RTOL = 1e-6


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-300))


def close(got, want, what: str, rtol: float = RTOL) -> None:
    assert np.shape(got) == np.shape(want), f"{what}: shape {np.shape(got)} != {np.shape(want)}"
    err = rel_err(got, want)
    assert err < rtol, f"{what}: relative error {err:.3g} >= {rtol:g}"


# -- one process --------------------------------------------------------------------------------

def _torch_bn(d: dict, momentum=W.MOMENTUM, cls=torch.nn.BatchNorm2d) -> torch.nn.Module:
    bn = cls(W.C, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(d["weight"]))
        bn.bias.copy_(torch.from_numpy(d["bias"]))
    return bn


def test_without_a_group_it_is_batch_norm_and_traces_no_collective():
    d = W.global_data()
    sync, plain = W.make_bn(d), nn.BatchNorm2d(W.C, momentum=W.MOMENTUM, dtype="float64")
    nn.load_state_dict(plain, {"weight": d["weight"], "bias": d["bias"]}, strict=False)
    np.testing.assert_array_equal(sync(d["x"]).numpy(), plain(d["x"]).numpy())
    graph = av.trace(lambda m, x: m(x), sync, av.tensor(d["x"]))
    assert not any(op.name == "all_reduce" for op in graph.ops)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_array_equal(getattr(sync, name).numpy(), getattr(plain, name).numpy(), err_msg=name)


class TwoRanks:
    """A stand-in process group: world size 2, the other rank holding what we hold (so sums double)."""

    def world_size(self, group):
        return 2

    def all_reduce_array(self, x, reduction, group):
        return np.asarray(x) * (2 if reduction == "sum" else 1)

    def all_reduce_tensor_(self, x, reduction, group):
        if reduction == "sum":
            x.mul_(2)


@pytest.fixture
def two_ranks():
    old = set_collective(TwoRanks())
    yield
    set_collective(old)


def test_in_a_group_training_traces_one_float64_sum_over_channels_and_count(two_ranks):
    """Forward: one all_reduce of [sum, sum of squares, count] (2C + 1, float64); its vjp in the
    gradient. With the other rank a copy of this one, the global batch is this one twice: the
    output equals torch's BatchNorm on it and the running variance uses the global count."""
    d = W.global_data()
    x = d["x"][:3]
    bn = W.make_bn(d)
    graph = av.trace(lambda m, x: m(x), bn, av.tensor(x))
    reduces = [op for op in graph.ops if op.name == "all_reduce"]
    assert len(reduces) == 1 and reduces[0].attrs["reduction"] == "sum"
    assert reduces[0].operands[0].type.shape == (2 * W.C + 1,) and str(reduces[0].operands[0].type.dtype) == "f64"
    grad_graph = av.trace(lambda m, x: av.grad(W.objective, argnums=1)(m, x, d["g"][:3]), W.make_bn(d), av.tensor(x))
    assert sum(op.name == "all_reduce" for op in grad_graph.ops) == 2  # forward, and its vjp (the input's grad)

    ref = _torch_bn(d)
    want = ref(torch.from_numpy(np.concatenate([x, x]))).detach().numpy()[:3]
    close(bn(x).numpy(), want, "output")
    close(bn.running_var.numpy(), ref.running_var.numpy(), "running_var")  # unbiased with n = 2 * 3 * 20
    bn.eval()
    ref.eval()
    close(bn(x).numpy(), ref(torch.from_numpy(x)).detach().numpy(), "eval output")


def test_signature_errors_and_conversion():
    with pytest.raises(ValueError, match="process_group"):
        nn.SyncBatchNorm(3, process_group="pairs")
    with pytest.raises(ValueError, match="at least 2D"):
        nn.SyncBatchNorm(3)(np.ones(3, np.float32))
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Sequential(nn.BatchNorm1d(4)))
    m.extra = {"norms": [nn.BatchNorm1d(2)], "pair": (nn.BatchNorm2d(5), nn.ReLU())}
    m.eval()
    weight, mean = m[1].weight, m[1].running_mean
    keys = list(nn.state_dict(m))
    out = nn.SyncBatchNorm.convert_sync_batchnorm(m)
    assert out is m and list(nn.state_dict(m)) == keys
    for bn in (m[1], m[3][0], m.extra["norms"][0], m.extra["pair"][0]):
        assert type(bn) is nn.SyncBatchNorm and not bn.training
    assert m[1].weight is weight and m[1].running_mean is mean  # the same tensors: optimizers keep them
    single = nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm1d(4))
    assert type(single) is nn.SyncBatchNorm and single.num_features == 4


# -- two processes --------------------------------------------------------------------------------

def launch(out: Path, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    return launch_ranks([str(HERE / "syncbn_worker.py"), str(out)], timeout)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("syncbn")
    for r, res in enumerate(launch(out)):
        assert res.returncode == 0, f"rank {r} failed:\n{res.stderr[-3000:]}"
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]


@pytest.fixture(scope="module")
def torch_ref():
    """torch's BatchNorm2d over the global batch: one forward, then one with backward, then eval."""
    d = W.global_data()
    bn = _torch_bn(d)
    bn(torch.from_numpy(d["x"]))
    ref = {"mean1": bn.running_mean.clone().numpy(), "var1": bn.running_var.clone().numpy()}
    x = torch.from_numpy(d["x"]).requires_grad_()
    y = bn(x)
    (y * torch.from_numpy(d["g"])).sum().backward()
    ref.update(y=y.detach().numpy(), gx=x.grad.numpy(), gw=bn.weight.grad.numpy(), gb=bn.bias.grad.numpy(),
               mean2=bn.running_mean.numpy(), var2=bn.running_var.numpy())
    bn.eval()
    ref["y_eval"] = bn(torch.from_numpy(d["x"])).detach().numpy()
    bn1 = _torch_bn(d, momentum=None, cls=torch.nn.BatchNorm1d)
    bn1(torch.from_numpy(d["x2d"]))
    x2 = torch.from_numpy(d["x2d"]).requires_grad_()
    (bn1(x2) * torch.from_numpy(d["g2d"])).sum().backward()
    ref.update(gx2d=x2.grad.numpy(), mean2d=bn1.running_mean.numpy(), var2d=bn1.running_var.numpy())
    return ref


@pytest.mark.parametrize("r", [0, 1])
def test_each_rank_matches_torch_batch_norm_over_the_global_batch(ranks, torch_ref, r):
    got, mine = ranks[r], slice(W.SPLIT[r], W.SPLIT[r + 1])
    for key in ("y", "gx", "y_eval", "gx2d"):
        close(got[key], torch_ref[key][mine], f"rank {r} {key}")
    for key in ("mean1", "var1", "mean2", "var2", "mean2d", "var2d"):
        close(got[key], torch_ref[key], f"rank {r} {key}")
    close(got["gw_sum"], torch_ref["gw"], f"rank {r} weight grad (summed over ranks)")
    close(got["gb_sum"], torch_ref["gb"], f"rank {r} bias grad (summed over ranks)")
    assert int(got["count"]) == 2


def test_weight_grads_are_each_ranks_share(ranks, torch_ref):
    """Each rank's own weight/bias gradient is its samples' part (they add up to torch's, above),
    not already the global one: DDP's all-reduce of the gradients must not count it twice."""
    close(ranks[0]["gw"] + ranks[1]["gw"], torch_ref["gw"], "sum of the ranks' weight grads")
    assert rel_err(ranks[0]["gw"], torch_ref["gw"]) > 1e-3


@pytest.mark.parametrize("r", [0, 1])
def test_compiled_gradient_matches_torch(ranks, torch_ref, r):
    got, mine = ranks[r], slice(W.SPLIT[r], W.SPLIT[r + 1])
    assert int(got["compiled_all_reduces"]) >= 2  # the statistics' sum and its vjp survive the pipeline
    close(got["c_gx"], torch_ref["gx"][mine], f"rank {r} compiled input grad")
    close(got["c_gw"] + ranks[1 - r]["c_gw"], torch_ref["gw"], "compiled weight grad (summed)")
    close(got["c_gb"] + ranks[1 - r]["c_gb"], torch_ref["gb"], "compiled bias grad (summed)")
    close(got["c_mean"], torch_ref["mean1"], f"rank {r} compiled running_mean")
    close(got["c_var"], torch_ref["var1"], f"rank {r} compiled running_var")


def test_data_parallel_fit_with_sync_batch_norm_matches_one_process_with_the_global_batch(ranks):
    """2 ranks with batch b and SyncBatchNorm train as 1 process with batch 2b: parameters, running
    statistics and history (float32)."""
    want = W.fit(2 * W.B_FIT)
    for r, got in enumerate(ranks):
        for name, w in want.items():
            np.testing.assert_allclose(got[f"fit.{name}"], w, rtol=2e-5, atol=1e-6, err_msg=f"rank {r} {name}")
    np.testing.assert_array_equal(ranks[0]["fit.bn.running_var"], ranks[1]["fit.bn.running_var"])
    assert not np.allclose(want["bn.running_mean"], 0)  # it trained: the statistics moved


def test_distributed_sampler_under_the_group(ranks):
    """Defaults from the group; the ranks' parts (11 samples, padded to 12) cover the dataset."""
    parts = [r["sampled"] for r in ranks]
    assert [list(r["sampler_replicas"]) for r in ranks] == [[2, 0], [2, 1]]
    assert len(parts[0]) == len(parts[1]) == 6
    assert sorted(set(parts[0]) | set(parts[1])) == list(range(11))


def test_float32_channels_with_a_mean_far_above_their_spread(two_ranks):
    """The global variance is formed in float64 from each rank's centered statistics: a float32 sum
    of squares would lose it entirely here (E[x^2] = 1e6, var = 1e-4)."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((6, 2, 8, 8)) * 0.01 + [[[1000.0]], [[-50.0]]]).astype(np.float32)
    bn = nn.SyncBatchNorm(2)
    y = bn(x).numpy()
    ref = torch.nn.BatchNorm2d(2).double()
    want = ref(torch.from_numpy(np.concatenate([x, x]).astype(np.float64))).detach().numpy()[:6]
    close(bn.running_var.numpy(), ref.running_var.numpy(), "running_var", rtol=1e-5)
    close(bn.running_mean.numpy(), ref.running_mean.numpy(), "running_mean", rtol=1e-6)
    plain = nn.BatchNorm2d(2)(np.concatenate([x, x])).numpy()[:6]  # float32's own limit: x - mean
    assert rel_err(y, want) < 2 * rel_err(plain, want) + 1e-6


@pytest.mark.usefixtures("module_kernel_cache")
@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_compiled_in_a_group_on_each_backend(two_ranks, backend):
    """The compiled step (float32; Triton's host all_reduce step on the float64 statistics) gives the
    eager values: with the other rank a copy, torch's BatchNorm over the batch twice."""
    d = W.global_data()
    x, g = d["x"][:3].astype(np.float32), d["g"][:3].astype(np.float32)
    bn = nn.SyncBatchNorm(W.C, momentum=W.MOMENTUM)
    step = av.compile(lambda m, x, g: av.value_and_grad(W.objective, argnums=(0, 1))(m, x, g), backend=backend)
    _, (grads, gx) = step(bn, av.tensor(x), av.tensor(g))
    ref = torch.nn.BatchNorm2d(W.C, momentum=W.MOMENTUM).double()
    xt = torch.from_numpy(np.concatenate([x, x]).astype(np.float64)).requires_grad_()
    (ref(xt) * torch.from_numpy(np.concatenate([g, g]).astype(np.float64))).sum().backward()
    close(gx.numpy(), xt.grad.numpy()[:3], "input grad", rtol=1e-4)
    close(grads["weight"].numpy(), ref.weight.grad.numpy() / 2, "weight grad (this rank's half)", rtol=1e-4)
    close(bn.running_var.numpy(), ref.running_var.numpy(), "running_var", rtol=1e-5)


class OtherRankHolds:
    """A stand-in group whose other rank holds the batch `x` (its sums are added to ours)."""

    def __init__(self, x: np.ndarray):
        axes = (0, *range(2, x.ndim))
        n = x.size // x.shape[1]
        self.theirs = np.concatenate([x.sum(axes), (x * x).sum(axes), [n]])

    def world_size(self, group):
        return 2

    def all_reduce_array(self, a, reduction, group):
        assert reduction == "sum" and a.shape == self.theirs.shape
        return np.asarray(a) + self.theirs


def test_a_rank_with_no_samples_still_takes_part():
    """An empty local batch sends zeros and a zero count; the running statistics are the other rank's."""
    d = W.global_data()
    old = set_collective(OtherRankHolds(d["x"]))
    try:
        bn = W.make_bn(d)
        assert bn(np.zeros((0, W.C, 4, 5))).shape == (0, W.C, 4, 5)
        stateless = nn.SyncBatchNorm(W.C, track_running_stats=False, dtype="float64")
        y = stateless(d["x"][:2]).numpy()  # the global batch: these 2 samples and the other rank's 8
    finally:
        set_collective(old)
    ref = _torch_bn(d)
    ref(torch.from_numpy(d["x"]))
    close(bn.running_mean.numpy(), ref.running_mean.numpy(), "running_mean")
    close(bn.running_var.numpy(), ref.running_var.numpy(), "running_var")
    both = np.concatenate([d["x"][:2], d["x"]])
    want = torch.nn.functional.batch_norm(torch.from_numpy(both), None, None, training=True).numpy()[:2]
    close(y, want, "output without running statistics")

"""avalon.optim.swa_utils against torch.optim.swa_utils, in float64 on random data: an SWA run (SGD, a
small MLP with batch norm, a DataLoader, SWALR after swa_start, update_parameters each epoch, update_bn
at the end), an EMA of weights and buffers updated every step eagerly and inside a compiled step, the
averaging functions, state dicts both ways, SWALR's rates, update_bn's restoring of modes and momenta,
deep copies, and torch's errors."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from torch.optim import swa_utils as tswa

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F
from avalon.optim import swa_utils
from avalon.optim.swa_utils import SWALR, AveragedModel
from avalon.utils.data import DataLoader, TensorDataset

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def mlp(lib):
    return lib.Sequential(lib.Linear(3, 6), lib.BatchNorm1d(6), lib.Tanh(), lib.Linear(6, 4), lib.BatchNorm1d(4),
                          lib.ReLU(), lib.Linear(4, 2))


def pair(make=mlp, seed: int = 0):
    """torch's model in float64 and Avalon's with its weights."""
    torch.manual_seed(seed)
    theirs = make(torch.nn).double()
    ours = make(nn).to(av.float64)
    nn.load_state_dict(ours, theirs.state_dict())
    return ours, theirs


def same_state(ours, theirs, tol: float = 1e-10) -> None:
    """Equal state dicts: the same keys in the same order, values within `tol` relative to the largest
    element (or 1e-4), integers (n_averaged, num_batches_tracked) exactly."""
    sd = theirs.state_dict()
    mine = ours.state_dict()
    assert list(mine) == list(sd)
    for k, v in mine.items():
        a, b = v.numpy(), sd[k].detach().numpy()
        if b.dtype.kind in "iu":
            assert a.dtype.kind in "iu" and np.array_equal(a, b), (k, a, b)
        else:
            assert np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-4) <= tol, k


def compiled(fn, mode: str):
    return fn if mode == "eager" else av.compile(fn, backend=mode)


def loss_of(F_):
    return lambda model, x, y: F_.mse_loss(model(x), y)


def sgd_step(model, opt, x, y):
    loss, grads = av.value_and_grad(loss_of(F))(model, x, y)
    opt.step(grads)
    return loss


def ema_step(model, ema, opt, x, y):
    loss, grads = av.value_and_grad(loss_of(F))(model, x, y)
    opt.step(grads)
    ema.update_parameters(model)
    return loss


def data(seed: int, n: int = 12):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)), rng.standard_normal((n, 2))


# -- the SWA recipe -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_swa_run_with_swalr_and_update_bn_matches_torch(mode):
    ours, theirs = pair()
    xs, ys = data(1)
    loader = DataLoader(TensorDataset(av.tensor(xs), av.tensor(ys)), batch_size=4)
    tloader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(T(xs), T(ys)), batch_size=4)
    opt = optim.SGD(ours.parameters(), lr=0.2, momentum=0.5, weight_decay=1e-3)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.2, momentum=0.5, weight_decay=1e-3)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=6)
    swa_model, tswa_model = AveragedModel(ours), tswa.AveragedModel(theirs)
    swa_sched = SWALR(opt, swa_lr=0.05, anneal_epochs=2, anneal_strategy="cos")
    tswa_sched = tswa.SWALR(topt, swa_lr=0.05, anneal_epochs=2, anneal_strategy="cos")
    step = compiled(sgd_step, mode)
    swa_start = 1
    for epoch in range(5):
        for (x, y), (tx, ty) in zip(loader, tloader, strict=True):
            topt.zero_grad()
            tl = loss_of(TF)(theirs, tx, ty)
            tl.backward()
            topt.step()
            loss = step(ours, opt, x, y)
            assert rel(loss, tl) < 1e-12, epoch
        if epoch > swa_start:
            swa_model.update_parameters(ours)
            tswa_model.update_parameters(theirs)
            swa_sched.step()
            tswa_sched.step()
        else:
            sched.step()
            tsched.step()
        assert swa_sched.get_last_lr() == pytest.approx(tswa_sched.get_last_lr(), rel=1e-15, abs=0)
        assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-15, abs=0)
        same_state(ours, theirs)
        same_state(swa_model, tswa_model)
    assert int(swa_model.n_averaged) == 3
    swa_utils.update_bn(loader, swa_model)
    tswa.update_bn(tloader, tswa_model)
    same_state(swa_model, tswa_model)  # the statistics of the averaged weights, cumulative over the loader
    bn = swa_model.module[1]
    assert bn.momentum == 0.1 and bn.training and int(bn.num_batches_tracked) == 3
    swa_model.eval()
    tswa_model.eval()
    with av.no_grad(), torch.no_grad():
        assert rel(swa_model(av.tensor(xs)), tswa_model(T(xs))) < 1e-10
    if mode != "eager":
        assert step.cache_info().misses == 1


# -- EMA of weights and buffers, every step, eagerly and compiled ----------------------------------

@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_ema_of_weights_and_buffers_every_step_matches_torch(mode):
    ours, theirs = pair()
    ema = AveragedModel(ours, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.75), use_buffers=True)
    tema = tswa.AveragedModel(theirs, multi_avg_fn=tswa.get_ema_multi_avg_fn(0.75), use_buffers=True)
    opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, nesterov=True)  # (Adam would turn the roundoff
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, nesterov=True)  # gradient of a bias before
    # batch norm, zero in exact arithmetic, into lr-sized steps of either sign)
    step = compiled(ema_step, mode)
    rng = np.random.default_rng(2)
    for it in range(4):
        x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
        topt.zero_grad()
        tl = loss_of(TF)(theirs, T(x), T(y))
        tl.backward()
        topt.step()
        tema.update_parameters(theirs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing captured or baked in while tracing
            loss = step(ours, ema, opt, av.tensor(x), av.tensor(y))
        assert rel(loss, tl) < 1e-12, it
        assert int(ema.n_averaged) == it + 1
        same_state(ours, theirs)
        same_state(ema, tema)  # num_batches_tracked averaged too, truncated as torch's copy_
    if mode != "eager":
        assert step.cache_info().misses == 1  # the first call (a copy) and the later ones share one trace
    assert ema.module[0].weight is not ours[0].weight


def perturb(ours, theirs, rng) -> None:
    """The same random change to both models' parameters and buffers (a training step stand-in)."""
    for p, tp in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
        if tp.dtype.is_floating_point:
            d = rng.standard_normal(tp.shape)
            tp.data.add_(T(d))
            p.add_(av.tensor(d))
        else:
            tp.add_(3)
            p.add_(3)


AVERAGES = {
    "swa": ({}, {}),
    "swa_avg_fn": ({"avg_fn": swa_utils.get_swa_avg_fn()}, {"avg_fn": tswa.get_swa_avg_fn()}),
    "swa_multi": ({"multi_avg_fn": swa_utils.get_swa_multi_avg_fn()}, {"multi_avg_fn": tswa.get_swa_multi_avg_fn()}),
    "ema_avg_fn": ({"avg_fn": swa_utils.get_ema_avg_fn(0.6)}, {"avg_fn": tswa.get_ema_avg_fn(0.6)}),
    "ema_multi": ({"multi_avg_fn": swa_utils.get_ema_multi_avg_fn(0.6)},
                  {"multi_avg_fn": tswa.get_ema_multi_avg_fn(0.6)}),
    "custom": ({"avg_fn": lambda a, m, n: a + (m - a) * 2 / (n + 2)}, {"avg_fn": lambda a, m, n: a + (m - a) * 2 / (n + 2)}),
}


@pytest.mark.parametrize("use_buffers", [False, True])
@pytest.mark.parametrize("kind", list(AVERAGES))
def test_averaging_functions_match_torch(kind, use_buffers):
    """Each averaging rule, over parameters only (buffers then follow the model) or buffers too.
    torch's SWA over lists (`_foreach_lerp_` with weight 1 / (n + 1), float32 here as in torch) cannot
    average integer buffers; Avalon says so with torch's error."""
    ours, theirs = pair(seed=3)
    kw, tkw = AVERAGES[kind]
    avg, tavg = AveragedModel(ours, use_buffers=use_buffers, **kw), tswa.AveragedModel(theirs, use_buffers=use_buffers,
                                                                                        **tkw)
    rng = np.random.default_rng(3)
    for _ in range(4):
        perturb(ours, theirs, rng)
        if kind == "swa_multi" and use_buffers and int(avg.n_averaged) > 0:
            with pytest.raises(RuntimeError, match="Integer division with addcdiv is no longer supported"):
                tavg.update_parameters(theirs)
            with pytest.raises(RuntimeError, match="Integer division with addcdiv is no longer supported"):
                avg.update_parameters(ours)
            return
        avg.update_parameters(ours)
        tavg.update_parameters(theirs)
        same_state(avg, tavg, 1e-13)


@pytest.mark.parametrize("kind", ["custom", "swa_buffers"])
def test_averages_inside_a_compiled_step(kind):
    """A custom avg_fn reading the count (buffers copied from the model), and the default running mean
    of weights and buffers (num_batches_tracked truncated to an integer inside the graph)."""
    ours, theirs = pair(seed=4)
    fn = lambda a, m, n: a * 0.5 + m * 0.5 + 0.01 * n  # noqa: E731
    kw = {"avg_fn": fn} if kind == "custom" else {"use_buffers": True}
    ema, tema = AveragedModel(ours, **kw), tswa.AveragedModel(theirs, **kw)
    opt, topt = optim.SGD(ours.parameters(), lr=0.1), torch.optim.SGD(theirs.parameters(), lr=0.1)
    step = av.compile(ema_step, backend="numpy")
    rng = np.random.default_rng(4)
    for _ in range(3):
        x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
        topt.zero_grad()
        loss_of(TF)(theirs, T(x), T(y)).backward()
        topt.step()
        tema.update_parameters(theirs)
        step(ours, ema, opt, av.tensor(x), av.tensor(y))
        same_state(ema, tema)
    assert step.cache_info().misses == 1


def test_averaged_model_captured_instead_of_passed_is_a_clear_error():
    ours, _ = pair()
    ema = AveragedModel(ours)
    opt = optim.SGD(ours.parameters(), lr=0.1)

    def step(model, opt, x, y):
        sgd_step(model, opt, x, y)
        ema.update_parameters(model)

    with pytest.raises(RuntimeError, match="needs the AveragedModel as an argument"):
        av.compile(step, backend="numpy")(ours, opt, av.randn(4, 3, dtype=av.float64), av.randn(4, 2, dtype=av.float64))
    assert int(ema.n_averaged) == 0


# -- state dicts -------------------------------------------------------------------------------------

def test_state_dict_keys_values_and_loading_torchs():
    ours, theirs = pair(seed=5)
    avg = AveragedModel(ours, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True)
    tavg = tswa.AveragedModel(theirs, multi_avg_fn=tswa.get_ema_multi_avg_fn(0.9), use_buffers=True)
    assert list(avg.state_dict())[:3] == ["n_averaged", "module.0.weight", "module.0.bias"]
    same_state(avg, tavg)
    rng = np.random.default_rng(5)
    for _ in range(2):  # torch's run goes on; Avalon's model loads its averages and continues
        perturb(ours, theirs, rng)
        tavg.update_parameters(theirs)
    ours2, _ = pair(seed=6)
    avg2 = AveragedModel(ours2, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True)
    avg2.load_state_dict(tavg.state_dict())
    same_state(avg2, tavg, 0)
    assert int(avg2.n_averaged) == 2
    nn.load_state_dict(ours2, theirs.state_dict())
    perturb(ours2, theirs, rng)
    avg2.update_parameters(ours2)
    tavg.update_parameters(theirs)
    same_state(avg2, tavg, 1e-14)
    tavg.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in avg2.state_dict().items()})  # and back
    same_state(avg2, tavg, 0)


def test_device_argument_and_forward():
    ours, theirs = pair(seed=7)
    avg, tavg = AveragedModel(ours, device="cpu"), tswa.AveragedModel(theirs, device="cpu")
    assert avg.n_averaged.dtype == av.int64 and avg.n_averaged.shape == ()
    x = np.random.default_rng(7).standard_normal((4, 3))
    avg.eval()
    tavg.eval()
    with torch.no_grad():
        assert rel(avg(av.tensor(x)), tavg(T(x))) < 1e-13
    with pytest.raises(AssertionError, match="Only one of avg_fn and multi_avg_fn should be provided"):
        AveragedModel(ours, avg_fn=swa_utils.get_swa_avg_fn(), multi_avg_fn=swa_utils.get_swa_multi_avg_fn())


# -- SWALR ----------------------------------------------------------------------------------------------

def two_groups(lib, lr=(0.3, 0.07)):
    a, b = lib.Linear(2, 2), lib.Linear(2, 1)
    if lib is torch.nn:
        return torch.optim.SGD([{"params": a.parameters()}, {"params": b.parameters(), "lr": lr[1]}], lr=lr[0])
    return optim.SGD([{"params": a.named_parameters(prefix="a")}, {"params": b.named_parameters(prefix="b"),
                                                                    "lr": lr[1]}], lr=lr[0])


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("anneal_epochs", [0, 1, 4])
@pytest.mark.parametrize("swa_lr", [0.05, [0.05, 0.2]])
def test_swalr_rates_match_torch(strategy, anneal_epochs, swa_lr):
    opt, topt = two_groups(nn), two_groups(torch.nn)
    s = SWALR(opt, swa_lr=swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=strategy)
    ts = tswa.SWALR(topt, swa_lr=swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=strategy)
    seen = []
    for _ in range(8):
        assert s.get_last_lr() == ts.get_last_lr()  # to the last bit
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
        assert [g["swa_lr"] for g in opt.param_groups] == [g["swa_lr"] for g in topt.param_groups]
        seen.append(s.get_last_lr())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (scheduler before optimizer: no optimizer here)
            s.step()
            ts.step()
    want = swa_lr if isinstance(swa_lr, list) else [swa_lr, swa_lr]
    assert seen[-1] == pytest.approx(want, rel=1e-12)


def test_swalr_state_dict_round_trip_and_compiled_step_reads_its_rate():
    opt = two_groups(nn)
    opt.step_count.fill_(1)  # (as after an optimizer step: no warning about the order of the calls)
    s = SWALR(opt, swa_lr=0.01, anneal_epochs=3, anneal_strategy="linear")
    s.step()
    state = s.state_dict()
    assert "anneal_func" not in state and "optimizer" not in state and state["_anneal_strategy"] == "linear"
    opt2 = two_groups(nn)
    s2 = SWALR(opt2, swa_lr=0.01, anneal_epochs=3, anneal_strategy="cos")
    s2.load_state_dict(state)
    assert s2.anneal_func is SWALR._linear_anneal
    for group, g2 in zip(opt.param_groups, opt2.param_groups):
        g2["lr"] = group["lr"]
    s.step()
    s2.step()
    assert s.get_last_lr() == s2.get_last_lr()
    with pytest.raises(RuntimeError, match="inside a traced function"):
        av.compile(lambda o: s.step() or av.tensor(0.0), backend="numpy")(opt)


def torch_error(fn) -> tuple[type, str]:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - torch's exception, whatever it is
        return type(e), str(e)
    raise AssertionError("torch raised nothing")


@pytest.mark.parametrize("kwargs", [
    {"swa_lr": 0.1, "anneal_strategy": "exp"},
    {"swa_lr": [0.1, 0.2, 0.3]},
    {"swa_lr": 0.1, "anneal_epochs": -1},
    {"swa_lr": 0.1, "anneal_epochs": 2.0},
])
def test_swalr_bad_arguments_raise_torchs_errors(kwargs):
    kind, msg = torch_error(lambda: tswa.SWALR(two_groups(torch.nn), **kwargs))
    with pytest.raises(kind) as e:
        SWALR(two_groups(nn), **kwargs)
    assert str(e.value) == msg


@pytest.mark.parametrize("get", ["get_ema_multi_avg_fn", "get_ema_avg_fn"])
@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_bad_decay_raises_torchs_error(get, decay):
    kind, msg = torch_error(lambda: getattr(tswa, get)(decay))
    with pytest.raises(kind) as e:
        getattr(swa_utils, get)(decay)
    assert str(e.value) == msg


# -- update_bn --------------------------------------------------------------------------------------

def test_update_bn_restores_modes_and_momenta_and_takes_plain_batches():
    ours, theirs = pair(seed=8)
    ours[1].momentum, theirs[1].momentum = 0.3, 0.3
    ours.eval()
    theirs.eval()
    xs, _ = data(8, n=10)
    batches = [av.tensor(xs[i:i + 4]) for i in range(0, 10, 4)]  # bare tensors, a short last batch
    swa_utils.update_bn(batches, ours)
    tswa.update_bn([T(xs[i:i + 4]) for i in range(0, 10, 4)], theirs)
    same_state(ours, theirs)
    assert not ours.training and not ours[1].training and not ours[4].training
    assert (ours[1].momentum, ours[4].momentum) == (0.3, 0.1)
    swa_utils.update_bn(batches, nn.Sequential(nn.Linear(3, 2)).to(av.float64))  # no batch norm: nothing to do


class Plain:
    """A model without a base class: tensors and layers as attributes."""

    def __init__(self, rng):
        self.w = av.tensor(rng.standard_normal((3, 5)))
        self.bn = nn.BatchNorm1d(5).to(av.float64)
        self.head = [nn.Linear(5, 2).to(av.float64)]

    def __call__(self, x):
        return self.head[0](F.relu(self.bn(x @ self.w)))


def test_plain_object_models_deepcopy_average_and_update_bn():
    rng = np.random.default_rng(9)
    model = Plain(rng)
    model.bn.eval()
    model.head[0].bias.requires_grad_(False)
    avg = AveragedModel(model)
    assert avg.module.w is not model.w and avg.module.bn.weight is not model.bn.weight
    assert not avg.module.head[0].bias.requires_grad and avg.module.head[0].weight.requires_grad  # as torch's deepcopy
    w = model.w.numpy().copy()
    model.w.add_(1.0)
    assert np.array_equal(avg.module.w.numpy(), w)  # independent tensors
    avg.update_parameters(model)  # the first call copies
    assert rel(avg.module.w, model.w) == 0
    w0 = model.w.numpy().copy()
    model.w.mul_(3.0)
    avg.update_parameters(model)
    assert rel(avg.module.w, (w0 + 3 * w0) / 2) < 1e-15
    assert list(avg.state_dict())[:2] == ["n_averaged", "module.w"]
    xs = rng.standard_normal((6, 3))
    swa_utils.update_bn([(av.tensor(xs), None)], avg.module)  # (the AveragedModel, in training mode, would
    h = xs @ avg.module.w.numpy()
    assert rel(avg.module.bn.running_mean, h.mean(0)) < 1e-13
    assert rel(avg.module.bn.running_var, h.var(0, ddof=1)) < 1e-13
    assert not avg.module.bn.training  # leave every module training, as torch's `model.train(was_training)`)
    assert avg.module.head[0].training  # each module back in its own mode: the model has no `training`


def test_deepcopy_of_a_module_gives_independent_tensors_and_keeps_views():
    ours, _ = pair(seed=10)
    ours[0].bias.requires_grad_(False)
    ours.first_row = ours[0].weight[0]  # a view held by the model
    c = copy.deepcopy(ours)
    for (k, a), (_, b) in zip(ours.state_dict().items(), c.state_dict().items(), strict=True):
        assert a is not b and np.array_equal(a.numpy(), b.numpy()), k
    assert not c[0].bias.requires_grad and c[0].weight.requires_grad
    c[0].weight.mul_(2.0)
    assert rel(c.first_row, 2 * ours.first_row) == 0  # the copy's view is of the copy's weight
    assert rel(ours[0].weight[0], ours.first_row) == 0

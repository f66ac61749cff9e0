"""Silent failures, round 3 (after test_silent_failures_2.py): optimizers' state dicts, data loading,
initializers, gradient clipping in float16, module registration and class targets. Each case is a
misuse torch refuses that Avalon ran (or a value Avalon got wrong) with no error; torch is the oracle."""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
import torch.utils.data as TD
from helpers import torch_raises

import avalon as av
import avalon.nn.functional as F
import avalon.utils.data as AD
from avalon import nn, optim
from avalon.nn import init

# -- optimizers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ["SGD", "Adam", "Rprop"])
def test_optimizer_state_of_fewer_groups_is_refused(cls: str) -> None:
    """A one-group checkpoint loaded into a two-group optimizer left the second group's rate as
    constructed (the flat state dict simply lacked its keys)."""
    tm = torch.nn.Linear(3, 2)
    torch_raises(lambda: getattr(torch.optim, cls)([{"params": [tm.weight]}, {"params": [tm.bias]}], lr=0.1)
                 .load_state_dict(getattr(torch.optim, cls)(tm.parameters(), lr=0.1).state_dict()))
    m = nn.Linear(3, 2)
    saved = getattr(optim, cls)(m, lr=0.5).state_dict()
    two = getattr(optim, cls)([{"params": [("weight", m.weight)]}, {"params": [("bias", m.bias)]}], lr=0.1)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        two.load_state_dict(saved)
    assert two.param_groups[0]["lr"] == pytest.approx(0.1)  # nothing was written
    two.load_state_dict(two.state_dict())  # its own round trip still loads


# -- data loading -----------------------------------------------------------------------------------

def test_collate_of_ints_and_floats_is_float() -> None:
    """[1, 2.5] collated to int64 [1, 2]: the first sample's type decided, truncating the rest."""
    want = TD.default_collate([1, 2.5])
    got = AD.default_collate([1, 2.5])
    assert got.dtype == av.float32 and str(want.dtype) == "torch.float32"
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    (a, b), = list(AD.DataLoader([(1, 2), (2.5, 3)], batch_size=2))
    assert a.dtype == av.float32 and b.dtype == av.int64
    assert AD.default_collate([True, False]).dtype == av.bool_ and AD.default_collate([1, 2]).dtype == av.int64


@pytest.mark.parametrize("make", [
    lambda L: L.RandomSampler(range(5), replacement=1),
    lambda L: L.WeightedRandomSampler([1.0, 2.0], 0),
    lambda L: L.WeightedRandomSampler([[1.0, 2.0]], 1),
    lambda L: L.WeightedRandomSampler([1.0, 2.0], 1, replacement=0),
    lambda L: L.BatchSampler(range(7), 2, "no"),
    lambda L: L.DataLoader(list(range(4)), prefetch_factor=2),
    lambda L: L.DataLoader(list(range(4)), persistent_workers=True),
])
def test_sampler_and_loader_arguments_torch_refuses(make: Callable) -> None:
    """Each was taken: a truthy string as drop_last, a 2-d weight table flattened, worker options
    without workers ignored."""
    kind = torch_raises(lambda: make(TD))
    with pytest.raises(kind):
        make(AD)


# -- initializers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fill", [init.uniform_, init.normal_, init.trunc_normal_, init.xavier_uniform_,
                                  init.kaiming_normal_, init.orthogonal_, lambda t: init.sparse_(t, 0.5)])
def test_random_initializers_refuse_integer_tensors(fill: Callable) -> None:
    """Random floats cast into an int64 weight: mostly zeros, silently."""
    torch_raises(lambda: torch.nn.init.uniform_(torch.zeros(3, 4, dtype=torch.int64)))
    for dtype in (av.int64, av.bool_):
        with pytest.raises(NotImplementedError, match="floating-point tensor"):
            fill(av.zeros(3, 4, dtype=dtype))
    init.constant_(av.zeros(3, dtype=av.int64), 7)  # deterministic fills of integers stay allowed


def test_trunc_normal_of_an_empty_or_distant_interval() -> None:
    """a > b looped forever, and a mean far outside [a, b] took ages (rejection sampling)."""
    torch_raises(lambda: torch.nn.init.trunc_normal_(torch.zeros(3), a=1.0, b=-1.0))
    with pytest.raises(RuntimeError, match=r"\[a, b\] = \[1.0, -1.0\] is empty"):
        init.trunc_normal_(av.zeros(3), a=1.0, b=-1.0)
    t = av.zeros(2000)
    with pytest.warns(UserWarning, match="mean is more than 2 std"):
        init.trunc_normal_(t, mean=50.0, a=-2.0, b=2.0)
    v = t.numpy()
    assert v.min() >= -2.0 and v.max() <= 2.0 and v.mean() > 1.9  # the density piles up at b, as torch's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tt = torch.nn.init.trunc_normal_(torch.zeros(20000), mean=3.0, a=-2.0, b=2.0)
        ours = init.trunc_normal_(av.zeros(20000), mean=3.0, a=-2.0, b=2.0).numpy()
    assert abs(ours.mean() - float(tt.mean())) < 0.05 and abs(ours.std() - float(tt.std())) < 0.05


# -- gradient clipping and norms in float16 --------------------------------------------------------------

def test_float16_norm_sums_in_float32() -> None:
    """300**2 overflows float16: the norm was inf and clip_grad_norm_ zeroed every gradient."""
    t = torch.tensor([300.0, 400.0], dtype=torch.float16)
    x = av.tensor([300.0, 400.0], dtype=av.float16)
    assert float(torch.linalg.vector_norm(t)) == 500.0
    for got in (av.linalg.vector_norm(x), x.norm(), nn.utils.get_total_norm([x])):
        assert got.dtype == av.float16 and float(got) == 500.0
    grads = {"w": x}
    total = nn.utils.clip_grad_norm_(grads, max_norm=1.0)
    tp = torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))
    tp.grad = t.clone()
    want = torch.nn.utils.clip_grad_norm_([tp], max_norm=1.0)
    assert float(total) == float(want)
    np.testing.assert_allclose(grads["w"].numpy(), tp.grad.numpy(), rtol=1e-3)


# -- modules ----------------------------------------------------------------------------------------

def test_train_mode_must_be_a_bool() -> None:
    """train("no") put the model in training mode ("no" is truthy)."""
    torch_raises(lambda: torch.nn.Linear(2, 2).train("no"))
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).eval()
    with pytest.raises(ValueError, match="training mode is expected to be boolean"):
        m.train("no")
    with pytest.raises(ValueError, match="training mode is expected to be boolean"):
        nn.train(m, 1)
    assert not m.training and not m[1].training
    assert m.train().training and not m.train(False).training


def test_add_module_name_and_kind() -> None:
    """add_module("a.b", layer) made an attribute no dotted name reaches; add_module("a", 3) kept 3."""
    torch_raises(lambda: torch.nn.Module().add_module("a.b", torch.nn.ReLU()))
    torch_raises(lambda: torch.nn.Module().add_module("a", 3))
    with pytest.raises(KeyError, match="without '.'"):
        nn.Module().add_module("a.b", nn.ReLU())
    with pytest.raises(TypeError, match="not a Module subclass"):
        nn.Module().add_module("a", 3)
    with pytest.raises(TypeError, match="should be a string"):
        nn.Module().add_module(1, nn.ReLU())
    m = nn.Module()
    m.add_module("fc", nn.Linear(2, 3))
    m.add_module("none", None)
    assert [k for k, _ in m.named_parameters()] == ["fc.weight", "fc.bias"]


# -- losses -----------------------------------------------------------------------------------------

def test_uint8_class_targets() -> None:
    """torch takes Byte class targets; Avalon failed inside the loss with one_hot's dtype error."""
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 1], np.uint8)
    for ours, theirs in ((F.cross_entropy, TF.cross_entropy), (F.nll_loss, TF.nll_loss)):
        np.testing.assert_allclose(ours(av.tensor(x), av.tensor(y)).numpy(),
                                   theirs(torch.tensor(x), torch.tensor(y)).numpy(), rtol=1e-6)


@pytest.mark.parametrize("form", ["matmul", "mm", "@ int", "linear", "conv2d", "einsum", "addmm input", "baddbmm input"])
def test_contractions_want_one_dtype_as_torch(form):
    """numpy promotes, torch refuses: an f32 model fed an f64 batch ran in f64 (twice the memory, f64
    outputs) and f32 @ i64 computed what torch rejects."""
    calls = {
        "matmul": lambda L: L.matmul(L.ones(2, 3), L.ones(3, 2, dtype=L.float64)),
        "mm": lambda L: L.mm(L.ones(2, 3, dtype=L.float64), L.ones(3, 2)),
        "@ int": lambda L: L.ones(2, 3) @ L.ones(3, 2, dtype=L.int64),
        "linear": lambda L: L.nn.functional.linear(L.ones(2, 3), L.ones(2, 3, dtype=L.float64)),
        "conv2d": lambda L: L.nn.functional.conv2d(L.ones(1, 1, 4, 4), L.ones(1, 1, 3, 3, dtype=L.float64)),
        "einsum": lambda L: L.einsum("ij,jk->ik", L.ones(2, 3), L.ones(3, 2, dtype=L.float64)),
        "addmm input": lambda L: L.addmm(L.ones(2, 2, dtype=L.float64), L.ones(2, 3), L.ones(3, 2)),
        "baddbmm input": lambda L: L.baddbmm(L.ones(1, 2, 2, dtype=L.float64), L.ones(1, 2, 3), L.ones(1, 3, 2)),
    }
    with pytest.raises(RuntimeError):
        calls[form](torch)
    with pytest.raises(TypeError, match="same dtype.*cast one with"):
        calls[form](av)


def test_dtypes_are_one_object_through_deepcopy_and_pickle():
    """A deepcopied model (an EMA, a target network) held equal copies of its dtypes, and `is`
    comparisons (the contraction rule above among them) told f64 from f64."""
    import copy
    import pickle
    for d in (av.float32, av.float64, av.int64, av.bool):
        assert copy.deepcopy(d) is d and copy.copy(d) is d and pickle.loads(pickle.dumps(d)) is d
    m = copy.deepcopy(av.nn.Linear(3, 2).double())
    assert m.weight.dtype is av.float64
    assert m(av.ones(1, 3, dtype=av.float64)).dtype is av.float64

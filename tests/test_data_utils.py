"""`avalon.utils.data` against torch.utils.data: the same batches in the same order (shuffle=False),
the same collation (structure, values, dtypes), torch's lengths and argument errors; shuffling
repeatable under av.manual_seed; and a compiled training loop over a DataLoader that traces once."""
import logging
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import avalon as av
from avalon import nn, optim
from avalon.utils import data as aud


def as_np(x):
    return x.numpy() if isinstance(x, av.Tensor) else x.detach().numpy()


def same_batch(a, t):
    """An Avalon batch and a torch batch: one structure, equal values and dtypes."""
    if isinstance(t, torch.Tensor):
        assert isinstance(a, av.Tensor), type(a)
        np.testing.assert_array_equal(as_np(a), as_np(t))
        assert str(a.dtype.np) == str(t.numpy().dtype), (a.dtype, t.dtype)
    elif isinstance(t, dict):
        assert type(a) is type(t) and a.keys() == t.keys()
        for k in t:
            same_batch(a[k], t[k])
    elif isinstance(t, (list, tuple)):
        assert type(a) is type(t) and len(a) == len(t), (type(a), type(t))
        for x, y in zip(a, t):
            same_batch(x, y)
    else:
        assert a == t


RNG = np.random.default_rng(0)
X = RNG.standard_normal((10, 3)).astype(np.float32)
Y = RNG.integers(0, 4, 10)


@pytest.mark.parametrize("batch_size,drop_last", [(3, False), (3, True), (5, False), (1, False), (16, False)])
def test_tensor_dataset_batches_match_torch(batch_size, drop_last):
    ours = aud.DataLoader(aud.TensorDataset(av.tensor(X), av.tensor(Y)), batch_size=batch_size, drop_last=drop_last)
    theirs = tud.DataLoader(tud.TensorDataset(torch.tensor(X), torch.tensor(Y)), batch_size=batch_size,
                            drop_last=drop_last)
    assert len(ours) == len(theirs)
    a, t = list(ours), list(theirs)
    assert len(a) == len(t)
    for x, y in zip(a, t):
        same_batch(x, y)


class Samples(aud.Dataset):
    """Samples of every kind default_collate takes: tensors, arrays, numbers, strings, dicts, tuples."""

    def __init__(self, lib):
        self.lib = lib

    def __len__(self):
        return 7

    def __getitem__(self, i):
        t = av.tensor if self.lib is av else torch.tensor
        Point = namedtuple("Point", "x y")
        return {"image": t(X[i]), "array": X[i] * 2, "label": int(Y[i]), "weight": float(i) / 2, "flag": i % 2 == 0,
                "np_scalar": np.float32(i), "name": f"s{i}", "pair": (i, t(np.int32(i))),
                "point": Point(np.int64(i), [1.5, i])}


def test_default_collation_matches_torch():
    ours = list(aud.DataLoader(Samples(av), batch_size=3))
    theirs = list(tud.DataLoader(Samples(torch), batch_size=3))
    for a, t in zip(ours, theirs):
        assert type(a["point"]).__name__ == "Point"
        a["point"], t["point"] = list(a["point"]), list(t["point"])
        same_batch(a, t)
    # without batching: numpy arrays and numbers converted, containers kept (tuples become lists)
    a = next(iter(aud.DataLoader(Samples(av), batch_size=None)))
    t = next(iter(tud.DataLoader(Samples(torch), batch_size=None)))
    assert isinstance(a["array"], av.Tensor) and a["label"] == t["label"] and isinstance(a["pair"], list)
    # uint8 images keep their dtype, as torch's; uint16 (no Avalon twin) widens to int32
    imgs = aud.TensorDataset(np.arange(12, dtype=np.uint8).reshape(4, 3))
    (b,) = next(iter(aud.DataLoader(imgs, batch_size=4)))
    assert b.dtype == av.uint8 and b.numpy().tolist() == np.arange(12).reshape(4, 3).tolist()
    wide = aud.TensorDataset(np.arange(12, dtype=np.uint16).reshape(4, 3))
    assert next(iter(aud.DataLoader(wide, batch_size=4)))[0].dtype == av.int32


def test_shuffle_is_a_permutation_repeatable_under_manual_seed():
    ds = aud.TensorDataset(av.tensor(np.arange(20)))
    loader = aud.DataLoader(ds, batch_size=6, shuffle=True)

    def epoch():
        return np.concatenate([b[0].numpy() for b in loader]).tolist()
    av.manual_seed(7)
    first, second = epoch(), epoch()
    av.manual_seed(7)
    assert epoch() == first and epoch() == second
    assert sorted(first) == list(range(20)) and first != list(range(20)) and first != second
    g = np.random.default_rng(3)
    with_gen = [b[0].numpy().tolist() for b in aud.DataLoader(ds, batch_size=20, shuffle=True, generator=g)]
    assert with_gen == [np.random.default_rng(3).permutation(20).tolist()]
    with pytest.raises(TypeError, match="numpy Generator"):
        aud.DataLoader(ds, shuffle=True, generator=torch.Generator())


def test_random_split_subset_concat_match_torch_semantics():
    ds = aud.TensorDataset(av.tensor(np.arange(10)))
    av.manual_seed(0)
    parts = aud.random_split(ds, [0.3, 0.3, 0.4])
    assert [len(p) for p in parts] == [len(p) for p in tud.random_split(range(10), [0.3, 0.3, 0.4])]
    seen = sorted(int(p[i][0]) for p in parts for i in range(len(p)))
    assert seen == list(range(10))
    av.manual_seed(0)
    again = aud.random_split(ds, [0.3, 0.3, 0.4])
    assert [list(p.indices) for p in parts] == [list(p.indices) for p in again]
    assert [len(p) for p in aud.random_split(range(11), [0.5, 0.5])] == [6, 5]
    with pytest.raises(ValueError, match="Sum of input lengths"):
        aud.random_split(ds, [3, 3])

    sub = aud.Subset(list("abcdef"), [5, 0, 2])
    tsub = tud.Subset(list("abcdef"), [5, 0, 2])
    assert [sub[i] for i in range(3)] == [tsub[i] for i in range(3)] and len(sub) == len(tsub)
    cat = aud.ConcatDataset([list("abc"), list("de")])
    tcat = tud.ConcatDataset([list("abc"), list("de")])
    assert [cat[i] for i in range(-5, 5)] == [tcat[i] for i in range(-5, 5)]
    assert cat.cumulative_sizes == tcat.cumulative_sizes and len(cat) == 5
    assert isinstance(ds + ds, aud.ConcatDataset) and len(ds + ds) == 20
    loader = aud.DataLoader(aud.Subset(ds, [4, 2, 9]), batch_size=2)
    assert [b[0].numpy().tolist() for b in loader] == [[4, 2], [9]]


class Stream(aud.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter((np.float32(i), {"k": i}) for i in range(self.n))


class TorchStream(tud.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter((np.float32(i), {"k": i}) for i in range(self.n))


def test_iterable_dataset_batches_and_errors_match_torch():
    for bs, drop in ((3, False), (3, True), (None, False)):
        a, t = list(aud.DataLoader(Stream(7), batch_size=bs, drop_last=drop)), list(
            tud.DataLoader(TorchStream(7), batch_size=bs, drop_last=drop))
        assert len(a) == len(t)
        for x, y in zip(a, t):
            same_batch(x, y)
    with pytest.raises(ValueError, match="shuffle"):
        aud.DataLoader(Stream(3), shuffle=True)


def test_samplers_and_argument_errors():
    ds = aud.TensorDataset(av.tensor(np.arange(8)))
    bs = aud.BatchSampler(aud.SequentialSampler(ds), 3, drop_last=False)
    assert list(bs) == list(tud.BatchSampler(tud.SequentialSampler(range(8)), 3, False)) and len(bs) == 3
    loader = aud.DataLoader(ds, batch_sampler=[[7, 1], [0]])
    assert [b[0].numpy().tolist() for b in loader] == [[7, 1], [0]]
    loader = aud.DataLoader(ds, batch_size=4, sampler=[3, 2, 1, 0, 7])
    assert [b[0].numpy().tolist() for b in loader] == [[3, 2, 1, 0], [7]]
    av.manual_seed(1)
    picks = list(aud.WeightedRandomSampler([0.0, 1.0, 0.0, 3.0], 50))
    assert set(picks) <= {1, 3} and picks.count(3) > picks.count(1)
    assert sorted(aud.SubsetRandomSampler([2, 4, 6])) == [2, 4, 6]
    assert len(list(aud.RandomSampler(ds, replacement=True, num_samples=20))) == 20
    for kwargs in ({"sampler": [0], "shuffle": True}, {"batch_sampler": [[0]], "batch_size": 2},
                   {"batch_size": None, "drop_last": True}, {"num_workers": -1}):
        with pytest.raises(ValueError):
            tud.DataLoader(range(8), **kwargs)
        with pytest.raises(ValueError):
            aud.DataLoader(ds, **kwargs)


def test_num_workers_runs_in_process_with_one_note(caplog):
    ds = aud.TensorDataset(av.tensor(X))
    aud._noted.discard("workers")
    with caplog.at_level(logging.WARNING, logger="avalon.data"):
        a = [b[0].numpy() for b in aud.DataLoader(ds, batch_size=4, num_workers=2, pin_memory=True)]
        a2 = [b[0].numpy() for b in aud.DataLoader(ds, batch_size=4, num_workers=4)]
    b = [b[0].numpy() for b in aud.DataLoader(ds, batch_size=4)]
    assert all((x == y).all() and (x == z).all() for x, y, z in zip(a, a2, b))
    assert sum("calling process" in r.getMessage() for r in caplog.records) == 1
    assert aud.get_worker_info() is None


def test_compiled_training_loop_over_a_dataloader_traces_once_per_batch_shape():
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((50, 4)).astype(np.float32)
    ys = (xs @ np.array([1.0, -2.0, 0.5, 3.0], np.float32) + 0.1).reshape(-1, 1).astype(np.float32)
    ds = aud.TensorDataset(av.tensor(xs), av.tensor(ys))

    def step(model, opt, x, y):
        loss, grads = av.value_and_grad(lambda m, x, y: nn.functional.mse_loss(m(x), y))(model, x, y)
        opt.step(grads)
        return loss

    for drop_last, signatures in ((True, 1), (False, 2)):
        av.manual_seed(0)
        model = nn.Linear(4, 1)
        opt = optim.SGD(model, lr=0.1)
        compiled = av.compile(step, backend="numpy")
        losses = []
        for _ in range(5):
            losses += [float(compiled(model, opt, x, y)) for x, y in aud.DataLoader(ds, batch_size=16, shuffle=True,
                                                                                  drop_last=drop_last)]
        assert compiled.cache_info().entries == signatures and compiled.cache_info().misses == signatures
        assert losses[-1] < 0.05 * losses[0]


# -- torch's namespace helpers for data: numpy interop, seeds, default dtype, cuda, memory formats --------

def test_from_numpy_shares_memory_as_in_torch():
    a = np.zeros((2, 3), np.float32)
    x = av.from_numpy(a)
    a[0, 0] = 5.0
    assert x.numpy()[0, 0] == 5.0 and x.dtype == av.float32 and x.shape == (2, 3)
    x.add_(1.0)  # in place, eagerly and in a compiled function: the array changes, as with torch
    assert a[0, 0] == 6.0

    def bump(t):
        t.mul_(2.0)
        return t.sum()
    av.compile(bump, backend="numpy")(x)
    assert a[0, 0] == 12.0 and a[1, 2] == 2.0
    strided = np.arange(12.0).reshape(3, 4)[:, ::2]
    with pytest.warns(UserWarning, match="not C-contiguous"):  # no strides in Avalon: a copy, said so
        y = av.from_numpy(strided)
    np.testing.assert_array_equal(y.numpy(), strided)
    assert av.from_numpy(np.zeros(3, np.uint8)).dtype == av.uint8
    with pytest.raises(TypeError):
        av.from_numpy(np.zeros(3, np.uint16))
    with pytest.raises(TypeError):
        av.from_numpy([1, 2])


def test_as_tensor_copies_only_when_it_must():
    a = np.arange(4, dtype=np.int64)
    t = av.as_tensor(a)
    a[0] = 9
    assert t.numpy()[0] == 9 and t.dtype == av.int64
    f = av.as_tensor(a, dtype=av.float32)  # a conversion: a copy, as in torch
    a[1] = 7
    assert f.numpy()[1] == 1.0 and f.dtype == av.float32
    x = av.tensor([1.0, 2.0])
    assert av.as_tensor(x) is x and av.as_tensor(x, dtype=av.float64).dtype == av.float64
    assert av.as_tensor([1.0, 2.0]).dtype == av.float32 and av.as_tensor([1, 2]).dtype == av.int64
    assert av.as_tensor(torch.tensor([1.5])).numpy().tolist() == [1.5]


def test_seeds():
    av.manual_seed(123)
    assert av.initial_seed() == 123
    s = av.seed()
    assert av.initial_seed() == s and 0 <= s < 2 ** 63
    first = av.randn(5).numpy()
    av.manual_seed(s)
    assert np.array_equal(av.randn(5).numpy(), first)
    assert av.seed() != s


def test_default_dtype_and_devices_and_memory_formats():
    assert av.get_default_dtype() == av.float32
    av.set_default_dtype(av.float32)
    with pytest.raises(TypeError, match="float32 and float64"):  # float64 is taken: tests/test_default_dtype.py
        av.set_default_dtype(av.float16)
    assert av.cuda.is_available() == torch.cuda.is_available()
    assert av.cuda.device_count() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    av.cuda.manual_seed_all(3)
    av.cuda.synchronize()
    x = av.ones(1, 2, 3, 3)
    assert x.contiguous(memory_format=av.channels_last) is x
    assert x.to(memory_format=av.channels_last).shape == x.shape
    assert av.zeros_like(x, memory_format=av.preserve_format).shape == x.shape
    assert repr(av.contiguous_format) == "avalon.contiguous_format"

"""avalon.utils.data.DistributedSampler against torch's (the group's defaults, under two real
processes: tests/test_sync_batchnorm.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch.utils.data as tdata

from avalon.utils.data import DataLoader, DistributedSampler, TensorDataset


class Numbered:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def parts(n: int, replicas: int, **kw) -> list[list[int]]:
    return [list(DistributedSampler(Numbered(n), replicas, r, **kw)) for r in range(replicas)]


def torch_parts(n: int, replicas: int, **kw) -> list[list[int]]:
    return [list(tdata.DistributedSampler(Numbered(n), replicas, r, **kw)) for r in range(replicas)]


def test_importable_under_torchs_paths():
    from avalon.utils.data.distributed import DistributedSampler as from_torch_path
    assert from_torch_path is DistributedSampler
    import avalon.utils.data as data
    assert data.distributed.DistributedSampler is DistributedSampler


CASES = [(10, 3, False), (10, 3, True), (12, 4, False), (12, 4, True), (1, 3, False), (2, 5, False), (7, 1, True),
         (5, 2, True), (0, 2, False), (3, 7, True)]


@pytest.mark.parametrize("n,replicas,drop_last", CASES)
def test_unshuffled_indices_are_torchs(n, replicas, drop_last):
    ours = parts(n, replicas, shuffle=False, drop_last=drop_last)
    assert ours == torch_parts(n, replicas, shuffle=False, drop_last=drop_last)
    for r in range(replicas):
        s, t = DistributedSampler(Numbered(n), replicas, r, drop_last=drop_last), \
            tdata.DistributedSampler(Numbered(n), replicas, r, drop_last=drop_last)
        assert (len(s), s.num_samples, s.total_size) == (len(t), t.num_samples, t.total_size)


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (16, 4, False), (5, 8, False)])
def test_shuffled_parts_cover_the_dataset_and_follow_seed_and_epoch(n, replicas, drop_last):
    samplers = [DistributedSampler(Numbered(n), replicas, r, shuffle=True, seed=5, drop_last=drop_last)
                for r in range(replicas)]

    def epoch(e: int) -> list[list[int]]:
        for s in samplers:
            s.set_epoch(e)
        return [list(s) for s in samplers]

    first = epoch(0)
    want = torch_parts(n, replicas, shuffle=True, drop_last=drop_last)  # lengths and coverage as torch's
    assert [len(p) for p in first] == [len(p) for p in want]
    union = sorted({i for p in first for i in p})
    assert len(union) == len({i for p in want for i in p}) and set(union) <= set(range(n))
    if not drop_last:
        assert union == list(range(n))
    else:  # disjoint: each index read once per epoch at most (the dropped tail is random)
        assert sum(len(p) for p in first) == len(union)
    assert epoch(0) == first  # same seed and epoch: the same order
    assert epoch(1) != first  # another epoch: another order
    other = [list(DistributedSampler(Numbered(n), replicas, r, seed=6)) for r in range(replicas)]
    assert other != first  # another seed
    assert first != parts(n, replicas, shuffle=False, drop_last=drop_last)


def test_defaults_without_a_group_and_errors(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    s = DistributedSampler(Numbered(5), shuffle=False)
    assert (s.num_replicas, s.rank, list(s)) == (1, 0, [0, 1, 2, 3, 4])
    monkeypatch.setenv("WORLD_SIZE", "2")  # launched by torchrun, but no group: not the whole dataset per rank
    with pytest.raises(RuntimeError, match="avalon.distributed.init"):
        DistributedSampler(Numbered(5))
    assert len(DistributedSampler(Numbered(5), num_replicas=2, rank=1)) == 3
    with pytest.raises(ValueError, match="Invalid rank 2"):
        DistributedSampler(Numbered(5), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        DistributedSampler(Numbered(5), num_replicas=0, rank=0)


def test_works_as_a_data_loaders_sampler():
    x = np.arange(22, dtype=np.float32).reshape(11, 2)
    ds = TensorDataset(x, np.arange(11))
    seen = []
    for r in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=1)
        sampler.set_epoch(3)
        loader = DataLoader(ds, batch_size=4, sampler=sampler)
        batches = list(loader)
        assert len(loader) == len(batches) == 2 and [len(b[1]) for b in batches] == [4, 2]
        idx = np.concatenate([b[1].numpy() for b in batches])
        assert idx.tolist() == list(sampler)
        np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), x[idx])
        seen += idx.tolist()
    assert sorted(set(seen)) == list(range(11)) and len(seen) == 12  # one index repeated: the padding
    with pytest.raises(ValueError, match="mutually exclusive"):
        DataLoader(ds, sampler=DistributedSampler(ds, 2, 0), shuffle=True)

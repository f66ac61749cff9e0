"""nn.init formulas and every layer's default initialization follow torch's distributions
(checked by statistics: bounds and spread for uniform, standard deviation for normal)."""
import math

import numpy as np
import pytest
import torch

import avalon as av
from avalon import nn
from avalon.nn import init


@pytest.fixture(autouse=True)
def _seeded():
    av.manual_seed(0)  # statistics tests: deterministic, never flaky


def empty(*shape, dtype=np.float32):
    return av.Tensor(np.zeros(shape, dtype))


def assert_uniform(t, bound, tol=0.05):
    """Values within [-bound, bound], reaching close to both ends, with the uniform's std bound/sqrt(3)."""
    a = t.numpy() if isinstance(t, av.Tensor) else t
    assert np.abs(a).max() <= bound * (1 + 1e-6)
    if a.size >= 500:  # a big sample reaches near both ends
        assert a.max() > bound * 0.9 and a.min() < -bound * 0.9
    assert abs(a.std() / (bound / math.sqrt(3)) - 1) < tol
    assert abs(a.mean()) < bound * tol


def assert_normal(t, std, tol=0.05):
    a = t.numpy()
    assert abs(a.std() / std - 1) < tol
    assert abs(a.mean()) < std * tol
    assert np.abs(a).max() > 2.5 * std  # tails: not a uniform


def test_fans_match_torch():
    for shape in [(30, 20), (8, 4, 3, 3), (5, 7, 2)]:
        assert init._calculate_fan_in_and_fan_out(empty(*shape)) == \
            torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.kaiming_uniform_(empty(5))


@pytest.mark.parametrize("nl,param", [("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None),
                                      ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.2),
                                      ("leaky_relu", math.sqrt(5)), ("selu", None)])
def test_calculate_gain_matches_torch(nl, param):
    assert init.calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param))


def test_calculate_gain_rejects_unknown():
    with pytest.raises(ValueError):
        init.calculate_gain("swish")


def test_kaiming_and_xavier_formulas():
    av.manual_seed(0)
    fan_in, fan_out = 64 * 9, 128 * 9
    assert_uniform(init.kaiming_uniform_(empty(128, 64, 3, 3)), math.sqrt(2) * math.sqrt(3 / fan_in))  # a=0: gain sqrt(2)
    assert_uniform(init.kaiming_uniform_(empty(128, 64, 3, 3), mode="fan_out", nonlinearity="relu"),
                   math.sqrt(2) * math.sqrt(3 / fan_out))
    assert_uniform(init.kaiming_uniform_(empty(128, 64, 3, 3), a=math.sqrt(5)), 1 / math.sqrt(fan_in))
    assert_normal(init.kaiming_normal_(empty(128, 64, 3, 3), nonlinearity="relu"), math.sqrt(2 / fan_in))
    assert_normal(init.kaiming_normal_(empty(128, 64, 3, 3), mode="fan_out", nonlinearity="relu"),
                  math.sqrt(2 / fan_out))
    assert_uniform(init.xavier_uniform_(empty(300, 200), gain=2.0), 2.0 * math.sqrt(6 / 500))
    assert_normal(init.xavier_normal_(empty(300, 200)), math.sqrt(2 / 500))
    with pytest.raises(ValueError, match="Mode"):
        init.kaiming_normal_(empty(3, 3), mode="fan_avg")


def test_simple_fills_in_place():
    t = empty(50, 40)
    data = t.numpy()
    assert init.uniform_(t, -2, 3) is t and t.numpy() is data  # same storage
    assert data.min() >= -2 and data.max() < 3 and abs(data.mean() - 0.5) < 0.1
    assert_normal(init.normal_(t, 0.0, 0.3), 0.3)
    init.normal_(t, 5.0, 0.1)
    assert abs(data.mean() - 5) < 0.01
    init.constant_(t, 0.25)
    assert (data == 0.25).all()
    init.ones_(t)
    assert (data == 1).all()
    init.zeros_(t)
    assert not data.any()
    init.trunc_normal_(t, std=1.0, a=-0.5, b=0.5)
    assert data.min() >= -0.5 and data.max() <= 0.5
    i = av.tensor(np.zeros(3, np.int64))  # av.Tensor(array) is torch's legacy constructor: float32
    init.constant_(i, 7)
    assert i.dtype == av.int64 and (i.numpy() == 7).all()


def test_initializers_follow_manual_seed():
    av.manual_seed(3)
    a = init.normal_(empty(4, 4)).numpy().copy()
    av.manual_seed(3)
    assert np.array_equal(init.normal_(empty(4, 4)).numpy(), a)
    g = np.random.default_rng(1)
    b = init.uniform_(empty(3), generator=g).numpy().copy()
    assert np.array_equal(b, np.random.default_rng(1).uniform(0, 1, 3).astype(np.float32))


# -- default initialization of layers, against torch's distributions -------------------------------

def test_linear_and_conv_default_init():
    av.manual_seed(0)
    lin = nn.Linear(400, 300)
    assert_uniform(lin.weight, 1 / math.sqrt(400))
    assert_uniform(lin.bias, 1 / math.sqrt(400), tol=0.2)
    conv = nn.Conv2d(32, 64, 5, groups=2)
    assert conv.weight.shape == (64, 16, 5, 5)
    assert_uniform(conv.weight, 1 / math.sqrt(16 * 25))
    assert_uniform(conv.bias, 1 / math.sqrt(16 * 25), tol=0.3)
    assert nn.Linear(3, 2, bias=False).bias is None
    # the same spread as torch's own layers
    tl = torch.nn.Linear(400, 300)
    assert abs(lin.weight.numpy().std() / tl.weight.detach().numpy().std() - 1) < 0.05


def test_norm_embedding_and_rnn_default_init():
    av.manual_seed(0)
    bn = nn.BatchNorm2d(7)
    for name, v in [("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1), ("num_batches_tracked", 0)]:
        assert (nn.state_dict(bn)[name].numpy() == v).all(), name
    assert isinstance(bn.running_mean, av.Buffer) and bn.num_batches_tracked.dtype == av.int64
    ln = nn.LayerNorm((3, 4))
    assert (ln.weight.numpy() == 1).all() and not ln.bias.numpy().any()
    emb = nn.Embedding(500, 64, padding_idx=-1)
    assert emb.padding_idx == 499 and not emb.weight.numpy()[499].any()
    assert_normal(av.Tensor(emb.weight.numpy()[:499].copy()), 1.0)
    for cls, gates in [(nn.RNN, 1), (nn.LSTM, 4), (nn.GRU, 3)]:
        m = cls(50, 64, num_layers=2, bidirectional=True)
        assert m.weight_ih_l1_reverse.shape == (gates * 64, 128)
        for _, p in m.named_parameters():
            assert_uniform(p, 1 / math.sqrt(64), tol=0.3 if p.numel() < 1000 else 0.05)


def test_layer_dtype_and_parameter_kinds():
    m = nn.Linear(3, 2, dtype=av.float64)
    assert m.weight.dtype == av.float64
    bn = nn.BatchNorm1d(3)
    assert [n for n, _ in nn.named_parameters(bn)] == ["weight", "bias"]
    assert [n for n, _ in nn.named_buffers(bn)] == ["running_mean", "running_var", "num_batches_tracked"]
    with pytest.raises(TypeError):
        nn.Linear(3, 2, dtype=av.int32)

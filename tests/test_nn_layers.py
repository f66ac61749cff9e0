"""avalon.nn layers against torch.nn: same constructor, same state_dict keys, weights copied with
load_state_dict(torch_module.state_dict()), same forward; and every layer traces to a graph whose
interpretation equals the eager result."""
import numpy as np
import pytest
import torch
from helpers import T, rel

import avalon as av
from avalon import nn, tree
from avalon.compiler.execute import feed, run_traced
from avalon.trace import trace_call


def leaves(out):
    """The tensors of a (nested tuple) result, in order."""
    return [x for _, x in tree.flatten(out, "out")[0]]


def pair(name, *args, **kwargs):
    """The same layer in Avalon and torch, with torch's weights loaded into Avalon's."""
    theirs = getattr(torch.nn, name)(*args, **kwargs)
    ours = getattr(nn, name)(*args, **kwargs)
    assert list(nn.state_dict(ours)) == list(theirs.state_dict())
    nn.load_state_dict(ours, theirs.state_dict())
    return ours, theirs


def check_trace(model, *args, tol=1e-6):
    """trace(model) interpreted == eager (run the trace before the eager call: eager calls may update state)."""
    saved = {k: v.numpy().copy() for k, v in nn.state_dict(model).items()}
    tr = trace_call(model, args)
    dense = [op for op in tr.graph.ops if op.name == "constant" and isinstance(op.attrs["value"], np.ndarray)]
    assert not dense, "a layer baked an array into its graph"  # only splats: graphs stay cacheable
    got = av.interpret(tr.graph, *feed(tr.leaves))
    want = leaves(model(*args))
    assert len(got) == len(want) + len(tr.update_targets)
    for g, w in zip(got, want + tr.update_targets):  # outputs, then the updated state
        assert rel(g, w) <= tol
    nn.load_state_dict(model, saved)  # undo the eager call's state update


rng = np.random.default_rng(42)


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


CASES = [
    ("Linear", (6, 4), {}, (3, 6)),
    ("Linear", (6, 4), {"bias": False}, (2, 5, 6)),
    ("Conv2d", (3, 4, 3), {}, (2, 3, 8, 8)),
    ("Conv2d", (4, 6, (3, 2)), {"stride": 2, "padding": 1, "dilation": (1, 2), "groups": 2, "bias": False},
     (2, 4, 9, 9)),
    ("Conv2d", (3, 2, 4), {"padding": "same"}, (1, 3, 7, 6)),
    ("MaxPool2d", (2,), {}, (2, 3, 8, 8)),
    ("MaxPool2d", (3,), {"stride": 2, "padding": 1, "ceil_mode": True}, (2, 3, 8, 8)),
    ("AvgPool2d", (2,), {}, (2, 3, 8, 8)),
    ("AvgPool2d", ((3, 2),), {"stride": 2, "padding": 1, "count_include_pad": False, "ceil_mode": True},
     (2, 3, 8, 9)),
    ("BatchNorm1d", (5,), {}, (8, 5)),
    ("BatchNorm1d", (5,), {"affine": False, "momentum": None}, (4, 5, 3)),
    ("BatchNorm2d", (3,), {"eps": 1e-3, "momentum": 0.2}, (4, 3, 5, 5)),
    ("BatchNorm2d", (3,), {"track_running_stats": False}, (4, 3, 5, 5)),
    ("LayerNorm", (6,), {}, (3, 4, 6)),
    ("LayerNorm", ((4, 6),), {"elementwise_affine": False}, (3, 4, 6)),
    ("GroupNorm", (2, 6), {}, (2, 6, 3, 3)),
    ("Flatten", (), {}, (2, 3, 4, 5)),
    ("Flatten", (0, 2), {}, (2, 3, 4, 5)),
    ("Identity", (), {}, (2, 3)),
    ("Dropout", (0.3,), {}, (4, 5)),  # compared in eval mode (identity); training tested separately
]
ACTIVATIONS = [
    ("ReLU", ()), ("ReLU6", ()), ("Sigmoid", ()), ("Tanh", ()), ("SiLU", ()), ("Mish", ()), ("SELU", ()),
    ("Hardswish", ()), ("Hardsigmoid", ()), ("LogSigmoid", ()), ("Softsign", ()), ("LeakyReLU", (0.2,)),
    ("ELU", (0.7,)), ("GELU", ("tanh",)), ("Hardtanh", (-0.5, 2.0)), ("Softplus", (2.0, 3.0)), ("Softmax", (1,)),
    ("Softmin", (1,)), ("LogSoftmax", (1,)),
]
CASES += [(name, args, {}, (4, 7)) for name, args in ACTIVATIONS]


@pytest.mark.parametrize("name,args,kwargs,shape", CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)])
def test_layer_matches_torch_and_traces(name, args, kwargs, shape):
    ours, theirs = pair(name, *args, **kwargs)
    x = randn(*shape) * 2 + 0.3
    modes = ("train", "eval") if name != "Dropout" else ("eval",)
    for mode in modes:
        getattr(ours, mode)(), getattr(theirs, mode)()
        check_trace(ours, x)
        assert rel(ours(x), theirs(T(x))) < 1e-5, mode
        for k, v in theirs.state_dict().items():  # running statistics evolve alike
            assert rel(nn.state_dict(ours)[k], v) < 1e-6, k


def test_layers_in_float64_are_exact_to_double_precision():
    for name, args, shape in [("Linear", (6, 4), (3, 6)), ("Conv2d", (3, 4, 3), (2, 3, 6, 6)),
                              ("BatchNorm2d", (3,), (4, 3, 5, 5)), ("LayerNorm", (6,), (2, 6))]:
        ours, theirs = pair(name, *args)
        ours.double(), theirs.double()
        x = randn(*shape, dtype=np.float64)
        y = ours(x)
        assert y.dtype == av.float64
        assert rel(y, theirs(T(x))) < 1e-12


def test_embedding_matches_torch_and_traces():
    ours, theirs = pair("Embedding", 10, 4, padding_idx=2)
    idx = rng.integers(0, 10, (3, 5))
    idx[0, 0] = 2
    assert rel(ours(idx), theirs(T(idx))) == 0
    check_trace(ours, idx)
    assert not ours.weight.numpy()[2].any()  # the padding row starts at zero, as torch
    emb = nn.Embedding.from_pretrained(torch.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(emb(np.array([2, 0])).numpy(), [[8, 9, 10, 11], [0, 1, 2, 3]])


def test_sequential_names_and_forward():
    ours = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 5))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                 torch.nn.Flatten(), torch.nn.Linear(36, 5))
    assert list(nn.state_dict(ours)) == list(theirs.state_dict()) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    nn.load_state_dict(ours, theirs.state_dict())
    x = randn(2, 1, 8, 8)
    assert rel(ours(x), theirs(T(x))) < 1e-5
    check_trace(ours, x)
    assert len(ours) == 5 and isinstance(ours[4], nn.Linear) and isinstance(ours[-1], nn.Linear)
    assert [type(m).__name__ for m in ours[1:3]] == ["ReLU", "MaxPool2d"]
    assert "(0): Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1))" in repr(ours)


def test_module_list_and_nested_names():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(3, 3), nn.BatchNorm1d(3)])
            self.head = nn.Sequential(nn.Linear(3, 2))

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    class TNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)])
            self.head = torch.nn.Sequential(torch.nn.Linear(3, 2))

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    ours, theirs = Net(), TNet()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    ours.load_state_dict(theirs.state_dict())
    x = randn(5, 3)
    assert rel(ours(x), theirs(T(x))) < 1e-5
    ours.eval(), theirs.eval()
    assert ours.blocks[1].training is False
    assert rel(ours(x), theirs(T(x))) < 1e-5
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]


# -- recurrent layers ------------------------------------------------------------------------------

RNN_CASES = [
    ("RNN", {}), ("RNN", {"nonlinearity": "relu", "num_layers": 2}), ("RNN", {"bias": False, "batch_first": True}),
    ("LSTM", {}), ("LSTM", {"num_layers": 2, "batch_first": True}), ("LSTM", {"bidirectional": True}),
    ("LSTM", {"num_layers": 2, "bidirectional": True, "bias": False}),
    ("GRU", {}), ("GRU", {"num_layers": 2}), ("GRU", {"bidirectional": True, "batch_first": True}),
]


@pytest.mark.parametrize("name,kwargs", RNN_CASES, ids=[f"{n}{k}" for n, k in RNN_CASES])
def test_recurrent_layers_match_torch(name, kwargs):
    ours, theirs = pair(name, 3, 5, **kwargs)
    if kwargs.get("num_layers", 1) == 1 and not kwargs.get("bidirectional"):
        names = ["weight_ih_l0", "weight_hh_l0"] + (["bias_ih_l0", "bias_hh_l0"] if kwargs.get("bias", True) else [])
        assert list(ours.state_dict()) == names
    steps, batch = 4, 2
    x = randn(batch, steps, 3) if kwargs.get("batch_first") else randn(steps, batch, 3)
    d = (2 if kwargs.get("bidirectional") else 1) * kwargs.get("num_layers", 1)
    h0 = randn(d, batch, 5)
    state = (h0, randn(d, batch, 5)) if name == "LSTM" else h0
    t_state = tuple(T(s) for s in state) if name == "LSTM" else T(state)
    for args, targs in [((x,), (T(x),)), ((x, state), (T(x), t_state))]:
        got, want = leaves(ours(*args)), leaves(theirs(*targs))
        assert [g.shape for g in got] == [tuple(w.shape) for w in want]
        for g, w in zip(got, want):
            assert rel(g, w) < 1e-5
    check_trace(ours, x)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_recurrent_unbatched_input(name):
    ours, theirs = pair(name, 3, 4, num_layers=2)
    x = randn(5, 3)
    got, want = leaves(ours(x)), leaves(theirs(T(x)))
    assert [g.shape for g in got] == [tuple(w.shape) for w in want]
    for g, w in zip(got, want):
        assert rel(g, w) < 1e-5


def test_recurrent_gate_math_by_hand():
    """The gates of one LSTM and one GRU step, written out (sigmoid gates, GRU's r inside n)."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    x, h, c = randn(1, 2, 3).astype(np.float64), randn(1, 2, 4).astype(np.float64), randn(1, 2, 4).astype(np.float64)
    lstm = nn.LSTM(3, 4).double()
    w_ih, w_hh, b_ih, b_hh = (t.numpy() for t in lstm.parameters())
    g = x[0] @ w_ih.T + b_ih + h[0] @ w_hh.T + b_hh
    i, f, gg, o = np.split(g, 4, axis=1)
    c1 = sig(f) * c[0] + sig(i) * np.tanh(gg)
    _, (h_n, c_n) = lstm(x, (h, c))
    np.testing.assert_allclose(c_n.numpy()[0], c1, rtol=1e-12)
    np.testing.assert_allclose(h_n.numpy()[0], sig(o) * np.tanh(c1), rtol=1e-12)
    gru = nn.GRU(3, 4).double()
    w_ih, w_hh, b_ih, b_hh = (t.numpy() for t in gru.parameters())
    gi, gh = x[0] @ w_ih.T + b_ih, h[0] @ w_hh.T + b_hh
    r = sig(gi[:, :4] + gh[:, :4])
    z = sig(gi[:, 4:8] + gh[:, 4:8])
    n = np.tanh(gi[:, 8:] + r * gh[:, 8:])
    _, h_n = gru(x, h)
    np.testing.assert_allclose(h_n.numpy()[0], (1 - z) * n + z * h[0], rtol=1e-12)


def test_recurrent_errors():
    with pytest.raises(ValueError, match="input_size"):
        nn.LSTM(3, 4)(randn(5, 2, 6))
    with pytest.raises(RuntimeError, match="Expected hidden size"):  # (torch's exception type)
        nn.GRU(3, 4)(randn(5, 2, 3), randn(2, 2, 4))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(3, 4, nonlinearity="sigmoid")


# -- batch norm running statistics -------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_running_stats_after_training_steps(momentum):
    ours, theirs = pair("BatchNorm2d", 3, momentum=momentum)
    for _ in range(4):
        x = randn(6, 3, 4, 4) * 3 + 2
        assert rel(ours(x), theirs(T(x))) < 1e-5
    assert int(ours.num_batches_tracked.item()) == 4 == int(theirs.num_batches_tracked)
    assert rel(ours.running_mean, theirs.running_mean) < 1e-6
    assert rel(ours.running_var, theirs.running_var) < 1e-6
    ours.eval(), theirs.eval()
    x = randn(2, 3, 4, 4)
    assert rel(ours(x), theirs(T(x))) < 1e-5
    assert int(ours.num_batches_tracked.item()) == 4  # eval leaves the statistics alone


def test_batchnorm_state_updates_through_a_traced_graph():
    """Under a trace the running-stat updates become extra graph outputs, written back by run_traced."""
    ours, theirs = pair("BatchNorm1d", 4)
    tr = trace_call(ours, (randn(8, 4),))
    assert len(tr.graph.outputs) == 1 + 3 and len(tr.update_targets) == 3
    for _ in range(3):
        x = randn(8, 4) * 2 - 1
        y = run_traced(tr, tr.graph, lambda *a: av.interpret(tr.graph, *a), tr.leaves[:-1] + [x])
        assert rel(y, theirs(T(x))) < 1e-5
    for k, v in theirs.state_dict().items():
        assert rel(ours.state_dict()[k], v) < 1e-6, k


def test_batchnorm_input_checks():
    with pytest.raises(ValueError, match="4D"):
        nn.BatchNorm2d(3)(randn(2, 3))
    with pytest.raises(ValueError, match="channels"):
        nn.BatchNorm1d(3)(randn(2, 4))
    with pytest.raises(ValueError, match="more than 1 value"):
        nn.BatchNorm1d(3)(randn(1, 3))


# -- dropout ---------------------------------------------------------------------------------------------

def test_dropout_layer_training_and_eval():
    d = nn.Dropout(0.25)
    x = np.ones((100, 100), np.float32)
    y = d(x).numpy()
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.75)
    nn.eval(d)
    np.testing.assert_array_equal(d(x).numpy(), x)
    with pytest.raises(ValueError):
        nn.Dropout(-0.1)


# -- state dicts -----------------------------------------------------------------------------------------

class PlainNet:
    """A plain class (no base class) holding layers."""

    def __init__(self):
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(8, 3)

    def __call__(self, x):
        x = self.bn(nn.relu(self.conv(x)))
        x = nn.maxpool2d(x, (2, 2))
        return self.fc(x.reshape(x.shape[0], 8))


class TorchPlainNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(8, 3)


def test_state_dict_of_plain_class_matches_torch_keys():
    ours, theirs = PlainNet(), TorchPlainNet()
    assert list(nn.state_dict(ours)) == list(theirs.state_dict())
    assert [n for n, _ in nn.named_parameters(ours)] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in nn.named_buffers(ours)] == [n for n, _ in theirs.named_buffers()]
    assert len(list(nn.parameters(ours))) == 6


def test_load_state_dict_accepts_torch_numpy_and_avalon_and_copies_in_place():
    ours, theirs = PlainNet(), TorchPlainNet()
    w = ours.conv.weight
    nn.load_state_dict(ours, theirs.state_dict())
    assert ours.conv.weight is w  # the same tensor objects: optimizers holding them keep working
    assert rel(w, theirs.conv.weight) == 0
    other = PlainNet()
    nn.load_state_dict(other, {k: v.numpy() for k, v in nn.state_dict(ours).items()})
    assert rel(other.fc.bias, theirs.fc.bias) == 0
    third = PlainNet()
    nn.load_state_dict(third, nn.state_dict(other))
    assert rel(third.fc.weight, theirs.fc.weight) == 0
    assert third.bn.num_batches_tracked.dtype == av.int64
    sd = nn.state_dict(third)
    assert sd["fc.weight"] is third.fc.weight  # live tensors, as torch's state_dict


def test_load_state_dict_converts_dtypes():
    ours = nn.Linear(2, 2)
    nn.load_state_dict(ours, {"weight": np.ones((2, 2), np.float64), "bias": torch.zeros(2, dtype=torch.float16)})
    assert ours.weight.dtype == av.float32 and ours.weight.numpy().sum() == 4


def test_load_state_dict_errors_name_the_key():
    ours = PlainNet()
    good = {k: v.numpy().copy() for k, v in nn.state_dict(ours).items()}
    before = ours.fc.weight.numpy().copy()
    bad = dict(good, **{"fc.weight": np.zeros((3, 9), np.float32)})
    bad["fc.bias"] = np.full(3, 7, np.float32)
    with pytest.raises(nn.StateDictError, match=r'size mismatch for "fc.weight".*\(3, 9\).*\(3, 8\)'):
        nn.load_state_dict(ours, bad)
    assert np.array_equal(ours.fc.weight.numpy(), before) and not (ours.fc.bias.numpy() == 7).all()  # untouched
    missing = {k: v for k, v in good.items() if k != "bn.running_var"}
    with pytest.raises(RuntimeError, match='Missing key.*"bn.running_var"'):
        nn.load_state_dict(ours, missing)
    with pytest.raises(KeyError, match='Unexpected key.*"extra"'):
        nn.load_state_dict(ours, dict(good, extra=np.zeros(1)))
    result = nn.load_state_dict(ours, dict(missing, extra=np.zeros(1)), strict=False)
    assert result.missing_keys == ["bn.running_var"] and result.unexpected_keys == ["extra"]
    with pytest.raises(nn.StateDictError, match="size mismatch"):
        nn.load_state_dict(ours, dict(good, **{"bn.num_batches_tracked": np.zeros(2)}), strict=False)


def test_train_eval_reach_nested_plain_objects():
    ours = PlainNet()
    ours.extra = [nn.Dropout(), {"d": nn.Dropout()}]
    nn.eval(ours)
    assert not ours.bn.training and not ours.extra[0].training and not ours.extra[1]["d"].training
    nn.train(ours)
    assert ours.bn.training and ours.extra[1]["d"].training


def test_module_to_and_repr():
    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    m.double()
    assert all(t.dtype == av.float64 for n, t in m.state_dict().items() if n != "1.num_batches_tracked")
    assert m.state_dict()["1.num_batches_tracked"].dtype == av.int64
    assert repr(nn.LSTM(3, 4, num_layers=2)) == "LSTM(3, 4, num_layers=2)"
    assert repr(nn.Linear(2, 3)) == "Linear(in_features=2, out_features=3, bias=True)"


def test_traced_module_input_is_named_after_forward():
    g = av.trace(nn.Linear(3, 2), randn(4, 3))
    assert [v.name for v in g.inputs] == ["weight", "bias", "input"]


def test_tied_weights_load_from_torch_under_either_name():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight

    class TTied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 3)
            self.out = torch.nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight

    ours, theirs = Tied(), TTied()
    # every name of a tied tensor, as torch's state_dict (issue 9); named_parameters stays deduplicated
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["emb.weight", "out.weight"]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()] == ["emb.weight"]
    ours.load_state_dict(theirs.state_dict())  # torch lists both names
    assert rel(ours.out.weight, theirs.out.weight) == 0
    ours.load_state_dict({"out.weight": theirs.emb.weight * 2})  # the other name alone also works
    assert rel(ours.emb.weight, theirs.emb.weight * 2) == 0


def test_parameter_spelling_for_ported_code():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.alpha = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.alpha

    m = Scale()
    assert [n for n, _ in m.named_parameters()] == ["alpha"] and isinstance(m.alpha, av.Tensor)
    assert nn.Parameter(m.alpha) is m.alpha


def test_size_arguments_of_the_wrong_length_are_errors_naming_the_argument():
    """A 3-entry kernel size used to be cut to its first two entries (pools) or to build a 5-d
    weight (Conv2d); now each names the layer or function and the argument."""
    x = av.tensor(np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32))
    with pytest.raises(ValueError, match="Conv2d: argument 'kernel_size' needs 1 or 2 entries"):
        nn.Conv2d(1, 2, (1, 2, 3))
    with pytest.raises(ValueError, match="max_pool2d: argument 'kernel_size' needs 1 or 2 entries"):
        nn.MaxPool2d((2, 2, 2))(x)
    with pytest.raises(ValueError, match="avg_pool2d: argument 'stride' must be an int or a pair"):
        nn.functional.avg_pool2d(x, 2, stride="2")
    assert nn.Conv2d(1, 2, [3]).weight.shape == (2, 1, 3, 3)

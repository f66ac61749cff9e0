"""First-hour mistakes of PyTorch users, round 1 (after test_user_errors.py and test_silent_failures_*.py).

About 150 small mistakes were tried eagerly, under `av.compile`, under `av.grad` and in a compiled
training step, each beside torch: wrong Linear/conv/LSTM shapes, unbatched conv input (accepted, as
torch does), `view` of a transposed tensor, class-index vs one-hot vs wrong-dtype targets, BCE on
logits, MSE broadcasting, out-of-range NLL/embedding indices, cat/matmul/broadcast mismatches, batch
norm with one sample, hidden states, `.item()`, `backward()`, state dicts with wrong keys, optimizers
and schedulers misused, IR text with typos (every one a located ParseError / VerifyError) and passes
that break the graph. Most already gave torch's error with the op and the user's line. What did not,
fixed here: `.item()`/`float()`/`int()` of a many-element tensor gave numpy's "can only convert an
array of size 1" (no tensor, no shape, no line); a user pass that left a mistyped result was caught by
`av.compile`'s final verify without naming the pass; LSTM given one tensor as `hx` indexed it and
blamed its shape, GRU given `(h, c)` stacked it; an RNN fed float64 into float32 weights blamed an
internal matmul; batch norm, layer norm, BCE size and RNN shape errors had no user line; training-mode
dropout of an integer tensor returned floats where torch refuses; `nn.Parameter` of integers was
accepted (and silently never trained); and `opt.step(grads)` after replacing a layer (a fine-tuning
head) stepped the old layer's tensors by name, so the new layer never trained. torch is the oracle.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import torch_raises

import avalon as av
import avalon.nn.functional as F
import avalon.passes as passes
from avalon import nn, optim
from avalon.ir import TensorType

HERE = "test_first_hour_errors.py"


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


@pytest.mark.parametrize("convert", [lambda t: t.item(), float, int, bool])
def test_scalar_conversion_of_many_elements(convert):
    x = rand(2, 3)
    expected = torch_raises(lambda: convert(torch.tensor(x)))
    with pytest.raises(expected, match=rf"{HERE}:\d+: .*6 elements") as info:
        convert(av.tensor(x))
    assert isinstance(info.value, (RuntimeError, ValueError))  # both torch's kinds catch it
    if convert is not bool:
        assert "(2, 3)" in str(info.value)
        with pytest.raises(RuntimeError, match="0 elements"):
            convert(av.tensor(np.zeros((0,), np.float32)))
    assert convert(av.tensor(x[:1, :1])) == convert(torch.tensor(x[:1, :1]))  # one element: still fine


def test_compile_names_the_pass_that_broke_the_ir():
    @passes.register("first-hour-mistyped-relu")
    def mistyped(graph) -> bool:  # a user pass that gives relu's result a wrong type
        for op in graph.ops:
            if op.name == "relu":
                op.results[0].type = TensorType((3, 2), op.results[0].type.dtype)
                return True
        return False

    try:
        f = av.compile(lambda x: (av.exp(x) * 2.0).relu().sum(),
                       pipeline="canonicalize,cse,first-hour-mistyped-relu,dce,fuse,memory-plan")
        with pytest.raises(passes.PassVerifyError, match="pass 'first-hour-mistyped-relu'.*'relu' op") as info:
            f(av.tensor(rand(2, 3)))
        assert info.value.pass_name == "first-hour-mistyped-relu"
        assert info.value.op is not None and info.value.op.name == "relu"
        assert "tensor<3x2xf32>, expected tensor<2x3xf32>" in str(info.value)
    finally:
        passes.unregister("first-hour-mistyped-relu")


def test_rnn_hidden_state_of_the_wrong_kind():
    x, h = rand(2, 7, 4), rand(1, 2, 5, seed=1)
    lstm, tlstm = nn.LSTM(4, 5, batch_first=True), torch.nn.LSTM(4, 5, batch_first=True)
    torch_raises(lambda: tlstm(torch.tensor(x), torch.tensor(h)))
    with pytest.raises(TypeError, match=rf"{HERE}:\d+: LSTM: hx must be a tuple \(h_0, c_0\), got Tensor of shape "
                                        r"\(1, 2, 5\)"):
        lstm(av.tensor(x), av.tensor(h))
    gru, tgru = nn.GRU(4, 5, batch_first=True), torch.nn.GRU(4, 5, batch_first=True)
    torch_raises(lambda: tgru(torch.tensor(x), (torch.tensor(h), torch.tensor(h))))
    with pytest.raises(TypeError, match="GRU: hx must be one tensor h_0, got a tuple"):
        gru(av.tensor(x), (av.tensor(h), av.tensor(h)))
    # the right kinds still run, eagerly and compiled
    assert lstm(av.tensor(x), (av.tensor(h), av.tensor(h)))[0].shape == (2, 7, 5)
    assert av.compile(lambda m, a, b: m(a, b)[0])(gru, av.tensor(x), av.tensor(h)).shape == (2, 7, 5)


def test_rnn_input_dtype_names_the_layer():
    x = np.random.RandomState(0).randn(2, 7, 4)  # float64 into float32 weights
    expected = torch_raises(lambda: torch.nn.LSTM(4, 5)(torch.tensor(x)))
    for layer in (nn.LSTM(4, 5), nn.GRU(4, 5), nn.RNN(4, 5)):
        with pytest.raises(expected, match=rf"{HERE}:\d+: {type(layer).__name__}: input dtype \(av.float64\) does "
                                           r"not match weight dtype \(av.float32\)"):
            layer(av.tensor(x))
    assert nn.LSTM(4, 5).double()(av.tensor(x))[0].dtype == av.float64  # convert the model: fine


@pytest.mark.parametrize("case", ["bn_batch_of_one", "bn_channels", "bn_rank", "layer_norm", "bce_size",
                                  "rnn_features"])
@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_layer_shape_errors_name_the_users_line(case, mode):
    x2, x3 = rand(1, 3), rand(2, 3)
    cases = {
        "bn_batch_of_one": (lambda m: m.BatchNorm1d(3), x2, None),
        "bn_channels": (lambda m: m.BatchNorm1d(4), x3, None),
        "bn_rank": (lambda m: m.BatchNorm2d(3), x3, None),
        "layer_norm": (lambda m: m.LayerNorm(4), x3, None),
        "bce_size": (None, rand(4, 3), rand(4, 1)),
        "rnn_features": (lambda m: m.LSTM(4, 5), rand(7, 2, 3), None),
    }
    make, x, t = cases[case]
    if make is None:  # a loss
        torch_raises(lambda: TF.binary_cross_entropy(torch.sigmoid(torch.tensor(x)), torch.tensor(t)))
        fn = lambda a: F.binary_cross_entropy(av.sigmoid(a), av.tensor(t))  # noqa: E731
    else:
        tlayer = make(torch.nn)
        torch_raises(lambda: tlayer(torch.tensor(x)))
        fn = make(nn)
    run = fn if mode == "eager" else av.compile(fn)
    with pytest.raises(ValueError, match=rf"^\S*{HERE}:\d+: "):
        run(av.tensor(x))


def test_batch_norm_of_one_sample_says_what_to_do():
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\.eval\(\)"):
        av.grad(lambda m, a: m(a).sum())(nn.BatchNorm1d(3), av.tensor(rand(1, 3)))
    bn = nn.BatchNorm1d(3)
    bn.eval()
    assert bn(av.tensor(rand(1, 3))).shape == (1, 3)  # as torch: fine in eval mode


def test_dropout_of_an_integer_tensor():
    ints = np.array([1, 2, 3], np.int64)
    expected = torch_raises(lambda: TF.dropout(torch.tensor(ints), 0.5, True))
    with pytest.raises(expected, match=rf"{HERE}:\d+: dropout: input must be floating point"):
        F.dropout(av.tensor(ints), 0.5, True)
    for p, training in ((0.0, True), (1.0, True), (0.5, False)):  # what torch takes, with its dtype
        want = TF.dropout(torch.tensor(ints), p, training)
        got = F.dropout(av.tensor(ints), p, training)
        assert got.dtype == av.int64 and np.array_equal(got.numpy(), want.numpy())


def test_integer_parameter_is_refused():
    expected = torch_raises(lambda: torch.nn.Parameter(torch.tensor([1, 2])))
    with pytest.raises(expected, match="floating point"):
        nn.Parameter(av.tensor([1, 2]))
    p = nn.Parameter(av.tensor([1, 2]), requires_grad=False)  # as torch: fine when it requires no grad
    assert p.dtype == av.int64 and not p.requires_grad
    assert torch.nn.Parameter(torch.tensor([1, 2]), requires_grad=False).dtype == torch.int64


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.relu(self.body(x)))


def _loss(model, x, y):
    return F.mse_loss(model(x), y)


def test_step_after_replacing_a_layer():
    x, y = av.tensor(rand(8, 3)), av.tensor(rand(8, 2, seed=1))
    model = Net()
    opt = optim.SGD(model.parameters(), lr=0.1)
    old_head = model.head.weight
    model.head = nn.Linear(4, 2)  # a new head after the optimizer was made
    before = (old_head.numpy().copy(), model.head.weight.numpy().copy())
    with pytest.raises(RuntimeError, match=r"\['head.weight', 'head.bias'\] are of tensors this optimizer does not "
                                           "hold.*Create the optimizer after"):
        opt.step(av.grad(_loss)(model, x, y))
    assert np.array_equal(old_head.numpy(), before[0])  # nothing was stepped
    # torch's optimizer silently never trains the new head; made after the change, both train it
    opt = optim.SGD(model.parameters(), lr=0.1)
    opt.step(av.grad(_loss)(model, x, y))
    assert not np.array_equal(model.head.weight.numpy(), before[1])
    # an optimizer of part of the model still takes the whole model's gradients (the rest are dropped)
    head_opt = optim.SGD(model.head.parameters(), lr=0.1)
    head_opt.step(av.grad(_loss)(model, x, y))


def test_binary_cross_entropy_of_logits_when_traced():
    logits, target = rand(4, 3), np.eye(3, dtype=np.float32)[[0, 2, 1, 1]]
    torch_raises(lambda: TF.binary_cross_entropy(torch.tensor(logits), torch.tensor(target)))
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        av.compile(F.binary_cross_entropy)(av.tensor(logits), av.tensor(target))

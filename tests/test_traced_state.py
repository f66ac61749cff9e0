"""State a traced call creates or rebinds on the model (avalon/trace_state.py), checked against torch.

pytorch-ntm (loudinthecloud/pytorch-ntm, ntm/aio.py, ntm/ntm.py, ntm/memory.py, ntm/head.py, ntm/controller.py)
keeps its per-sequence state on the model and makes it inside the training step: `init_sequence` sets
`self.previous_state` (a tuple of a list, an (h, c) pair and a list, made from parameters and buffers) and the memory's
`self.memory = self.mem_bias.clone().repeat(...)`, and every step rebinds both (`self.prev_mem = self.memory; self.memory
= ...`). The compact NTM below is that code (one read and one write head, content and location addressing, an LSTM
controller), trained a few steps with torch's weights, eagerly (`av.value_and_grad`) and compiled. Then the idioms one
at a time: a new attribute, a tuple replaced every step, state carried across calls (word_language_model's
`repackage_hidden`), an attribute kept for visualization, state in a submodule, and what is refused.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from test_port_programs_30 import randn, same_grads
from test_port_programs_more import pair, same_weights

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


def T(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def A(x):
    return av.tensor(np.asarray(x, dtype=np.float64))


def ntm(nn, F, lib, num_inputs=3, num_outputs=3, controller_size=6, N=5, M=4):
    """pytorch-ntm's EncapsulatedNTM with one read and one write head, as written there."""

    def _split_cols(mat, lengths):
        bounds = np.cumsum([0] + lengths)
        return [mat[:, int(s):int(e)] for s, e in zip(bounds[:-1], bounds[1:])]

    class LSTMController(nn.Module):
        def __init__(self, num_inputs, num_outputs, num_layers):
            super().__init__()
            self.num_inputs, self.num_outputs, self.num_layers = num_inputs, num_outputs, num_layers
            self.lstm = nn.LSTM(input_size=num_inputs, hidden_size=num_outputs, num_layers=num_layers)
            self.lstm_h_bias = nn.Parameter(lib.randn(self.num_layers, 1, self.num_outputs) * 0.05)
            self.lstm_c_bias = nn.Parameter(lib.randn(self.num_layers, 1, self.num_outputs) * 0.05)

        def create_new_state(self, batch_size):
            lstm_h = self.lstm_h_bias.clone().repeat(1, batch_size, 1)
            lstm_c = self.lstm_c_bias.clone().repeat(1, batch_size, 1)
            return lstm_h, lstm_c

        def size(self):
            return self.num_inputs, self.num_outputs

        def forward(self, x, prev_state):
            x = x.unsqueeze(0)
            outp, state = self.lstm(x, prev_state)
            return outp.squeeze(0), state

    class NTMMemory(nn.Module):
        def __init__(self, N, M):
            super().__init__()
            self.N, self.M = N, M
            self.register_buffer("mem_bias", lib.zeros(N, M))
            stdev = 1 / (np.sqrt(N + M))
            nn.init.uniform_(self.mem_bias, -stdev, stdev)

        def reset(self, batch_size):
            self.batch_size = batch_size
            self.memory = self.mem_bias.clone().repeat(batch_size, 1, 1)

        def size(self):
            return self.N, self.M

        def read(self, w):
            return lib.matmul(w.unsqueeze(1), self.memory).squeeze(1)

        def write(self, w, e, a):
            self.prev_mem = self.memory
            erase = lib.matmul(w.unsqueeze(-1), e.unsqueeze(1))
            add = lib.matmul(w.unsqueeze(-1), a.unsqueeze(1))
            self.memory = self.prev_mem * (1 - erase) + add

        def address(self, k, beta, g, s, gamma, w_prev):
            wc = self._similarity(k, beta)
            wg = self._interpolate(w_prev, wc, g)
            w_hat = self._shift(wg, s)
            return self._sharpen(w_hat, gamma)

        def _similarity(self, k, beta):
            k = k.view(self.batch_size, 1, -1)
            return F.softmax(beta * F.cosine_similarity(self.memory + 1e-16, k + 1e-16, dim=-1), dim=1)

        def _interpolate(self, w_prev, wc, g):
            return g * wc + (1 - g) * w_prev

        def _shift(self, wg, s):
            result = []
            for b in range(self.batch_size):
                w, sb = wg[b], s[b]
                t = lib.cat([w[-1:], w, w[:1]])
                result.append(F.conv1d(t.view(1, 1, -1), sb.view(1, 1, -1)).view(-1))
            return lib.stack(result)

        def _sharpen(self, w_hat, gamma):
            w = w_hat ** gamma
            return lib.div(w, lib.sum(w, dim=1).view(-1, 1) + 1e-16)

    class NTMHeadBase(nn.Module):
        def __init__(self, memory, controller_size):
            super().__init__()
            self.memory = memory
            self.N, self.M = memory.size()
            self.controller_size = controller_size

        def create_new_state(self, batch_size):
            return lib.zeros(batch_size, self.N)

        def _address_memory(self, k, beta, g, s, gamma, w_prev):
            k = k.clone()
            beta, g, s, gamma = F.softplus(beta), F.sigmoid(g), F.softmax(s, dim=1), 1 + F.softplus(gamma)
            return self.memory.address(k, beta, g, s, gamma, w_prev)

    class NTMReadHead(NTMHeadBase):
        def __init__(self, memory, controller_size):
            super().__init__(memory, controller_size)
            self.read_lengths = [self.M, 1, 1, 3, 1]
            self.fc_read = nn.Linear(controller_size, sum(self.read_lengths))

        def is_read_head(self):
            return True

        def forward(self, embeddings, w_prev):
            k, beta, g, s, gamma = _split_cols(self.fc_read(embeddings), self.read_lengths)
            w = self._address_memory(k, beta, g, s, gamma, w_prev)
            return self.memory.read(w), w

    class NTMWriteHead(NTMHeadBase):
        def __init__(self, memory, controller_size):
            super().__init__(memory, controller_size)
            self.write_lengths = [self.M, 1, 1, 3, 1, self.M, self.M]
            self.fc_write = nn.Linear(controller_size, sum(self.write_lengths))

        def is_read_head(self):
            return False

        def forward(self, embeddings, w_prev):
            k, beta, g, s, gamma, e, a = _split_cols(self.fc_write(embeddings), self.write_lengths)
            e = F.sigmoid(e)
            w = self._address_memory(k, beta, g, s, gamma, w_prev)
            self.memory.write(w, e, a)
            return w

    class NTM(nn.Module):
        def __init__(self, num_inputs, num_outputs, controller, memory, heads):
            super().__init__()
            self.num_inputs, self.num_outputs = num_inputs, num_outputs
            self.controller, self.memory, self.heads = controller, memory, heads
            self.N, self.M = memory.size()
            _, self.controller_size = controller.size()
            self.num_read_heads = 0
            self.init_r = []
            for head in heads:
                if head.is_read_head():
                    init_r_bias = lib.randn(1, self.M) * 0.01
                    self.register_buffer(f"read{self.num_read_heads}_bias", init_r_bias.data)
                    self.init_r += [init_r_bias]
                    self.num_read_heads += 1
            self.fc = nn.Linear(self.controller_size + self.num_read_heads * self.M, num_outputs)

        def create_new_state(self, batch_size):
            init_r = [r.clone().repeat(batch_size, 1) for r in self.init_r]
            controller_state = self.controller.create_new_state(batch_size)
            heads_state = [head.create_new_state(batch_size) for head in self.heads]
            return init_r, controller_state, heads_state

        def forward(self, x, prev_state):
            prev_reads, prev_controller_state, prev_heads_states = prev_state
            inp = lib.cat([x] + prev_reads, dim=1)
            controller_outp, controller_state = self.controller(inp, prev_controller_state)
            reads, heads_states = [], []
            for head, prev_head_state in zip(self.heads, prev_heads_states):
                if head.is_read_head():
                    r, head_state = head(controller_outp, prev_head_state)
                    reads += [r]
                else:
                    head_state = head(controller_outp, prev_head_state)
                heads_states += [head_state]
            inp2 = lib.cat([controller_outp] + reads, dim=1)
            o = F.sigmoid(self.fc(inp2))
            return o, (reads, controller_state, heads_states)

    class EncapsulatedNTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_inputs, self.num_outputs = num_inputs, num_outputs
            self.memory = NTMMemory(N, M)
            controller = LSTMController(num_inputs + M, controller_size, 1)
            heads = nn.ModuleList([NTMReadHead(self.memory, controller_size),
                                   NTMWriteHead(self.memory, controller_size)])
            self.ntm = NTM(num_inputs, num_outputs, controller, self.memory, heads)

        def init_sequence(self, batch_size):
            self.batch_size = batch_size
            self.memory.reset(batch_size)
            self.previous_state = self.ntm.create_new_state(batch_size)

        def forward(self, x=None):
            if x is None:
                x = lib.zeros(self.batch_size, self.num_inputs, dtype=lib.float64)
            o, self.previous_state = self.ntm(x, self.previous_state)
            return o, self.previous_state

    return EncapsulatedNTM()


def ntm_loss(F, lib):
    def loss_fn(net, X, Y):  # pytorch-ntm's train_batch, up to backward
        outp_seq_len, batch_size, _ = Y.shape
        net.init_sequence(batch_size)
        for i in range(X.shape[0]):
            net(X[i])
        y_out = lib.zeros(Y.shape, dtype=lib.float64)
        for i in range(outp_seq_len):
            y_out[i], _ = net()
        return F.binary_cross_entropy(y_out, Y)
    return loss_fn


@pytest.mark.parametrize("compiled", [False, True])
def test_ntm_sequence_state_created_in_the_step_trains_as_torch(compiled):
    ours, theirs = pair(ntm)
    params = dict(ours.named_parameters())
    assert sorted(params) == sorted(n for n, _ in theirs.named_parameters())
    opt = av.optim.RMSprop(ours.parameters(), lr=1e-2, momentum=0.9, alpha=0.95)
    topt = torch.optim.RMSprop(theirs.parameters(), lr=1e-2, momentum=0.9, alpha=0.95)
    loss_fn, tloss_fn = ntm_loss(F, av), ntm_loss(TF, torch)

    vg = av.value_and_grad(loss_fn)

    def step(net, opt, X, Y):
        loss, grads = vg(net, X, Y)
        opt.step(grads)
        return loss, grads
    run = av.compile(step) if compiled else step
    rng = np.random.default_rng(3)
    for it in range(3):
        X = rng.integers(0, 2, (2, 2, 3)).astype(np.float64) + 0.1 * rng.standard_normal((2, 2, 3))
        Y = rng.integers(0, 2, (2, 2, 3)).astype(np.float64)
        topt.zero_grad()
        tloss = tloss_fn(theirs, T(X), T(Y))
        tloss.backward()
        topt.step()
        loss, grads = run(ours, opt, A(X), A(Y))
        assert abs(loss.item() - tloss.item()) < 1e-9 * max(1.0, abs(tloss.item())), it
        same_grads(grads, theirs, 1e-7)
        same_weights(ours, theirs, 1e-7)  # (also: the sequence state is in neither state dict)
        # the state the step left on the model: the last step's, as torch's, and not trained or traced
        for a, b in ((ours.memory.memory, theirs.memory.memory), (ours.memory.prev_mem, theirs.memory.prev_mem),
                     (ours.previous_state[1][0], theirs.previous_state[1][0]),
                     (ours.previous_state[0][0], theirs.previous_state[0][0])):
            assert not a.is_traced and np.abs(a.numpy() - b.detach().numpy()).max() < 1e-9
        assert isinstance(ours.previous_state, tuple) and isinstance(ours.previous_state[0], list)
        assert dict(ours.named_parameters()).keys() == params.keys()
        assert ours.batch_size == 2
    if compiled:
        assert run.cache_info().misses == 2  # the first call made the state: the second traces once more


def word_lm(nn_):
    class WordLM(nn_.Module):
        """word_language_model's RNNModel, its hidden state kept on the model between batches."""

        def __init__(self):
            super().__init__()
            self.encoder = nn_.Embedding(7, 4)
            self.rnn = nn_.LSTM(4, 5)
            self.decoder = nn_.Linear(5, 7)

        def init_hidden(self, bsz):
            weight = self.decoder.weight
            return (weight.new_zeros(1, bsz, 5), weight.new_zeros(1, bsz, 5))

        def forward(self, x):
            hidden = self.hidden if self.hidden is not None else self.init_hidden(x.shape[1])
            out, self.hidden = self.rnn(self.encoder(x), hidden)
            return self.decoder(out)
    return WordLM()


def repackage_hidden(h):
    return h.detach() if isinstance(h, (av.Tensor, torch.Tensor)) else tuple(repackage_hidden(v) for v in h)


@pytest.mark.parametrize("compiled", [False, True])
def test_hidden_state_carried_across_batches_as_word_language_model(compiled):
    torch.manual_seed(0)
    theirs = word_lm(torch.nn).double()
    ours = word_lm(nn).to(av.float64)
    nn.load_state_dict(ours, theirs.state_dict())
    theirs.hidden = ours.hidden = None  # made by the first batch's forward
    opt = av.optim.SGD(ours.parameters(), lr=0.5)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.5)

    def loss_fn(model, x, y):
        if model.hidden is not None:
            model.hidden = repackage_hidden(model.hidden)
        return F.cross_entropy(model(x).reshape(-1, 7), y.reshape(-1))

    def step(model, opt, x, y):
        loss, grads = av.value_and_grad(loss_fn)(model, x, y)
        opt.step(grads)
        return loss
    run = av.compile(step) if compiled else step
    rng = np.random.default_rng(1)
    for it in range(3):
        x, y = rng.integers(0, 7, (3, 2)), rng.integers(0, 7, (3, 2))
        topt.zero_grad()
        if theirs.hidden is not None:
            theirs.hidden = repackage_hidden(theirs.hidden)
        tl = TF.cross_entropy(theirs(torch.tensor(x)).reshape(-1, 7), torch.tensor(y).reshape(-1))
        tl.backward()
        topt.step()
        loss = run(ours, opt, av.tensor(x), av.tensor(y))
        assert abs(loss.item() - tl.item()) < 1e-9, it
        for a, b in zip(ours.hidden, theirs.hidden):
            assert np.abs(a.numpy() - b.detach().numpy()).max() < 1e-9, it
        same_weights(ours, theirs, 1e-9)
    if compiled:
        assert run.cache_info().misses == 2  # made by the first call; its structure is the same after that


def test_new_attribute_and_visualization_attribute():
    """`self.last_attn = attn` (kept for plots) and a brand-new attribute: after the call they hold this
    call's values, are neither parameters nor saved, and each call gives fresh tensors (a list of them kept
    by the caller stays as it was, as in torch)."""
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 4)

        def forward(self, x):
            attn = F.softmax(self.q(x) @ x.transpose(-1, -2), dim=-1)
            self.last_attn = attn
            return (attn @ x).sum()

    rng = np.random.default_rng(2)
    m = Attn()
    f = av.compile(lambda m, x: m(x))
    kept = []
    for _ in range(3):
        x = av.tensor(randn(rng, 2, 3, 4))
        f(m, x)
        want = F.softmax(m.q(x) @ x.transpose(-1, -2), dim=-1)
        assert not m.last_attn.is_traced
        np.testing.assert_allclose(m.last_attn.numpy(), want.numpy(), rtol=1e-5)
        kept.append((m.last_attn, m.last_attn.numpy().copy()))
    assert all(np.array_equal(t.numpy(), v) for t, v in kept)
    assert len({id(t) for t, _ in kept}) == 3
    assert sorted(m.state_dict()) == ["q.bias", "q.weight"]
    assert sorted(n for n, _ in m.named_parameters()) == ["q.bias", "q.weight"]
    assert f.cache_info().misses == 2  # the new attribute is part of the second call's signature
    _, grads = av.value_and_grad(lambda m, x: m(x))(m, av.tensor(randn(rng, 2, 3, 4)))
    assert sorted(grads) == ["q.bias", "q.weight"]


def test_tuple_state_replaced_each_step_with_gradients_through_it():
    """A tuple of state rebuilt in every step from a parameter and used there: the gradient flows through
    its uses; its structure changing (two entries, then three) traces again."""
    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.h0 = nn.Parameter(av.tensor(randn(np.random.default_rng(4), 1, 3)))
            self.lin = nn.Linear(3, 3)

        def forward(self, x, extra=False):
            h = self.h0.repeat(x.shape[0], 1)
            self.state = (h, h * 2) + ((h + 1,) if extra else ())
            for t in range(x.shape[1]):
                h = av.tanh(self.lin(x[:, t]) + self.state[0])
                self.state = (h, self.state[1] + h) + self.state[2:]
            return self.state[1].sum()

    class TCell(torch.nn.Module):
        def __init__(self, ours):
            super().__init__()
            self.h0 = torch.nn.Parameter(T(ours.h0.numpy()))
            self.lin = torch.nn.Linear(3, 3).double()
            self.lin.load_state_dict({k.split(".")[1]: T(v.numpy()) for k, v in ours.state_dict().items() if "lin" in k})

        def forward(self, x):
            h = self.h0.repeat(x.shape[0], 1)
            self.state = (h, h * 2)
            for t in range(x.shape[1]):
                h = torch.tanh(self.lin(x[:, t]) + self.state[0])
                self.state = (h, self.state[1] + h)
            return self.state[1].sum()

    m = Cell().to(av.float64)
    tm = TCell(m)
    rng = np.random.default_rng(5)
    g = av.compile(av.value_and_grad(lambda m, x, extra: m(x, extra)))
    for _ in range(2):
        x = randn(rng, 2, 4, 3).astype(np.float64)
        tm.zero_grad()
        tl = tm(T(x))
        tl.backward()
        v, grads = g(m, A(x), False)
        assert abs(v.item() - tl.item()) < 1e-9
        np.testing.assert_allclose(grads["h0"].numpy(), tm.h0.grad.numpy(), rtol=1e-7)
        assert isinstance(m.state, tuple) and len(m.state) == 2
        for a, b in zip(m.state, tm.state):
            np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-9)
    g(m, A(randn(rng, 2, 4, 3)), True)
    assert len(m.state) == 3 and sorted(grads) == ["h0", "lin.bias", "lin.weight"]


def test_state_in_a_submodule_and_a_plain_class():
    """A submodule (and a plain-class model) keeping its own state dict of tensors, written in the step."""
    class Cache:
        def __init__(self):
            self.mems = {}

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.cache = Cache()

        def forward(self, x):
            y = self.lin(x)
            self.cache.mems = {"k": y, "v": (y * 2, y.sum(0))}
            return y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x).pow(2).mean()

    rng = np.random.default_rng(7)
    net = Net()
    step = av.compile(lambda net, x: av.value_and_grad(lambda n, x: n(x))(net, x))
    for _ in range(3):
        x = av.tensor(randn(rng, 2, 3))
        step(net, x)
        y = net.block.lin(x)
        mems = net.block.cache.mems
        np.testing.assert_allclose(mems["k"].numpy(), y.numpy(), rtol=1e-6)
        np.testing.assert_allclose(mems["v"][1].numpy(), y.sum(0).numpy(), rtol=1e-6)
    assert sorted(n for n, _ in net.named_parameters()) == ["block.lin.bias", "block.lin.weight"]
    assert step.cache_info().misses == 2


def test_what_is_refused_names_the_attribute_and_leaves_the_model_as_it_was():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.kept = None

        def forward(self, x):
            y = self.lin(x)
            self.kept = [types.SimpleNamespace(value=y)]  # an arbitrary object in a list is an attribute...
            self.pairs = (types.SimpleNamespace(value=y),)  # ...but inside a tuple it cannot be rebuilt
            return y.sum()

    m = Holder()
    with pytest.raises(av.TracerError, match=r"attribute 'pairs\[0\]'.*Store the tensors themselves"):
        av.compile(lambda m, x: m(x))(m, av.tensor(randn(np.random.default_rng(0), 3, 2)))
    assert m.kept is None and not hasattr(m, "pairs")

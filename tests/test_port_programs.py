"""Small programs as tutorials and papers write them in PyTorch, ported by renaming imports, each
checked against torch on torch's weights: forward, loss and every parameter gradient, eagerly and
compiled (numpy and cpu backends), and an optimizer step or two. Each program is written once over
`lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon), as a port leaves it."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

MODES = ("eager", "numpy", "cpu")


def pair(make, seed: int = 0):
    """torch's model and Avalon's, in float64, with torch's weights loaded into Avalon's."""
    torch.manual_seed(seed)
    theirs = make(torch.nn, TF, torch).double()
    ours = make(nn, F, av).double()
    av.nn.load_state_dict(ours, theirs.state_dict())
    return ours, theirs


def check(ours, theirs, a_loss, t_loss, args, tol: float = 1e-9, modes=MODES, strict: bool = True):
    """The loss and every parameter gradient of `a_loss(ours, *args)` against torch's, in each mode."""
    for p in theirs.parameters():
        p.grad = None
    tl = t_loss(theirs, *[T(a) for a in args])
    tl.backward()
    tg = {k: p.grad for k, p in theirs.named_parameters() if p.grad is not None}
    for mode in modes:
        f = av.value_and_grad(a_loss)
        if mode != "eager":
            f = av.compile(f, backend=mode)
        with warnings.catch_warnings():
            warnings.simplefilter("error" if strict else "ignore")  # nothing captured or baked in
            loss, g = f(ours, *[av.tensor(a) for a in args])
        assert rel(loss, tl) < tol, mode
        assert set(g) == {k for k, _ in theirs.named_parameters()}, mode
        scale = max(float(v.abs().max()) for v in tg.values())  # a zero gradient (a bias before a norm)
        for k, p in theirs.named_parameters():                   # is roundoff on both sides
            want = (tg[k] if k in tg else torch.zeros_like(p)).numpy()
            err = np.abs(g[k].numpy() - want).max() / max(np.abs(want).max(), 1e-6 * scale)
            assert err < tol, (mode, k, err)
    return tl


def same_weights(ours, theirs, tol: float):
    sd = theirs.state_dict()
    for k, v in ours.state_dict().items():
        assert rel(v, sd[k]) < tol, k


# -- 1. WGAN-GP: the critic's gradient w.r.t. its input inside the loss ---------------------------------

def critic(lib, F_, th):
    return lib.Sequential(lib.Linear(4, 16), lib.LeakyReLU(0.2), lib.Linear(16, 16), lib.Tanh(), lib.Linear(16, 1))


def wgan_gp_torch(D, real, fake, eps, lam=10.0):
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = D(x_hat)
    (g,) = torch.autograd.grad(out, x_hat, grad_outputs=torch.ones_like(out), create_graph=True)
    gp = ((g.norm(2, dim=1) - 1) ** 2).mean()
    return D(fake).mean() - D(real).mean() + lam * gp


def wgan_gp_avalon(D, real, fake, eps, lam=10.0):
    x_hat = eps * real + (1 - eps) * fake
    g = av.grad(lambda xh: D(xh).sum())(x_hat)  # closes over D: its weights are the enclosing trace's
    gp = ((g.norm(2, dim=1) - 1) ** 2).mean()
    return D(fake).mean() - D(real).mean() + lam * gp


def test_wgan_gp_gradient_penalty_through_a_nested_grad_closing_over_the_critic():
    ours, theirs = pair(critic)
    rng = np.random.default_rng(0)
    args = (rng.standard_normal((6, 4)), rng.standard_normal((6, 4)), rng.random((6, 1)))
    check(ours, theirs, wgan_gp_avalon, wgan_gp_torch, args)
    topt = torch.optim.Adam(theirs.parameters(), lr=1e-2, betas=(0.0, 0.9))
    opt = optim.Adam(ours.parameters(), lr=1e-2, betas=(0.0, 0.9))

    def step(D, opt, *xs):
        loss, g = av.value_and_grad(wgan_gp_avalon)(D, *xs)
        opt.step(g)
        return loss

    cstep = av.compile(step)
    for _ in range(2):
        topt.zero_grad()
        wgan_gp_torch(theirs, *map(T, args)).backward()
        topt.step()
        cstep(ours, opt, *map(av.tensor, args))
    same_weights(ours, theirs, 1e-9)


def test_a_compiled_saliency_map_closing_over_the_model_reads_its_current_weights():
    ours, theirs = pair(critic)
    x = np.random.default_rng(3).standard_normal((3, 4))
    saliency = av.compile(lambda m, x: av.grad(lambda z: m(z).sum())(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the weights are the compiled function's inputs, not baked in
        for scale in (1.0, 2.0):
            ours[0].weight.mul_(scale)
            with torch.no_grad():
                theirs[0].weight.mul_(scale)
            tx = T(x).requires_grad_(True)
            theirs(tx).sum().backward()
            assert rel(saliency(ours, av.tensor(x)), tx.grad) < 1e-12
    assert saliency.cache_info().misses == 1


def test_a_nested_grad_closing_over_a_traced_tensor_differentiates_through_it():
    x = np.random.default_rng(1).standard_normal(5)

    def f(x):
        h = av.sin(x)
        g = av.grad(lambda z: (z * z * h).sum())(x)  # d/dz = 2 z h, h a value of the enclosing trace
        return (g * g).sum()

    tx = torch.tensor(x, requires_grad=True)
    want = ((2 * tx * tx.sin()) ** 2).sum()
    want.backward()
    for mode in ("eager", "numpy"):
        vg = av.value_and_grad(f) if mode == "eager" else av.compile(av.value_and_grad(f))
        v, g = vg(av.tensor(x))
        assert rel(v, want) < 1e-12 and rel(g, tx.grad) < 1e-12


# -- 2. seq2seq: GRU encoder, Bahdanau attention, GRU decoder with teacher forcing ---------------------

V, E, H, PAD = 9, 6, 5, 0


def seq2seq(lib, F_, th, teacher=(True, False, True, True)):
    class Encoder(lib.Module):
        def __init__(self):
            super().__init__()
            self.embedding = lib.Embedding(V, E, padding_idx=PAD)
            self.rnn = lib.GRU(E, H, batch_first=True, bidirectional=True)
            self.fc = lib.Linear(2 * H, H)
            self.dropout = lib.Dropout(0.3)

        def forward(self, src):
            outputs, hidden = self.rnn(self.dropout(self.embedding(src)))
            hidden = th.tanh(self.fc(th.cat((hidden[-2, :, :], hidden[-1, :, :]), dim=1)))
            return outputs, hidden

    class Attention(lib.Module):
        def __init__(self):
            super().__init__()
            self.attn = lib.Linear(3 * H, H)
            self.v = lib.Linear(H, 1, bias=False)

        def forward(self, hidden, enc, mask):
            hidden = hidden.unsqueeze(1).repeat(1, enc.shape[1], 1)
            energy = th.tanh(self.attn(th.cat((hidden, enc), dim=2)))
            attention = self.v(energy).squeeze(2).masked_fill(mask == 0, -1e10)
            return F_.softmax(attention, dim=1)

    class Decoder(lib.Module):
        def __init__(self):
            super().__init__()
            self.attention = Attention()
            self.embedding = lib.Embedding(V, E)
            self.rnn = lib.GRU(2 * H + E, H, batch_first=True)
            self.fc_out = lib.Linear(3 * H + E, V)

        def forward(self, inp, hidden, enc, mask):
            embedded = self.embedding(inp.unsqueeze(1))
            a = self.attention(hidden, enc, mask).unsqueeze(1)
            weighted = th.bmm(a, enc)
            output, hidden = self.rnn(th.cat((embedded, weighted), dim=2), hidden.unsqueeze(0))
            pred = self.fc_out(th.cat((output.squeeze(1), weighted.squeeze(1), embedded.squeeze(1)), dim=1))
            return pred, hidden.squeeze(0)

    class Seq2Seq(lib.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = Encoder(), Decoder()

        def forward(self, src, trg):
            enc, hidden = self.encoder(src)
            mask = src != PAD
            inp, outputs = trg[:, 0], []
            for t in range(1, trg.shape[1]):
                out, hidden = self.decoder(inp, hidden, enc, mask)
                outputs.append(out)
                inp = trg[:, t] if teacher[t - 1] else out.argmax(1)  # teacher forcing, drawn beforehand
            return th.stack(outputs, dim=1)

    return Seq2Seq()


def seq2seq_loss(F_):
    def loss(model, src, trg):
        out = model(src, trg)
        return F_.cross_entropy(out.reshape(-1, V), trg[:, 1:].reshape(-1), ignore_index=PAD)
    return loss


def test_seq2seq_gru_with_bahdanau_attention_and_teacher_forcing():
    ours, theirs = pair(seq2seq)
    ours.eval()
    theirs.eval()
    rng = np.random.default_rng(2)
    src, trg = rng.integers(1, V, (3, 6)), rng.integers(1, V, (3, 5))
    src[0, 4:] = PAD
    trg[1, 3:] = PAD
    out, want = ours(av.tensor(src), av.tensor(trg)), theirs(T(src), T(trg))
    assert rel(out, want) < 1e-10
    check(ours, theirs, seq2seq_loss(F), seq2seq_loss(TF), (src, trg), tol=1e-8)
    topt, opt = torch.optim.Adam(theirs.parameters(), lr=1e-2), optim.Adam(ours.parameters(), lr=1e-2)
    torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    topt.step()
    _, g = av.value_and_grad(seq2seq_loss(F))(ours, av.tensor(src), av.tensor(trg))
    nn.utils.clip_grad_norm_(g, 1.0)
    opt.step(g)
    same_weights(ours, theirs, 1e-8)


def packed_encoder(lib, F_, th):
    class Encoder(lib.Module):  # the packed-padded-sequence seq2seq encoder, with a GRU over its outputs
        def __init__(self):
            super().__init__()
            self.embedding = lib.Embedding(V, E, padding_idx=PAD)
            self.rnn = lib.LSTM(E, 4, num_layers=2, bidirectional=True)
            self.gru = lib.GRU(8, 3, batch_first=True)

        def forward(self, src, src_len):
            packed = lib.utils.rnn.pack_padded_sequence(self.embedding(src), src_len.to("cpu"), enforce_sorted=False)
            packed_out, (h, c) = self.rnn(packed)
            out, lens = lib.utils.rnn.pad_packed_sequence(packed_out, padding_value=0.0)
            again = lib.utils.rnn.pack_padded_sequence(out.transpose(0, 1), lens, batch_first=True,
                                                       enforce_sorted=False)
            o2, h2 = self.gru(again)
            o2, _ = lib.utils.rnn.pad_packed_sequence(o2, batch_first=True, total_length=src.shape[0] + 1)
            return (out ** 2).sum() + h.sum() + c.pow(2).sum() + o2.sum() + h2.pow(2).sum()

    return Encoder()


def test_packed_padded_sequences_through_lstm_and_gru():
    ours, theirs = pair(packed_encoder)
    rng = np.random.default_rng(12)
    lens = np.array([4, 6, 2, 5])
    src = rng.integers(1, V, (6, 4))
    for j, n in enumerate(lens):
        src[n:, j] = PAD
    assert rel(ours(av.tensor(src), av.tensor(lens)), theirs(T(src), T(lens))) < 1e-12
    check(ours, theirs, lambda m, s, n: m(s, n), lambda m, s, n: m(s, n), (src, lens),  # lengths traced
          modes=("eager", "cpu"))
    from avalon.nn.utils.rnn import pack_padded_sequence, pad_sequence
    with pytest.raises(RuntimeError, match="must be sorted in decreasing order"):
        pack_padded_sequence(av.tensor(src), [4, 6, 2, 5])
    seqs = [rng.standard_normal((k, 3)) for k in (3, 5, 1)]
    for kw in ({}, {"batch_first": True, "padding_value": -1.0}):
        assert rel(pad_sequence([av.tensor(q) for q in seqs], **kw),
                   torch.nn.utils.rnn.pad_sequence([T(q) for q in seqs], **kw)) == 0


# -- 3. U-Net: conv blocks with batch norm, transposed convs, skip concat, interpolate; dice + BCE ------

def unet(lib, F_, th):
    def block(i, o):  # (one conv where U-Net has two: the same ops, a smaller graph to compile)
        return lib.Sequential(lib.Conv2d(i, o, 3, padding=1, bias=False), lib.BatchNorm2d(o), lib.ReLU(inplace=True))

    class UNet(lib.Module):
        def __init__(self, c=4):
            super().__init__()
            self.inc, self.down1, self.down2 = block(1, c), block(c, 2 * c), block(2 * c, 4 * c)
            self.pool = lib.MaxPool2d(2)
            self.up2 = lib.ConvTranspose2d(4 * c, 2 * c, kernel_size=2, stride=2)
            self.conv2 = block(4 * c, 2 * c)
            self.up1 = lib.ConvTranspose2d(2 * c, c, kernel_size=2, stride=2)
            self.conv1 = block(2 * c, c)
            self.outc = lib.Conv2d(c, 1, kernel_size=1)

        def forward(self, x):
            x1 = self.inc(x)
            x2 = self.down1(self.pool(x1))
            x3 = self.down2(self.pool(x2))
            u = self.up2(x3)
            u = F_.interpolate(u, size=x2.shape[2:], mode="bilinear", align_corners=False)  # odd sizes
            u = self.conv2(th.cat([x2, u], dim=1))
            u = self.up1(u)
            if u.shape[-2:] != x1.shape[-2:]:
                diff_y, diff_x = x1.size(2) - u.size(2), x1.size(3) - u.size(3)
                u = F_.pad(u, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
            return self.outc(self.conv1(th.cat([x1, u], dim=1)))

    return UNet()


def dice_bce(th, F_):
    def loss(model, x, target, smooth=1.0):
        logits = model(x)
        bce = F_.binary_cross_entropy_with_logits(logits, target)
        probs = th.sigmoid(logits).flatten(1)
        t = target.flatten(1)
        inter = (probs * t).sum(1)
        dice = 1 - (2.0 * inter + smooth) / (probs.sum(1) + t.sum(1) + smooth)
        return bce + dice.mean()
    return loss


def test_unet_with_batch_norm_transposed_convs_and_dice_bce_loss():
    ours, theirs = pair(unet)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((2, 1, 10, 10)), (rng.random((2, 1, 10, 10)) > 0.5).astype(np.float64)
    check(ours, theirs, dice_bce(av, F), dice_bce(torch, TF), (x, y), tol=1e-8, modes=("numpy",))
    # every call above updated the running statistics: one more on fresh copies, then eval mode
    ours, theirs = pair(unet)
    opt, topt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(theirs.parameters(), lr=0.1,
                                                                                       momentum=0.9)
    step = av.compile(lambda m, o, x, y: o.step(av.value_and_grad(dice_bce(av, F))(m, x, y)[1]), backend="cpu")
    for _ in range(2):
        topt.zero_grad()
        dice_bce(torch, TF)(theirs, T(x), T(y)).backward()
        topt.step()
        step(ours, opt, av.tensor(x), av.tensor(y))
    same_weights(ours, theirs, 1e-8)  # weights, running means and variances, num_batches_tracked
    ours.eval()
    theirs.eval()
    with av.no_grad(), torch.no_grad():
        assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-8


@pytest.mark.parametrize("kw", [dict(scale_factor=2, mode="nearest-exact"), dict(size=(4, 9), mode="nearest-exact"),
                                dict(scale_factor=0.5, mode="area"), dict(size=(3, 4), mode="area")])
def test_interpolate_modes_decoders_use(kw):
    x = np.random.default_rng(13).standard_normal((2, 3, 5, 7))
    tx = T(x).requires_grad_(True)
    (TF.interpolate(tx, **kw) ** 3).sum().backward()
    assert rel(F.interpolate(av.tensor(x), **kw), TF.interpolate(T(x), **kw)) < 1e-12
    g = av.compile(av.grad(lambda x: (F.interpolate(x, **kw) ** 3).sum()))(av.tensor(x))
    assert rel(g, tx.grad) < 1e-12


# -- 4. GCN: symmetric-normalized message passing with index_add_ and scatter_add_ ---------------------

def gcn(lib, F_, th, n_in=5, n_hid=8, n_cls=3):
    class GCNConv(lib.Module):
        def __init__(self, i, o):
            super().__init__()
            self.lin = lib.Linear(i, o, bias=False)
            self.bias = lib.Parameter(th.zeros(o))

        def forward(self, x, edge_index):
            n = x.size(0)
            loop = th.arange(n, device=x.device)
            row, col = th.cat([edge_index, th.stack([loop, loop])], dim=1)
            deg = th.zeros(n, dtype=x.dtype).index_add_(0, col, th.ones(col.size(0), dtype=x.dtype))
            dis = deg.pow(-0.5)
            dis.masked_fill_(dis == float("inf"), 0)
            norm = dis[row] * dis[col]
            h = self.lin(x)
            msg = norm.view(-1, 1) * h[row]
            out = th.zeros_like(h).scatter_add_(0, col.unsqueeze(-1).expand_as(msg), msg)
            return out + self.bias

    class GCN(lib.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = GCNConv(n_in, n_hid), GCNConv(n_hid, n_cls)

        def forward(self, x, edge_index):
            x = F_.dropout(F_.relu(self.conv1(x, edge_index)), p=0.5, training=self.training)
            return F_.log_softmax(self.conv2(x, edge_index), dim=1)

    return GCN()


def gcn_loss(F_):
    def loss(model, x, edge_index, y, idx_train):  # pygcn's integer indices (a traced bool mask's result
        out = model(x, edge_index)                 # shape would depend on its values)
        return F_.nll_loss(out[idx_train], y[idx_train])
    return loss


def test_gcn_message_passing_with_index_add_and_scatter_add():
    ours, theirs = pair(gcn)
    ours.eval()
    theirs.eval()
    rng = np.random.default_rng(4)
    n = 7
    edges = np.array([[0, 1, 1, 2, 3, 4, 5, 0], [1, 0, 2, 1, 4, 3, 0, 5]])  # node 6 is isolated
    x, y = rng.standard_normal((n, 5)), rng.integers(0, 3, n)
    mask = np.array([True, True, False, True, True, False, True])
    assert rel(ours(av.tensor(x), av.tensor(edges)), theirs(T(x), T(edges))) < 1e-12
    check(ours, theirs, gcn_loss(F), gcn_loss(TF), (x, edges, y, np.flatnonzero(mask)))
    with av.no_grad():
        pred = ours(av.tensor(x), av.tensor(edges)).argmax(dim=1)
        acc = (pred[av.tensor(~mask)] == av.tensor(y)[av.tensor(~mask)]).sum().item() / int((~mask).sum())
    tpred = theirs(T(x), T(edges)).argmax(dim=1)
    assert acc == (tpred[T(~mask)] == T(y)[T(~mask)]).sum().item() / int((~mask).sum())


# -- 5. SimCLR: NT-Xent over a cosine similarity matrix with the diagonal masked -----------------------

def simclr(lib, F_, th):
    class SimCLR(lib.Module):
        def __init__(self):
            super().__init__()
            self.encoder = lib.Sequential(lib.Linear(6, 10), lib.ReLU())
            self.projector = lib.Sequential(lib.Linear(10, 10), lib.BatchNorm1d(10), lib.ReLU(), lib.Linear(10, 4))

        def forward(self, x):
            return self.projector(self.encoder(x))

    return SimCLR()


def nt_xent(th, F_, temperature=0.5):
    def loss(model, x1, x2):
        z = F_.normalize(th.cat([model(x1), model(x2)], dim=0), dim=1)
        n = z.shape[0] // 2
        sim = F_.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2) / temperature
        sim.masked_fill_(th.eye(2 * n, dtype=th.bool), float("-inf"))
        labels = th.cat([th.arange(n, 2 * n), th.arange(0, n)])
        return F_.cross_entropy(sim, labels)
    return loss


def info_nce(th, F_, temperature=0.5):
    """SimCLR's other common form: the diagonal and the positives picked out with boolean masks built
    from `eye` and `arange` inside the loss (constants: their values are known while tracing)."""
    def loss(model, x1, x2):
        feats = F_.normalize(th.cat([model(x1), model(x2)], dim=0), dim=1)
        labels = th.cat([th.arange(x1.shape[0]) for _ in range(2)], dim=0)
        labels = (labels.unsqueeze(0) == labels.unsqueeze(1)).float()
        sim = th.matmul(feats, feats.T)
        mask = th.eye(labels.shape[0], dtype=th.bool)
        labels = labels[~mask].view(labels.shape[0], -1)
        sim = sim[~mask].view(sim.shape[0], -1)
        positives = sim[labels.bool()].view(labels.shape[0], -1)
        negatives = sim[~labels.bool()].view(sim.shape[0], -1)
        logits = th.cat([positives, negatives], dim=1) / temperature
        return F_.cross_entropy(logits, th.zeros(logits.shape[0], dtype=th.long))
    return loss


def test_simclr_info_nce_with_masks_built_inside_the_loss():
    ours, theirs = pair(simclr)
    rng = np.random.default_rng(15)
    x1, x2 = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    check(ours, theirs, info_nce(av, F), info_nce(torch, TF), (x1, x2))  # no array baked in: no warning
    step = av.compile(av.value_and_grad(info_nce(av, F)))
    step(ours, av.tensor(x1), av.tensor(x2))
    step(ours, av.tensor(x2), av.tensor(x1))
    assert step.cache_info().misses == 1
    with pytest.raises(IndexError, match="traced boolean mask"):  # a mask of the data's values still says why
        av.grad(lambda m, x: m(x)[x[:, 0] > 0].sum())(ours, av.tensor(x1))


def test_simclr_nt_xent_loss():
    ours, theirs = pair(simclr)
    rng = np.random.default_rng(5)
    x1, x2 = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    check(ours, theirs, nt_xent(av, F), nt_xent(torch, TF), (x1, x2))
    with av.no_grad(), torch.no_grad():  # top-1: does each view find its pair
        z, tz = F.normalize(ours(av.tensor(x1)), dim=1), TF.normalize(theirs(T(x1)), dim=1)
        w, tw = F.normalize(ours(av.tensor(x2)), dim=1), TF.normalize(theirs(T(x2)), dim=1)
        sim, tsim = z @ w.T, tz @ tw.T
        assert rel(sim, tsim) < 1e-9
        assert (sim.argmax(dim=1) == av.arange(4)).float().mean().item() == \
            (tsim.argmax(dim=1) == torch.arange(4)).float().mean().item()


# -- 6. ViT: conv patch embedding, cls token, learned positions, nn.TransformerEncoder ------------------

def vit(lib, F_, th, img=8, patch=4, d=8, depth=2, heads=2, n_cls=3):
    class ViT(lib.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = lib.Conv2d(3, d, kernel_size=patch, stride=patch)
            self.cls_token = lib.Parameter(th.zeros(1, 1, d))
            self.pos_embed = lib.Parameter(th.randn(1, (img // patch) ** 2 + 1, d) * 0.02)
            layer = lib.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, activation="gelu",
                                                batch_first=True, norm_first=True)
            self.encoder = lib.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)
            self.norm = lib.LayerNorm(d)
            self.head = lib.Linear(d, n_cls)
            lib.init.trunc_normal_(self.cls_token, std=0.02)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)  # B, N, D
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            x = th.cat((cls, x), dim=1) + self.pos_embed
            x = self.encoder(x)
            return self.head(self.norm(x[:, 0]))

    return ViT()


def vit_loss(F_):
    def loss(model, x, y):
        return F_.cross_entropy(model(x), y, label_smoothing=0.1)
    return loss


def test_vit_with_cls_token_and_transformer_encoder():
    ours, theirs = pair(vit)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((2, 3, 8, 8)), rng.integers(0, 3, 2)
    assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-10
    check(ours, theirs, vit_loss(F), vit_loss(TF), (x, y), modes=("eager", "cpu"))
    decay = [p for n, p in ours.named_parameters() if p.ndim >= 2 and "token" not in n and "pos" not in n]
    tdecay = [p for n, p in theirs.named_parameters() if p.ndim >= 2 and "token" not in n and "pos" not in n]
    rest = [p for n, p in ours.named_parameters() if not (p.ndim >= 2 and "token" not in n and "pos" not in n)]
    trest = [p for n, p in theirs.named_parameters() if not (p.ndim >= 2 and "token" not in n and "pos" not in n)]
    opt = optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=1e-2)
    topt = torch.optim.AdamW([{"params": tdecay, "weight_decay": 0.05}, {"params": trest, "weight_decay": 0.0}],
                             lr=1e-2)
    topt.step()  # the gradients `check` left
    _, g = av.value_and_grad(vit_loss(F))(ours, av.tensor(x), av.tensor(y))
    opt.step(g)
    same_weights(ours, theirs, 1e-9)
    ours.eval()
    theirs.eval()
    with av.no_grad(), torch.no_grad():  # torch's inference fast path
        assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-9


# -- 7. RealNVP: affine coupling layers, log-determinant, a Normal prior's log_prob ---------------------

def realnvp(lib, F_, th, dim=4, hidden=16, n_layers=4):
    class Coupling(lib.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)
            self.scale = lib.Sequential(lib.Linear(dim, hidden), lib.LeakyReLU(), lib.Linear(hidden, dim), lib.Tanh())
            self.shift = lib.Sequential(lib.Linear(dim, hidden), lib.LeakyReLU(), lib.Linear(hidden, dim))

        def forward(self, x):
            xm = x * self.mask
            s, t = self.scale(xm) * (1 - self.mask), self.shift(xm) * (1 - self.mask)
            return xm + (1 - self.mask) * (x * th.exp(s) + t), s.sum(dim=1)

        def inverse(self, z):
            zm = z * self.mask
            s, t = self.scale(zm) * (1 - self.mask), self.shift(zm) * (1 - self.mask)
            return zm + (1 - self.mask) * (z - t) * th.exp(-s)

    class RealNVP(lib.Module):
        def __init__(self):
            super().__init__()
            masks = [th.arange(dim) % 2 == i % 2 for i in range(n_layers)]
            self.layers = lib.ModuleList([Coupling(m.float()) for m in masks])
            self.register_buffer("loc", th.zeros(dim))
            self.register_buffer("cov", th.eye(dim) * 1.5 + 0.25)

        def log_prob(self, x):
            log_det = th.zeros(x.shape[0], dtype=x.dtype)
            for layer in self.layers:
                x, ld = layer(x)
                log_det = log_det + ld
            prior = th.distributions.MultivariateNormal(self.loc, self.cov)
            return prior.log_prob(x) + log_det

        def sample_from(self, z):
            for layer in reversed(self.layers):
                z = layer.inverse(z)
            return z

    return RealNVP()


def test_realnvp_coupling_layers_log_likelihood_and_inverse():
    ours, theirs = pair(realnvp)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4)) * np.array([1.0, 2.0, 0.5, 1.5])
    assert rel(ours.log_prob(av.tensor(x)), theirs.log_prob(T(x))) < 1e-12
    check(ours, theirs, lambda m, x: -m.log_prob(x).mean(), lambda m, x: -m.log_prob(x).mean(), (x,))
    z = rng.standard_normal((3, 4))
    back = ours.sample_from(av.tensor(z))
    assert rel(back, theirs.sample_from(T(z))) < 1e-12
    zz = av.tensor(back)
    for layer in ours.layers:
        zz, _ = layer(zz)
    assert rel(zz, z) < 1e-12  # forward(inverse(z)) == z


def glow(lib, F_, th, c=4):
    class ActNorm(lib.Module):  # data-dependent initialization on the first batch, as Glow's
        def __init__(self):
            super().__init__()
            self.loc, self.scale = lib.Parameter(th.zeros(1, c, 1, 1)), lib.Parameter(th.ones(1, c, 1, 1))
            self.register_buffer("initialized", th.tensor(0, dtype=th.int64))  # (torch's code: uint8)

        def forward(self, x):
            if self.initialized.item() == 0:
                with th.no_grad():
                    flat = x.permute(1, 0, 2, 3).contiguous().view(c, -1)
                    self.loc.data.copy_(-flat.mean(1).view(1, c, 1, 1))
                    self.scale.data.copy_(1 / (flat.std(1).view(1, c, 1, 1) + 1e-6))
                self.initialized.fill_(1)
            return self.scale * (x + self.loc), x.shape[2] * x.shape[3] * th.sum(th.log(th.abs(self.scale)))

    class InvConv(lib.Module):
        def __init__(self):
            super().__init__()
            self.weight = lib.Parameter((th.eye(c) + 0.3 * th.randn(c, c)).unsqueeze(2).unsqueeze(3))

        def forward(self, x):
            logdet = x.shape[2] * x.shape[3] * th.slogdet(self.weight.squeeze())[1]
            return F_.conv2d(x, self.weight), logdet

    class Flow(lib.Module):
        def __init__(self):
            super().__init__()
            self.actnorm, self.invconv = ActNorm(), InvConv()

        def forward(self, x):
            x, ld1 = self.actnorm(x)
            z, ld2 = self.invconv(x)
            return (0.5 * z ** 2).sum() - ld1 - ld2

    return Flow()


def test_glow_actnorm_data_dependent_init_and_invertible_1x1_conv():
    ours, theirs = pair(glow)
    x = np.random.default_rng(16).standard_normal((2, 4, 3, 3)) * 2 + 1
    assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-12  # initializes both
    assert ours.actnorm.initialized.item() == 1
    same_weights(ours, theirs, 1e-12)
    check(ours, theirs, lambda m, x: m(x), lambda m, x: m(x), (x * 0.5,))


@pytest.mark.parametrize("upper", [False, True])
def test_cholesky_and_triangular_solves_with_gradients(upper):
    rng = np.random.default_rng(17)
    a, b = rng.standard_normal((2, 4, 4)), rng.standard_normal((2, 4, 3))
    spd, tri = a @ a.transpose(0, 2, 1) + np.eye(4), (np.triu(a) if upper else np.tril(a)) + 3 * np.eye(4)
    ts, tt, tb = (T(v).requires_grad_(True) for v in (spd, tri, b))
    want = (torch.linalg.cholesky(ts, upper=upper).sum() + torch.linalg.solve_triangular(tt, tb, upper=upper).pow(2).sum()
            + torch.linalg.solve_triangular(tt, tb.mT, upper=upper, left=False, unitriangular=True).sum())
    want.backward()

    def f(s, t, b):
        return (av.linalg.cholesky(s, upper=upper).sum() + av.linalg.solve_triangular(t, b, upper=upper).pow(2).sum()
                + av.linalg.solve_triangular(t, b.mT, upper=upper, left=False, unitriangular=True).sum())

    value, grads = av.compile(av.value_and_grad(f, argnums=(0, 1, 2)), backend="cpu")(*map(av.tensor, (spd, tri, b)))
    assert rel(value, want) < 1e-12
    for g, t in zip(grads, (ts, tt, tb)):
        assert rel(g, t.grad) < 1e-12  # symmetric for cholesky, on the triangle only for the solves


def test_flow_and_vae_priors_match_torch_distributions():
    rng = np.random.default_rng(14)
    a = rng.standard_normal((3, 4, 4))
    cov, loc, x = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(4), rng.standard_normal((3, 4)), rng.standard_normal((5, 3, 4))
    for kw, m in (("covariance_matrix", cov), ("precision_matrix", cov), ("scale_tril", np.linalg.cholesky(cov))):
        tl, tm = T(loc).requires_grad_(True), T(m).requires_grad_(True)
        d = torch.distributions.MultivariateNormal(tl, **{kw: tm})
        want = d.log_prob(T(x)).sum() + d.entropy().sum() + torch.distributions.kl_divergence(
            d, torch.distributions.MultivariateNormal(torch.zeros(4, dtype=torch.float64), torch.eye(4).double())).sum()
        want.backward()

        def f(loc, m, x, kw=kw):
            d = av.distributions.MultivariateNormal(loc, **{kw: m})
            q = av.distributions.MultivariateNormal(av.zeros(4, dtype=av.float64), av.eye(4, dtype=av.float64))
            return d.log_prob(x).sum() + d.entropy().sum() + av.distributions.kl_divergence(d, q).sum()

        value, (gl, gm) = av.compile(av.value_and_grad(f, argnums=(0, 1)))(av.tensor(loc), av.tensor(m), av.tensor(x))
        assert rel(value, want) < 1e-12 and rel(gl, tl.grad) < 1e-12 and rel(gm, tm.grad) < 1e-12, kw
    d = av.distributions.MultivariateNormal(av.tensor(loc), av.tensor(cov))
    assert d.batch_shape == (3,) and d.event_shape == (4,) and d.rsample((2,)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="PositiveDefinite"):
        av.distributions.MultivariateNormal(av.zeros(2), av.tensor([[1.0, 2.0], [2.0, 1.0]]))
    scale = np.abs(loc) + 0.1
    ind = av.distributions.Independent(av.distributions.Normal(av.tensor(loc), av.tensor(scale)), 1)
    tind = torch.distributions.Independent(torch.distributions.Normal(T(loc), T(scale)), 1)
    assert ind.batch_shape == (3,) and ind.event_shape == (4,)
    assert rel(ind.log_prob(av.tensor(x)), tind.log_prob(T(x))) < 1e-12 and rel(ind.entropy(), tind.entropy()) < 1e-12
    q = av.distributions.Independent(av.distributions.Normal(av.tensor(loc * 0), av.tensor(scale + 1)), 1)
    tq = torch.distributions.Independent(torch.distributions.Normal(T(loc * 0), T(scale + 1)), 1)
    assert rel(av.distributions.kl_divergence(ind, q), torch.distributions.kl_divergence(tind, tq)) < 1e-12


# -- 8. Knowledge distillation: KL at a temperature, label smoothing, warmup + cosine, clipping, AdamW ----

def mlp(width, drop=0.0):
    def make(lib, F_, th):
        return lib.Sequential(lib.Linear(6, width), lib.LayerNorm(width), lib.GELU(), lib.Dropout(drop),
                              lib.Linear(width, 4))
    return make


def distill(th, F_, T_=3.0, alpha=0.7):
    def loss(student, teacher, x, y):
        with th.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        kd = F_.kl_div(F_.log_softmax(s_logits / T_, dim=1), F_.softmax(t_logits / T_, dim=1),
                       reduction="batchmean") * T_ * T_
        return alpha * kd + (1 - alpha) * F_.cross_entropy(s_logits, y, label_smoothing=0.1)
    return loss


def kd_setup(lib, optim_, student, warmup=2, total=6):
    decay = [p for n, p in student.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in student.named_parameters() if p.ndim <= 1]  # biases and norms
    opt = optim_.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                       lr=1e-2, betas=(0.9, 0.98))
    warm = optim_.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup)
    cos = optim_.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=1e-4)
    return opt, optim_.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[warmup])


def test_knowledge_distillation_with_schedules_clipping_and_adamw_groups():
    student, t_student = pair(mlp(8))
    teacher, t_teacher = pair(mlp(16, drop=0.5), seed=1)
    teacher.eval()
    t_teacher.eval()
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((5, 6)), rng.integers(0, 4, 5)

    def t_loss(m, x, y):
        return distill(torch, TF)(m, t_teacher, x, y)

    check(student, t_student, lambda m, x, y: distill(av, F)(m, teacher, x, y), t_loss, (x, y), modes=("eager",),
          strict=False)  # the teacher's weights, closed over, are constants
    opt, sched = kd_setup(nn, optim, student)
    topt, tsched = kd_setup(torch.nn, torch.optim, t_student)

    def step(s, t, opt, x, y):
        loss, grads = av.value_and_grad(distill(av, F))(s, t, x, y)
        nn.utils.clip_grad_norm_(grads, max_norm=0.5)
        opt.step(grads)
        return loss

    cstep = av.compile(step, backend="cpu")
    for _ in range(5):
        topt.zero_grad()
        tl = t_loss(t_student, T(x), T(y))
        tl.backward()
        torch.nn.utils.clip_grad_norm_(t_student.parameters(), max_norm=0.5)
        topt.step()
        tsched.step()
        loss = cstep(student, teacher, opt, av.tensor(x), av.tensor(y))
        sched.step()
        assert rel(loss, tl) < 1e-9
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in topt.param_groups], rel=1e-12)
    same_weights(student, t_student, 1e-8)
    assert cstep.cache_info().misses == 1  # the schedule changed the rate without retracing


# -- idioms in passing ---------------------------------------------------------------------------------

def test_train_eval_where_one_hot_and_checkpoint_round_trip(tmp_path):
    def make(lib, F_, th):
        return lib.Sequential(lib.Linear(4, 8), lib.BatchNorm1d(8), lib.Dropout(0.5), lib.Linear(8, 3))

    ours, theirs = pair(make)
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    a, b = ours(av.tensor(x)), ours(av.tensor(x))  # train: fresh dropout masks, batch statistics
    assert not np.allclose(a.numpy(), b.numpy())
    theirs(T(x)), theirs(T(x))
    ours.eval()
    theirs.eval()
    assert not ours[2].training and ours[1].num_batches_tracked.item() == 2
    with av.no_grad(), torch.no_grad():
        out, want = ours(av.tensor(x)), theirs(T(x))  # running statistics, no dropout
        assert rel(out, want) < 1e-12
        assert rel(F.one_hot(av.tensor(y), num_classes=3), TF.one_hot(T(y), num_classes=3)) < 1e-12
        assert rel(av.where(out > 0, out, 0.0), torch.where(want > 0, want, 0.0)) < 1e-12
        assert all((p.numpy() == q.numpy()).all() for p, q in zip(av.where(out > 0), torch.where(want > 0)))
        masked = out.clone().masked_fill_(av.tensor(y)[:, None] == av.arange(3), float("-inf"))
        assert rel(masked.softmax(-1), want.clone().masked_fill_(T(y)[:, None] == torch.arange(3),
                                                                 float("-inf")).softmax(-1)) < 1e-12
        assert (out.argmax(dim=1) == av.tensor(y)).float().mean().item() == \
            (want.argmax(dim=1) == T(y)).float().mean().item()
    with pytest.raises(TypeError, match="where"):
        av.where(out > 0, out)
    av.save(ours.state_dict(), tmp_path / "m.safetensors")
    again = make(nn, F, av).double().eval()
    again.load_state_dict(av.load(tmp_path / "m.safetensors"))
    assert rel(again(av.tensor(x)), want) < 1e-12

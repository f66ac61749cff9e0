"""More programs as tutorials and papers write them in PyTorch, ported by renaming imports (round 2 of
test_port_programs.py): each is written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or
avalon), trained a few steps from torch's weights on random data, and compared with torch after every
step (losses, parameters, buffers, optimizer state), eagerly and compiled (numpy and cpu backends):
a char-level LSTM with truncated BPTT, two VQ-VAEs (a straight-through autograd.Function; an EMA
codebook written inside the forward), REINFORCE with a baseline, DCGAN and weight-clipped WGAN,
gradient accumulation with an EMA model, PGD adversarial training and deep dream, PointNet, an
nn.Transformer translator with greedy decoding, bfloat16 autocast with a GradScaler, checkpoints
(Avalon's, torch's, with the RNG state), DQN and neural style transfer with L-BFGS.

What the ports change is what the README says differs on purpose: gradients are values
(`av.value_and_grad`, `opt.step(grads)`), a forward that torch shares between two backward passes is
taken once (`has_aux`), and state a traced forward writes is state it finds there (style transfer's
`self.loss`)."""
from __future__ import annotations

import contextlib
import math
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


def pair(make, seed: int = 0, dtype=torch.float64):
    """torch's model and Avalon's, in float64 (or `dtype`), with torch's weights loaded into Avalon's."""
    torch.manual_seed(seed)
    theirs = make(torch.nn, TF, torch).to(dtype)
    ours = make(nn, F, av).to(av.float64 if dtype is torch.float64 else av.float32)
    av.nn.load_state_dict(ours, theirs.state_dict())
    return ours, theirs


def same_weights(ours, theirs, tol: float):
    """Every parameter and buffer (running statistics, num_batches_tracked) agrees with torch's, relative
    to its largest element or 1e-4, whichever is larger: a bias whose gradient is zero in exact arithmetic
    (a shift that a later batch norm removes) holds roundoff, ~1e-17, on both sides."""
    sd = theirs.state_dict()
    assert sorted(ours.state_dict()) == sorted(sd)
    for k, v in ours.state_dict().items():
        a, b = v.numpy().astype(np.float64), sd[k].detach().numpy().astype(np.float64)
        assert np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-4) < tol, k


@contextlib.contextmanager
def strict():
    """Nothing captured or baked in while tracing: those warnings are errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def compiled(fn, mode: str):
    return fn if mode == "eager" else av.compile(fn, backend=mode)


def train_step(loss_fn, with_grads: bool = False):
    """The port of `loss = loss_fn(model, *xs); loss.backward(); opt.step()`: the loss, and its
    gradients if asked."""
    def step(model, opt, *xs):
        loss, grads = av.value_and_grad(loss_fn)(model, *xs)
        opt.step(grads)
        return (loss, grads) if with_grads else loss
    return step


# -- 1. char-level LSTM language model: truncated BPTT, detached hidden state, clipping, StepLR --------

VOCAB, EMB, HID = 7, 5, 6


def char_lm(lib, F_, th):
    class CharLM(lib.Module):
        def __init__(self):
            super().__init__()
            self.embed = lib.Embedding(VOCAB, EMB)
            self.lstm = lib.LSTM(EMB, HID, num_layers=2, batch_first=True)
            self.fc = lib.Linear(HID, VOCAB)

        def forward(self, x, hidden):
            out, hidden = self.lstm(self.embed(x), hidden)
            return self.fc(out.reshape(-1, HID)), hidden

        def init_hidden(self, batch):
            w = next(self.parameters())
            return (w.new_zeros(2, batch, HID), w.new_zeros(2, batch, HID))

    return CharLM()


def repackage(h):
    """word_language_model's repackage_hidden: cut the graph between chunks."""
    return tuple(v.detach() for v in h)


def lm_loss(F_):
    def loss(model, x, y, hidden):
        logits, hidden = model(x, hidden)
        return F_.cross_entropy(logits, y.reshape(-1)), hidden
    return loss


def lm_step(model, opt, x, y, hidden):
    (loss, hidden), grads = av.value_and_grad(lm_loss(F), has_aux=True)(model, x, y, repackage(hidden))
    norm = nn.utils.clip_grad_norm_(grads, 0.25)
    opt.step(grads)
    return loss, hidden, norm


def test_char_lstm_truncated_bptt_with_carried_hidden_state_clipping_and_step_lr():
    ours, theirs = pair(char_lm)
    data = np.random.default_rng(0).integers(0, VOCAB, (3, 13))  # 3 streams, 4 chunks of 3 tokens
    opt, topt = optim.SGD(ours.parameters(), lr=0.5), torch.optim.SGD(theirs.parameters(), lr=0.5)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=1, gamma=0.5)
    run = av.compile(lm_step, backend="numpy")
    for epoch in range(2):  # the first epoch eagerly, the second compiled
        step = run if epoch else lm_step
        hidden, thidden = ours.init_hidden(3), theirs.init_hidden(3)
        for i in range(0, 12, 3):
            x, y = data[:, i:i + 3], data[:, i + 1:i + 4]
            thidden = repackage(thidden)
            topt.zero_grad()
            tlogits, thidden = theirs(T(x), thidden)
            tl = TF.cross_entropy(tlogits, T(y).reshape(-1))
            tl.backward()
            tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.25)
            topt.step()
            with strict():
                loss, hidden, norm = step(ours, opt, av.tensor(x), av.tensor(y), hidden)
            assert rel(loss, tl) < 1e-12 and rel(norm, tnorm) < 1e-12, (epoch, i)
            assert rel(hidden[0], thidden[0]) < 1e-11 and rel(hidden[1], thidden[1]) < 1e-11
        sched.step()
        tsched.step()
        assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]
        same_weights(ours, theirs, 1e-11)
    assert run.cache_info().misses == 1  # the first chunk's zeros and later chunks' states: one trace
    ours.eval()
    theirs.eval()
    with av.no_grad(), torch.no_grad():  # greedy generation, one character at a time
        assert (generate(av, ours, 8).numpy() == generate(torch, theirs, 8).numpy()).all()


def generate(th, model, n, start=3):
    hidden = model.init_hidden(1)
    inp, out = th.tensor([[start]]), []
    for _ in range(n):
        logits, hidden = model(inp, hidden)
        inp = logits.argmax(-1).view(1, 1)
        out.append(inp.item())
    return th.tensor(out)


# -- 2. VQ-VAE: a straight-through vector quantizer as an autograd.Function, codebook and commitment ---

def vq_functions(th):
    class VectorQuantizationStraightThrough(th.autograd.Function):  # as in ritheshkumar95/pytorch-vqvae
        @staticmethod
        def forward(ctx, inputs, codebook):
            flat = inputs.reshape(-1, codebook.size(1))
            dist = th.addmm(th.sum(codebook ** 2, dim=1) + th.sum(flat ** 2, dim=1, keepdim=True),
                            flat, codebook.t(), alpha=-2.0, beta=1.0)
            indices = th.argmin(dist, dim=1)
            ctx.save_for_backward(indices, codebook)
            ctx.mark_non_differentiable(indices)
            codes = th.index_select(codebook, dim=0, index=indices).view_as(inputs)
            return codes, indices

        @staticmethod
        def backward(ctx, grad_output, grad_indices):
            grad_inputs = grad_codebook = None
            if ctx.needs_input_grad[0]:
                grad_inputs = grad_output.clone()  # straight through
            if ctx.needs_input_grad[1]:
                indices, codebook = ctx.saved_tensors
                flat = grad_output.contiguous().view(-1, codebook.size(1))
                grad_codebook = th.zeros_like(codebook).index_add_(0, indices, flat)
            return grad_inputs, grad_codebook

    return VectorQuantizationStraightThrough


def vqvae(lib, F_, th, k=6, d=3):
    vq_st = vq_functions(th).apply

    class VQEmbedding(lib.Module):
        def __init__(self):
            super().__init__()
            self.embedding = lib.Embedding(k, d)
            self.embedding.weight.data.uniform_(-1.0 / k, 1.0 / k)

        def straight_through(self, z_e_x):
            z_e_x_ = z_e_x.permute(0, 2, 3, 1).contiguous()
            z_q_x_, indices = vq_st(z_e_x_, self.embedding.weight.detach())
            z_q_x = z_q_x_.permute(0, 3, 1, 2).contiguous()
            z_q_x_bar = th.index_select(self.embedding.weight, dim=0, index=indices).view_as(z_e_x_)
            return z_q_x, z_q_x_bar.permute(0, 3, 1, 2).contiguous()

    class VQVAE(lib.Module):
        def __init__(self):
            super().__init__()
            self.encoder = lib.Sequential(lib.Conv2d(1, 4, 4, 2, 1), lib.ReLU(True), lib.Conv2d(4, d, 3, 1, 1))
            self.codebook = VQEmbedding()
            self.decoder = lib.Sequential(lib.ReLU(True), lib.ConvTranspose2d(d, 4, 4, 2, 1), lib.Tanh(),
                                          lib.Conv2d(4, 1, 3, 1, 1))

        def forward(self, x):
            z_e_x = self.encoder(x)
            z_q_x_st, z_q_x = self.codebook.straight_through(z_e_x)
            return self.decoder(z_q_x_st), z_e_x, z_q_x

    return VQVAE()


def vq_loss(F_, beta=0.25):
    def loss(model, x):
        x_tilde, z_e_x, z_q_x = model(x)
        loss_recons = F_.mse_loss(x_tilde, x)
        loss_vq = F_.mse_loss(z_q_x, z_e_x.detach())
        loss_commit = F_.mse_loss(z_e_x, z_q_x.detach())
        return loss_recons + loss_vq + beta * loss_commit
    return loss


def test_vqvae_straight_through_function_codebook_and_commitment_losses():
    ours, theirs = pair(vqvae)
    x = np.random.default_rng(1).standard_normal((2, 1, 6, 6))
    opt, topt = optim.Adam(ours.parameters(), lr=3e-2), torch.optim.Adam(theirs.parameters(), lr=3e-2)
    step = train_step(vq_loss(F), with_grads=True)
    for mode in ("eager", "cpu"):
        run = compiled(step, mode)
        for _ in range(2):
            topt.zero_grad()
            tl = vq_loss(TF)(theirs, T(x))
            tl.backward()
            with strict():
                loss, grads = run(ours, opt, av.tensor(x))
            assert rel(loss, tl) < 1e-12, mode
            for k, p in theirs.named_parameters():  # the codebook: only the vq loss's gradient
                assert rel(grads[k], p.grad) < 1e-10, (mode, k)
            topt.step()
            same_weights(ours, theirs, 1e-10)
    with av.no_grad(), torch.no_grad():  # the codes chosen agree
        ze, tze = ours.encoder(av.tensor(x)).permute(0, 2, 3, 1), theirs.encoder(T(x)).permute(0, 2, 3, 1)
        idx = vq_functions(av).apply(ze, ours.codebook.embedding.weight)[1]
        assert (idx.numpy() == vq_functions(torch).apply(tze, theirs.codebook.embedding.weight)[1].numpy()).all()



def ema_vqvae(lib, F_, th, dim=3, n_embed=5, decay=0.8, eps=1e-5):
    class Quantize(lib.Module):  # rosinality/vq-vae-2-pytorch: the codebook is an EMA of the encodings
        def __init__(self):
            super().__init__()
            embed = th.randn(dim, n_embed)
            self.register_buffer("embed", embed)
            self.register_buffer("cluster_size", th.zeros(n_embed))
            self.register_buffer("embed_avg", embed.clone())

        def forward(self, input):
            flatten = input.reshape(-1, dim)
            dist = flatten.pow(2).sum(1, keepdim=True) - 2 * flatten @ self.embed + self.embed.pow(2).sum(0, keepdim=True)
            _, embed_ind = (-dist).max(1)
            embed_onehot = F_.one_hot(embed_ind, n_embed).type(flatten.dtype)
            embed_ind = embed_ind.view(*input.shape[:-1])
            quantize = F_.embedding(embed_ind, self.embed.transpose(0, 1))
            if self.training:
                embed_onehot_sum = embed_onehot.sum(0)
                embed_sum = flatten.transpose(0, 1) @ embed_onehot
                self.cluster_size.data.mul_(decay).add_(embed_onehot_sum, alpha=1 - decay)
                self.embed_avg.data.mul_(decay).add_(embed_sum, alpha=1 - decay)
                n = self.cluster_size.sum()
                cluster_size = (self.cluster_size + eps) / (n + n_embed * eps) * n
                self.embed.data.copy_(self.embed_avg / cluster_size.unsqueeze(0))
            diff = (quantize.detach() - input).pow(2).mean()
            quantize = input + (quantize - input).detach()
            return quantize, diff, embed_ind

    class VQVAE(lib.Module):
        def __init__(self):
            super().__init__()
            self.enc = lib.Sequential(lib.Conv2d(1, 4, 3, 2, 1), lib.ELU(), lib.Conv2d(4, dim, 1))
            self.quantize = Quantize()
            self.dec = lib.Sequential(lib.ConvTranspose2d(dim, 4, 4, 2, 1), lib.ELU(), lib.Conv2d(4, 1, 3, 1, 1))

        def forward(self, x):
            quant, diff, _ = self.quantize(self.enc(x).permute(0, 2, 3, 1))
            return self.dec(quant.permute(0, 3, 1, 2)), diff

    return VQVAE()


def ema_vq_loss(F_, beta=0.25):
    def loss(model, x):
        out, latent_loss = model(x)
        return F_.mse_loss(out, x) + beta * latent_loss.mean()
    return loss


def test_vqvae_ema_codebook_updated_in_place_inside_the_forward():
    ours, theirs = pair(ema_vqvae)
    x = np.random.default_rng(11).standard_normal((2, 1, 6, 6))
    opt, topt = optim.Adam(ours.parameters(), lr=3e-2), torch.optim.Adam(theirs.parameters(), lr=3e-2)
    step = train_step(ema_vq_loss(F))
    run = av.compile(step, backend="numpy")
    for it in range(3):
        topt.zero_grad()
        tl = ema_vq_loss(TF)(theirs, T(x))
        tl.backward()
        topt.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(x))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-11)  # the codebook, cluster sizes and averages: buffers the forward wrote
    assert not np.allclose(ours.quantize.embed.numpy(), ours.quantize.embed_avg.numpy())


# -- 3. REINFORCE with a learned baseline: Categorical log_prob and entropy, discounted returns --------

N_STATE, N_ACT = 4, 3


def actor_critic(lib, F_, th):
    class Policy(lib.Module):
        def __init__(self):
            super().__init__()
            self.affine = lib.Linear(N_STATE, 16)
            self.action_head = lib.Linear(16, N_ACT)
            self.value_head = lib.Linear(16, 1)

        def forward(self, x):
            x = F_.relu(self.affine(x))
            return F_.softmax(self.action_head(x), dim=-1), self.value_head(x)

    return Policy()


def episode(seed: int, steps: int = 6):
    """A synthetic environment played beforehand: states, the actions taken, their rewards (the
    sampling itself is each library's own random stream, so both sides replay the same draw)."""
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((steps, N_STATE))
    actions = rng.integers(0, N_ACT, steps)
    rewards = (actions == states[:, :N_ACT].argmax(1)).astype(np.float64) - 0.1 * np.abs(states[:, 3])
    return states, actions, rewards


def reinforce_loss(th, F_, gamma=0.99, eps=1e-8):
    def loss(policy, states, actions, rewards):
        probs, values = policy(states)
        m = th.distributions.Categorical(probs)
        log_probs, entropy = m.log_prob(actions), m.entropy()
        returns = th.zeros_like(rewards)  # CleanRL's loop: written in place, last step first
        next_return = 0.0
        for t in reversed(range(rewards.shape[0])):
            returns[t] = next_return = rewards[t] + gamma * next_return
        returns = (returns - returns.mean()) / (returns.std() + eps)
        advantage = returns - values.squeeze(-1).detach()
        policy_loss = -(log_probs * advantage).sum()
        value_loss = F_.smooth_l1_loss(values.squeeze(-1), returns, reduction="sum")
        return policy_loss + value_loss - 0.01 * entropy.mean()
    return loss


def test_reinforce_actor_critic_with_categorical_log_prob_entropy_and_returns():
    ours, theirs = pair(actor_critic)
    opt, topt = optim.Adam(ours.parameters(), lr=3e-2), torch.optim.Adam(theirs.parameters(), lr=3e-2)
    step = train_step(reinforce_loss(av, F))
    run = compiled(step, "numpy")
    for ep in range(3):
        s, a, r = episode(ep)
        topt.zero_grad()
        tl = reinforce_loss(torch, TF)(theirs, T(s), T(a), T(r))
        tl.backward()
        topt.step()
        with strict():
            loss = (run if ep else step)(ours, opt, av.tensor(s), av.tensor(a), av.tensor(r))
        assert rel(loss, tl) < 1e-12, ep
        same_weights(ours, theirs, 1e-11)
    assert run.cache_info().misses == 1
    with av.no_grad():  # acting: sampling from the policy gives valid actions of the batch's shape
        probs, _ = ours(av.tensor(episode(9)[0]))
        m = av.distributions.Categorical(probs)
        act = m.sample()
        assert act.shape == (6,) and act.dtype == av.int64 and ((act.numpy() >= 0) & (act.numpy() < N_ACT)).all()
        tm = torch.distributions.Categorical(theirs(T(episode(9)[0]))[0])
        assert rel(m.log_prob(act), tm.log_prob(T(act.numpy()))) < 1e-12


# -- 4. DCGAN: batch norm in training mode in both nets, two optimizers, detached fakes, BCE with logits -

NZ = 4


def dcgan(lib, F_, th, ngf=4, ndf=4):
    class Generator(lib.Module):
        def __init__(self):
            super().__init__()
            self.main = lib.Sequential(
                lib.ConvTranspose2d(NZ, ngf * 2, 4, 1, 0, bias=False), lib.BatchNorm2d(ngf * 2), lib.ReLU(True),
                lib.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), lib.BatchNorm2d(ngf), lib.ReLU(True),
                lib.ConvTranspose2d(ngf, 1, 4, 2, 1, bias=False), lib.Tanh())

        def forward(self, z):
            return self.main(z)

    class Discriminator(lib.Module):
        def __init__(self):
            super().__init__()
            self.main = lib.Sequential(
                lib.Conv2d(1, ndf, 4, 2, 1, bias=False), lib.LeakyReLU(0.2, inplace=True),
                lib.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), lib.BatchNorm2d(ndf * 2),
                lib.LeakyReLU(0.2, inplace=True), lib.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False))

        def forward(self, x):
            return self.main(x).view(-1)

    def weights_init(m):  # the DCGAN tutorial's
        name = m.__class__.__name__
        if name.find("Conv") != -1:
            lib.init.normal_(m.weight.data, 0.0, 0.02)
        elif name.find("BatchNorm") != -1:
            lib.init.normal_(m.weight.data, 1.0, 0.02)
            lib.init.constant_(m.bias.data, 0)

    class GAN(lib.Module):
        def __init__(self):
            super().__init__()
            self.netG, self.netD = Generator(), Discriminator()
            self.apply(weights_init)

    return GAN()


def g_loss(F_):
    def loss(netG, netD, noise):
        fake = netG(noise)
        out = netD(fake)
        return F_.binary_cross_entropy_with_logits(out, out.new_ones(out.shape)), fake
    return loss


def d_loss(F_):
    def loss(netD, real, fake):
        out_real, out_fake = netD(real), netD(fake.detach())
        return (F_.binary_cross_entropy_with_logits(out_real, out_real.new_ones(out_real.shape))
                + F_.binary_cross_entropy_with_logits(out_fake, out_fake.new_zeros(out_fake.shape)))
    return loss


def gan_step(netG, netD, optG, optD, real, noise):
    """The generator's step first, returning its fakes (the shared forward, taken once: README), then
    the discriminator's on those fakes, detached."""
    (errG, fake), gG = av.value_and_grad(g_loss(F), has_aux=True)(netG, netD, noise)
    optG.step(gG)
    errD, gD = av.value_and_grad(d_loss(F))(netD, real, fake)
    optD.step(gD)
    return errG, errD


def test_dcgan_batch_norm_in_both_nets_two_optimizers_and_detached_fakes():
    fresh = dcgan(nn, F, av)  # weights_init through Module.apply and nn.init on `.data`
    assert abs(fresh.netG.main[1].weight.mean().item() - 1) < 0.05 and (fresh.netD.main[3].bias.numpy() == 0).all()
    assert 0.01 < fresh.netD.main[0].weight.std().item() < 0.03
    ours, theirs = pair(dcgan)
    rng = np.random.default_rng(2)
    kw = dict(lr=2e-3, betas=(0.5, 0.999))
    optG, optD = optim.Adam(ours.netG.parameters(), **kw), optim.Adam(ours.netD.parameters(), **kw)
    toptG, toptD = torch.optim.Adam(theirs.netG.parameters(), **kw), torch.optim.Adam(theirs.netD.parameters(), **kw)
    run = compiled(gan_step, "cpu")
    for it in range(3):
        real, noise = np.tanh(rng.standard_normal((3, 1, 16, 16))), rng.standard_normal((3, NZ, 1, 1))
        tG, tD = theirs.netG, theirs.netD
        toptG.zero_grad()
        terrG, tfake = g_loss(TF)(tG, tD, T(noise))
        terrG.backward()
        toptG.step()
        toptD.zero_grad()  # clears what errG's backward left in D
        terrD = d_loss(TF)(tD, T(real), tfake)
        terrD.backward()
        toptD.step()
        with strict():
            errG, errD = (run if it else gan_step)(ours.netG, ours.netD, optG, optD, av.tensor(real), av.tensor(noise))
        assert rel(errG, terrG) < 1e-11 and rel(errD, terrD) < 1e-11, it
        same_weights(ours, theirs, 1e-10)  # with G's and D's running statistics and batch counts
    ours.eval()
    theirs.eval()
    z = rng.standard_normal((2, NZ, 1, 1))
    with av.no_grad(), torch.no_grad():
        assert rel(ours.netG(av.tensor(z)), theirs.netG(T(z))) < 1e-10



def wgan_step(netG, netD, optG, optD, reals, noises, clip=0.02):
    """The original WGAN: n_critic critic steps, each followed by clipping the critic's weights in place,
    then one generator step (Arjovsky et al.'s main.py)."""
    for real, noise in zip(reals, noises[:-1]):
        with av.no_grad():
            fake = netG(noise)
        errD, gD = av.value_and_grad(lambda D, r, f: D(f).mean() - D(r).mean())(netD, real, fake)
        optD.step(gD)
        for p in netD.parameters():
            p.data.clamp_(-clip, clip)
    errG, gG = av.value_and_grad(lambda G, D, z: -D(G(z)).mean())(netG, netD, noises[-1])
    optG.step(gG)
    return errD, errG


def test_wgan_weight_clipping_in_place_after_each_critic_step_with_rmsprop():
    ours, theirs = pair(dcgan)
    rng = np.random.default_rng(12)
    optG, optD = optim.RMSprop(ours.netG.parameters(), lr=5e-3), optim.RMSprop(ours.netD.parameters(), lr=5e-3)
    toptG = torch.optim.RMSprop(theirs.netG.parameters(), lr=5e-3)
    toptD = torch.optim.RMSprop(theirs.netD.parameters(), lr=5e-3)
    run = compiled(wgan_step, "numpy")
    for it in range(2):
        reals, noises = rng.standard_normal((2, 3, 1, 16, 16)), rng.standard_normal((3, 3, NZ, 1, 1))
        tG, tD = theirs.netG, theirs.netD
        for real, noise in zip(reals, noises[:-1]):
            toptD.zero_grad()
            with torch.no_grad():
                fake = tG(T(noise))
            terrD = tD(fake).mean() - tD(T(real)).mean()
            terrD.backward()
            toptD.step()
            for p in tD.parameters():
                p.data.clamp_(-0.02, 0.02)
        toptG.zero_grad()
        terrG = -tD(tG(T(noises[-1]))).mean()
        terrG.backward()
        toptG.step()
        with strict():
            errD, errG = run(ours.netG, ours.netD, optG, optD, list(map(av.tensor, reals)), list(map(av.tensor, noises)))
        assert rel(errD, terrD) < 1e-11 and rel(errG, terrG) < 1e-11, it
        same_weights(ours, theirs, 1e-10)
        assert max(float(p.abs().max()) for p in ours.netD.parameters()) <= 0.02


# -- 5. gradient accumulation over micro-batches, an EMA of the weights, warmup + cosine as LambdaLR -----

def classifier(lib, F_, th):
    return lib.Sequential(lib.Linear(5, 12, bias=False), lib.BatchNorm1d(12), lib.SiLU(), lib.Linear(12, 3))


def warmup_cosine(warmup=2, total=8):
    def lr_lambda(step):
        if step < warmup:
            return float(step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr_lambda


def ema_update(th):
    @th.no_grad()  # as a decorator
    def update(ema, model, decay):
        for e, p in zip(ema.parameters(), model.parameters()):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)
    return update


def accum_step(model, ema, opt, xs, ys, decay):
    total = None
    for x, y in zip(xs, ys):  # micro-batches: torch's loss / accum, backward() summing into .grad
        loss, g = av.value_and_grad(lambda m, x, y: F.cross_entropy(m(x), y) / len(xs))(model, x, y)
        total = g if total is None else {k: total[k] + g[k] for k in g}
    nn.utils.clip_grad_norm_(total, 1.0)
    opt.step(total)
    ema_update(av)(ema, model, decay)
    return loss


def test_gradient_accumulation_ema_of_weights_and_warmup_cosine_lambda_lr():
    import copy
    ours, theirs = pair(classifier)
    ema, tema = copy.deepcopy(ours), copy.deepcopy(theirs)
    opt = optim.AdamW(ours.parameters(), lr=2e-2, weight_decay=0.01)
    topt = torch.optim.AdamW(theirs.parameters(), lr=2e-2, weight_decay=0.01)
    sched = optim.lr_scheduler.LambdaLR(opt, warmup_cosine())
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, warmup_cosine())
    rng = np.random.default_rng(4)
    run = av.compile(accum_step, backend="cpu")
    for it in range(4):
        x, y = rng.standard_normal((3, 4, 5)), rng.integers(0, 3, (3, 4))  # 3 micro-batches of 4
        topt.zero_grad()
        for xm, ym in zip(x, y):
            tl = TF.cross_entropy(theirs(T(xm)), T(ym)) / 3
            tl.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        topt.step()
        tsched.step()
        ema_update(torch)(tema, theirs, 0.9)
        with strict():
            loss = (run if it else accum_step)(ours, ema, opt, list(map(av.tensor, x)), list(map(av.tensor, y)), 0.9)
        sched.step()
        assert rel(loss, tl) < 1e-12, it
        assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-15)
        same_weights(ours, theirs, 1e-11)
        same_weights(ema, tema, 1e-11)
    assert ours[0].weight is not ema[0].weight
    assert run.cache_info().misses == 1
    ema.eval()
    tema.eval()
    x = rng.standard_normal((2, 5))
    with av.no_grad(), torch.no_grad():
        assert rel(ema(av.tensor(x)), tema(T(x))) < 1e-11


# -- 6. adversarial training (FGSM start, PGD steps) and input optimization: gradients w.r.t. the input --

def small_cnn(lib, F_, th):
    return lib.Sequential(lib.Conv2d(1, 4, 3, padding=1), lib.BatchNorm2d(4), lib.ReLU(), lib.MaxPool2d(2),
                          lib.Flatten(), lib.Linear(4 * 3 * 3, 3))


def pgd_torch(model, x, y, eps=0.1, alpha=0.04, steps=2):
    model.eval()
    x_adv = x.clone().detach().requires_grad_(True)
    for _ in range(steps):
        loss = TF.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1).requires_grad_(True)
    model.train()
    return x_adv.detach()


def pgd_avalon(model, x, y, eps=0.1, alpha=0.04, steps=2):
    model.eval()
    x_adv = x.clone().detach()
    for _ in range(steps):  # x_adv.requires_grad_() and autograd.grad: the gradient w.r.t. argument 1
        grad = av.grad(lambda m, xa, y: F.cross_entropy(m(xa), y), argnums=1)(model, x_adv, y)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = av.min(av.max(x_adv, x - eps), x + eps).clamp(0, 1)
    model.train()
    return x_adv.detach()


def adv_loss(F_, attack):
    def loss(model, x, y):
        x_adv = attack(model, x, y)
        return 0.5 * F_.cross_entropy(model(x), y) + 0.5 * F_.cross_entropy(model(x_adv), y)
    return loss


def test_pgd_adversarial_training_with_input_gradients_in_eval_mode_and_clamp():
    ours, theirs = pair(small_cnn)
    rng = np.random.default_rng(5)
    opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    step = train_step(adv_loss(F, pgd_avalon))
    run = compiled(step, "numpy")
    for it in range(3):
        x, y = rng.random((4, 1, 6, 6)), rng.integers(0, 3, 4)
        x_adv = pgd_avalon(ours, av.tensor(x), av.tensor(y))
        assert rel(x_adv, pgd_torch(theirs, T(x), T(y))) < 1e-12, it
        assert ours.training and float((x_adv - av.tensor(x)).abs().max()) <= 0.1 + 1e-12
        topt.zero_grad()
        tl = adv_loss(TF, pgd_torch)(theirs, T(x), T(y))
        tl.backward()
        topt.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(x), av.tensor(y))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-11)  # eval inside the attack: the running statistics are untouched


def test_deep_dream_input_optimization_with_an_optimizer_over_the_image():
    ours, theirs = pair(small_cnn)
    ours.eval()
    theirs.eval()
    img = np.random.default_rng(6).random((1, 1, 6, 6))
    timg = T(img).requires_grad_(True)
    topt = torch.optim.Adam([timg], lr=0.05)
    image = av.tensor(img)
    opt = optim.Adam([image], lr=0.05)  # an optimizer over an input, not a model

    def objective(model, x):  # maximize one channel's activation, with total-variation smoothing
        act = model[:3](x)[:, 1]
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()
        return -act.mean() + 0.1 * tv

    g_fn = av.compile(av.value_and_grad(objective, argnums=1), backend="cpu")
    for _ in range(3):
        topt.zero_grad()
        tl = objective(theirs, timg)
        tl.backward()
        topt.step()
        with torch.no_grad():
            timg.clamp_(0, 1)
        with strict():
            loss, g = g_fn(ours, image)
        opt.step([g])
        with av.no_grad():
            image.clamp_(0, 1)
        assert rel(loss, tl) < 1e-12
        assert rel(image, timg) < 1e-12
    assert not np.allclose(image.numpy(), img)


# -- 7. PointNet: T-Nets (bmm with a predicted matrix plus eye), shared MLPs as Conv1d, max over points --

def pointnet(lib, F_, th, n_cls=3):
    class TNet(lib.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k
            self.conv1, self.conv2 = lib.Conv1d(k, 8, 1), lib.Conv1d(8, 16, 1)
            self.fc1, self.fc2 = lib.Linear(16, 8), lib.Linear(8, k * k)
            self.bn1, self.bn2, self.bn3 = lib.BatchNorm1d(8), lib.BatchNorm1d(16), lib.BatchNorm1d(8)

        def forward(self, x):
            b = x.size(0)
            x = F_.relu(self.bn1(self.conv1(x)))
            x = F_.relu(self.bn2(self.conv2(x)))
            x = th.max(x, 2, keepdim=True)[0].view(-1, 16)
            x = self.fc2(F_.relu(self.bn3(self.fc1(x))))
            iden = th.eye(self.k, dtype=x.dtype).view(1, self.k * self.k).repeat(b, 1)
            return (x + iden).view(-1, self.k, self.k)

    class PointNetCls(lib.Module):
        def __init__(self):
            super().__init__()
            self.stn, self.fstn = TNet(3), TNet(8)
            self.conv1, self.conv2 = lib.Conv1d(3, 8, 1), lib.Conv1d(8, 16, 1)
            self.bn1, self.bn2 = lib.BatchNorm1d(8), lib.BatchNorm1d(16)
            self.head = lib.Sequential(lib.Linear(16, 8), lib.BatchNorm1d(8), lib.ReLU(), lib.Linear(8, n_cls))

        def forward(self, x):  # x: (B, 3, N)
            trans = self.stn(x)
            x = th.bmm(x.transpose(2, 1), trans).transpose(2, 1)
            x = F_.relu(self.bn1(self.conv1(x)))
            trans_feat = self.fstn(x)
            x = th.bmm(x.transpose(2, 1), trans_feat).transpose(2, 1)
            x = self.bn2(self.conv2(x))
            x = th.max(x, 2, keepdim=True)[0].view(-1, 16)
            return F_.log_softmax(self.head(x), dim=1), trans_feat

    return PointNetCls()


def pointnet_loss(th, F_):
    def loss(model, points, target):
        pred, trans_feat = model(points)
        d = trans_feat.size(1)
        eye = th.eye(d, dtype=trans_feat.dtype)[None, :, :]
        reg = th.mean(th.norm(th.bmm(trans_feat, trans_feat.transpose(2, 1)) - eye, dim=(1, 2)))
        return F_.nll_loss(pred, target) + 0.001 * reg
    return loss


def test_pointnet_tnets_bmm_max_over_points_and_feature_transform_regularizer():
    ours, theirs = pair(pointnet)
    rng = np.random.default_rng(7)
    # SGD: the biases before batch norm have gradients of roundoff (1e-16), which Adam would scale
    # up to lr * 1e-16 / eps, differences of 1e-8 between any two correct implementations
    opt = optim.SGD(ours.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.5)
    step = train_step(pointnet_loss(av, F))
    run = av.compile(step, backend="cpu")
    for it in range(3):
        pts, y = rng.standard_normal((4, 3, 10)), rng.integers(0, 3, 4)
        topt.zero_grad()
        tl = pointnet_loss(torch, TF)(theirs, T(pts), T(y))
        tl.backward()
        topt.step()
        tsched.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(pts), av.tensor(y))
        sched.step()
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    ours.eval()
    theirs.eval()
    pts = rng.standard_normal((2, 3, 10))
    perm = rng.permutation(10)
    with av.no_grad(), torch.no_grad():
        out = ours(av.tensor(pts))[0]
        assert rel(out, theirs(T(pts))[0]) < 1e-10
        assert rel(ours(av.tensor(pts[:, :, perm]))[0], out) < 1e-12  # invariant to the points' order


# -- 8. nn.Transformer translation: padding masks, a causal mask, tied embeddings, label smoothing, ------
#       greedy decoding in eval mode (PyTorch's "Language Translation with nn.Transformer" tutorial)

PAD_IDX, BOS_IDX, EOS_IDX, SRC_V, TGT_V, D_MODEL = 1, 2, 3, 11, 10, 8


def translator(lib, F_, th):
    class PositionalEncoding(lib.Module):
        def __init__(self, emb_size, dropout=0.0, maxlen=16):
            super().__init__()
            den = th.exp(- th.arange(0, emb_size, 2) * math.log(10000) / emb_size)
            pos = th.arange(0, maxlen).reshape(maxlen, 1)
            pos_embedding = th.zeros((maxlen, emb_size))
            pos_embedding[:, 0::2] = th.sin(pos * den)
            pos_embedding[:, 1::2] = th.cos(pos * den)
            self.dropout = lib.Dropout(dropout)
            self.register_buffer("pos_embedding", pos_embedding.unsqueeze(-2))

        def forward(self, token_embedding):
            return self.dropout(token_embedding + self.pos_embedding[:token_embedding.size(0), :])

    class TokenEmbedding(lib.Module):
        def __init__(self, vocab_size, emb_size):
            super().__init__()
            self.embedding = lib.Embedding(vocab_size, emb_size)
            self.emb_size = emb_size

        def forward(self, tokens):
            return self.embedding(tokens.long()) * math.sqrt(self.emb_size)

    class Seq2SeqTransformer(lib.Module):
        def __init__(self):
            super().__init__()
            self.transformer = lib.Transformer(d_model=D_MODEL, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                               dim_feedforward=16, dropout=0.0)
            self.generator = lib.Linear(D_MODEL, TGT_V)
            self.src_tok_emb = TokenEmbedding(SRC_V, D_MODEL)
            self.tgt_tok_emb = TokenEmbedding(TGT_V, D_MODEL)
            self.generator.weight = self.tgt_tok_emb.embedding.weight  # tied input and output embeddings
            self.positional_encoding = PositionalEncoding(D_MODEL)

        def forward(self, src, trg, src_mask, tgt_mask, src_padding_mask, tgt_padding_mask, memory_key_padding_mask):
            src_emb = self.positional_encoding(self.src_tok_emb(src))
            tgt_emb = self.positional_encoding(self.tgt_tok_emb(trg))
            outs = self.transformer(src_emb, tgt_emb, src_mask, tgt_mask, None, src_padding_mask, tgt_padding_mask,
                                    memory_key_padding_mask)
            return self.generator(outs)

        def encode(self, src, src_mask):
            return self.transformer.encoder(self.positional_encoding(self.src_tok_emb(src)), src_mask)

        def decode(self, tgt, memory, tgt_mask):
            return self.transformer.decoder(self.positional_encoding(self.tgt_tok_emb(tgt)), memory, tgt_mask)

    return Seq2SeqTransformer()


def create_mask(th, lib, src, tgt):
    src_seq_len, tgt_seq_len = src.shape[0], tgt.shape[0]
    tgt_mask = lib.Transformer.generate_square_subsequent_mask(tgt_seq_len)
    src_mask = th.zeros((src_seq_len, src_seq_len)).type(th.bool)
    return src_mask, tgt_mask, (src == PAD_IDX).transpose(0, 1), (tgt == PAD_IDX).transpose(0, 1)


def translation_loss(th, lib, F_):
    def loss(model, src, tgt):
        tgt_input = tgt[:-1, :]
        src_mask, tgt_mask, src_padding_mask, tgt_padding_mask = create_mask(th, lib, src, tgt_input)
        logits = model(src, tgt_input, src_mask, tgt_mask, src_padding_mask, tgt_padding_mask,
                       src_padding_mask)
        tgt_out = tgt[1:, :]
        return F_.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD_IDX,
                                label_smoothing=0.1)
    return loss


def greedy_decode(th, lib, model, src, max_len):
    src_mask = th.zeros((src.shape[0], src.shape[0])).type(th.bool)
    memory = model.encode(src, src_mask)
    ys = th.ones(1, 1).fill_(BOS_IDX).type(th.long)
    for _ in range(max_len - 1):
        tgt_mask = lib.Transformer.generate_square_subsequent_mask(ys.size(0)).type(th.bool)
        out = model.decode(ys, memory, tgt_mask).transpose(0, 1)
        prob = model.generator(out[:, -1])
        _, next_word = th.max(prob, dim=1)
        next_word = next_word.item()
        ys = th.cat([ys, th.ones(1, 1).type_as(src.data).fill_(next_word)], dim=0)
        if next_word == EOS_IDX:
            break
    return ys


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True", "ignore:Support for mismatched key_padding_mask")
def test_transformer_translation_with_padding_masks_tied_embeddings_and_greedy_decoding():  # (torch's warnings)
    ours, theirs = pair(translator)
    assert ours.generator.weight is ours.tgt_tok_emb.embedding.weight
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    rng = np.random.default_rng(8)
    src, tgt = rng.integers(4, SRC_V, (5, 3)), rng.integers(4, TGT_V, (6, 3))  # (length, batch)
    src[3:, 1] = PAD_IDX
    src[4:, 2] = PAD_IDX
    tgt[0], tgt[4, 1], tgt[5, 1] = BOS_IDX, EOS_IDX, PAD_IDX
    opt = optim.Adam(ours.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-9)
    topt = torch.optim.Adam(theirs.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-9)
    step = train_step(translation_loss(av, nn, F))
    run = compiled(step, "numpy")
    for it in range(3):
        topt.zero_grad()
        tl = translation_loss(torch, torch.nn, TF)(theirs, T(src), T(tgt))
        tl.backward()
        topt.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(src), av.tensor(tgt))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-7)  # the key bias's gradient is roundoff (softmax cancels a shift),
    ours.eval()                           # which Adam scales by lr / eps = 1e7
    theirs.eval()
    with av.no_grad(), torch.no_grad():
        for j in range(3):
            s = src[:, j:j + 1]
            assert (greedy_decode(av, nn, ours, av.tensor(s), 6).numpy()
                    == greedy_decode(torch, torch.nn, theirs, T(s), 6).numpy()).all()


# -- 9. mixed precision: autocast to bfloat16 on the CPU and a GradScaler that skips a non-finite step ---

def amp_mlp(lib, F_, th):
    return lib.Sequential(lib.Linear(6, 16), lib.GELU(), lib.Linear(16, 16), lib.ReLU(), lib.Linear(16, 4))


def amp_objective(th, F_):
    def loss(model, x, y, scaler):
        with th.autocast("cpu", dtype=th.bfloat16):  # torch's CPU lists and Avalon's agree on these ops
            logits = model(x)
            assert logits.dtype == th.bfloat16
            return scaler.scale(F_.cross_entropy(logits.float(), y))
    return loss


def amp_step(model, opt, scaler, x, y):
    loss, grads = av.value_and_grad(amp_objective(av, F))(model, x, y, scaler)
    scaler.unscale_(grads)
    nn.utils.clip_grad_norm_(grads, 1.0)
    scaler.step(opt, grads)
    scaler.update()
    return loss


@pytest.mark.parametrize("mode", ["eager", "cpu"])
def test_autocast_bfloat16_with_grad_scaler_growth_and_a_skipped_overflow_step(mode):
    ours, theirs = pair(amp_mlp, dtype=torch.float32)  # float32 master weights
    start = {k: v.numpy().copy() for k, v in ours.state_dict().items()}
    opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    scaler = av.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    tscaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    rng = np.random.default_rng(9)
    run = compiled(amp_step, mode)
    for it in range(5):
        x, y = rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 4, 8)
        if it == 3:
            x[2, 1] = np.inf  # an overflow: the step is skipped and the scale backs off
        topt.zero_grad()
        tl = amp_objective(torch, TF)(theirs, T(x), T(y), tscaler)
        tl.backward()
        tscaler.unscale_(topt)
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        tscaler.step(topt)
        tscaler.update()
        with strict():
            loss = run(ours, opt, scaler, av.tensor(x), av.tensor(y))
        assert loss.dtype == av.float32
        # bfloat16 keeps 8 bits: a product of 6 and 16 terms rounds to ~2^-9 relative on either side
        assert np.isnan(loss.item()) if it == 3 else rel(loss, tl) < 1e-3, it
        assert scaler.get_scale() == tscaler.get_scale(), it
        assert scaler._get_growth_tracker() == tscaler._get_growth_tracker(), it
        sd = theirs.state_dict()
        for k, v in ours.state_dict().items():  # what training moved, against torch's move
            assert rel(v.numpy() - start[k], sd[k].numpy() - start[k]) < 3e-2, (it, k)
    assert [tscaler.get_scale()] == [2.0 ** 10 * 2 / 2]  # grew after two steps, halved on the overflow
    assert scaler.state_dict() == tscaler.state_dict()
    if mode != "eager":
        assert run.cache_info().misses == 1


# -- 10. checkpoint mid-training: model, optimizer, scheduler and epoch saved, loaded into fresh objects --

def ckpt_net(lib, F_, th, drop=0.0):
    return lib.Sequential(lib.Linear(5, 10, bias=False), lib.BatchNorm1d(10), lib.ReLU(), lib.Dropout(drop),
                          lib.Linear(10, 3))


def ckpt_setup(lib, optim_, model):
    opt = optim_.Adam(model.parameters(), lr=2e-2, weight_decay=1e-3, amsgrad=True)
    return opt, optim_.lr_scheduler.MultiStepLR(opt, milestones=[1, 3], gamma=0.3)


ce_step = train_step(lambda m, x, y: F.cross_entropy(m(x), y))


def torch_epochs(model, opt, sched, seed: int, n: int = 4):
    """torch's loop over n random batches: each step's (epoch, x, y, loss), after its optimizer and
    scheduler steps."""
    rng = np.random.default_rng(seed)
    for epoch in range(n):
        x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
        opt.zero_grad()
        loss = TF.cross_entropy(model(T(x)), T(y))
        loss.backward()
        opt.step()
        sched.step()
        yield epoch, x, y, loss


def test_checkpoint_mid_training_resumes_torchs_trajectory(tmp_path):
    ours, theirs = pair(ckpt_net)
    opt, sched = ckpt_setup(nn, optim, ours)
    topt, tsched = ckpt_setup(torch.nn, torch.optim, theirs)
    run = av.compile(ce_step, backend="cpu")  # after the resume
    for epoch, x, y, tl in torch_epochs(theirs, topt, tsched, seed=10):
        with strict():
            loss = (run if epoch >= 2 else ce_step)(ours, opt, av.tensor(x), av.tensor(y))
        sched.step()
        assert rel(loss, tl) < 1e-12, epoch
        same_weights(ours, theirs, 1e-11)
        if epoch == 1:  # save, then go on with new objects that know only the file
            av.save({"epoch": epoch, "model_state_dict": ours.state_dict(), "optimizer_state_dict": opt.state_dict(),
                     "scheduler": sched.state_dict(), "loss": loss.item()}, tmp_path / "ckpt.safetensors")
            av.manual_seed(123)
            ours = ckpt_net(nn, F, av).double()
            opt, sched = ckpt_setup(nn, optim, ours)
            checkpoint = av.load(tmp_path / "ckpt.safetensors")
            ours.load_state_dict(checkpoint["model_state_dict"])
            opt.load_state_dict(checkpoint["optimizer_state_dict"])
            sched.load_state_dict(checkpoint["scheduler"])
            assert checkpoint["epoch"] == 1 and checkpoint["loss"] == loss.item()
            assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-15)
        assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-15)


# -- 11. DQN (PyTorch's tutorial): replay batch with terminal states, a target network, Huber loss, ------
#        clipped gradient values, AdamW(amsgrad), and the soft update through state dicts

GAMMA, TAU, N_OBS, N_ACTIONS = 0.99, 0.005, 4, 2


def dqn(lib, F_, th):
    class DQN(lib.Module):
        def __init__(self):
            super().__init__()
            self.layer1, self.layer2, self.layer3 = lib.Linear(N_OBS, 16), lib.Linear(16, 16), lib.Linear(16, N_ACTIONS)

        def forward(self, x):
            return self.layer3(F_.relu(self.layer2(F_.relu(self.layer1(x)))))

    return DQN()


def replay_batch(th, transitions):
    """`Transition(*zip(*transitions))` and the tutorial's tensors: a final state's next state is None."""
    states, actions, next_states, rewards = zip(*transitions)
    non_final_mask = th.tensor(tuple(s is not None for s in next_states), dtype=th.bool)
    non_final_next_states = th.cat([th.tensor(s) for s in next_states if s is not None])
    return (th.cat([th.tensor(s) for s in states]), th.tensor([[a] for a in actions]),
            th.tensor(rewards), non_final_mask, non_final_next_states)


def dqn_loss(th, lib):
    def loss(policy_net, target_net, state_batch, action_batch, reward_batch, non_final_mask, non_final_next_states):
        state_action_values = policy_net(state_batch).gather(1, action_batch)
        next_state_values = th.zeros(state_batch.shape[0], dtype=state_batch.dtype)
        with th.no_grad():
            next_state_values[non_final_mask] = target_net(non_final_next_states).max(1).values
        expected_state_action_values = (next_state_values * GAMMA) + reward_batch
        return lib.SmoothL1Loss()(state_action_values, expected_state_action_values.unsqueeze(1))
    return loss


def soft_update(policy_net, target_net):
    target_net_state_dict = target_net.state_dict()
    policy_net_state_dict = policy_net.state_dict()
    for key in policy_net_state_dict:
        target_net_state_dict[key] = policy_net_state_dict[key] * TAU + target_net_state_dict[key] * (1 - TAU)
    target_net.load_state_dict(target_net_state_dict)


def dqn_step(policy_net, target_net, optimizer, *batch):
    loss, grads = av.value_and_grad(dqn_loss(av, nn))(policy_net, target_net, *batch)
    nn.utils.clip_grad_value_(grads, 100)
    optimizer.step(grads)
    soft_update(policy_net, target_net)
    return loss


def test_dqn_target_network_masked_next_state_values_and_soft_update():
    policy, tpolicy = pair(dqn)
    target, ttarget = pair(dqn, seed=1)
    target.load_state_dict(policy.state_dict())  # the tutorial starts the target as a copy
    ttarget.load_state_dict(tpolicy.state_dict())
    opt = optim.AdamW(policy.parameters(), lr=1e-2, amsgrad=True)
    topt = torch.optim.AdamW(tpolicy.parameters(), lr=1e-2, amsgrad=True)
    rng = np.random.default_rng(13)
    run = av.compile(dqn_step, backend="cpu")
    for it in range(3):
        transitions = [(rng.standard_normal((1, N_OBS)), int(rng.integers(N_ACTIONS)),
                        None if j in (1, 3 + it) else rng.standard_normal((1, N_OBS)), float(rng.random()))
                       for j in range(6)]  # two terminal transitions, in changing places
        tb = replay_batch(torch, transitions)
        tl = dqn_loss(torch, torch.nn)(tpolicy, ttarget, *tb)
        topt.zero_grad()
        tl.backward()
        torch.nn.utils.clip_grad_value_(tpolicy.parameters(), 100)
        topt.step()
        soft_update(tpolicy, ttarget)
        with strict():
            loss = (run if it else dqn_step)(policy, target, opt, *replay_batch(av, transitions))
        assert rel(loss, tl) < 1e-12, it
        same_weights(policy, tpolicy, 1e-11)
        same_weights(target, ttarget, 1e-11)
    assert run.cache_info().misses == 1  # the terminal states moved: the mask is data, not a constant


# -- 12. neural style transfer (PyTorch's tutorial): loss modules that keep `self.loss`, Gram matrices, --
#        a frozen feature extractor rebuilt around them, L-BFGS over the image with clamping

def style_transfer(lib, F_, th, style_img, content_img, cnn):
    class ContentLoss(lib.Module):
        def __init__(self, target):
            super().__init__()
            self.target = target.detach()
            self.loss = th.zeros((), dtype=th.float64)  # (the port's one change: see the test)

        def forward(self, input):
            self.loss = F_.mse_loss(input, self.target)
            return input

    def gram_matrix(input):
        a, b, c, d = input.size()
        features = input.view(a * b, c * d)
        G = th.mm(features, features.t())
        return G.div(a * b * c * d)

    class StyleLoss(lib.Module):
        def __init__(self, target_feature):
            super().__init__()
            self.target = gram_matrix(target_feature).detach()
            self.loss = th.zeros((), dtype=th.float64)

        def forward(self, input):
            self.loss = F_.mse_loss(gram_matrix(input), self.target)
            return input

    class Normalization(lib.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.mean = th.tensor(mean, dtype=th.float64).view(-1, 1, 1)
            self.std = th.tensor(std, dtype=th.float64).view(-1, 1, 1)

        def forward(self, img):
            return (img - self.mean) / self.std

    content_layers, style_layers = ["conv_2"], ["conv_1", "conv_2", "conv_3"]
    model = lib.Sequential(Normalization([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    content_losses, style_losses, i = [], [], 0
    for layer in cnn.children():
        if isinstance(layer, lib.Conv2d):
            i += 1
            name = f"conv_{i}"
        elif isinstance(layer, lib.ReLU):
            name = f"relu_{i}"
            layer = lib.ReLU(inplace=False)
        else:
            name = f"pool_{i}"
        model.add_module(name, layer)
        if name in content_layers:
            content_loss = ContentLoss(model(content_img).detach())
            model.add_module(f"content_loss_{i}", content_loss)
            content_losses.append(content_loss)
        if name in style_layers:
            style_loss = StyleLoss(model(style_img).detach())
            model.add_module(f"style_loss_{i}", style_loss)
            style_losses.append(style_loss)
    for i in range(len(model) - 1, -1, -1):
        if isinstance(model[i], (ContentLoss, StyleLoss)):
            break
    return model[:(i + 1)], style_losses, content_losses


def feature_cnn(lib, F_, th):
    return lib.Sequential(lib.Conv2d(3, 4, 3, padding=1), lib.ReLU(inplace=True), lib.Conv2d(4, 4, 3, padding=1),
                          lib.ReLU(inplace=True), lib.MaxPool2d(2), lib.Conv2d(4, 6, 3, padding=1),
                          lib.ReLU(inplace=True))


def style_score(model, style_losses, content_losses, img, style_weight=1e4, content_weight=1.0):
    model(img)
    style_score = content_score = 0
    for sl in style_losses:
        style_score += sl.loss
    for cl in content_losses:
        content_score += cl.loss
    return style_score * style_weight + content_score * content_weight


def test_neural_style_transfer_loss_modules_gram_matrices_and_lbfgs_over_the_image():
    cnn, tcnn = pair(feature_cnn)
    rng = np.random.default_rng(14)
    style, content = rng.random((1, 3, 6, 6)), rng.random((1, 3, 6, 6))
    tmodel, tsl, tcl = style_transfer(torch.nn, TF, torch, T(style), T(content), tcnn.eval())
    tmodel.requires_grad_(False)
    model, sl, cl = style_transfer(nn, F, av, av.tensor(style), av.tensor(content), cnn.eval())
    model.requires_grad_(False)
    assert [k for k, _ in model.named_children()] == [k for k, _ in tmodel.named_children()]
    timg = T(content.copy()).requires_grad_(True)
    img = av.tensor(content.copy())
    topt, opt = torch.optim.LBFGS([timg], max_iter=4), optim.LBFGS([img], max_iter=4)
    grad_fn = av.compile(av.value_and_grad(style_score, argnums=3), backend="cpu")  # the image's gradient
    for _ in range(2):
        def tclosure():
            with torch.no_grad():
                timg.clamp_(0, 1)
            topt.zero_grad()
            loss = style_score(tmodel, tsl, tcl, timg)
            loss.backward()
            return loss

        def closure():
            with av.no_grad():
                img.clamp_(0, 1)
            with strict():
                return grad_fn(model, sl, cl, img)

        tl = topt.step(tclosure)
        loss = opt.step(closure)
        assert rel(loss, tl) < 1e-9
        assert rel(img, timg) < 1e-9
    assert rel(sl[0].loss, tsl[0].loss) < 1e-9  # the last evaluation's, kept on the module
    assert np.abs(img.numpy() - content).max() > 0.05
    assert opt.state_lbfgs["func_evals"] == topt.state[timg]["func_evals"] == 8


def test_a_torch_checkpoint_goes_on_training_in_avalon(tmp_path):
    """torch trains two steps and saves; Avalon loads torch's model, optimizer and scheduler state
    dicts into fresh objects (built with other hyperparameters: the saved groups win, as in torch)
    and follows torch's own continuation."""
    ours, theirs = pair(ckpt_net)
    topt, tsched = ckpt_setup(torch.nn, torch.optim, theirs)
    for epoch, x, y, tl in torch_epochs(theirs, topt, tsched, seed=18):
        if epoch == 1:
            torch.save({"model": theirs.state_dict(), "optimizer": topt.state_dict(), "scheduler": tsched.state_dict()},
                       tmp_path / "ckpt.pt")
            ckpt = torch.load(tmp_path / "ckpt.pt")
            ours.load_state_dict(ckpt["model"])
            opt = optim.Adam(ours.parameters(), lr=1.0)  # no amsgrad, no weight decay: the checkpoint's come
            sched = optim.lr_scheduler.MultiStepLR(opt, milestones=[1, 3], gamma=0.3)
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            assert opt.param_groups[0]["amsgrad"] and opt.param_groups[0]["weight_decay"] == 1e-3
        elif epoch > 1:
            assert rel(ce_step(ours, opt, av.tensor(x), av.tensor(y)), tl) < 1e-12
            sched.step()
            same_weights(ours, theirs, 1e-11)
            assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-15)
    for k, p in theirs.named_parameters():
        for slot in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert rel(opt.state[k][slot], topt.state[p][slot]) < 1e-11
    with pytest.raises(ValueError, match="different number of parameter groups"):
        opt.load_state_dict({"state": {}, "param_groups": []})

def test_checkpoint_with_rng_state_resumes_dropout_masks_as_the_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(15)
    batches = [(av.tensor(rng.standard_normal((6, 5)).astype(np.float32)), av.tensor(rng.integers(0, 3, 6)))
               for _ in range(4)]

    def train(resume: bool, restore_rng: bool = True):
        av.manual_seed(0)
        model = ckpt_net(nn, F, av, drop=0.5)
        opt, sched = ckpt_setup(nn, optim, model)
        run, losses = av.compile(ce_step, backend="numpy"), []
        for epoch, (x, y) in enumerate(batches):
            losses.append(run(model, opt, x, y).item())
            sched.step()
            if resume and epoch == 1:
                av.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "rng_state": av.get_rng_state()}, tmp_path / "ckpt.safetensors")
                av.manual_seed(1234)  # a new process: other weights, another random stream
                model = ckpt_net(nn, F, av, drop=0.5)
                opt, sched = ckpt_setup(nn, optim, model)
                ckpt = av.load(tmp_path / "ckpt.safetensors")
                model.load_state_dict(ckpt["model"])
                opt.load_state_dict(ckpt["optimizer"])
                sched.load_state_dict(ckpt["scheduler"])
                if restore_rng:
                    av.set_rng_state(ckpt["rng_state"])
        return losses, {k: v.numpy() for k, v in model.state_dict().items()}

    (l1, w1), (l2, w2) = train(False), train(True)
    assert l1 == l2
    assert all((w1[k] == w2[k]).all() for k in w1)
    l3, _ = train(True, restore_rng=False)  # without it, other dropout masks after the resume
    assert l3[:2] == l1[:2] and l3[2] != l1[2]


# -- regressions: what the programs above found ----------------------------------------------------------

def test_an_optimizer_steps_twice_in_one_compiled_function():
    """n_critic critic steps in one compiled step: the second `opt.step` reads the state the first
    wrote (it was refused: its step count was no longer a graph input)."""
    ours, theirs = pair(lambda lib, F_, th: lib.Linear(3, 2))
    opt, topt = optim.Adam(ours.parameters(), lr=0.1), torch.optim.Adam(theirs.parameters(), lr=0.1)
    x = np.random.default_rng(16).standard_normal((4, 3))

    def two_steps(m, opt, x):
        for _ in range(2):
            loss, g = av.value_and_grad(lambda m, x: (m(x) ** 2).mean())(m, x)
            opt.step(g)
        return loss

    for _ in range(2):
        for _ in range(2):
            topt.zero_grad()
            tl = (theirs(T(x)) ** 2).mean()
            tl.backward()
            topt.step()
        assert rel(av.compile(two_steps)(ours, opt, av.tensor(x)), tl) < 1e-12
        same_weights(ours, theirs, 1e-12)
    assert opt.state_dict()["step"].item() == 4 == topt.state[theirs.weight]["step"].item()


def test_boolean_mask_assignment_of_a_tensor_of_values_matches_torch():
    """`x[mask] = values` with one value (row) per true element, as DQN's target writes, eagerly, under
    av.grad (the values get their gradient) and compiled with the mask an input (it took only scalars)."""
    rng = np.random.default_rng(17)
    for shape, mask, vshape in (((5,), [True, False, True, True, False], (3,)),
                                ((4, 2), [True, False, True, False], (2, 2)),
                                ((4, 2), [True, False, True, False], (2,)),   # one row for every true
                                ((4, 2), [True, False, True, False], (1, 2)),
                                ((2, 3), [[True, False, True], [False, False, True]], (3,))):
        x, v, m = rng.standard_normal(shape), rng.standard_normal(vshape), np.array(mask)
        tx, tv = T(x).requires_grad_(True), T(v).requires_grad_(True)
        y = tx * 1.0
        y[T(m)] = tv * 2
        (y ** 2).sum().backward()

        def f(x, v, m):
            y = x * 1.0
            y[m] = v * 2
            return (y ** 2).sum()

        a = av.tensor(x)
        a[av.tensor(m)] = av.tensor(v)
        with torch.no_grad():
            want = T(x)
            want[T(m)] = T(v)
        assert rel(a, want) == 0, shape
        for grad in (av.value_and_grad(f, argnums=(0, 1)), av.compile(av.value_and_grad(f, argnums=(0, 1)))):
            value, (gx, gv) = grad(av.tensor(x), av.tensor(v), av.tensor(m))
            assert rel(value, (y ** 2).sum()) < 1e-12 and rel(gx, tx.grad) < 1e-12 and rel(gv, tv.grad) < 1e-12
    with pytest.raises(RuntimeError, match="shape mismatch"):
        a = av.zeros(4)
        a[av.tensor([True, False, True, False])] = av.tensor([1.0, 2.0, 3.0])
    with pytest.raises(IndexError, match="does not match the shape of the indexed tensor"):
        av.zeros(4, 2)[av.tensor([True, False, True])] = 1.0


def test_load_state_dict_inside_a_compiled_step_updates_the_model():
    """A target network's hard and soft updates from a policy's state dict, inside a compiled
    step, become state updates (it was refused); fixed arrays there are still refused."""
    policy, tpolicy = pair(dqn)
    target, ttarget = pair(dqn, seed=1)

    @av.compile
    def sync(policy, target, hard):
        if hard:
            target.load_state_dict(policy.state_dict())
        else:
            soft_update(policy, target)

    for hard in (False, True, False):
        sync(policy, target, hard)
        if hard:
            ttarget.load_state_dict(tpolicy.state_dict())
        else:
            soft_update(tpolicy, ttarget)
        same_weights(target, ttarget, 1e-12)
    assert target.layer1.weight is not policy.layer1.weight  # copied, not rebound
    with pytest.raises(RuntimeError, match="not fixed arrays"):
        av.compile(lambda t: t.load_state_dict({k: v.numpy() for k, v in tpolicy.state_dict().items()}))(target)


def test_an_optimizer_over_one_tensor_takes_its_gradient_bare_and_the_rng_state_round_trips():
    x = av.tensor([3.0, -2.0])
    opt = optim.LBFGS([x])  # torch's `optim.LBFGS([input_img])`: the closure returns av.grad's bare tensor
    opt.step(lambda: av.value_and_grad(lambda x: ((x - 1.0) ** 2).sum())(x))
    assert rel(x, [1.0, 1.0]) < 1e-6
    state = av.get_rng_state()
    a = av.randn(3)
    av.set_rng_state(state)
    assert (av.randn(3).numpy() == a.numpy()).all()


@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1)),
                                      ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
                                      ("Adagrad", dict(lr=0.1)), ("NAdam", dict(lr=0.1)), ("RAdam", dict(lr=0.1))])
def test_torch_optimizer_state_dicts_load_and_continue_torchs_steps(name, kw):
    """Slots by position, the saved groups' hyperparameters and options over the new optimizer's, a
    per-parameter step (or SGD's none) as the one step count, NAdam's mu_product as its group's."""
    ours, theirs = pair(lambda lib, F_, th: lib.Linear(3, 2))
    topt = getattr(torch.optim, name)(theirs.parameters(), **kw)
    x = np.random.default_rng(19).standard_normal((4, 3))
    for k in range(4):
        topt.zero_grad()
        (theirs(T(x)) ** 2).sum().backward()
        topt.step()
        if k == 1:
            ours.load_state_dict(theirs.state_dict())
            opt = getattr(optim, name)(ours.parameters(), lr=1.0)
            opt.load_state_dict(topt.state_dict())
        elif k > 1:
            opt.step(av.grad(lambda m, x: (m(x) ** 2).sum())(ours, av.tensor(x)))
            same_weights(ours, theirs, 1e-12)
    with pytest.raises(ValueError, match="doesn't match the size"):
        opt.load_state_dict({"state": {}, "param_groups": [{**topt.state_dict()["param_groups"][0], "params": [0]}]})

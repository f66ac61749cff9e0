"""Round 3 of port QA (after test_port_programs.py and test_port_programs_more.py): programs as tutorials
and papers write them in PyTorch, written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch
or avalon), trained a few steps from torch's weights on random data in float64 and compared with torch
after every step (losses, parameters, buffers, optimizer-driven state), eagerly and compiled, with
warnings as errors while tracing (nothing captured or baked in). The features are the ones the first
two rounds did not reach: per-sample gradients through `avalon.func` (DP-SGD), a frozen teacher inside
the trained module, a mask kept on a loss module, a milesial U-Net with ReduceLROnPlateau, a GRUCell
decoder with per-example teacher forcing, mixup and CutMix, `utils.checkpoint`, a ViT trained with
AdamW and a warmup-cosine LambdaLR, Grad-CAM (and a loss on it) from a forward hook, and an SN-GAN
with spectral norm and an EMA generator (`swa_utils.AveragedModel`).

What the ports change is what the README says differs on purpose: gradients are values, and the
gradient of an activation comes from the model split there (no backward hooks). The regressions at
the end are what these programs found."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.func as tfunc
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict, train_step

import avalon as av
import avalon.func as afunc
from avalon import nn, optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def arr(x) -> av.Tensor:
    """An Avalon tensor of numpy data, float64 kept (`av.tensor(0.3)` of a Python float is float32,
    as `torch.tensor(0.3)` is)."""
    return av.tensor(np.asarray(x))


# -- 1. DP-SGD: per-sample gradients (vmap of grad over functional_call), clipped, noised, averaged -------

def dp_net(lib, F_, th):
    return lib.Sequential(lib.Conv2d(1, 4, 3, padding=1), lib.GroupNorm(2, 4), lib.ReLU(), lib.AvgPool2d(2),
                          lib.Flatten(), lib.Linear(4 * 2 * 2, 3))


def dp_grads(th, F_, func, model, x, y, noise, max_norm=2.2, sigma=0.7):
    """torch.func's per-sample-gradient tutorial, then Opacus' clipping: each example's gradient scaled
    to norm <= max_norm, Gaussian noise (drawn beforehand, given) added to the sum, averaged."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def compute_loss(params, buffers, sample, target):
        batch, targets = sample.unsqueeze(0), target.unsqueeze(0)
        predictions = func.functional_call(model, (params, buffers), (batch,))
        return F_.cross_entropy(predictions, targets)

    per_sample = func.vmap(func.grad(compute_loss), in_dims=(None, None, 0, 0))(params, buffers, x, y)
    norms = th.stack([g.flatten(1).norm(2, dim=1) for g in per_sample.values()], dim=1).norm(2, dim=1)
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    grads = {k: (th.einsum("i,i...->...", factor, g) + sigma * max_norm * noise[k]) / x.shape[0]
             for k, g in per_sample.items()}
    return grads, norms


def dp_step(model, opt, x, y, noise):
    grads, norms = dp_grads(av, F, afunc, model, x, y, noise)
    opt.step(grads)
    return norms


def test_dp_sgd_per_sample_gradients_clipped_and_noised_through_avalon_func():
    ours, theirs = pair(dp_net)
    opt = optim.SGD(ours.parameters(), lr=0.5, momentum=0.9)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.5, momentum=0.9)
    rng = np.random.default_rng(0)
    clipped = 0
    for mode, it in (("eager", 0), ("numpy", 1), ("numpy", 2), ("cpu", 3)):
        x, y = rng.standard_normal((5, 1, 4, 4)), rng.integers(0, 3, 5)
        noise = {k: rng.standard_normal(tuple(p.shape)) for k, p in theirs.named_parameters()}
        tg, tnorms = dp_grads(torch, TF, tfunc, theirs, T(x), T(y), {k: T(v) for k, v in noise.items()})
        for k, p in theirs.named_parameters():
            p.grad = tg[k]
        topt.step()
        with strict():  # the detached weights are the step's inputs: nothing baked in
            norms = compiled(dp_step, mode)(ours, opt, av.tensor(x), av.tensor(y),
                                            {k: av.tensor(v) for k, v in noise.items()})
        assert rel(norms, tnorms) < 1e-12, (mode, it)
        same_weights(ours, theirs, 1e-11)
        clipped += int((tnorms > 2.2).sum())
    assert 0 < clipped < 20  # some examples clipped, some not


# -- 2. knowledge distillation: a frozen eval-mode teacher inside the trained module, KL at a temperature --

def distiller(lib, F_, th):
    class Distiller(lib.Module):
        def __init__(self):
            super().__init__()
            self.teacher = lib.Sequential(lib.Linear(6, 16), lib.BatchNorm1d(16), lib.ReLU(), lib.Dropout(0.5),
                                          lib.Linear(16, 4))
            self.student = lib.Sequential(lib.Linear(6, 8, bias=False), lib.BatchNorm1d(8), lib.ReLU(),
                                          lib.Linear(8, 4))
            self.teacher.requires_grad_(False)
            self.kl = lib.KLDivLoss(reduction="batchmean", log_target=True)
            self.ce = lib.CrossEntropyLoss(label_smoothing=0.1)

        def train(self, mode=True):
            super().train(mode)
            self.teacher.eval()  # the teacher stays in eval mode: running statistics, no dropout
            return self

        def forward(self, x, y, T_=4.0, alpha=0.9):
            with th.no_grad():
                t_logits = self.teacher(x)
            s_logits = self.student(x)
            soft = self.kl(F_.log_softmax(s_logits / T_, dim=-1), F_.log_softmax(t_logits / T_, dim=-1)) * T_ ** 2
            return alpha * soft + (1 - alpha) * self.ce(s_logits, y)

    return Distiller().train()


def test_distillation_with_a_frozen_teacher_inside_the_trained_module():
    torch.manual_seed(0)
    theirs = distiller(torch.nn, TF, torch).double()
    with torch.no_grad():  # a trained teacher's statistics
        theirs.teacher[1].running_mean.normal_()
        theirs.teacher[1].running_var.uniform_(0.5, 2.0)
    ours = distiller(nn, F, av).double()
    ours.load_state_dict(theirs.state_dict())
    assert not ours.teacher.training and not ours.teacher[3].training and ours.student.training
    opt = optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    topt = torch.optim.AdamW(filter(lambda p: p.requires_grad, theirs.parameters()), lr=1e-2)
    step = train_step(lambda m, x, y: m(x, y), with_grads=True)
    run = compiled(step, "numpy")
    rng = np.random.default_rng(1)
    for it in range(3):
        x, y = rng.standard_normal((5, 6)), rng.integers(0, 4, 5)
        topt.zero_grad()
        tl = theirs(T(x), T(y))
        tl.backward()
        topt.step()
        with strict():
            loss, grads = (run if it else step)(ours, opt, av.tensor(x), av.tensor(y))
        assert rel(loss, tl) < 1e-12, it
        assert sorted(grads) == sorted(k for k, p in theirs.named_parameters() if p.requires_grad)
        same_weights(ours, theirs, 1e-10)  # the teacher's weights and statistics untouched
    assert run.cache_info().misses == 1


# -- 3. SimCLR's NT-Xent as Spijkervet/SimCLR writes it: a mask built in __init__ and kept on the loss -----

B_SIM = 3


def simclr(lib, F_, th, batch_size=B_SIM, temperature=0.5):
    class NT_Xent(lib.Module):  # noqa: N801 - the repository's name
        def __init__(self):
            super().__init__()
            self.batch_size, self.temperature = batch_size, temperature
            self.mask = self.mask_correlated_samples(batch_size)
            self.criterion = lib.CrossEntropyLoss(reduction="sum")
            self.similarity_f = lib.CosineSimilarity(dim=2)

        def mask_correlated_samples(self, batch_size):
            N = 2 * batch_size  # noqa: N806
            mask = th.ones((N, N), dtype=bool)
            mask = mask.fill_diagonal_(0)
            for i in range(batch_size):
                mask[i, batch_size + i] = 0
                mask[batch_size + i, i] = 0
            return mask

        def forward(self, z_i, z_j):
            N = 2 * self.batch_size  # noqa: N806
            z = th.cat((z_i, z_j), dim=0)
            sim = self.similarity_f(z.unsqueeze(1), z.unsqueeze(0)) / self.temperature
            sim_i_j = th.diag(sim, self.batch_size)
            sim_j_i = th.diag(sim, -self.batch_size)
            positive_samples = th.cat((sim_i_j, sim_j_i), dim=0).reshape(N, 1)
            negative_samples = sim[self.mask].reshape(N, -1)
            labels = th.zeros(N).to(positive_samples.device).long()
            logits = th.cat((positive_samples, negative_samples), dim=1)
            loss = self.criterion(logits, labels)
            loss /= N
            return loss

    class SimCLR(lib.Module):
        def __init__(self):
            super().__init__()
            self.encoder = lib.Sequential(lib.Conv2d(3, 4, 3, padding=1, bias=False), lib.BatchNorm2d(4), lib.ReLU(),
                                          lib.AdaptiveAvgPool2d((1, 1)), lib.Flatten())
            self.projector = lib.Sequential(lib.Linear(4, 4, bias=False), lib.ReLU(), lib.Linear(4, 3, bias=False))
            self.criterion = NT_Xent()

        def forward(self, x_i, x_j):
            h_i, h_j = self.encoder(x_i), self.encoder(x_j)
            return h_i, h_j, self.projector(h_i), self.projector(h_j)

    return SimCLR()


def simclr_loss(model, x_i, x_j):
    _, _, z_i, z_j = model(x_i, x_j)
    return model.criterion(z_i, z_j)


def test_simclr_nt_xent_with_the_mask_kept_on_the_loss_module():
    torch.manual_seed(0)
    theirs = simclr(torch.nn, TF, torch).double()
    ours = simclr(nn, F, av).double()
    # torch's `self.mask = ...` is a plain attribute, outside its state dict; every tensor attribute of an
    # Avalon module is part of the model (a buffer, for a bool one), so torch's state dict lacks that key
    assert ours.load_state_dict(theirs.state_dict(), strict=False).missing_keys == ["criterion.mask"]
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    step = train_step(simclr_loss)
    run = compiled(step, "cpu")
    rng = np.random.default_rng(2)
    for it in range(3):
        xi, xj = rng.standard_normal((B_SIM, 3, 4, 4)), rng.standard_normal((B_SIM, 3, 4, 4))
        topt.zero_grad()
        tl = simclr_loss(theirs, T(xi), T(xj))
        tl.backward()
        topt.step()
        with strict():  # the mask is read while tracing: guarded, not a captured array
            loss = (run if it else step)(ours, opt, av.tensor(xi), av.tensor(xj))
        assert rel(loss, tl) < 1e-12, it
        sd = theirs.state_dict()
        for k, v in ours.state_dict().items():
            if k != "criterion.mask":
                assert rel(v, sd[k]) < 1e-10, (it, k)
    assert run.cache_info().misses == 1


# -- 4. U-Net as milesial/Pytorch-UNet writes it: double convs, bilinear Upsample and ConvTranspose2d ups, --
#       F.pad to the skip's size, BCE with pos_weight + Dice, RMSprop, clipping, ReduceLROnPlateau

def unet(lib, F_, th, c=4):
    class DoubleConv(lib.Module):
        def __init__(self, in_channels, out_channels, mid_channels=None):
            super().__init__()
            if not mid_channels:
                mid_channels = out_channels
            self.double_conv = lib.Sequential(
                lib.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
                lib.BatchNorm2d(mid_channels), lib.ReLU(inplace=True),
                lib.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                lib.BatchNorm2d(out_channels), lib.ReLU(inplace=True))

        def forward(self, x):
            return self.double_conv(x)

    class Down(lib.Module):
        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.maxpool_conv = lib.Sequential(lib.MaxPool2d(2), DoubleConv(in_channels, out_channels))

        def forward(self, x):
            return self.maxpool_conv(x)

    class Up(lib.Module):
        def __init__(self, in_channels, out_channels, bilinear=True):
            super().__init__()
            if bilinear:
                self.up = lib.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
                self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
            else:
                self.up = lib.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
                self.conv = DoubleConv(in_channels, out_channels)

        def forward(self, x1, x2):
            x1 = self.up(x1)
            diffY = x2.size()[2] - x1.size()[2]  # noqa: N806
            diffX = x2.size()[3] - x1.size()[3]  # noqa: N806
            x1 = F_.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
            return self.conv(th.cat([x2, x1], dim=1))

    class UNet(lib.Module):
        def __init__(self, n_channels=1, n_classes=1):
            super().__init__()
            self.n_classes = n_classes
            self.inc = DoubleConv(n_channels, c)
            self.down1 = Down(c, 2 * c)
            self.down2 = Down(2 * c, 2 * c)  # (bilinear: the bottom's channels halved)
            self.up1 = Up(4 * c, 2 * c, bilinear=True)
            self.up2 = Up(2 * c, c, bilinear=False)
            self.outc = lib.Conv2d(c, n_classes, kernel_size=1)

        def forward(self, x):
            x1 = self.inc(x)
            x2 = self.down1(x1)  # 10x10 -> 5x5 -> 2x2: the ups pad back to the skips' odd sizes
            x = self.up1(self.down2(x2), x2)
            return self.outc(self.up2(x, x1))

    return UNet()


def dice_coeff(th, input, target, reduce_batch_first=False, epsilon=1e-6):
    sum_dim = (-1, -2) if input.dim() == 2 or not reduce_batch_first else (-1, -2, -3)
    inter = 2 * (input * target).sum(dim=sum_dim)
    sets_sum = input.sum(dim=sum_dim) + target.sum(dim=sum_dim)
    sets_sum = th.where(sets_sum == 0, inter, sets_sum)
    return ((inter + epsilon) / (sets_sum + epsilon)).mean()


def seg_loss(th, lib, F_):
    def loss(model, images, true_masks, pos_weight):
        masks_pred = model(images)
        criterion = lib.BCEWithLogitsLoss(pos_weight=pos_weight)  # built in the step, on a traced weight
        # (milesial's `true_masks.float()`: float64 here; torch's BCE-with-logits of a float64 input and a
        # float32 target computes partly in float32, in place, and returns float32)
        target = true_masks.to(masks_pred.dtype)
        out = criterion(masks_pred.squeeze(1), target)
        out += 1 - dice_coeff(th, F_.sigmoid(masks_pred.squeeze(1)), target)
        return out
    return loss


def unet_setup(lib, optim_, model):
    opt = optim_.RMSprop(model.parameters(), lr=1e-3, weight_decay=1e-8, momentum=0.9)
    return opt, optim_.lr_scheduler.ReduceLROnPlateau(opt, "max", patience=0, factor=0.5)


def unet_step(model, opt, x, y, pos_weight):
    loss, grads = av.value_and_grad(seg_loss(av, nn, F))(model, x, y, pos_weight)
    nn.utils.clip_grad_norm_(grads, 1.0)
    opt.step(grads)
    return loss


def test_milesial_unet_with_pos_weight_bce_dice_rmsprop_and_reduce_on_plateau():
    ours, theirs = pair(unet)
    opt, sched = unet_setup(nn, optim, ours)
    topt, tsched = unet_setup(torch.nn, torch.optim, theirs)
    rng = np.random.default_rng(3)
    run = compiled(unet_step, "numpy")
    for it in range(3):
        x, y, pw = rng.standard_normal((2, 1, 10, 10)), rng.integers(0, 2, (2, 10, 10)), np.array(1.5 + it)
        topt.zero_grad()
        tl = seg_loss(torch, torch.nn, TF)(theirs, T(x), T(y), T(pw))
        tl.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        topt.step()
        with strict():
            loss = (run if it else unet_step)(ours, opt, av.tensor(x), av.tensor(y), arr(pw))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
        score = 0.9 - 0.1 * it  # a falling validation dice: the plateau halves the rate each time
        sched.step(score)
        tsched.step(score)
        assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"] == 1e-3 / 2 ** it
    assert run.cache_info().misses == 1  # the new pos_weight and learning rate: no retrace


# -- 5. seq2seq: GRU encoder, Bahdanau (additive) attention over masked padding, a GRUCell decoder with ----
#       per-example teacher forcing drawn beforehand, NLLLoss ignoring padding, clipping

V, E, H, PAD, SOS = 8, 5, 6, 0, 1


def bahdanau_seq2seq(lib, F_, th):
    class Encoder(lib.Module):
        def __init__(self):
            super().__init__()
            self.embedding = lib.Embedding(V, E, padding_idx=PAD)
            self.gru = lib.GRU(E, H, num_layers=2)  # (seq, batch, feature)

        def forward(self, src):
            return self.gru(self.embedding(src))

    class BahdanauAttention(lib.Module):
        def __init__(self):
            super().__init__()
            self.Wa, self.Ua, self.Va = lib.Linear(H, H), lib.Linear(H, H), lib.Linear(H, 1)

        def forward(self, query, keys, mask):
            scores = self.Va(th.tanh(self.Wa(query) + self.Ua(keys))).squeeze(2).unsqueeze(1)  # B, 1, S
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
            weights = F_.softmax(scores, dim=-1)
            return th.bmm(weights, keys), weights

    class Decoder(lib.Module):
        def __init__(self):
            super().__init__()
            self.embedding = lib.Embedding(V, E)
            self.attention = BahdanauAttention()
            self.cell = lib.GRUCell(E + H, H)
            self.out = lib.Linear(H, V)

        def forward(self, enc_out, hidden, mask, target, teacher):
            keys = enc_out.permute(1, 0, 2)  # B, S, H
            inp = th.full((keys.shape[0],), SOS, dtype=th.long)
            outputs, attentions = [], []
            for t in range(target.shape[1]):
                context, attn = self.attention(hidden.unsqueeze(1), keys, mask)
                hidden = self.cell(th.cat((self.embedding(inp), context.squeeze(1)), dim=1), hidden)
                logits = self.out(hidden)
                outputs.append(F_.log_softmax(logits, dim=-1))
                attentions.append(attn)
                inp = th.where(teacher[:, t], target[:, t], logits.argmax(-1).detach())  # per example
            return th.stack(outputs, dim=1), th.cat(attentions, dim=1)

    class Seq2Seq(lib.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = Encoder(), Decoder()

        def forward(self, src, target, teacher):
            enc_out, hidden = self.encoder(src)
            return self.decoder(enc_out, hidden[-1], (src != PAD).t(), target, teacher)

    return Seq2Seq()


def s2s_loss(lib):
    def loss(model, src, target, teacher):
        out, attn = model(src, target, teacher)
        return lib.NLLLoss(ignore_index=PAD)(out.reshape(-1, V), target.reshape(-1)), attn
    return loss


def s2s_step(model, opt, src, tgt, teacher):
    (loss, attn), grads = av.value_and_grad(s2s_loss(nn), has_aux=True)(model, src, tgt, teacher)
    norm = nn.utils.clip_grad_norm_(grads, 1.0)
    opt.step(grads)
    return loss, attn, norm


def test_seq2seq_gru_cell_decoder_with_bahdanau_attention_and_per_example_teacher_forcing():
    ours, theirs = pair(bahdanau_seq2seq)
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    rng = np.random.default_rng(4)
    run = compiled(s2s_step, "numpy")
    for it in range(3):
        src, tgt = rng.integers(2, V, (5, 3)), rng.integers(2, V, (3, 4))
        src[3:, 0], src[4:, 2], tgt[1, 2:] = PAD, PAD, PAD
        teacher = rng.random((3, 4)) < 0.5
        topt.zero_grad()
        tl, tattn = s2s_loss(torch.nn)(theirs, T(src), T(tgt), T(teacher))
        tl.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        topt.step()
        with strict():
            loss, attn, norm = (run if it else s2s_step)(ours, opt, av.tensor(src), av.tensor(tgt), av.tensor(teacher))
        assert rel(loss, tl) < 1e-12 and rel(attn, tattn) < 1e-12 and rel(norm, tnorm) < 1e-12, it
        assert (attn.numpy()[0, :, 3:] == 0).all()  # no attention on the padding
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1


# -- 6. mixup (mixup-cifar10) and CutMix (the paper's code): lambda and the permutation drawn beforehand, --
#       timm's smoothed one-hot mixed targets, soft-target cross entropy, Nesterov SGD and OneCycleLR

N_CLS = 4


def mix_cnn(lib, F_, th):
    return lib.Sequential(lib.Conv2d(3, 4, 3, padding=1, bias=False), lib.BatchNorm2d(4), lib.ReLU(),
                          lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Linear(4, N_CLS))


def mixup_target(th, target, lam, perm, smoothing=0.1):
    off_value = smoothing / N_CLS
    on_value = 1.0 - smoothing + off_value

    def one_hot(x):
        return th.full((x.size(0), N_CLS), off_value, dtype=th.float64).scatter_(1, x.long().view(-1, 1), on_value)

    return one_hot(target) * lam + one_hot(target[perm]) * (1.0 - lam)


def soft_ce(th, F_):
    def loss(model, x, target):
        return th.sum(-target * F_.log_softmax(model(x), dim=-1), dim=-1).mean()
    return loss


def mixup_batch(x, lam, perm):
    return lam * x + (1 - lam) * x[perm, :], lam


def cutmix_batch(x, box, perm):
    bbx1, bby1, bbx2, bby2 = box
    x = x.clone()
    x[:, :, bbx1:bbx2, bby1:bby2] = x[perm, :, bbx1:bbx2, bby1:bby2]
    return x, 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (x.size()[-1] * x.size()[-2]))


def rand_bbox(rng, size, lam):
    W, H = size[2], size[3]  # noqa: N806
    cut_rat = np.sqrt(1. - lam)
    cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
    cx, cy = rng.integers(W), rng.integers(H)
    return (int(np.clip(cx - cut_w // 2, 0, W)), int(np.clip(cy - cut_h // 2, 0, H)),
            int(np.clip(cx + cut_w // 2, 0, W)), int(np.clip(cy + cut_h // 2, 0, H)))


def mix_step(model, opt, x, y, lam, perm, box):
    x, lam = mixup_batch(x, lam, perm) if box is None else cutmix_batch(x, box, perm)
    loss, grads = av.value_and_grad(soft_ce(av, F))(model, x, mixup_target(av, y, lam, perm))
    opt.step(grads)
    return loss


def mix_setup(optim_, model):
    opt = optim_.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return opt, optim_.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=8)


def test_mixup_and_cutmix_with_mixed_soft_targets_and_one_cycle_lr():
    ours, theirs = pair(mix_cnn)
    (opt, sched), (topt, tsched) = mix_setup(optim, ours), mix_setup(torch.optim, theirs)
    rng = np.random.default_rng(5)
    run = compiled(mix_step, "numpy")
    for it in range(5):
        x, y = rng.standard_normal((4, 3, 6, 6)), rng.integers(0, N_CLS, 4)
        lam, perm = rng.beta(1.0, 1.0), rng.permutation(4)
        box = rand_bbox(rng, x.shape, lam) if it % 2 else None  # CutMix's box: Python ints, in the signature
        tx, tlam = mixup_batch(T(x), T(lam), T(perm)) if box is None else cutmix_batch(T(x), box, T(perm))
        topt.zero_grad()
        tl = soft_ce(torch, TF)(theirs, tx, mixup_target(torch, T(y), tlam, T(perm)))
        tl.backward()
        topt.step()
        tsched.step()
        with strict():
            loss = (run if it else mix_step)(ours, opt, av.tensor(x), av.tensor(y), arr(lam), av.tensor(perm), box)
        sched.step()
        assert rel(loss, tl) < 1e-12, (it, box)
        assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-14)
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1 + 2  # mixup once for every lambda; each CutMix box its own trace


# -- 7. activation checkpointing: torch.utils.checkpoint around residual blocks, checkpoint_sequential, ---
#       a checkpointed function with two results (Avalon runs each once; see avalon.utils.checkpoint)

def deep_mlp(lib, F_, th, width=8, depth=6):
    ckpt = th.utils.checkpoint

    class Block(lib.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.norm = lib.Linear(width, 2 * width), lib.LayerNorm(2 * width)
            self.fc2 = lib.Linear(2 * width, width)

        def forward(self, x, scale=1.0):
            return x + scale * self.fc2(F_.gelu(self.norm(self.fc1(x))))

    class DeepMLP(lib.Module):
        def __init__(self):
            super().__init__()
            self.stem = lib.Linear(5, width)
            self.blocks = lib.ModuleList([Block() for _ in range(depth)])
            self.tail = lib.Sequential(lib.Linear(width, width), lib.Tanh(), lib.Linear(width, width), lib.Tanh())
            self.head = lib.Linear(width, 3)
            self.gradient_checkpointing = True

        def forward(self, x):
            x = self.stem(x)
            for i, blk in enumerate(self.blocks):
                if self.gradient_checkpointing and self.training:
                    x = ckpt.checkpoint(blk, x, 0.5 if i % 2 else 1.0, use_reentrant=False)
                else:
                    x = blk(x, 0.5 if i % 2 else 1.0)
            x = ckpt.checkpoint_sequential(self.tail, 2, x, use_reentrant=False)
            prod, diff = ckpt.checkpoint(lambda a, b: (a * b, a - b), x, x.flip(0), use_reentrant=False)
            return self.head(x + prod - diff.pow(2))

    return DeepMLP()


def mlp_loss(F_):
    def loss(model, x, y):
        return F_.cross_entropy(model(x), y)
    return loss


def test_gradient_checkpointing_blocks_sequential_segments_and_a_two_result_function():
    ours, theirs = pair(deep_mlp)
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    step = train_step(mlp_loss(F), with_grads=True)
    rng = np.random.default_rng(6)
    for mode, it in (("eager", 0), ("cpu", 1), ("cpu", 2)):
        x, y = rng.standard_normal((4, 5)), rng.integers(0, 3, 4)
        topt.zero_grad()
        tl = mlp_loss(TF)(theirs, T(x), T(y))
        tl.backward()
        with strict():
            loss, grads = compiled(step, mode)(ours, opt, av.tensor(x), av.tensor(y))
        assert rel(loss, tl) < 1e-12, it
        for k, p in theirs.named_parameters():
            assert rel(grads[k], p.grad) < 1e-11, (it, k)
        topt.step()
        same_weights(ours, theirs, 1e-10)
    ours.eval()
    theirs.eval()
    with av.no_grad(), torch.no_grad():
        assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-12  # the plain path


# -- 8. a tiny ViT: Conv2d patch embedding, cls token, learned positions, a pre-norm TransformerEncoder ----
#       with a GELU callable and a final norm, timm-style init; AdamW groups, warmup + cosine, clipping

def tiny_vit(lib, F_, th, img=8, patch=4, d=8, depth=2, heads=2, n_cls=3):
    class PatchEmbed(lib.Module):
        def __init__(self):
            super().__init__()
            self.proj = lib.Conv2d(3, d, kernel_size=patch, stride=patch)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class ViT(lib.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = PatchEmbed()
            self.cls_token = lib.Parameter(th.zeros(1, 1, d))
            self.pos_embed = lib.Parameter(th.zeros(1, (img // patch) ** 2 + 1, d))
            self.pos_drop = lib.Dropout(p=0.0)
            layer = lib.TransformerEncoderLayer(d_model=d, nhead=heads, dim_feedforward=4 * d, dropout=0.0,
                                                activation=F_.gelu, layer_norm_eps=1e-6, batch_first=True,
                                                norm_first=True)
            self.encoder = lib.TransformerEncoder(layer, num_layers=depth, norm=lib.LayerNorm(d, eps=1e-6),
                                                  enable_nested_tensor=False)
            self.head = lib.Linear(d, n_cls)
            lib.init.trunc_normal_(self.pos_embed, std=0.02)
            lib.init.trunc_normal_(self.cls_token, std=0.02)
            self.apply(self._init_weights)

        def _init_weights(self, m):
            if isinstance(m, lib.Linear):
                lib.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    lib.init.zeros_(m.bias)
            elif isinstance(m, lib.LayerNorm):
                lib.init.ones_(m.weight)
                lib.init.zeros_(m.bias)

        def forward(self, x):
            x = self.patch_embed(x)
            x = th.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            return self.head(self.encoder(self.pos_drop(x + self.pos_embed))[:, 0])

    return ViT()


def warmup_cosine(warmup, total):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    return f


def vit_setup(optim_, model):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in ("cls_token", "pos_embed") else decay).append(p)
    opt = optim_.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=5e-3)
    return opt, optim_.lr_scheduler.LambdaLR(opt, warmup_cosine(2, 5))


def vit_step(model, opt, x, y):
    loss, grads = av.value_and_grad(lambda m, x, y: F.cross_entropy(m(x), y, label_smoothing=0.1))(model, x, y)
    norm = nn.utils.clip_grad_norm_(grads, max_norm=1.0)
    opt.step(grads)
    return loss, norm


def test_tiny_vit_with_adamw_groups_warmup_cosine_lambda_lr_and_clipping():
    ours, theirs = pair(tiny_vit)
    (opt, sched), (topt, tsched) = vit_setup(optim, ours), vit_setup(torch.optim, theirs)
    rng = np.random.default_rng(7)
    run = compiled(vit_step, "cpu")
    for it in range(4):
        x, y = rng.standard_normal((2, 3, 8, 8)), rng.integers(0, 3, 2)
        topt.zero_grad()
        tl = TF.cross_entropy(theirs(T(x)), T(y), label_smoothing=0.1)
        tl.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm=1.0)
        topt.step()
        tsched.step()
        with strict():
            loss, norm = (run if it else vit_step)(ours, opt, av.tensor(x), av.tensor(y))
        sched.step()
        assert rel(loss, tl) < 1e-12 and rel(norm, tnorm) < 1e-12, it
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in topt.param_groups], rel=1e-14)
        same_weights(ours, theirs, 1e-7)  # the key bias's gradient is roundoff (softmax cancels a shift),
    assert run.cache_info().misses == 1   # which AdamW scales up to a step of the learning rate's size
    ours.eval()
    theirs.eval()
    with av.no_grad(), torch.no_grad():  # torch's inference fast path
        assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-10


# -- 9. Grad-CAM from a forward hook, and GAIN's loss on the CAM (the activation's gradient differentiated) --

def camnet(lib, F_, th):
    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.features = lib.Sequential(lib.Conv2d(3, 4, 3, padding=1), lib.ReLU(), lib.MaxPool2d(2),
                                           lib.Conv2d(4, 6, 3, padding=1), lib.ReLU())
            self.classifier = lib.Sequential(lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Linear(6, 3))

        def forward(self, x):
            return self.classifier(self.features(x))

    return Net()


def cam_from(F_, act, grad, size):
    cam = F_.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
    return F_.interpolate(cam, size=size, mode="bilinear", align_corners=False)


def gradcam_torch(model, x, cls):
    """pytorch-grad-cam's recipe: a forward hook keeps the activation, a backward hook its gradient."""
    store = {}
    target = model.features[-1]
    h1 = target.register_forward_hook(lambda m, i, o: store.__setitem__("act", o))
    h2 = target.register_full_backward_hook(lambda m, gi, go: store.__setitem__("grad", go[0]))
    model.zero_grad()
    out = model(x)
    out.gather(1, cls[:, None]).sum().backward()
    h1.remove()
    h2.remove()
    cam = cam_from(TF, store["act"], store["grad"], x.shape[2:])
    return cam / (cam.flatten(1).max(dim=1).values.view(-1, 1, 1, 1) + 1e-7), out


def gradcam_avalon(model, x, cls):
    """The port: the same forward hook; the activation's gradient from the model split there, the head
    passed as an argument (README: no backward hooks; gradients are values)."""
    store = {}
    h1 = model.features[-1].register_forward_hook(lambda m, i, o: store.__setitem__("act", o))
    out = model(x)
    h1.remove()
    grad = av.grad(lambda a, head, cls: head(a).gather(1, cls[:, None]).sum())(store["act"], model.classifier, cls)
    cam = cam_from(F, store["act"], grad, x.shape[2:])
    return cam / (cam.flatten(1).max(dim=1).values.view(-1, 1, 1, 1) + 1e-7), out


def gain_loss(th, F_):
    """GAIN-style attention guidance: cross entropy plus the CAM's mass on the background, so the
    activation's gradient is differentiated again (torch: create_graph=True)."""
    def loss(model, x, y, bg):
        store = {}
        h = model.features[-1].register_forward_hook(lambda m, i, o: store.__setitem__("act", o))
        out = model(x)
        h.remove()
        if th is torch:
            (grad,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), store["act"], create_graph=True)
        else:
            grad = av.grad(lambda a, head, y: head(a).gather(1, y[:, None]).sum())(store["act"], model.classifier, y)
        return F_.cross_entropy(out, y) + 0.5 * (cam_from(F_, store["act"], grad, x.shape[2:]) * bg).mean()
    return loss


def test_grad_cam_from_a_forward_hook_and_a_loss_on_the_cam():
    ours, theirs = pair(camnet)
    rng = np.random.default_rng(8)
    x, cls = rng.standard_normal((2, 3, 8, 8)), np.array([0, 2])
    tcam, tout = gradcam_torch(theirs, T(x), T(cls))
    for mode in ("eager", "numpy", "cpu"):
        with strict():
            cam, out = compiled(gradcam_avalon, mode)(ours, av.tensor(x), av.tensor(cls))
        assert rel(cam, tcam) < 1e-12 and rel(out, tout) < 1e-12, mode
        assert not ours.features[-1]._forward_hooks
    opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    step = train_step(gain_loss(av, F), with_grads=True)
    run = compiled(step, "numpy")
    for it in range(3):
        x, y = rng.standard_normal((2, 3, 8, 8)), rng.integers(0, 3, 2)
        bg = (rng.random((2, 1, 8, 8)) < 0.5).astype(np.float64)
        topt.zero_grad()
        tl = gain_loss(torch, TF)(theirs, T(x), T(y), T(bg))
        tl.backward()
        with strict():
            loss, grads = (run if it else step)(ours, opt, av.tensor(x), av.tensor(y), av.tensor(bg))
        assert rel(loss, tl) < 1e-12, it
        for k, p in theirs.named_parameters():
            assert rel(grads[k], p.grad) < 1e-11, (it, k)
        topt.step()
        same_weights(ours, theirs, 1e-10)
    with pytest.raises(RuntimeError, match="split the model"):
        ours.features[-1].register_full_backward_hook(lambda m, gi, go: None)


# -- 10. SN-GAN: spectral-normalized discriminator (power iteration in every forward), hinge losses, ------
#        Adam(0, 0.9), and an EMA of the generator (weights and batch-norm statistics) as AveragedModel

NZ = 4


def sngan(lib, F_, th):
    sn = lib.utils.parametrizations.spectral_norm

    class Generator(lib.Module):
        def __init__(self):
            super().__init__()
            self.fc = lib.Linear(NZ, 4 * 2 * 2)
            self.net = lib.Sequential(lib.BatchNorm2d(4), lib.ReLU(), lib.ConvTranspose2d(4, 2, 4, 2, 1, bias=False),
                                      lib.BatchNorm2d(2), lib.ReLU(), lib.Conv2d(2, 1, 3, 1, 1), lib.Tanh())

        def forward(self, z):
            return self.net(self.fc(z).view(-1, 4, 2, 2))

    class Discriminator(lib.Module):
        def __init__(self):
            super().__init__()
            self.net = lib.Sequential(sn(lib.Conv2d(1, 4, 3, 1, 1)), lib.LeakyReLU(0.1),
                                      sn(lib.Conv2d(4, 4, 4, 2, 1)), lib.LeakyReLU(0.1))
            self.fc = sn(lib.Linear(4 * 2 * 2, 1))

        def forward(self, x):
            return self.fc(self.net(x).flatten(1))

    class GAN(lib.Module):
        def __init__(self):
            super().__init__()
            self.G, self.D = Generator(), Discriminator()

    return GAN()


def d_hinge(D, real, fake):
    return F.relu(1.0 - D(real)).mean() + F.relu(1.0 + D(fake)).mean()


def sngan_step(G, D, ema, optG, optD, real, z_d, z_g):
    """The discriminator's hinge step on fakes made without gradients, the generator's step on fresh
    noise, then the EMA (the AveragedModel an argument: its averages are state the step updates)."""
    with av.no_grad():
        fake = G(z_d)
    errD, gD = av.value_and_grad(d_hinge)(D, real, fake.detach())
    optD.step(gD)
    errG, gG = av.value_and_grad(lambda G, D, z: -D(G(z)).mean())(G, D, z_g)
    optG.step(gG)
    ema.update_parameters(G)
    return errD, errG


def test_sngan_spectral_norm_discriminator_hinge_loss_and_an_ema_generator():
    ours, theirs = pair(sngan)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())  # parametrizations.weight.original, _u, _v
    swa = torch.optim.swa_utils
    ema = optim.swa_utils.AveragedModel(ours.G, multi_avg_fn=optim.swa_utils.get_ema_multi_avg_fn(0.9),
                                        use_buffers=True)
    tema = swa.AveragedModel(theirs.G, multi_avg_fn=swa.get_ema_multi_avg_fn(0.9), use_buffers=True)
    kw = dict(lr=2e-3, betas=(0.0, 0.9))
    optG, optD = optim.Adam(ours.G.parameters(), **kw), optim.Adam(ours.D.parameters(), **kw)
    toptG, toptD = torch.optim.Adam(theirs.G.parameters(), **kw), torch.optim.Adam(theirs.D.parameters(), **kw)
    rng = np.random.default_rng(9)
    run = compiled(sngan_step, "numpy")
    tG, tD = theirs.G, theirs.D
    for it in range(3):
        real, zd, zg = np.tanh(rng.standard_normal((3, 1, 4, 4))), rng.standard_normal((3, NZ)), \
            rng.standard_normal((3, NZ))
        with torch.no_grad():
            tfake = tG(T(zd))
        toptD.zero_grad()
        terrD = TF.relu(1.0 - tD(T(real))).mean() + TF.relu(1.0 + tD(tfake.detach())).mean()
        terrD.backward()
        toptD.step()
        toptG.zero_grad()
        terrG = -tD(tG(T(zg))).mean()
        terrG.backward()
        toptG.step()
        tema.update_parameters(tG)
        with strict():
            errD, errG = (run if it else sngan_step)(ours.G, ours.D, ema, optG, optD, av.tensor(real), av.tensor(zd),
                                                     av.tensor(zg))
        assert rel(errD, terrD) < 1e-12 and rel(errG, terrG) < 1e-12, it
        same_weights(ours, theirs, 1e-10)  # D's power-iteration vectors, G's running statistics
        same_weights(ema, tema, 1e-10)
    assert run.cache_info().misses == 1
    for m in (ours, theirs, ema, tema):
        m.eval()
    z = rng.standard_normal((2, NZ))
    with av.no_grad(), torch.no_grad():
        assert rel(ours.D(ema(av.tensor(z))), theirs.D(tema(T(z)))) < 1e-10


# -- regressions: what the programs above found ------------------------------------------------------------

class Gated(nn.Module):
    """Glow's ActNorm-style flag, an index buffer and a mask buffer: a model's own tensors, whose values
    Python reads while a call is traced (a branch, a gather, a selection)."""

    def __init__(self, n_idx: int):
        super().__init__()
        self.register_buffer("flag", av.tensor(0))
        self.register_buffer("idx", av.tensor(np.arange(n_idx) % 5))
        self.mask = av.tensor([True, False, True, True, False])  # a bool attribute: a buffer
        self.w = nn.Parameter(av.arange(5, dtype=av.float64) + 1.0)

    def forward(self, x):
        y = x * self.w if self.flag.item() == 0 else x * self.w * 2
        return y.sum() + y[self.idx].sum() + (y[self.mask] ** 2).sum()


@pytest.mark.parametrize("n_idx", [3, 20])  # a few indices become slices, many a gather
def test_a_model_tensor_read_while_tracing_is_guarded_not_baked_in_stale(n_idx):
    """SimCLR's mask, Glow's `self.initialized.item()`: a model's tensors are graph inputs that keep their
    eager data, so reading their values while tracing baked the values of the first call into the cached
    graph, and later calls silently reused them (the other branch, the old indices). The compile now
    keeps what it read as guards and traces again when those tensors change."""
    m = Gated(n_idx)
    x = av.tensor(np.linspace(-1.0, 1.0, 5))

    def want():
        w = m.w.numpy() * (1 if m.flag.item() == 0 else 2)
        y = x.numpy() * w
        return y.sum() + y[m.idx.numpy()].sum() + (y[m.mask.numpy()] ** 2).sum()

    f = av.compile(lambda m, x: m(x))
    g = av.value_and_grad(lambda m, x: m(x))
    with strict():  # no captured array: the mask's positions are found in the graph
        for change in (None, lambda: m.flag.fill_(1), lambda: m.idx.copy_((m.idx + 2) % 5),
                       lambda: m.mask.copy_(av.tensor([False, True, True, False, True])), None):
            if change is not None:
                change()
            assert f(m, x).item() == pytest.approx(want(), rel=1e-12)
            assert g(m, x)[0].item() == pytest.approx(want(), rel=1e-12)
    assert f.cache_info().misses == 4 and f.cache_info().hits == 1  # each change traced once, then reused

    def reads_after_update(m, x):
        m.flag.add_(1)  # the new value exists only in the graph
        return x * 2 if m.flag.item() > 1 else x

    with pytest.raises(av.TracerError, match="updated earlier in the traced function"):
        av.compile(reads_after_update)(m, x)


def test_a_value_check_on_a_parameter_does_not_retrace_every_step():
    """Argument checks that read values (binary_cross_entropy's inputs in [0, 1]) skip a model's tensors
    under a trace, as they skip traced ones, rather than guard the compile on weights that change at
    every step."""
    def probs(lib, F_, th):
        class Probs(lib.Module):
            def __init__(self):
                super().__init__()
                self.p = lib.Parameter(th.full((4,), 0.5))

        return Probs()

    def loss(F_):
        def f(model, target):
            return F_.binary_cross_entropy(model.p, target)
        return f

    ours, theirs = pair(probs)
    opt, topt = optim.SGD(ours.parameters(), lr=0.05), torch.optim.SGD(theirs.parameters(), lr=0.05)
    run = av.compile(train_step(loss(F)))
    rng = np.random.default_rng(10)
    for _ in range(3):
        y = (rng.random(4) < 0.5).astype(np.float64)
        topt.zero_grad()
        tl = loss(TF)(theirs, T(y))
        tl.backward()
        topt.step()
        with strict():
            assert rel(run(ours, opt, av.tensor(y)), tl) < 1e-12
        same_weights(ours, theirs, 1e-12)
    assert run.cache_info().misses == 1


def test_a_loss_module_built_inside_a_traced_step_takes_traced_weights():
    """`nn.BCEWithLogitsLoss(pos_weight=w)` built in the step (the U-Net above) copied `w`'s data, which a
    traced argument does not have (an error), and a model's tensor's data would be baked in."""
    class Weighted(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4).double()
            self.register_buffer("class_weight", av.tensor(np.array([1.0, 2.0, 0.5, 1.0])))

        def forward(self, x, y, pos_weight):
            logits = self.fc(x)
            ce = nn.CrossEntropyLoss(weight=self.class_weight)(logits, y)
            return ce + nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits[:, 0], (y == 0).to(logits.dtype))

    m = Weighted()
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 4, 5)
    f = av.compile(lambda m, x, y, pw: m(x, y, pw))
    for pw in (2.0, 3.0):
        m.class_weight.mul_(2.0)
        tw, tb = T(m.fc.weight.numpy()), T(m.fc.bias.numpy())
        logits = T(x) @ tw.T + tb
        want = (torch.nn.CrossEntropyLoss(weight=T(m.class_weight.numpy()))(logits, T(y))
                + torch.nn.BCEWithLogitsLoss(pos_weight=T(np.array(pw)))(logits[:, 0], (T(y) == 0).double()))
        with strict():
            assert rel(f(m, av.tensor(x), av.tensor(y), arr(pw)), want) < 1e-12
    assert f.cache_info().misses == 1


def multi_head(lib, F_, th):
    class MultiHead(lib.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.a, self.b = lib.Linear(3, 4), lib.Linear(4, 2), lib.Linear(4, 2)
            self.target = lib.Linear(4, 2)  # read only without gradients (a target network's role)

        def forward(self, x, task):
            h = self.trunk(x).tanh()
            with th.no_grad():
                t = self.target(h)
            out = self.a(h) + t if task == "a" else self.b(h) - t
            return out + self.b.weight.sum().argmax()  # an integer result carries no gradient

    return MultiHead()


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_a_parameter_the_loss_does_not_use_gets_no_gradient_and_the_optimizer_leaves_it(mode):
    """Multi-task steps that use one head each: torch leaves the other head's `.grad` None and its optimizer
    skips it; Avalon gave it a zero gradient, on which momentum and weight decay moved it. A model's
    parameter outside the loss's autograd graph (unused, used under no_grad or through an integer) now
    has no gradient entry; a dict of tensors still gets zeros, as torch.func gives."""
    ours, theirs = pair(multi_head)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=0.1)
    opt, topt = optim.SGD(ours.parameters(), **kw), torch.optim.SGD(theirs.parameters(), **kw)
    run = compiled(train_step(lambda m, x, task: (m(x, task) ** 2).mean(), with_grads=True), mode)
    x = np.random.default_rng(12).standard_normal((5, 3))
    for task in "abba":
        topt.zero_grad()
        (theirs(T(x), task) ** 2).mean().backward()
        topt.step()
        with strict():
            _, grads = run(ours, opt, av.tensor(x), task)
        assert sorted(grads) == sorted(k for k, p in theirs.named_parameters() if p.grad is not None), task
        same_weights(ours, theirs, 1e-12)
    g = av.grad(lambda d: (d["a"] ** 2).sum())({"a": av.ones(2), "b": av.ones(3)})
    assert sorted(g) == ["a", "b"] and (g["b"].numpy() == 0).all()


def test_adam_after_unfreezing_a_layer_counts_its_steps_from_one_as_torch():
    def net(lib, F_, th):
        s = lib.Sequential(lib.Linear(3, 4), lib.Tanh(), lib.Linear(4, 2))
        s[0].requires_grad_(False)
        return s

    ours, theirs = pair(net)
    opt, topt = optim.Adam(ours.parameters(), lr=0.1), torch.optim.Adam(theirs.parameters(), lr=0.1)
    x = np.random.default_rng(13).standard_normal((5, 3))
    for it in range(3):
        if it == 2:
            ours[0].requires_grad_(True)
            theirs[0].requires_grad_(True)
        topt.zero_grad()
        (theirs(T(x)) ** 2).mean().backward()
        topt.step()
        opt.step(av.grad(lambda m, x: (m(x) ** 2).mean())(ours, av.tensor(x)))
    same_weights(ours, theirs, 1e-12)

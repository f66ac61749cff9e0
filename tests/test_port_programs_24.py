"""Round 9j of port QA: audio generation code as popular repositories write it, written once over `lib`
(torch.nn or avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights on random
float64 data and compared with torch after every step (losses, parameters, buffers), the first step eagerly
and the rest compiled (numpy and cpu backends), with warnings as errors while tracing.

Programs: HiFi-GAN as jik876/hifi-gan writes it (models.py's Generator with weight_norm'ed ConvTranspose1d
upsampling, ResBlock1 or ResBlock2 with dilations and leaky_relu, `xs += ...` over the kernels, utils.py's
init_weights by `m.weight.data.normal_(0, 0.01)` on the weight-normed convs (which torch's hook recomputes, so it
has no effect there or here), get_padding; the MultiPeriodDiscriminator's reflect padding to a multiple of the
period, view to 2-d and weight_norm'ed Conv2d stacks; the MultiScaleDiscriminator with spectral_norm for its first
scale (its power iteration updating `weight_u`/`weight_v` in every training forward, the generator's step too),
AvgPool1d between scales and grouped Conv1d; feature_loss, the LSGAN discriminator_loss and generator_loss;
meldataset.py's mel_spectrogram (reflect padding, stft with a Hann window, magnitude, mel matmul, log of the
clamp) for the L1 mel loss times 45; train.py's two AdamW and two ExponentialLR, a discriminator step on the
detached fakes then a generator step through the updated discriminators; remove_weight_norm for inference);
EnCodec's residual vector quantizer and SEANet as facebookresearch/encodec writes them (core_vq.py's
EuclideanCodebook with kmeans_init: kmeans by bincount, scatter_add_ and where on the first batch while the
`inited` buffer is 0, read by `if self.inited:` while tracing; nearest codes by the expanded distance's max or
by cdist/argmin, one_hot, F.embedding, the EMA updates of cluster_size and embed_avg with laplace smoothing
written in place under `.data`, the straight-through estimator, the commitment loss on a
`torch.tensor([0.0], requires_grad=...)`; ResidualVectorQuantization over residuals, n_q of them, encode and
decode; conv.py's SConv1d with causal or centred reflect padding and get_extra_padding_for_conv1d,
SConvTranspose1d's unpad1d, SLSTM, seanet.py's SEANetEncoder and SEANetDecoder with SEANetResnetBlock, ELU and
weight_norm), trained with Adam on an L1 plus L2 waveform loss and the penalty, codes compared exactly; and
FastSpeech 2's variance adaptor as ming024/FastSpeech2 writes it (VariancePredictor's Conv/ReLU/LayerNorm stack
and masked_fill, pitch and energy bins by linspace (energy's log-spaced by exp) in `nn.Parameter(...,
requires_grad=False)`, embeddings of `torch.bucketize` of the targets, the LengthRegulator and utils' pad and
get_mask_from_lengths, PostNet's Conv1d/BatchNorm1d/tanh stack, FastSpeech2Loss's `~mask`s, masked_select,
MSE and L1, Adam with eps 1e-9; synthesis eagerly from rounded, clamped predicted durations), between stand-ins
for its FFT-block encoder and decoder.

The random draws are inputs: kmeans' `torch.randperm` is a permutation drawn with numpy and handed to
sample_vectors. Dropout is 0 (VariancePredictor's and PostNet's, 0.5 there). What the ports change: gradients
are values (`av.value_and_grad`, `opt.step(grads)`), so HiFi-GAN's generator output is computed for the
discriminator step and again inside the generator's loss (the generator holds no state), and
discriminator_loss's `.item()`s, logging inside a differentiated function, keep the detached tensors on Avalon's
side (`.item()` of a traced value is an error, README). mel_spectrogram's global `mel_basis` and `hann_window`
dicts (float32 there, and keyed so that they are built on every call) are buffers of a module, float64, with
librosa's Slaney filterbank computed in numpy; its `torch.min(y) < -1.` prints are left out, and torch.stft is
called with `return_complex=True` and view_as_real, as current torch requires. Sizes are small: 4 mels, 8
initial channels, upsampling by 2 and 2, periods 2, 3 and 5 (and 7, 11 there), discriminator widths of 4 to 16
(32 to 1024 there). EncodecModel's bandwidth bookkeeping is left out (n_q is given); threshold_ema_dead_code
is 0, since expire_codes_ replaces codes by a random draw after `if not torch.any(expired_codes)`, a branch on
values a traced step cannot take. The length regulator's `vec.expand(predicted[i].item(), -1)` per phoneme is
`repeat_interleave(batch, durations)`, and on Avalon's side the durations it reads and the batch's lengths are
Python lists (the collated batch's numbers): the result's shapes depend on them, so they are part of the
compiled step's signature (README), and the durations stay the same from step to step; the mask of those
lengths is then known while tracing, so FastSpeech2Loss's masked_select runs as written. PostNet's conv biases
precede batch norms, so their gradient is roundoff, which Adam with eps 1e-9 turns into ~1e-9 differences: they
and the running means are checked to that.

The regression at the end is what the programs found: masked_select (and nonzero) refused a mask computed
inside a traced function from given lengths, whose value is known while tracing.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F

pytestmark = [pytest.mark.usefixtures("module_kernel_cache"),
              pytest.mark.filterwarnings("ignore:`(torch.)?nn.utils.weight_norm` is deprecated:FutureWarning")]


def arr(x) -> av.Tensor:
    return av.tensor(np.asarray(x))


# -- 1. HiFi-GAN (jik876/hifi-gan: models.py, utils.py's init_weights/get_padding, meldataset.py's
#       mel_spectrogram, train.py's alternating steps) ----------------------------------------------------------

LRELU_SLOPE = 0.1


class AttrDict(dict):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__ = self


def hifigan_h(resblock="1"):
    """config_v1.json's keys, small: 4 mels (80), 8 initial channels (512), upsampling by 2 and 2 (8, 8, 2, 2),
    n_fft 16 and hop 4 (1024, 256)."""
    return AttrDict(resblock=resblock, num_mels=4, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
                    upsample_initial_channel=8, resblock_kernel_sizes=[3, 5],
                    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]] if resblock == "1" else [[1, 3], [1, 3]],
                    n_fft=16, hop_size=4, win_size=16, sampling_rate=800, fmin=0, fmax=400,
                    learning_rate=1e-2, adam_b1=0.8, adam_b2=0.99, lr_decay=0.9)


def init_weights(m, mean=0.0, std=0.01):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        m.weight.data.normal_(mean, std)


def get_padding(kernel_size, dilation=1):
    return int((kernel_size * dilation - dilation) / 2)


def hifigan(lib, F_, th, h):
    Conv1d, ConvTranspose1d, AvgPool1d, Conv2d = lib.Conv1d, lib.ConvTranspose1d, lib.AvgPool1d, lib.Conv2d
    weight_norm, remove_weight_norm, spectral_norm = \
        lib.utils.weight_norm, lib.utils.remove_weight_norm, lib.utils.spectral_norm
    nn_ = lib

    class ResBlock1(th.nn.Module):
        def __init__(self, h, channels, kernel_size=3, dilation=(1, 3, 5)):
            super(ResBlock1, self).__init__()  # noqa: UP008
            self.h = h
            self.convs1 = nn_.ModuleList([
                weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=dilation[0],
                                   padding=get_padding(kernel_size, dilation[0]))),
                weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=dilation[1],
                                   padding=get_padding(kernel_size, dilation[1]))),
                weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=dilation[2],
                                   padding=get_padding(kernel_size, dilation[2])))
            ])
            self.convs1.apply(init_weights)

            self.convs2 = nn_.ModuleList([
                weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=1,
                                   padding=get_padding(kernel_size, 1))),
                weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=1,
                                   padding=get_padding(kernel_size, 1))),
                weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=1,
                                   padding=get_padding(kernel_size, 1)))
            ])
            self.convs2.apply(init_weights)

        def forward(self, x):
            for c1, c2 in zip(self.convs1, self.convs2):
                xt = F_.leaky_relu(x, LRELU_SLOPE)
                xt = c1(xt)
                xt = F_.leaky_relu(xt, LRELU_SLOPE)
                xt = c2(xt)
                x = xt + x
            return x

        def remove_weight_norm(self):
            for l in self.convs1:
                remove_weight_norm(l)
            for l in self.convs2:
                remove_weight_norm(l)

    class ResBlock2(th.nn.Module):
        def __init__(self, h, channels, kernel_size=3, dilation=(1, 3)):
            super(ResBlock2, self).__init__()  # noqa: UP008
            self.h = h
            self.convs = nn_.ModuleList([
                weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=dilation[0],
                                   padding=get_padding(kernel_size, dilation[0]))),
                weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=dilation[1],
                                   padding=get_padding(kernel_size, dilation[1])))
            ])
            self.convs.apply(init_weights)

        def forward(self, x):
            for c in self.convs:
                xt = F_.leaky_relu(x, LRELU_SLOPE)
                xt = c(xt)
                x = xt + x
            return x

        def remove_weight_norm(self):
            for l in self.convs:
                remove_weight_norm(l)

    class Generator(th.nn.Module):
        def __init__(self, h):
            super(Generator, self).__init__()  # noqa: UP008
            self.h = h
            self.num_kernels = len(h.resblock_kernel_sizes)
            self.num_upsamples = len(h.upsample_rates)
            self.conv_pre = weight_norm(Conv1d(h.num_mels, h.upsample_initial_channel, 7, 1, padding=3))
            resblock = ResBlock1 if h.resblock == '1' else ResBlock2

            self.ups = nn_.ModuleList()
            for i, (u, k) in enumerate(zip(h.upsample_rates, h.upsample_kernel_sizes)):
                self.ups.append(weight_norm(
                    ConvTranspose1d(h.upsample_initial_channel // (2 ** i), h.upsample_initial_channel // (2 ** (i + 1)),
                                    k, u, padding=(k - u) // 2)))

            self.resblocks = nn_.ModuleList()
            for i in range(len(self.ups)):
                ch = h.upsample_initial_channel // (2 ** (i + 1))
                for _j, (k, d) in enumerate(zip(h.resblock_kernel_sizes, h.resblock_dilation_sizes)):
                    self.resblocks.append(resblock(h, ch, k, d))

            self.conv_post = weight_norm(Conv1d(ch, 1, 7, 1, padding=3))
            self.ups.apply(init_weights)
            self.conv_post.apply(init_weights)

        def forward(self, x):
            x = self.conv_pre(x)
            for i in range(self.num_upsamples):
                x = F_.leaky_relu(x, LRELU_SLOPE)
                x = self.ups[i](x)
                xs = None
                for j in range(self.num_kernels):
                    if xs is None:
                        xs = self.resblocks[i * self.num_kernels + j](x)
                    else:
                        xs += self.resblocks[i * self.num_kernels + j](x)
                x = xs / self.num_kernels
            x = F_.leaky_relu(x)
            x = self.conv_post(x)
            x = th.tanh(x)

            return x

        def remove_weight_norm(self):
            for l in self.ups:
                remove_weight_norm(l)
            for l in self.resblocks:
                l.remove_weight_norm()
            remove_weight_norm(self.conv_pre)
            remove_weight_norm(self.conv_post)

    class DiscriminatorP(th.nn.Module):
        def __init__(self, period, kernel_size=5, stride=3, use_spectral_norm=False, c=(4, 8, 8, 8)):
            super(DiscriminatorP, self).__init__()  # noqa: UP008
            self.period = period
            norm_f = weight_norm if use_spectral_norm == False else spectral_norm  # noqa: E712
            self.convs = nn_.ModuleList([  # 32, 128, 512, 1024 channels there
                norm_f(Conv2d(1, c[0], (kernel_size, 1), (stride, 1), padding=(get_padding(5, 1), 0))),
                norm_f(Conv2d(c[0], c[1], (kernel_size, 1), (stride, 1), padding=(get_padding(5, 1), 0))),
                norm_f(Conv2d(c[1], c[2], (kernel_size, 1), (stride, 1), padding=(get_padding(5, 1), 0))),
                norm_f(Conv2d(c[2], c[3], (kernel_size, 1), (stride, 1), padding=(get_padding(5, 1), 0))),
                norm_f(Conv2d(c[3], c[3], (kernel_size, 1), 1, padding=(2, 0))),
            ])
            self.conv_post = norm_f(Conv2d(c[3], 1, (3, 1), 1, padding=(1, 0)))

        def forward(self, x):
            fmap = []

            # 1d to 2d
            b, c, t = x.shape
            if t % self.period != 0:  # pad first
                n_pad = self.period - (t % self.period)
                x = F_.pad(x, (0, n_pad), "reflect")
                t = t + n_pad
            x = x.view(b, c, t // self.period, self.period)

            for l in self.convs:
                x = l(x)
                x = F_.leaky_relu(x, LRELU_SLOPE)
                fmap.append(x)
            x = self.conv_post(x)
            fmap.append(x)
            x = th.flatten(x, 1, -1)

            return x, fmap

    class MultiPeriodDiscriminator(th.nn.Module):
        def __init__(self):
            super(MultiPeriodDiscriminator, self).__init__()  # noqa: UP008
            self.discriminators = nn_.ModuleList([
                DiscriminatorP(2),
                DiscriminatorP(3),
                DiscriminatorP(5),  # and 7 and 11 there
            ])

        def forward(self, y, y_hat):
            y_d_rs = []
            y_d_gs = []
            fmap_rs = []
            fmap_gs = []
            for _i, d in enumerate(self.discriminators):
                y_d_r, fmap_r = d(y)
                y_d_g, fmap_g = d(y_hat)
                y_d_rs.append(y_d_r)
                fmap_rs.append(fmap_r)
                y_d_gs.append(y_d_g)
                fmap_gs.append(fmap_g)

            return y_d_rs, y_d_gs, fmap_rs, fmap_gs

    class DiscriminatorS(th.nn.Module):
        def __init__(self, use_spectral_norm=False):
            super(DiscriminatorS, self).__init__()  # noqa: UP008
            norm_f = weight_norm if use_spectral_norm == False else spectral_norm  # noqa: E712
            self.convs = nn_.ModuleList([  # 128, 256, 512, 1024 channels and groups of 4 and 16 there
                norm_f(Conv1d(1, 8, 15, 1, padding=7)),
                norm_f(Conv1d(8, 8, 41, 2, groups=4, padding=20)),
                norm_f(Conv1d(8, 16, 41, 2, groups=8, padding=20)),
                norm_f(Conv1d(16, 16, 41, 4, groups=8, padding=20)),
                norm_f(Conv1d(16, 16, 41, 4, groups=8, padding=20)),
                norm_f(Conv1d(16, 16, 41, 1, groups=8, padding=20)),
                norm_f(Conv1d(16, 16, 5, 1, padding=2)),
            ])
            self.conv_post = norm_f(Conv1d(16, 1, 3, 1, padding=1))

        def forward(self, x):
            fmap = []
            for l in self.convs:
                x = l(x)
                x = F_.leaky_relu(x, LRELU_SLOPE)
                fmap.append(x)
            x = self.conv_post(x)
            fmap.append(x)
            x = th.flatten(x, 1, -1)

            return x, fmap

    class MultiScaleDiscriminator(th.nn.Module):
        def __init__(self):
            super(MultiScaleDiscriminator, self).__init__()  # noqa: UP008
            self.discriminators = nn_.ModuleList([
                DiscriminatorS(use_spectral_norm=True),
                DiscriminatorS(),
                DiscriminatorS(),
            ])
            self.meanpools = nn_.ModuleList([
                AvgPool1d(4, 2, padding=2),
                AvgPool1d(4, 2, padding=2)
            ])

        def forward(self, y, y_hat):
            y_d_rs = []
            y_d_gs = []
            fmap_rs = []
            fmap_gs = []
            for i, d in enumerate(self.discriminators):
                if i != 0:
                    y = self.meanpools[i - 1](y)
                    y_hat = self.meanpools[i - 1](y_hat)
                y_d_r, fmap_r = d(y)
                y_d_g, fmap_g = d(y_hat)
                y_d_rs.append(y_d_r)
                fmap_rs.append(fmap_r)
                y_d_gs.append(y_d_g)
                fmap_gs.append(fmap_g)

            return y_d_rs, y_d_gs, fmap_rs, fmap_gs

    class MelSpectrogram(lib.Module):
        """meldataset.py's mel_spectrogram with its global `mel_basis` and `hann_window` dicts as buffers
        (see the module docstring)."""

        def __init__(self, mel):
            super().__init__()
            self.register_buffer("mel_basis", th.from_numpy(mel))
            self.register_buffer("hann_window", th.hann_window(h.win_size, dtype=th.float64))

        def forward(self, y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax, center=False):
            y = th.nn.functional.pad(y.unsqueeze(1), (int((n_fft - hop_size) / 2), int((n_fft - hop_size) / 2)),
                                     mode='reflect')
            y = y.squeeze(1)

            spec = th.view_as_real(th.stft(y, n_fft, hop_length=hop_size, win_length=win_size, window=self.hann_window,
                                           center=center, pad_mode='reflect', normalized=False, onesided=True,
                                           return_complex=True))

            spec = th.sqrt(spec.pow(2).sum(-1) + (1e-9))

            spec = th.matmul(self.mel_basis, spec)
            spec = th.log(th.clamp(spec, min=1e-5) * 1)  # spectral_normalize_torch

            return spec

    class HiFiGAN(lib.Module):  # train.py's generator, mpd, msd (and the mel loss's function) in one module
        def __init__(self):
            super().__init__()
            self.generator = Generator(h)
            self.mpd = MultiPeriodDiscriminator()
            self.msd = MultiScaleDiscriminator()
            self.mel = MelSpectrogram(mel_filterbank(h.sampling_rate, h.n_fft, h.num_mels, h.fmin, h.fmax))

    return HiFiGAN()


def mel_filterbank(sr, n_fft, n_mels, fmin, fmax):
    """librosa.filters.mel's Slaney filterbank (slaney mel scale, slaney area normalization)."""
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
        mels = f / f_sp
        return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
        min_log_mel = min_log_hz / f_sp
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fftfreqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]


def feature_loss(th, fmap_r, fmap_g):
    loss = 0
    for dr, dg in zip(fmap_r, fmap_g):
        for rl, gl in zip(dr, dg):
            loss += th.mean(th.abs(rl - gl))

    return loss * 2


def discriminator_loss(th, disc_real_outputs, disc_generated_outputs, item=True):
    loss = 0
    r_losses = []
    g_losses = []
    for dr, dg in zip(disc_real_outputs, disc_generated_outputs):
        r_loss = th.mean((1 - dr) ** 2)
        g_loss = th.mean(dg ** 2)
        loss += (r_loss + g_loss)
        r_losses.append(r_loss.item() if item else r_loss.detach())  # (for logging: see the module docstring)
        g_losses.append(g_loss.item() if item else g_loss.detach())

    return loss, r_losses, g_losses


def generator_loss(th, disc_outputs):
    loss = 0
    gen_losses = []
    for dg in disc_outputs:
        l = th.mean((1 - dg) ** 2)
        gen_losses.append(l)
        loss += l

    return loss, gen_losses


def hifigan_d_loss(th, model, y, y_g_hat):
    """train.py's discriminator half: the MPD's and MSD's LSGAN losses on the detached fakes."""
    mpd, msd = model.mpd, model.msd
    # MPD
    y_df_hat_r, y_df_hat_g, _, _ = mpd(y, y_g_hat.detach())
    loss_disc_f, losses_disc_f_r, losses_disc_f_g = discriminator_loss(th, y_df_hat_r, y_df_hat_g, th is torch)

    # MSD
    y_ds_hat_r, y_ds_hat_g, _, _ = msd(y, y_g_hat.detach())
    loss_disc_s, losses_disc_s_r, losses_disc_s_g = discriminator_loss(th, y_ds_hat_r, y_ds_hat_g, th is torch)

    loss_disc_all = loss_disc_s + loss_disc_f
    return loss_disc_all


def hifigan_g_loss(th, F_, model, x, y, y_mel, h):
    """train.py's generator half: the generator's forward, the mel L1 loss times 45, feature matching and the
    LSGAN generator losses of both discriminators (updated by the step before)."""
    y_g_hat = model.generator(x)
    y_g_hat_mel = model.mel(y_g_hat.squeeze(1), h.n_fft, h.num_mels, h.sampling_rate, h.hop_size, h.win_size,
                            h.fmin, h.fmax)
    # L1 Mel-Spectrogram Loss
    loss_mel = F_.l1_loss(y_mel, y_g_hat_mel) * 45

    y_df_hat_r, y_df_hat_g, fmap_f_r, fmap_f_g = model.mpd(y, y_g_hat)
    y_ds_hat_r, y_ds_hat_g, fmap_s_r, fmap_s_g = model.msd(y, y_g_hat)
    loss_fm_f = feature_loss(th, fmap_f_r, fmap_f_g)
    loss_fm_s = feature_loss(th, fmap_s_r, fmap_s_g)
    loss_gen_f, losses_gen_f = generator_loss(th, y_df_hat_g)
    loss_gen_s, losses_gen_s = generator_loss(th, y_ds_hat_g)
    loss_gen_all = loss_gen_s + loss_gen_f + loss_fm_s + loss_fm_f + loss_mel
    return loss_gen_all, loss_mel


def hifigan_step(model, optim_g, optim_d, x, y, y_mel, h):
    """One iteration of train.py: the generator's output, a discriminator step on it detached, then a generator
    step (its forward taken again: the generator holds no state)."""
    y_g_hat = model.generator(x).detach()
    loss_disc_all, grads_d = av.value_and_grad(lambda m, y, g: hifigan_d_loss(av, m, y, g))(model, y, y_g_hat)
    optim_d.step(grads_d)
    (loss_gen_all, loss_mel), grads_g = av.value_and_grad(
        lambda m, x, y, y_mel: hifigan_g_loss(av, F, m, x, y, y_mel, h), has_aux=True)(model, x, y, y_mel)
    optim_g.step(grads_g)
    return loss_disc_all, loss_gen_all, loss_mel


def hifigan_torch_step(model, optim_g, optim_d, x, y, y_mel, h):
    y_g_hat = model.generator(x)
    optim_d.zero_grad()
    loss_disc_all = hifigan_d_loss(torch, model, y, y_g_hat)
    loss_disc_all.backward()
    optim_d.step()
    optim_g.zero_grad()
    # (train.py takes y_g_hat from the forward above; the one here is the same)
    loss_gen_all, loss_mel = hifigan_g_loss(torch, TF, model, x, y, y_mel, h)
    loss_gen_all.backward()
    optim_g.step()
    return loss_disc_all, loss_gen_all, loss_mel


@pytest.mark.parametrize("resblock,mode", [("1", "numpy"), ("2", "cpu")])
def test_hifigan_weight_norm_mpd_msd_spectral_norm_and_mel_l1_loss(resblock, mode):
    h = hifigan_h(resblock)
    ours, theirs = pair(lambda lib, F_, th: hifigan(lib, F_, th, h))

    def optimizers(o, model):
        optim_g = o.AdamW(model.generator.parameters(), h.learning_rate, betas=[h.adam_b1, h.adam_b2])
        optim_d = o.AdamW(list(model.msd.parameters()) + list(model.mpd.parameters()), h.learning_rate,
                          betas=[h.adam_b1, h.adam_b2])
        return optim_g, optim_d, o.lr_scheduler.ExponentialLR(optim_g, gamma=h.lr_decay), \
            o.lr_scheduler.ExponentialLR(optim_d, gamma=h.lr_decay)
    optim_g, optim_d, sched_g, sched_d = optimizers(optim, ours)
    toptim_g, toptim_d, tsched_g, tsched_d = optimizers(torch.optim, theirs)
    run = compiled(lambda *a: hifigan_step(*a, h), mode)
    rng = np.random.default_rng(0)
    frames = 10
    for it in range(3):
        x = rng.standard_normal((2, h.num_mels, frames))
        y = np.tanh(rng.standard_normal((2, 1, frames * h.hop_size)))
        with torch.no_grad():  # the dataset's y_mel: mel_spectrogram of the audio
            y_mel = theirs.mel(T(y[:, 0]), h.n_fft, h.num_mels, h.sampling_rate, h.hop_size, h.win_size, h.fmin,
                               h.fmax).numpy()
        tls = hifigan_torch_step(theirs, toptim_g, toptim_d, T(x), T(y), T(y_mel), h)
        tsched_g.step()
        tsched_d.step()
        with strict():
            args = (ours, optim_g, optim_d, arr(x), arr(y), arr(y_mel))
            ls = run(*args) if it else hifigan_step(*args, h)
        sched_g.step()
        sched_d.step()
        for a, b in zip(ls, tls):
            assert rel(a, b) < 1e-11, it
        same_weights(ours, theirs, 1e-9)
    if mode != "eager":
        assert run.cache_info().misses == 1
    ours.generator.remove_weight_norm()
    theirs.generator.remove_weight_norm()
    ours.eval()
    theirs.eval()
    assert sorted(k for k, _ in ours.generator.named_parameters()) == \
        sorted(k for k, _ in theirs.generator.named_parameters())
    x = rng.standard_normal((1, h.num_mels, 7))
    with torch.no_grad():
        assert rel(ours.generator(arr(x)), theirs.generator(T(x))) < 1e-12


# -- 2. EnCodec's residual vector quantizer and SEANet (facebookresearch/encodec: quantization/core_vq.py,
#       modules/conv.py, modules/seanet.py, modules/lstm.py) ---------------------------------------------------

def encodec(lib, F_, th, perms, causal=True, nearest="encodec", n_q=3, bins=6, dimension=4, decay=0.8):
    import math
    import typing as tp

    from einops import rearrange, repeat
    nn_ = lib
    draws = iter(perms)  # kmeans' randperm, one per codebook

    # -- quantization/core_vq.py
    def default(val: tp.Any, d: tp.Any) -> tp.Any:
        return val if val is not None else d

    def ema_inplace(moving_avg, new, decay: float):
        moving_avg.data.mul_(decay).add_(new, alpha=(1 - decay))

    def laplace_smoothing(x, n_categories: int, epsilon: float = 1e-5):
        return (x + epsilon) / (x.sum() + n_categories * epsilon)

    def uniform_init(*shape: int):
        t = th.empty(shape)
        nn_.init.kaiming_uniform_(t)
        return t

    def sample_vectors(samples, num: int):
        num_samples, device = samples.shape[0], samples.device

        if num_samples >= num:
            indices = th.tensor(next(draws), device=device)[:num]  # torch.randperm(num_samples): given
        else:
            indices = th.randint(0, num_samples, (num,), device=device)

        return samples[indices]

    def kmeans(samples, num_clusters: int, num_iters: int = 10):
        dim, dtype = samples.shape[-1], samples.dtype

        means = sample_vectors(samples, num_clusters)

        for _ in range(num_iters):
            diffs = rearrange(samples, "n d -> n () d") - rearrange(
                means, "c d -> () c d"
            )
            dists = -(diffs ** 2).sum(dim=-1)

            buckets = dists.max(dim=-1).indices
            bins = th.bincount(buckets, minlength=num_clusters)
            zero_mask = bins == 0
            bins_min_clamped = bins.masked_fill(zero_mask, 1)

            new_means = buckets.new_zeros(num_clusters, dim, dtype=dtype)
            new_means.scatter_add_(0, repeat(buckets, "n -> n d", d=dim), samples)
            new_means = new_means / bins_min_clamped[..., None]

            means = th.where(zero_mask[..., None], means, new_means)

        return means, bins

    class EuclideanCodebook(nn_.Module):
        def __init__(self, dim: int, codebook_size: int, kmeans_init: int = False, kmeans_iters: int = 10,
                     decay: float = 0.99, epsilon: float = 1e-5, threshold_ema_dead_code: int = 2):
            super().__init__()
            self.decay = decay
            init_fn: tp.Union[tp.Callable[..., th.Tensor], tp.Any] = uniform_init if not kmeans_init else th.zeros  # noqa: UP007
            embed = init_fn(codebook_size, dim)

            self.codebook_size = codebook_size

            self.kmeans_iters = kmeans_iters
            self.epsilon = epsilon
            self.threshold_ema_dead_code = threshold_ema_dead_code

            self.register_buffer("inited", th.Tensor([not kmeans_init]))
            self.register_buffer("cluster_size", th.zeros(codebook_size))
            self.register_buffer("embed", embed)
            self.register_buffer("embed_avg", embed.clone())

        def init_embed_(self, data):
            if self.inited:
                return

            embed, cluster_size = kmeans(data, self.codebook_size, self.kmeans_iters)
            self.embed.data.copy_(embed)
            self.embed_avg.data.copy_(embed.clone())
            self.cluster_size.data.copy_(cluster_size)
            self.inited.data.copy_(th.Tensor([True]))
            # Make sure all buffers across workers are in sync after initialization
            # distrib.broadcast_tensors(self.buffers())  (one process here)

        def expire_codes_(self, batch_samples):
            if self.threshold_ema_dead_code == 0:
                return
            raise NotImplementedError("sample_vectors (a random draw): see the module docstring")

        def preprocess(self, x):
            x = rearrange(x, "... d -> (...) d")
            return x

        def quantize(self, x):
            if nearest == "cdist":  # vector-quantize-pytorch's and most SoundStream ports' form
                return th.cdist(x, self.embed).argmin(dim=-1)
            embed = self.embed.t()
            dist = -(
                x.pow(2).sum(1, keepdim=True)
                - 2 * x @ embed
                + embed.pow(2).sum(0, keepdim=True)
            )
            embed_ind = dist.max(dim=-1).indices
            return embed_ind

        def postprocess_emb(self, embed_ind, shape):
            return embed_ind.view(*shape[:-1])

        def dequantize(self, embed_ind):
            quantize = F_.embedding(embed_ind, self.embed)
            return quantize

        def encode(self, x):
            shape = x.shape
            # pre-process
            x = self.preprocess(x)
            # quantize
            embed_ind = self.quantize(x)
            # post-process
            embed_ind = self.postprocess_emb(embed_ind, shape)
            return embed_ind

        def decode(self, embed_ind):
            quantize = self.dequantize(embed_ind)
            return quantize

        def forward(self, x):
            shape, dtype = x.shape, x.dtype
            x = self.preprocess(x)

            self.init_embed_(x)

            embed_ind = self.quantize(x)
            embed_onehot = F_.one_hot(embed_ind, self.codebook_size).type(dtype)
            embed_ind = self.postprocess_emb(embed_ind, shape)
            quantize = self.dequantize(embed_ind)

            if self.training:
                # We do the expiry of code at that point as buffers are in sync
                # and all the workers will take the same decision.
                self.expire_codes_(x)
                ema_inplace(self.cluster_size, embed_onehot.sum(0), self.decay)
                embed_sum = x.t() @ embed_onehot
                ema_inplace(self.embed_avg, embed_sum.t(), self.decay)
                cluster_size = (
                    laplace_smoothing(self.cluster_size, self.codebook_size, self.epsilon)
                    * self.cluster_size.sum()
                )
                embed_normalized = self.embed_avg / cluster_size.unsqueeze(1)
                self.embed.data.copy_(embed_normalized)

            return quantize, embed_ind

    class VectorQuantization(nn_.Module):
        def __init__(self, dim: int, codebook_size: int, codebook_dim: tp.Optional[int] = None,  # noqa: UP045
                     decay: float = 0.99, epsilon: float = 1e-5, kmeans_init: bool = True, kmeans_iters: int = 50,
                     threshold_ema_dead_code: int = 2, commitment_weight: float = 1.):
            super().__init__()
            _codebook_dim: int = default(codebook_dim, dim)

            requires_projection = _codebook_dim != dim
            self.project_in = (nn_.Linear(dim, _codebook_dim) if requires_projection else nn_.Identity())
            self.project_out = (nn_.Linear(_codebook_dim, dim) if requires_projection else nn_.Identity())

            self.epsilon = epsilon
            self.commitment_weight = commitment_weight

            self._codebook = EuclideanCodebook(dim=_codebook_dim, codebook_size=codebook_size,
                                               kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
                                               decay=decay, epsilon=epsilon,
                                               threshold_ema_dead_code=threshold_ema_dead_code)
            self.codebook_size = codebook_size

        @property
        def codebook(self):
            return self._codebook.embed

        def encode(self, x):
            x = rearrange(x, "b d n -> b n d")
            x = self.project_in(x)
            embed_in = self._codebook.encode(x)
            return embed_in

        def decode(self, embed_ind):
            quantize = self._codebook.decode(embed_ind)
            quantize = self.project_out(quantize)
            quantize = rearrange(quantize, "b n d -> b d n")
            return quantize

        def forward(self, x):
            device = x.device
            x = rearrange(x, "b d n -> b n d")
            x = self.project_in(x)

            quantize, embed_ind = self._codebook(x)

            if self.training:
                quantize = x + (quantize - x).detach()

            loss = th.tensor([0.0], device=device, requires_grad=self.training)

            if self.training:
                if self.commitment_weight > 0:
                    commit_loss = F_.mse_loss(quantize.detach(), x)
                    loss = loss + commit_loss * self.commitment_weight

            quantize = self.project_out(quantize)
            quantize = rearrange(quantize, "b n d -> b d n")
            return quantize, embed_ind, loss

    class ResidualVectorQuantization(nn_.Module):
        def __init__(self, *, num_quantizers, **kwargs):
            super().__init__()
            self.layers = nn_.ModuleList(
                [VectorQuantization(**kwargs) for _ in range(num_quantizers)]
            )

        def forward(self, x, n_q: tp.Optional[int] = None):  # noqa: UP045
            quantized_out = 0.0
            residual = x

            all_losses = []
            all_indices = []

            n_q = n_q or len(self.layers)

            for layer in self.layers[:n_q]:
                quantized, indices, loss = layer(residual)
                residual = residual - quantized
                quantized_out = quantized_out + quantized

                all_indices.append(indices)
                all_losses.append(loss)

            out_losses, out_indices = map(th.stack, (all_losses, all_indices))
            return quantized_out, out_indices, out_losses

        def encode(self, x, n_q: tp.Optional[int] = None):  # noqa: UP045
            residual = x
            all_indices = []
            n_q = n_q or len(self.layers)
            for layer in self.layers[:n_q]:
                indices = layer.encode(residual)
                quantized = layer.decode(indices)
                residual = residual - quantized
                all_indices.append(indices)
            out_indices = th.stack(all_indices)
            return out_indices

        def decode(self, q_indices):
            quantized_out = th.tensor(0.0, device=q_indices.device)
            for i, indices in enumerate(q_indices):
                layer = self.layers[i]
                quantized = layer.decode(indices)
                quantized_out = quantized_out + quantized
            return quantized_out

    # -- modules/conv.py (weight_norm only: NormConv1d's get_norm_module is an Identity for it)
    def apply_parametrization_norm(module, norm='none'):
        if norm == 'weight_norm':
            return lib.utils.weight_norm(module)
        return module

    def get_extra_padding_for_conv1d(x, kernel_size: int, stride: int, padding_total: int = 0) -> int:
        length = x.shape[-1]
        n_frames = (length - kernel_size + padding_total) / stride + 1
        ideal_length = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
        return ideal_length - length

    def pad1d(x, paddings, mode: str = 'zero', value: float = 0.):
        length = x.shape[-1]
        padding_left, padding_right = paddings
        assert padding_left >= 0 and padding_right >= 0, (padding_left, padding_right)
        if mode == 'reflect':
            max_pad = max(padding_left, padding_right)
            extra_pad = 0
            if length <= max_pad:
                extra_pad = max_pad - length + 1
                x = F_.pad(x, (0, extra_pad))
            padded = F_.pad(x, paddings, mode, value)
            end = padded.shape[-1] - extra_pad
            return padded[..., :end]
        else:
            return F_.pad(x, paddings, mode, value)

    def unpad1d(x, paddings):
        padding_left, padding_right = paddings
        assert padding_left >= 0 and padding_right >= 0, (padding_left, padding_right)
        assert (padding_left + padding_right) <= x.shape[-1]
        end = x.shape[-1] - padding_right
        return x[..., padding_left: end]

    class NormConv1d(nn_.Module):
        def __init__(self, *args, causal: bool = False, norm: str = 'none', norm_kwargs={}, **kwargs):  # noqa: B006
            super().__init__()
            self.conv = apply_parametrization_norm(nn_.Conv1d(*args, **kwargs), norm)
            self.norm = nn_.Identity()
            self.norm_type = norm

        def forward(self, x):
            x = self.conv(x)
            x = self.norm(x)
            return x

    class NormConvTranspose1d(nn_.Module):
        def __init__(self, *args, causal: bool = False, norm: str = 'none', norm_kwargs={}, **kwargs):  # noqa: B006
            super().__init__()
            self.convtr = apply_parametrization_norm(nn_.ConvTranspose1d(*args, **kwargs), norm)
            self.norm = nn_.Identity()
            self.norm_type = norm

        def forward(self, x):
            x = self.convtr(x)
            x = self.norm(x)
            return x

    class SConv1d(nn_.Module):
        def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                     dilation: int = 1, groups: int = 1, bias: bool = True, causal: bool = False,
                     norm: str = 'none', norm_kwargs={}, pad_mode: str = 'reflect'):  # noqa: B006
            super().__init__()
            self.conv = NormConv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation, groups=groups,
                                   bias=bias, causal=causal, norm=norm, norm_kwargs=norm_kwargs)
            self.causal = causal
            self.pad_mode = pad_mode

        def forward(self, x):
            B, C, T = x.shape
            kernel_size = self.conv.conv.kernel_size[0]
            stride = self.conv.conv.stride[0]
            dilation = self.conv.conv.dilation[0]
            kernel_size = (kernel_size - 1) * dilation + 1  # effective kernel size with dilations
            padding_total = kernel_size - stride
            extra_padding = get_extra_padding_for_conv1d(x, kernel_size, stride, padding_total)
            if self.causal:
                # Left padding for causal
                x = pad1d(x, (padding_total, extra_padding), mode=self.pad_mode)
            else:
                # Asymmetric padding required for odd strides
                padding_right = padding_total // 2
                padding_left = padding_total - padding_right
                x = pad1d(x, (padding_left, padding_right + extra_padding), mode=self.pad_mode)
            return self.conv(x)

    class SConvTranspose1d(nn_.Module):
        def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                     causal: bool = False, norm: str = 'none', trim_right_ratio: float = 1., norm_kwargs={}):  # noqa: B006
            super().__init__()
            self.convtr = NormConvTranspose1d(in_channels, out_channels, kernel_size, stride,
                                              causal=causal, norm=norm, norm_kwargs=norm_kwargs)
            self.causal = causal
            self.trim_right_ratio = trim_right_ratio

        def forward(self, x):
            kernel_size = self.convtr.convtr.kernel_size[0]
            stride = self.convtr.convtr.stride[0]
            padding_total = kernel_size - stride

            y = self.convtr(x)

            if self.causal:
                # Trim the padding on the right according to the specified ratio
                # if trim_right_ratio = 1.0, trim everything from right
                padding_right = math.ceil(padding_total * self.trim_right_ratio)
                padding_left = padding_total - padding_right
                y = unpad1d(y, (padding_left, padding_right))
            else:
                # Asymmetric padding required for odd strides
                padding_right = padding_total // 2
                padding_left = padding_total - padding_right
                y = unpad1d(y, (padding_left, padding_right))
            return y

    # -- modules/lstm.py
    class SLSTM(nn_.Module):
        def __init__(self, dimension: int, num_layers: int = 2, skip: bool = True):
            super().__init__()
            self.skip = skip
            self.lstm = nn_.LSTM(dimension, dimension, num_layers)

        def forward(self, x):
            x = x.permute(2, 0, 1)
            y, _ = self.lstm(x)
            if self.skip:
                y = y + x
            y = y.permute(1, 2, 0)
            return y

    # -- modules/seanet.py
    class SEANetResnetBlock(nn_.Module):
        def __init__(self, dim: int, kernel_sizes: tp.List[int] = [3, 1], dilations: tp.List[int] = [1, 1],  # noqa: B006, UP006
                     activation: str = 'ELU', activation_params: dict = {'alpha': 1.0},  # noqa: B006
                     norm: str = 'weight_norm', norm_params: tp.Dict[str, tp.Any] = {}, causal: bool = False,  # noqa: B006, UP006
                     pad_mode: str = 'reflect', compress: int = 2, true_skip: bool = True):
            super().__init__()
            assert len(kernel_sizes) == len(dilations), 'Number of kernel sizes should match number of dilations'
            act = getattr(nn_, activation)
            hidden = dim // compress
            block = []
            for i, (kernel_size, dilation) in enumerate(zip(kernel_sizes, dilations)):
                in_chs = dim if i == 0 else hidden
                out_chs = dim if i == len(kernel_sizes) - 1 else hidden
                block += [
                    act(**activation_params),
                    SConv1d(in_chs, out_chs, kernel_size=kernel_size, dilation=dilation,
                            norm=norm, norm_kwargs=norm_params,
                            causal=causal, pad_mode=pad_mode),
                ]
            self.block = nn_.Sequential(*block)
            self.shortcut: nn_.Module
            if true_skip:
                self.shortcut = nn_.Identity()
            else:
                self.shortcut = SConv1d(dim, dim, kernel_size=1, norm=norm, norm_kwargs=norm_params,
                                        causal=causal, pad_mode=pad_mode)

        def forward(self, x):
            return self.shortcut(x) + self.block(x)

    class SEANetEncoder(nn_.Module):
        def __init__(self, channels: int = 1, dimension: int = 128, n_filters: int = 32, n_residual_layers: int = 1,
                     ratios: tp.List[int] = [8, 5, 4, 2], activation: str = 'ELU', activation_params: dict = {'alpha': 1.0},  # noqa: B006, UP006
                     norm: str = 'weight_norm', norm_params: tp.Dict[str, tp.Any] = {}, kernel_size: int = 7,  # noqa: B006, UP006
                     last_kernel_size: int = 7, residual_kernel_size: int = 3, dilation_base: int = 2, causal: bool = False,
                     pad_mode: str = 'reflect', true_skip: bool = False, compress: int = 2, lstm: int = 2):
            super().__init__()
            self.channels = channels
            self.dimension = dimension
            self.n_filters = n_filters
            self.ratios = list(reversed(ratios))
            del ratios
            self.n_residual_layers = n_residual_layers
            self.hop_length = np.prod(self.ratios)

            act = getattr(nn_, activation)
            mult = 1
            model: tp.List[nn_.Module] = [  # noqa: UP006
                SConv1d(channels, mult * n_filters, kernel_size, norm=norm, norm_kwargs=norm_params,
                        causal=causal, pad_mode=pad_mode)
            ]
            # Downsample to raw audio scale
            for _i, ratio in enumerate(self.ratios):
                # Add residual layers
                for j in range(n_residual_layers):
                    model += [
                        SEANetResnetBlock(mult * n_filters, kernel_sizes=[residual_kernel_size, 1],
                                          dilations=[dilation_base ** j, 1],
                                          norm=norm, norm_params=norm_params,
                                          activation=activation, activation_params=activation_params,
                                          causal=causal, pad_mode=pad_mode, compress=compress, true_skip=true_skip)]

                # Add downsampling layers
                model += [
                    act(**activation_params),
                    SConv1d(mult * n_filters, mult * n_filters * 2,
                            kernel_size=ratio * 2, stride=ratio,
                            norm=norm, norm_kwargs=norm_params,
                            causal=causal, pad_mode=pad_mode),
                ]
                mult *= 2

            if lstm:
                model += [SLSTM(mult * n_filters, num_layers=lstm)]

            model += [
                act(**activation_params),
                SConv1d(mult * n_filters, dimension, last_kernel_size, norm=norm, norm_kwargs=norm_params,
                        causal=causal, pad_mode=pad_mode)
            ]

            self.model = nn_.Sequential(*model)

        def forward(self, x):
            return self.model(x)

    class SEANetDecoder(nn_.Module):
        def __init__(self, channels: int = 1, dimension: int = 128, n_filters: int = 32, n_residual_layers: int = 1,
                     ratios: tp.List[int] = [8, 5, 4, 2], activation: str = 'ELU', activation_params: dict = {'alpha': 1.0},  # noqa: B006, UP006
                     final_activation: tp.Optional[str] = None, final_activation_params: tp.Optional[dict] = None,  # noqa: UP045
                     norm: str = 'weight_norm', norm_params: tp.Dict[str, tp.Any] = {}, kernel_size: int = 7,  # noqa: B006, UP006
                     last_kernel_size: int = 7, residual_kernel_size: int = 3, dilation_base: int = 2, causal: bool = False,
                     pad_mode: str = 'reflect', true_skip: bool = False, compress: int = 2, lstm: int = 2,
                     trim_right_ratio: float = 1.0):
            super().__init__()
            self.dimension = dimension
            self.channels = channels
            self.n_filters = n_filters
            self.ratios = ratios
            del ratios
            self.n_residual_layers = n_residual_layers
            self.hop_length = np.prod(self.ratios)

            act = getattr(nn_, activation)
            mult = int(2 ** len(self.ratios))
            model: tp.List[nn_.Module] = [  # noqa: UP006
                SConv1d(dimension, mult * n_filters, kernel_size, norm=norm, norm_kwargs=norm_params,
                        causal=causal, pad_mode=pad_mode)
            ]

            if lstm:
                model += [SLSTM(mult * n_filters, num_layers=lstm)]

            # Upsample to raw audio scale
            for _i, ratio in enumerate(self.ratios):
                # Add upsampling layers
                model += [
                    act(**activation_params),
                    SConvTranspose1d(mult * n_filters, mult * n_filters // 2,
                                     kernel_size=ratio * 2, stride=ratio,
                                     norm=norm, norm_kwargs=norm_params,
                                     causal=causal, trim_right_ratio=trim_right_ratio),
                ]
                # Add residual layers
                for j in range(n_residual_layers):
                    model += [
                        SEANetResnetBlock(mult * n_filters // 2, kernel_sizes=[residual_kernel_size, 1],
                                          dilations=[dilation_base ** j, 1],
                                          activation=activation, activation_params=activation_params,
                                          norm=norm, norm_params=norm_params, causal=causal,
                                          pad_mode=pad_mode, compress=compress, true_skip=true_skip)]

                mult //= 2

            # Add final layers
            model += [
                act(**activation_params),
                SConv1d(n_filters, channels, last_kernel_size, norm=norm, norm_kwargs=norm_params,
                        causal=causal, pad_mode=pad_mode)
            ]
            # Add optional final activation to decoder (eg. tanh)
            if final_activation is not None:
                final_act = getattr(nn_, final_activation)
                final_activation_params = final_activation_params or {}
                model += [
                    final_act(**final_activation_params)
                ]
            self.model = nn_.Sequential(*model)

        def forward(self, z):
            y = self.model(z)
            return y

    class TinyCodec(nn_.Module):
        """EncodecModel's encoder -> quantizer -> decoder path in training (its _encode_frame and _decode_frame
        without the frame slicing), with the quantizer's penalty as ResidualVectorQuantizer's mean."""

        def __init__(self):
            super().__init__()
            kw = dict(dimension=dimension, n_filters=2, ratios=[2, 2], lstm=1, causal=causal, norm='weight_norm')
            self.encoder = SEANetEncoder(**kw)
            self.quantizer = ResidualVectorQuantization(dim=dimension, codebook_size=bins, num_quantizers=n_q,
                                                        decay=decay, kmeans_init=True, kmeans_iters=3,
                                                        threshold_ema_dead_code=0)
            self.decoder = SEANetDecoder(**kw)

        def forward(self, x, n_q=None):
            emb = self.encoder(x)
            quantized, codes, commit_loss = self.quantizer(emb, n_q=n_q)
            out = self.decoder(quantized)
            return out, codes, th.mean(commit_loss)

    return TinyCodec()


def codec_loss(F_):
    """A SoundStream-style reconstruction loss (L1 plus L2 of the waveform) and the commitment penalty; the codes
    beside it."""
    def loss(model, x, n_q):
        y, codes, penalty = model(x, n_q)
        return F_.l1_loss(y, x) + F_.mse_loss(y, x) + penalty, (codes, penalty)
    return loss


@pytest.mark.parametrize("causal,nearest,n_q,mode", [(True, "encodec", None, "numpy"), (False, "cdist", 2, "cpu")])
def test_encodec_rvq_ema_codebooks_and_seanet(causal, nearest, n_q, mode):
    rng = np.random.default_rng(1)
    perms = [rng.permutation(12).tolist() for _ in range(3)]  # (2 x 24 samples, hop 4)
    ours, theirs = pair(lambda lib, F_, th: encodec(lib, F_, th, perms, causal, nearest))
    opt = optim.Adam(ours.parameters(), lr=3e-2, betas=(0.5, 0.9))
    topt = torch.optim.Adam(theirs.parameters(), lr=3e-2, betas=(0.5, 0.9))

    def step(model, opt, x, n_q):
        (loss, (codes, penalty)), grads = av.value_and_grad(codec_loss(F), has_aux=True)(model, x, n_q)
        opt.step(grads)
        return loss, codes, penalty
    run = compiled(step, mode)
    for it in range(3):
        x = 0.5 * np.tanh(rng.standard_normal((2, 1, 24)))
        topt.zero_grad()
        tl, (tcodes, tpen) = codec_loss(TF)(theirs, T(x), n_q)
        tl.backward()
        topt.step()
        with strict():
            loss, codes, pen = (run if it else step)(ours, opt, arr(x), n_q)
        assert rel(loss, tl) < 1e-11 and rel(pen, tpen) < 1e-11, it
        assert np.array_equal(codes.numpy(), tcodes.numpy()), it
        same_weights(ours, theirs, 1e-9)  # the codebooks, cluster sizes and averages too
    assert run.cache_info().misses == 1
    ours.eval()
    theirs.eval()
    x = arr(0.5 * np.tanh(rng.standard_normal((1, 1, 24))))
    with torch.no_grad():
        tcodes = theirs.quantizer.encode(theirs.encoder(T(x.numpy())), n_q)
        assert np.array_equal(ours.quantizer.encode(ours.encoder(x), n_q).numpy(), tcodes.numpy())
        assert rel(ours.decoder(ours.quantizer.decode(arr(tcodes.numpy()))),
                   theirs.decoder(theirs.quantizer.decode(tcodes))) < 1e-12


# -- 3. FastSpeech 2's variance adaptor (ming024/FastSpeech2: model/modules.py's VarianceAdaptor, LengthRegulator,
#       VariancePredictor and Conv, transformer/PostNet.py, utils/tools.py's get_mask_from_lengths and pad,
#       model/loss.py's FastSpeech2Loss), between a stand-in encoder and decoder ------------------------------------

FS2_CONFIG = {
    "preprocessing": {"pitch": {"feature": "phoneme_level"}, "energy": {"feature": "phoneme_level"},
                      "mel": {"n_mel_channels": 5}},
    "transformer": {"encoder_hidden": 8},
    "variance_predictor": {"filter_size": 8, "kernel_size": 3, "dropout": 0.0},  # 0.5 there
    "variance_embedding": {"pitch_quantization": "linear", "energy_quantization": "log", "n_bins": 6},
    "stats": {"pitch": [-1.5, 2.0], "energy": [0.1, 3.0]},  # stats.json's
}


def fastspeech2(lib, F_, th, config=FS2_CONFIG, n_symbols=7):
    from collections import OrderedDict
    nn_ = lib
    preprocess_config = model_config = config

    def get_mask_from_lengths(lengths, max_len=None):
        batch_size = lengths.shape[0]
        if max_len is None:
            max_len = th.max(lengths).item()

        ids = th.arange(0, max_len).unsqueeze(0).expand(batch_size, -1).to(lengths.device)
        mask = ids >= lengths.unsqueeze(1).expand(-1, max_len)

        return mask

    def pad(input_ele, mel_max_length=None):
        if mel_max_length:
            max_len = mel_max_length
        else:
            max_len = max([input_ele[i].size(0) for i in range(len(input_ele))])

        out_list = list()
        for _i, batch in enumerate(input_ele):
            if len(batch.shape) == 1:
                one_batch_padded = F_.pad(
                    batch, (0, max_len - batch.size(0)), "constant", 0.0
                )
            elif len(batch.shape) == 2:
                one_batch_padded = F_.pad(
                    batch, (0, 0, 0, max_len - batch.size(0)), "constant", 0.0
                )
            out_list.append(one_batch_padded)
        out_padded = th.stack(out_list)
        return out_padded

    class Conv(nn_.Module):
        def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0, dilation=1, bias=True,
                     w_init="linear"):
            super(Conv, self).__init__()  # noqa: UP008

            self.conv = nn_.Conv1d(
                in_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                bias=bias,
            )

        def forward(self, x):
            x = x.contiguous().transpose(1, 2)
            x = self.conv(x)
            x = x.contiguous().transpose(1, 2)

            return x

    class VariancePredictor(nn_.Module):
        def __init__(self, model_config):
            super(VariancePredictor, self).__init__()  # noqa: UP008

            self.input_size = model_config["transformer"]["encoder_hidden"]
            self.filter_size = model_config["variance_predictor"]["filter_size"]
            self.kernel = model_config["variance_predictor"]["kernel_size"]
            self.conv_output_size = model_config["variance_predictor"]["filter_size"]
            self.dropout = model_config["variance_predictor"]["dropout"]

            self.conv_layer = nn_.Sequential(
                OrderedDict(
                    [
                        (
                            "conv1d_1",
                            Conv(
                                self.input_size,
                                self.filter_size,
                                kernel_size=self.kernel,
                                padding=(self.kernel - 1) // 2,
                            ),
                        ),
                        ("relu_1", nn_.ReLU()),
                        ("layer_norm_1", nn_.LayerNorm(self.filter_size)),
                        ("dropout_1", nn_.Dropout(self.dropout)),
                        (
                            "conv1d_2",
                            Conv(
                                self.filter_size,
                                self.filter_size,
                                kernel_size=self.kernel,
                                padding=1,
                            ),
                        ),
                        ("relu_2", nn_.ReLU()),
                        ("layer_norm_2", nn_.LayerNorm(self.filter_size)),
                        ("dropout_2", nn_.Dropout(self.dropout)),
                    ]
                )
            )

            self.linear_layer = nn_.Linear(self.conv_output_size, 1)

        def forward(self, encoder_output, mask):
            out = self.conv_layer(encoder_output)
            out = self.linear_layer(out)
            out = out.squeeze(-1)

            if mask is not None:
                out = out.masked_fill(mask, 0.0)

            return out

    class LengthRegulator(nn_.Module):
        def __init__(self):
            super(LengthRegulator, self).__init__()  # noqa: UP008

        def LR(self, x, duration, max_len):
            device = x.device
            output = list()
            mel_len = list()
            for batch, expand_target in zip(x, duration):
                expanded = self.expand(batch, expand_target)
                output.append(expanded)
                mel_len.append(expanded.shape[0])

            if max_len is not None:
                output = pad(output, max_len)
            else:
                output = pad(output)

            return output, th.LongTensor(mel_len).to(device)

        def expand(self, batch, predicted):
            # `vec.expand(predicted[i].item(), -1)` per phoneme and cat there: see the module docstring
            return th.repeat_interleave(batch, predicted, dim=0)

        def forward(self, x, duration, max_len):
            output, mel_len = self.LR(x, duration, max_len)
            return output, mel_len

    class VarianceAdaptor(nn_.Module):
        def __init__(self, preprocess_config, model_config):
            super(VarianceAdaptor, self).__init__()  # noqa: UP008
            self.duration_predictor = VariancePredictor(model_config)
            self.length_regulator = LengthRegulator()
            self.pitch_predictor = VariancePredictor(model_config)
            self.energy_predictor = VariancePredictor(model_config)

            self.pitch_feature_level = preprocess_config["preprocessing"]["pitch"]["feature"]
            self.energy_feature_level = preprocess_config["preprocessing"]["energy"]["feature"]
            assert self.pitch_feature_level in ["phoneme_level", "frame_level"]
            assert self.energy_feature_level in ["phoneme_level", "frame_level"]

            pitch_quantization = model_config["variance_embedding"]["pitch_quantization"]
            energy_quantization = model_config["variance_embedding"]["energy_quantization"]
            n_bins = model_config["variance_embedding"]["n_bins"]
            assert pitch_quantization in ["linear", "log"]
            assert energy_quantization in ["linear", "log"]
            stats = preprocess_config["stats"]  # json.load of stats.json there
            pitch_min, pitch_max = stats["pitch"][:2]
            energy_min, energy_max = stats["energy"][:2]

            if pitch_quantization == "log":
                self.pitch_bins = nn_.Parameter(
                    th.exp(
                        th.linspace(np.log(pitch_min), np.log(pitch_max), n_bins - 1)
                    ),
                    requires_grad=False,
                )
            else:
                self.pitch_bins = nn_.Parameter(
                    th.linspace(pitch_min, pitch_max, n_bins - 1),
                    requires_grad=False,
                )
            if energy_quantization == "log":
                self.energy_bins = nn_.Parameter(
                    th.exp(
                        th.linspace(np.log(energy_min), np.log(energy_max), n_bins - 1)
                    ),
                    requires_grad=False,
                )
            else:
                self.energy_bins = nn_.Parameter(
                    th.linspace(energy_min, energy_max, n_bins - 1),
                    requires_grad=False,
                )

            self.pitch_embedding = nn_.Embedding(
                n_bins, model_config["transformer"]["encoder_hidden"]
            )
            self.energy_embedding = nn_.Embedding(
                n_bins, model_config["transformer"]["encoder_hidden"]
            )

        def get_pitch_embedding(self, x, target, mask, control):
            prediction = self.pitch_predictor(x, mask)
            if target is not None:
                embedding = self.pitch_embedding(th.bucketize(target, self.pitch_bins))
            else:
                prediction = prediction * control
                embedding = self.pitch_embedding(
                    th.bucketize(prediction, self.pitch_bins)
                )
            return prediction, embedding

        def get_energy_embedding(self, x, target, mask, control):
            prediction = self.energy_predictor(x, mask)
            if target is not None:
                embedding = self.energy_embedding(th.bucketize(target, self.energy_bins))
            else:
                prediction = prediction * control
                embedding = self.energy_embedding(
                    th.bucketize(prediction, self.energy_bins)
                )
            return prediction, embedding

        def forward(
            self,
            x,
            src_mask,
            mel_mask=None,
            max_len=None,
            pitch_target=None,
            energy_target=None,
            duration_target=None,
            p_control=1.0,
            e_control=1.0,
            d_control=1.0,
        ):

            log_duration_prediction = self.duration_predictor(x, src_mask)
            if self.pitch_feature_level == "phoneme_level":
                pitch_prediction, pitch_embedding = self.get_pitch_embedding(
                    x, pitch_target, src_mask, p_control
                )
                x = x + pitch_embedding
            if self.energy_feature_level == "phoneme_level":
                energy_prediction, energy_embedding = self.get_energy_embedding(
                    x, energy_target, src_mask, p_control
                )
                x = x + energy_embedding

            if duration_target is not None:
                x, mel_len = self.length_regulator(x, duration_target, max_len)
                duration_rounded = duration_target
            else:
                duration_rounded = th.clamp(
                    (th.round(th.exp(log_duration_prediction) - 1) * d_control),
                    min=0,
                )
                x, mel_len = self.length_regulator(x, duration_rounded.long(), max_len)  # (.item()s there)
                mel_mask = get_mask_from_lengths(mel_len)

            return (
                x,
                pitch_prediction,
                energy_prediction,
                log_duration_prediction,
                duration_rounded,
                mel_len,
                mel_mask,
            )

    class ConvNorm(nn_.Module):
        def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=None, dilation=1, bias=True,
                     w_init_gain="linear"):
            super(ConvNorm, self).__init__()  # noqa: UP008

            if padding is None:
                assert kernel_size % 2 == 1
                padding = int(dilation * (kernel_size - 1) / 2)

            self.conv = nn_.Conv1d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                   padding=padding, dilation=dilation, bias=bias)

        def forward(self, signal):
            conv_signal = self.conv(signal)

            return conv_signal

    class PostNet(nn_.Module):
        def __init__(self, n_mel_channels=80, postnet_embedding_dim=512, postnet_kernel_size=5,
                     postnet_n_convolutions=5, dropout=0.5):
            super(PostNet, self).__init__()  # noqa: UP008
            self.dropout = dropout  # 0.5 in F.dropout's calls there
            self.convolutions = nn_.ModuleList()

            self.convolutions.append(
                nn_.Sequential(
                    ConvNorm(n_mel_channels, postnet_embedding_dim, kernel_size=postnet_kernel_size, stride=1,
                             padding=int((postnet_kernel_size - 1) / 2), dilation=1, w_init_gain="tanh"),
                    nn_.BatchNorm1d(postnet_embedding_dim),
                )
            )

            for _i in range(1, postnet_n_convolutions - 1):
                self.convolutions.append(
                    nn_.Sequential(
                        ConvNorm(postnet_embedding_dim, postnet_embedding_dim, kernel_size=postnet_kernel_size,
                                 stride=1, padding=int((postnet_kernel_size - 1) / 2), dilation=1,
                                 w_init_gain="tanh"),
                        nn_.BatchNorm1d(postnet_embedding_dim),
                    )
                )

            self.convolutions.append(
                nn_.Sequential(
                    ConvNorm(postnet_embedding_dim, n_mel_channels, kernel_size=postnet_kernel_size, stride=1,
                             padding=int((postnet_kernel_size - 1) / 2), dilation=1, w_init_gain="linear"),
                    nn_.BatchNorm1d(n_mel_channels),
                )
            )

        def forward(self, x):
            x = x.contiguous().transpose(1, 2)

            for i in range(len(self.convolutions) - 1):
                x = F_.dropout(th.tanh(self.convolutions[i](x)), self.dropout, self.training)
            x = F_.dropout(self.convolutions[-1](x), self.dropout, self.training)

            x = x.contiguous().transpose(1, 2)
            return x

    class FastSpeech2(nn_.Module):
        """model/fastspeech2.py's FastSpeech2 with stand-ins for its FFT-block encoder and decoder (an embedding
        and a Conv; a Linear), no speakers."""

        def __init__(self, preprocess_config, model_config):
            super(FastSpeech2, self).__init__()  # noqa: UP008
            hidden = model_config["transformer"]["encoder_hidden"]
            n_mel = preprocess_config["preprocessing"]["mel"]["n_mel_channels"]
            self.src_word_emb = nn_.Embedding(n_symbols, hidden, padding_idx=0)
            self.encoder_conv = Conv(hidden, hidden, kernel_size=3, padding=1)
            self.variance_adaptor = VarianceAdaptor(preprocess_config, model_config)
            self.decoder = nn_.Linear(hidden, hidden)
            self.mel_linear = nn_.Linear(hidden, n_mel)
            self.postnet = PostNet(n_mel, 6, 3, 3, dropout=0.0)

        def encoder(self, texts, mask):
            return th.tanh(self.encoder_conv(self.src_word_emb(texts))).masked_fill(mask.unsqueeze(-1), 0)

        def forward(self, texts, src_lens, max_src_len, mels=None, mel_lens=None, max_mel_len=None,
                    p_targets=None, e_targets=None, d_targets=None, p_control=1.0, e_control=1.0, d_control=1.0):
            src_masks = get_mask_from_lengths(src_lens, max_src_len)
            mel_masks = (
                get_mask_from_lengths(mel_lens, max_mel_len)
                if mel_lens is not None
                else None
            )

            output = self.encoder(texts, src_masks)

            (
                output,
                p_predictions,
                e_predictions,
                log_d_predictions,
                d_rounded,
                mel_lens,
                mel_masks,
            ) = self.variance_adaptor(
                output,
                src_masks,
                mel_masks,
                max_mel_len,
                p_targets,
                e_targets,
                d_targets,
                p_control,
                e_control,
                d_control,
            )

            output = th.tanh(self.decoder(output)).masked_fill(mel_masks.unsqueeze(-1), 0)
            output = self.mel_linear(output)

            postnet_output = self.postnet(output) + output

            return (
                output,
                postnet_output,
                p_predictions,
                e_predictions,
                log_d_predictions,
                d_rounded,
                src_masks,
                mel_masks,
                src_lens,
                mel_lens,
            )

    return FastSpeech2(preprocess_config, model_config)


def fastspeech2_loss(th, lib, preprocess_config=FS2_CONFIG):
    class FastSpeech2Loss(lib.Module):
        """ FastSpeech2 Loss """

        def __init__(self, preprocess_config, model_config):
            super(FastSpeech2Loss, self).__init__()  # noqa: UP008
            self.pitch_feature_level = preprocess_config["preprocessing"]["pitch"]["feature"]
            self.energy_feature_level = preprocess_config["preprocessing"]["energy"]["feature"]
            self.mse_loss = lib.MSELoss()
            self.mae_loss = lib.L1Loss()

        def forward(self, inputs, predictions):
            (
                mel_targets,
                _,
                _,
                pitch_targets,
                energy_targets,
                duration_targets,
            ) = inputs[6:]
            (
                mel_predictions,
                postnet_mel_predictions,
                pitch_predictions,
                energy_predictions,
                log_duration_predictions,
                _,
                src_masks,
                mel_masks,
                _,
                _,
            ) = predictions
            src_masks = ~src_masks
            mel_masks = ~mel_masks
            log_duration_targets = th.log(duration_targets.float() + 1)
            mel_targets = mel_targets[:, : mel_masks.shape[1], :]
            mel_masks = mel_masks[:, :mel_masks.shape[1]]

            log_duration_targets.requires_grad = False
            pitch_targets.requires_grad = False
            energy_targets.requires_grad = False
            mel_targets.requires_grad = False

            if self.pitch_feature_level == "phoneme_level":
                pitch_predictions = pitch_predictions.masked_select(src_masks)
                pitch_targets = pitch_targets.masked_select(src_masks)
            elif self.pitch_feature_level == "frame_level":
                pitch_predictions = pitch_predictions.masked_select(mel_masks)
                pitch_targets = pitch_targets.masked_select(mel_masks)

            if self.energy_feature_level == "phoneme_level":
                energy_predictions = energy_predictions.masked_select(src_masks)
                energy_targets = energy_targets.masked_select(src_masks)
            if self.energy_feature_level == "frame_level":
                energy_predictions = energy_predictions.masked_select(mel_masks)
                energy_targets = energy_targets.masked_select(mel_masks)

            log_duration_predictions = log_duration_predictions.masked_select(src_masks)
            log_duration_targets = log_duration_targets.masked_select(src_masks)

            mel_predictions = mel_predictions.masked_select(mel_masks.unsqueeze(-1))
            postnet_mel_predictions = postnet_mel_predictions.masked_select(
                mel_masks.unsqueeze(-1)
            )
            mel_targets = mel_targets.masked_select(mel_masks.unsqueeze(-1))

            mel_loss = self.mae_loss(mel_predictions, mel_targets)
            postnet_mel_loss = self.mae_loss(postnet_mel_predictions, mel_targets)

            pitch_loss = self.mse_loss(pitch_predictions, pitch_targets)
            energy_loss = self.mse_loss(energy_predictions, energy_targets)
            duration_loss = self.mse_loss(log_duration_predictions, log_duration_targets)

            total_loss = (
                mel_loss + postnet_mel_loss + duration_loss + pitch_loss + energy_loss
            )

            return (
                total_loss,
                mel_loss,
                postnet_mel_loss,
                pitch_loss,
                energy_loss,
                duration_loss,
            )
    return FastSpeech2Loss(preprocess_config, preprocess_config)


def fs2_batch(rng, durations, n_symbols=7, n_mel=5):
    """dataset.py's collated batch: ids, raw texts, speakers, texts, src_lens, max_src_len, mels, mel_lens,
    max_mel_len, pitches, energies, durations (phoneme-level pitch and energy; padding durations 0)."""
    durations = np.asarray(durations)
    src_lens = (durations > 0).sum(1)
    mel_lens = durations.sum(1)
    B, L = durations.shape
    texts = np.where(np.arange(L)[None] < src_lens[:, None], rng.integers(1, n_symbols, (B, L)), 0)
    mels = rng.standard_normal((B, mel_lens.max(), n_mel)) * (np.arange(mel_lens.max())[None] < mel_lens[:, None])[..., None]
    pitches = rng.uniform(-2.0, 2.5, (B, L))
    energies = rng.uniform(0.05, 3.5, (B, L))
    return (None, None, None, texts, src_lens, L, mels, mel_lens, int(mel_lens.max()), pitches, energies, durations)


def fs2_loss_fn(th, lib, durations_given):
    """train.py's `output = model(*(batch[2:])); losses = Loss(batch, output)`: the durations the length
    regulator reads are `durations_given` (a list here, see the module docstring)."""
    Loss = fastspeech2_loss(th, lib)

    def loss(model, texts, src_lens, mels, mel_lens, pitches, energies, durations, max_src_len, max_mel_len):
        src_lens, mel_lens = th.as_tensor(src_lens), th.as_tensor(mel_lens)  # (lists on Avalon's side)
        output = model(texts, src_lens, max_src_len, mels, mel_lens, max_mel_len, pitches, energies,
                       durations_given if durations_given is not None else durations)
        batch = (None, None, None, texts, src_lens, max_src_len, mels, mel_lens, max_mel_len, pitches, energies,
                 durations)
        losses = Loss(batch, output)
        return losses[0], losses[1:]
    return loss


def same_weights_but_postnet_biases(ours, theirs, tol):
    """same_weights, but for PostNet's conv biases: a batch norm follows each, so their gradient is zero in exact
    arithmetic, and Adam (eps 1e-9) turns the roundoff each side holds into steps that differ by ~1e-9: they (and
    the running means that follow them) are only checked to stay that close."""
    sd = theirs.state_dict()
    assert sorted(ours.state_dict()) == sorted(sd)
    for k, v in ours.state_dict().items():
        a, b = v.numpy().astype(np.float64), sd[k].detach().numpy().astype(np.float64)
        if k.startswith("postnet.") and k.endswith(("conv.bias", "running_mean")):
            assert np.abs(a - b).max() < 1e-7, k
        else:
            assert np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-4) < tol, k


@pytest.mark.parametrize("mode", ["numpy"])
def test_fastspeech2_variance_adaptor_length_regulator_bucketize_and_masked_losses(mode):
    ours, theirs = pair(fastspeech2)
    opt = optim.Adam(ours.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-9)
    topt = torch.optim.Adam(theirs.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-9)
    durations = [[1, 2, 0, 3], [2, 1, 2, 0]]  # mel lengths 6 and 5, phoneme lengths 3 and 3... see fs2_batch

    def step(model, opt, *batch):
        (loss, parts), grads = av.value_and_grad(fs2_loss_fn(av, nn, durations), has_aux=True)(model, *batch)
        opt.step(grads)
        return loss, parts
    run = compiled(step, mode)
    rng = np.random.default_rng(2)
    for it in range(3):
        b = fs2_batch(rng, durations)
        texts, src_lens, max_src_len, mels, mel_lens, max_mel_len, pitches, energies, ds = b[3:]
        topt.zero_grad()
        targs = [T(a) for a in (texts, src_lens, mels, mel_lens, pitches, energies, ds)]
        tl, tparts = fs2_loss_fn(torch, torch.nn, None)(theirs, *targs, max_src_len, max_mel_len)
        tl.backward()
        topt.step()
        with strict():
            loss, parts = (run if it else step)(ours, opt, arr(texts), src_lens.tolist(), arr(mels), mel_lens.tolist(),
                                                arr(pitches), arr(energies), arr(ds), max_src_len, max_mel_len)
        assert rel(loss, tl) < 1e-12, it
        for a, b_ in zip(parts, tparts):
            assert rel(a, b_) < 1e-11, it
        same_weights_but_postnet_biases(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    # synthesis: predicted durations, rounded and clamped, regulate the lengths (eagerly: the shapes are values)
    ours.eval()
    theirs.eval()
    texts = np.array([[3, 1, 4, 2]])
    with torch.no_grad():
        tout = theirs(T(texts), T(np.array([4])), 4, d_control=4.0)
    out = ours(arr(texts), arr(np.array([4])), 4, d_control=4.0)
    assert np.array_equal(out[5].numpy(), tout[5].numpy()) and int(tout[9][0]) > 0
    assert rel(out[0], tout[0]) < 1e-12 and rel(out[2], tout[2]) < 1e-12
    assert rel(out[1], tout[1]) < 1e-7  # (in eval PostNet's biases no longer cancel: see above)


# -- regressions: what the programs above found -------------------------------------------------------------------

def test_masked_select_with_a_mask_of_given_lengths_inside_a_trace():
    """FastSpeech2Loss selects predictions and targets by `masked_select(~get_mask_from_lengths(lens, max_len))`;
    with the lengths given as Python numbers the mask depends on no input of the traced loss, and its value is
    known while tracing (as `Tensor.item()` reads it). masked_select (and nonzero, unique, ...) refused any traced
    tensor, known or not; they now take such a tensor: masked_select finds the mask's positions by ops of the graph
    (as `x[mask]` does) and nonzero's result is literal data, so no captured array is baked in and the compiled
    step traces once. A mask computed from an input is refused as before."""
    def f(x, lens):
        mask = av.arange(0, x.shape[1]).unsqueeze(0).expand(x.shape[0], -1) >= av.as_tensor(lens).unsqueeze(1)
        return (x.masked_select(~mask.unsqueeze(-1)) ** 2).sum() + av.nonzero(mask).sum()

    x = np.arange(24.0).reshape(3, 4, 2)
    lens = [4, 1, 2]
    keep = (np.arange(4)[None] < np.array(lens)[:, None])[..., None]
    want = (x ** 2 * keep).sum() + np.argwhere(~keep[..., 0]).sum()
    run = av.compile(lambda x, lens: av.value_and_grad(f)(x, lens), backend="cpu")
    with strict():
        for step in (av.value_and_grad(f), run, run):
            loss, g = step(arr(x), lens)
            assert loss.item() == want
            np.testing.assert_array_equal(g.numpy(), 2 * x * keep)
    assert run.cache_info().misses == 1
    with pytest.raises(TypeError, match="masked_select: the result's shape depends on the tensor's values"):
        av.compile(lambda x: x.masked_select(x > 0).sum(), backend="numpy")(arr(x))

"""Round 9e of port QA: modern generative training code as popular repositories write it, written once over
`lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights on
random float64 data and compared with torch after every step (losses, parameters, buffers), the first step
eagerly and the rest compiled (numpy and cpu backends), with warnings as errors while tracing: Karras et al.'s
EDM as NVlabs/edm writes it (training/networks.py's Linear and Conv2d with their weight_init, the resample
filter as a buffer (None where unused) for the down and up blocks by grouped conv2d and conv_transpose2d,
GroupNorm by F.group_norm, UNetBlock's addcmul of the adaptive scale and `x.add_(...)` residuals, attention
by its AttentionOp autograd.Function or by scaled_dot_product_attention, PositionalEmbedding's `x.ger(freqs)`
and FourierEmbedding's random frequencies buffer, the sin/cos swap by reshape and flip, a DDPM++-style
SongUNet's ModuleDicts of encoder and decoder blocks with skips by name, EDMPrecond's c_skip, c_out, c_in
and c_noise, EDMLoss's log-normal sigmas and loss weighting, training_loop.py's learning-rate ramp-up set on
param_groups, `torch.nan_to_num(param.grad, ..., out=param.grad)` and the EMA by `copy_(lerp(...))` with its
half-life ramp-up; then generate.py's edm_sampler (Heun's 2nd-order steps over the rho-schedule of sigmas,
S_churn = 0) on the EMA, eagerly and compiled); rectified flow as gnobitab/RectifiedFlow writes it (the MLP
on `cat([x, t])`, get_train_tuple, the squared-L2 loss by view/abs/pow/sum, sample_ode's Euler loop with its
float32 `torch.ones((n, 1)) * i / N` times, then reflow on the sampled pairs picked by a permutation) with
a hand-written lerp_ EMA, and flow matching as facebookresearch/flow_matching's README writes it (the
midpoint ODE step over float32 torch.linspace times) with AdamW and swa_utils.AveragedModel with
get_ema_multi_avg_fn; and a class-conditional DiT as facebookresearch/DiT writes it (timm's PatchEmbed
by Conv2d, the 2-d sin-cos position embedding from numpy copied into a frozen parameter, the
TimestepEmbedder's sinusoids, the LabelEmbedder's null class and token_drop by a given force_drop_ids mask,
adaLN-Zero blocks whose modulation MLPs and final layer are zero-initialized, timm's Attention by
scaled_dot_product_attention and its tanh-GELU Mlp, unpatchify by einsum) trained on the noise-prediction
loss, then sampled with classifier-free guidance (forward_with_cfg: the batch doubled by torch.cat, the
eps split, guided and concatenated, the null-class half dropped by chunk) by ermongroup/ddim's
generalized_steps (eta = 0, alphas_cumprod by cumprod and index_select, the timesteps from np.linspace).

The random draws (EDM's sigmas and noise, the flows' times and source samples, DiT's timesteps, noise and
label-dropout mask) are drawn beforehand and given as inputs, as the repositories draw them with torch's
generator. What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`; EDM's
`nan_to_num(..., out=param.grad)` writes the gradient dict's tensors), and the float32 that EDM's networks
and DiT's TimestepEmbedder cast to (`x.to(torch.float32)`, `t.float()`) is the test's float64, so that the
comparison is at float64 roundoff (the samplers' float32 times stay float32). EDM's EMA decay changes every
step, so the compiled step takes it as a 0-d tensor (a Python number it read would be part of the signature,
traced again each step); torch's AttentionOp calls the private `torch._softmax_backward_data`, written out
here as softmax's backward, w * (dw - sum(dw * w)). DiT's float32 frequencies would differ by themselves:
numpy's float32 exp, which Avalon's CPU backends call, rounds exp(-4.6051702) an ulp from torch's (correctly
rounded) result, and Adam carries that through the adaLN-Zero model's tiny early gradients to ~1e-8 relative
in the weights; that is libm rounding, not a port difference, so the frequencies are float64 here too. The
regression at the end is what the programs found: `nan_to_num(..., out=...)` was refused.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


# -- 1. EDM (NVlabs/edm: training/networks.py, training/loss.py, training/training_loop.py, generate.py) ------

def edm_networks(lib, F_, th):
    """training/networks.py's layers, SongUNet (DDPM++, smaller) and EDMPrecond; float32 is float64 here."""
    float32 = th.float64

    def weight_init(shape, mode, fan_in, fan_out):
        if mode == 'xavier_uniform': return np.sqrt(6 / (fan_in + fan_out)) * (th.rand(*shape) * 2 - 1)  # noqa: E701
        if mode == 'xavier_normal':  return np.sqrt(2 / (fan_in + fan_out)) * th.randn(*shape)  # noqa: E701
        if mode == 'kaiming_uniform': return np.sqrt(3 / fan_in) * (th.rand(*shape) * 2 - 1)  # noqa: E701
        if mode == 'kaiming_normal':  return np.sqrt(1 / fan_in) * th.randn(*shape)  # noqa: E701
        raise ValueError(f'Invalid init mode "{mode}"')

    class Linear(lib.Module):
        def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1,
                     init_bias=0):
            super().__init__()
            self.in_features = in_features
            self.out_features = out_features
            init_kwargs = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
            self.weight = lib.Parameter(weight_init([out_features, in_features], **init_kwargs) * init_weight)
            self.bias = lib.Parameter(weight_init([out_features], **init_kwargs) * init_bias) if bias else None

        def forward(self, x):
            x = x @ self.weight.to(x.dtype).t()
            if self.bias is not None:
                x = x.add_(self.bias.to(x.dtype))
            return x

    class Conv2d(lib.Module):
        def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=[1, 1],  # noqa: B006
                     fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0):
            assert not (up and down)
            super().__init__()
            self.in_channels = in_channels
            self.out_channels = out_channels
            self.up = up
            self.down = down
            self.fused_resample = fused_resample
            init_kwargs = dict(mode=init_mode, fan_in=in_channels * kernel * kernel,
                               fan_out=out_channels * kernel * kernel)
            self.weight = lib.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **init_kwargs)
                                        * init_weight) if kernel else None
            self.bias = lib.Parameter(weight_init([out_channels], **init_kwargs) * init_bias) if kernel and bias else None
            f = th.as_tensor(resample_filter, dtype=th.float32)
            f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
            self.register_buffer('resample_filter', f if up or down else None)

        def forward(self, x):
            w = self.weight.to(x.dtype) if self.weight is not None else None
            b = self.bias.to(x.dtype) if self.bias is not None else None
            f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
            w_pad = w.shape[-1] // 2 if w is not None else 0
            f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0

            if self.fused_resample and self.up and w is not None:
                x = F_.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                        stride=2, padding=max(f_pad - w_pad, 0))
                x = F_.conv2d(x, w, padding=max(w_pad - f_pad, 0))
            elif self.fused_resample and self.down and w is not None:
                x = F_.conv2d(x, w, padding=w_pad + f_pad)
                x = F_.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
            else:
                if self.up:
                    x = F_.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                            stride=2, padding=f_pad)
                if self.down:
                    x = F_.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                                  padding=f_pad)
                if w is not None:
                    x = F_.conv2d(x, w, padding=w_pad)
            if b is not None:
                x = x.add_(b.reshape(1, -1, 1, 1))
            return x

    class GroupNorm(lib.Module):
        def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
            super().__init__()
            self.num_groups = min(num_groups, num_channels // min_channels_per_group)
            self.eps = eps
            self.weight = lib.Parameter(th.ones(num_channels))
            self.bias = lib.Parameter(th.zeros(num_channels))

        def forward(self, x):
            x = F_.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype),
                              bias=self.bias.to(x.dtype), eps=self.eps)
            return x

    class AttentionOp(th.autograd.Function):
        @staticmethod
        def forward(ctx, q, k):
            w = th.einsum('ncq,nck->nqk', q.to(float32), (k / np.sqrt(k.shape[1])).to(float32)).softmax(dim=2).to(q.dtype)
            ctx.save_for_backward(q, k, w)
            return w

        @staticmethod
        def backward(ctx, dw):
            q, k, w = ctx.saved_tensors
            # torch._softmax_backward_data(grad_output=dw.to(torch.float32), output=w.to(torch.float32), dim=2,
            #                              input_dtype=torch.float32), written out
            dw, w = dw.to(float32), w.to(float32)
            db = w * (dw - (dw * w).sum(dim=2, keepdim=True))
            dq = th.einsum('nck,nqk->ncq', k.to(float32), db).to(q.dtype) / np.sqrt(k.shape[1])
            dk = th.einsum('ncq,nqk->nck', q.to(float32), db).to(k.dtype) / np.sqrt(k.shape[1])
            return dq, dk

    def silu(x):
        return F_.silu(x)

    class UNetBlock(lib.Module):
        def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                     num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5, resample_filter=[1, 1],  # noqa: B006
                     resample_proj=False, adaptive_scale=True, init=dict(), init_zero=dict(init_weight=0),  # noqa: B006
                     init_attn=None, sdpa=False):
            super().__init__()
            self.in_channels = in_channels
            self.out_channels = out_channels
            self.emb_channels = emb_channels
            self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
            self.dropout = dropout
            self.skip_scale = skip_scale
            self.adaptive_scale = adaptive_scale
            self.sdpa = sdpa

            self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
            self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, up=up, down=down,
                                resample_filter=resample_filter, **init)
            self.affine = Linear(in_features=emb_channels, out_features=out_channels * (2 if adaptive_scale else 1),
                                 **init)
            self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
            self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)

            self.skip = None
            if out_channels != in_channels or up or down:
                kernel = 1 if resample_proj or out_channels != in_channels else 0
                self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=kernel, up=up,
                                   down=down, resample_filter=resample_filter, **init)

            if self.num_heads:
                self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
                self.qkv = Conv2d(in_channels=out_channels, out_channels=out_channels * 3, kernel=1,
                                  **(init_attn if init_attn is not None else init))
                self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

        def forward(self, x, emb):
            orig = x
            x = self.conv0(silu(self.norm0(x)))

            params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
            if self.adaptive_scale:
                scale, shift = params.chunk(chunks=2, dim=1)
                x = silu(th.addcmul(shift, self.norm1(x), scale + 1))
            else:
                x = silu(self.norm1(x.add_(params)))

            x = self.conv1(F_.dropout(x, p=self.dropout, training=self.training))
            x = x.add_(self.skip(orig) if self.skip is not None else orig)
            x = x * self.skip_scale

            if self.num_heads:
                q, k, v = self.qkv(self.norm2(x)).reshape(x.shape[0] * self.num_heads, x.shape[1] // self.num_heads,
                                                          3, -1).unbind(2)
                if self.sdpa:  # as later reimplementations write it: (n, tokens, channels) operands
                    a = F_.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                        v.transpose(1, 2)).transpose(1, 2)
                else:
                    w = AttentionOp.apply(q, k)
                    a = th.einsum('nqk,nck->ncq', w, v)
                x = self.proj(a.reshape(*x.shape)).add_(x)
                x = x * self.skip_scale
            return x

    class PositionalEmbedding(lib.Module):
        def __init__(self, num_channels, max_positions=10000, endpoint=False):
            super().__init__()
            self.num_channels = num_channels
            self.max_positions = max_positions
            self.endpoint = endpoint

        def forward(self, x):
            freqs = th.arange(start=0, end=self.num_channels // 2, dtype=th.float32, device=x.device)
            freqs = freqs / (self.num_channels // 2 - (1 if self.endpoint else 0))
            freqs = (1 / self.max_positions) ** freqs
            x = x.ger(freqs.to(x.dtype))
            x = th.cat([x.cos(), x.sin()], dim=1)
            return x

    class FourierEmbedding(lib.Module):
        def __init__(self, num_channels, scale=16):
            super().__init__()
            self.register_buffer('freqs', th.randn(num_channels // 2) * scale)

        def forward(self, x):
            x = x.ger((2 * np.pi * self.freqs).to(x.dtype))
            x = th.cat([x.cos(), x.sin()], dim=1)
            return x

    class SongUNet(lib.Module):
        def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=8,
                     channel_mult=[1, 2], channel_mult_emb=2, num_blocks=1, attn_resolutions=[4], dropout=0.0,  # noqa: B006
                     label_dropout=0, embedding_type='positional', channel_mult_noise=1, resample_filter=[1, 1],  # noqa: B006
                     sdpa=False):
            super().__init__()
            self.label_dropout = label_dropout
            emb_channels = model_channels * channel_mult_emb
            noise_channels = model_channels * channel_mult_noise
            init = dict(init_mode='xavier_uniform')
            init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
            init_attn = dict(init_mode='xavier_uniform', init_weight=np.sqrt(0.2))
            block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5),
                                eps=1e-6, resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                                init=init, init_zero=init_zero, init_attn=init_attn, sdpa=sdpa)

            # Mapping.
            self.map_noise = (PositionalEmbedding(num_channels=noise_channels, endpoint=True)
                              if embedding_type == 'positional' else FourierEmbedding(num_channels=noise_channels))
            self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
            self.map_augment = (Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init)
                                if augment_dim else None)
            self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
            self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

            # Encoder.
            self.enc = lib.ModuleDict()
            cout = in_channels
            for level, mult in enumerate(channel_mult):
                res = img_resolution >> level
                if level == 0:
                    cin = cout
                    cout = model_channels
                    self.enc[f'{res}x{res}_conv'] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
                else:
                    self.enc[f'{res}x{res}_down'] = UNetBlock(in_channels=cout, out_channels=cout, down=True,
                                                              **block_kwargs)
                for idx in range(num_blocks):
                    cin = cout
                    cout = model_channels * mult
                    attn = (res in attn_resolutions)
                    self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout,
                                                                    attention=attn, **block_kwargs)
            skips = [block.out_channels for name, block in self.enc.items() if 'aux' not in name]

            # Decoder.
            self.dec = lib.ModuleDict()
            for level, mult in reversed(list(enumerate(channel_mult))):
                res = img_resolution >> level
                if level == len(channel_mult) - 1:
                    self.dec[f'{res}x{res}_in0'] = UNetBlock(in_channels=cout, out_channels=cout, attention=True,
                                                             **block_kwargs)
                    self.dec[f'{res}x{res}_in1'] = UNetBlock(in_channels=cout, out_channels=cout, **block_kwargs)
                else:
                    self.dec[f'{res}x{res}_up'] = UNetBlock(in_channels=cout, out_channels=cout, up=True,
                                                            **block_kwargs)
                for idx in range(num_blocks + 1):
                    cin = cout + skips.pop()
                    cout = model_channels * mult
                    attn = (idx == num_blocks and res in attn_resolutions)
                    self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout,
                                                                    attention=attn, **block_kwargs)
                if level == 0:
                    self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(num_channels=cout, eps=1e-6)
                    self.dec[f'{res}x{res}_aux_conv'] = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3,
                                                               **init_zero)

        def forward(self, x, noise_labels, class_labels, augment_labels=None):
            # Mapping.
            emb = self.map_noise(noise_labels)
            emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # swap sin/cos
            if self.map_label is not None:
                tmp = class_labels
                emb = emb + self.map_label(tmp * np.sqrt(self.map_label.in_features))
            if self.map_augment is not None and augment_labels is not None:
                emb = emb + self.map_augment(augment_labels)
            emb = silu(self.map_layer0(emb))
            emb = silu(self.map_layer1(emb))

            # Encoder.
            skips = []
            for name, block in self.enc.items():  # noqa: B007
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

            # Decoder.
            aux = None
            tmp = None
            for name, block in self.dec.items():
                if 'aux_norm' in name:
                    tmp = block(x)
                elif 'aux_conv' in name:
                    tmp = block(silu(tmp))
                    aux = tmp if aux is None else tmp + aux
                else:
                    if x.shape[1] != block.in_channels:
                        x = th.cat([x, skips.pop()], dim=1)
                    x = block(x, emb)
            return aux

    class EDMPrecond(lib.Module):
        def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0,
                     sigma_max=float('inf'), sigma_data=0.5, **model_kwargs):
            super().__init__()
            self.img_resolution = img_resolution
            self.img_channels = img_channels
            self.label_dim = label_dim
            self.use_fp16 = use_fp16
            self.sigma_min = sigma_min
            self.sigma_max = sigma_max
            self.sigma_data = sigma_data
            self.model = SongUNet(img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
                                  label_dim=label_dim, **model_kwargs)

        def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
            x = x.to(float32)
            sigma = sigma.to(float32).reshape(-1, 1, 1, 1)
            class_labels = (None if self.label_dim == 0 else th.zeros([1, self.label_dim], device=x.device)
                            if class_labels is None else class_labels.to(float32).reshape(-1, self.label_dim))
            dtype = th.float16 if (self.use_fp16 and not force_fp32 and x.device.type == 'cuda') else float32

            c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
            c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
            c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
            c_noise = sigma.log() / 4

            F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
            assert F_x.dtype == dtype
            D_x = c_skip * x + c_out * F_x.to(float32)
            return D_x

        def round_sigma(self, sigma):
            return th.as_tensor(sigma)

    return EDMPrecond


class EDMLoss:
    """training/loss.py's EDMLoss; its `torch.randn` draws (rnd_normal, the noise) are given."""
    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def __call__(self, net, images, rnd_normal, noise, labels=None, augment_pipe=None):
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        y, augment_labels = augment_pipe(images) if augment_pipe is not None else (images, None)
        n = noise * sigma
        D_yn = net(y + n, sigma, labels, augment_labels=augment_labels)
        loss = weight * ((D_yn - y) ** 2)
        return loss


def edm_sampler(th, net, latents, class_labels=None, randn_like=None, num_steps=18, sigma_min=0.002, sigma_max=80,
                rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1):
    """generate.py's edm_sampler, as written (randn_like: th.randn_like unless given)."""
    randn_like = th.randn_like if randn_like is None else randn_like
    # Adjust noise levels based on what's supported by the network.
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)

    # Time step discretization.
    step_indices = th.arange(num_steps, dtype=th.float64, device=latents.device)
    t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = th.cat([net.round_sigma(t_steps), th.zeros_like(t_steps[:1])])  # t_N = 0

    # Main sampling loop.
    x_next = latents.to(th.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):  # 0, ..., N-1
        x_cur = x_next

        # Increase noise temporarily.
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)

        # Euler step.
        denoised = net(x_hat, t_hat, class_labels).to(th.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Apply 2nd order correction.
        if i < num_steps - 1:
            denoised = net(x_next, t_next, class_labels).to(th.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

    return x_next


def edm_ema_beta(cur_nimg, batch_size, ema_halflife_kimg=0.5, ema_rampup_ratio=0.05):
    ema_halflife_nimg = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * ema_rampup_ratio)
    return 0.5 ** (batch_size / max(ema_halflife_nimg, 1e-8))


def edm_step(net, ema, optimizer, images, rnd_normal, noise, ema_beta, loss_scaling=1.0):
    """training_loop.py's step: the summed loss scaled, the gradients' nan_to_num, the optimizer's step and the
    EMA; ema_beta a 0-d tensor (see the module docstring)."""
    loss_fn = EDMLoss()
    batch_gpu_total = images.shape[0]

    def objective(net, images, rnd_normal, noise):
        loss = loss_fn(net=net, images=images, rnd_normal=rnd_normal, noise=noise)
        return loss.sum().mul(loss_scaling / batch_gpu_total)
    loss, grads = av.value_and_grad(objective)(net, images, rnd_normal, noise)
    for g in grads.values():
        av.nan_to_num(g, nan=0, posinf=1e5, neginf=-1e5, out=g)
    optimizer.step(grads)
    with av.no_grad():
        for p_ema, p_net in zip(ema.parameters(), net.parameters()):
            p_ema.copy_(p_net.detach().lerp(p_ema, ema_beta))
    return loss


@pytest.mark.parametrize("embedding_type,sdpa,mode", [("positional", False, "numpy"), ("fourier", True, "cpu")])
def test_edm_preconditioning_loss_weighting_unet_ema_and_heun_sampler(embedding_type, sdpa, mode):
    ours, theirs = pair(lambda lib, F_, th: edm_networks(lib, F_, th)(8, 2, embedding_type=embedding_type, sdpa=sdpa,
                                                                            num_blocks=0))
    assert ours.model.enc["4x4_down"].conv0.resample_filter.shape == (1, 1, 2, 2)
    assert ours.model.enc["8x8_conv"].resample_filter is None
    ema, tema = copy.deepcopy(ours).eval().requires_grad_(False), copy.deepcopy(theirs).eval().requires_grad_(False)
    kw = dict(lr=1e-2, betas=[0.9, 0.999], eps=1e-8)
    opt, topt = optim.Adam(ours.parameters(), **kw), torch.optim.Adam(theirs.parameters(), **kw)
    rng = np.random.default_rng(0)
    run = compiled(edm_step, mode)
    batch_size, lr_rampup_kimg, cur_nimg = 3, 0.009, 0
    for it in range(3):
        images = rng.uniform(-1, 1, (batch_size, 2, 8, 8))
        rnd_normal, noise = rng.standard_normal((batch_size, 1, 1, 1)), rng.standard_normal(images.shape)
        topt.zero_grad(set_to_none=True)
        tl = EDMLoss()(theirs, T(images), T(rnd_normal), T(noise)).sum().mul(1.0 / batch_size)
        tl.backward()
        for g, tg in zip(opt.param_groups, topt.param_groups):
            g['lr'] = tg['lr'] = kw['lr'] * min(cur_nimg / max(lr_rampup_kimg * 1000, 1e-8), 1)
        for param in theirs.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        topt.step()
        cur_nimg += batch_size
        ema_beta = edm_ema_beta(cur_nimg, batch_size)
        with torch.no_grad():
            for p_ema, p_net in zip(tema.parameters(), theirs.parameters()):
                p_ema.copy_(p_net.detach().lerp(p_ema, ema_beta))
        with strict():
            loss = (run if it else edm_step)(ours, ema, opt, av.tensor(images), av.tensor(rnd_normal), av.tensor(noise),
                                             av.tensor(ema_beta))
        assert rel(loss, tl) < 1e-10, (it, float(loss), float(tl))
        same_weights(ours, theirs, 1e-9)
        same_weights(ema, tema, 1e-9)
    assert run.cache_info().misses == 1
    latents = rng.standard_normal((2, 2, 8, 8))
    with torch.no_grad():
        want = edm_sampler(torch, tema, T(latents), num_steps=2)
    runs = [lambda net, z: edm_sampler(av, net, z, num_steps=2)]
    if mode == "numpy":  # (compiled once: the run time)
        runs.append(av.compile(runs[0], backend=mode))
    for run in runs:
        with strict(), av.no_grad():
            assert rel(run(ema, av.tensor(latents)), want) < 1e-10


# -- 2. Rectified flow (gnobitab/RectifiedFlow's 2-d notebook) and flow matching (facebookresearch/flow_matching's
#       README example) ------------------------------------------------------------------------------------------

def rectified_flow(lib, F_, th, input_dim=2, hidden_num=16):
    class MLP(lib.Module):
        def __init__(self, input_dim=2, hidden_num=100):
            super().__init__()
            self.fc1 = lib.Linear(input_dim + 1, hidden_num, bias=True)
            self.fc2 = lib.Linear(hidden_num, hidden_num, bias=True)
            self.fc3 = lib.Linear(hidden_num, input_dim, bias=True)
            self.act = lambda x: th.tanh(x)

        def forward(self, x_input, t):
            inputs = th.cat([x_input, t], dim=1)
            x = self.fc1(inputs)
            x = self.act(x)
            x = self.fc2(x)
            x = self.act(x)
            x = self.fc3(x)
            return x
    return MLP(input_dim, hidden_num)


class RectifiedFlow:
    """gnobitab's RectifiedFlow over `th`; get_train_tuple's `torch.rand` times are given."""
    def __init__(self, th, model=None, num_steps=1000):
        self.th = th
        self.model = model
        self.N = num_steps

    def get_train_tuple(self, z0=None, z1=None, t=None):
        z_t = t * z1 + (1. - t) * z0
        target = z1 - z0
        return z_t, t, target

    def sample_ode(self, z0=None, N=None):
        # NOTE: Use Euler method to sample from the learned flow
        if N is None:
            N = self.N
        dt = 1. / N
        traj = []  # to store the trajectory
        z = z0.detach().clone()
        batchsize = z.shape[0]

        traj.append(z.detach().clone())
        for i in range(N):
            t = self.th.ones((batchsize, 1)) * i / N
            pred = self.model(z, t)
            z = z.detach().clone() + pred * dt

            traj.append(z.detach().clone())

        return traj


def rf_loss(th, model, pairs, indices, t):
    """train_rectified_flow's loss on `pairs[indices]` (its `torch.randperm(len(pairs))[:batchsize]` given)."""
    rf = RectifiedFlow(th, model)
    batch = pairs[indices]
    z0 = batch[:, 0].detach().clone()
    z1 = batch[:, 1].detach().clone()
    z_t, t, target = rf.get_train_tuple(z0=z0, z1=z1, t=t)
    pred = rf.model(z_t, t)
    loss = (target - pred).view(pred.shape[0], -1).abs().pow(2).sum(dim=1)
    loss = loss.mean()
    return loss


def rf_step(model, ema, opt, pairs, indices, t, decay=0.9):
    loss, grads = av.value_and_grad(lambda m, *xs: rf_loss(av, m, *xs))(model, pairs, indices, t)
    opt.step(grads)
    with av.no_grad():  # a hand-written EMA (lucidrains' ema-pytorch style)
        for ma_params, current_params in zip(ema.parameters(), model.parameters()):
            ma_params.data.lerp_(current_params.data, 1. - decay)
    return loss


def torch_rf_step(model, ema, opt, pairs, indices, t, decay=0.9):
    opt.zero_grad()
    loss = rf_loss(torch, model, pairs, indices, t)
    loss.backward()
    opt.step()
    with torch.no_grad():
        for ma_params, current_params in zip(ema.parameters(), model.parameters()):
            ma_params.data.lerp_(current_params.data, 1. - decay)
    return loss


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_rectified_flow_euler_sample_ode_and_reflow_with_a_lerp_ema(mode):
    ours, theirs = pair(rectified_flow)
    ema, tema = copy.deepcopy(ours).requires_grad_(False), copy.deepcopy(theirs).requires_grad_(False)
    opt, topt = optim.Adam(ours.parameters(), lr=5e-3), torch.optim.Adam(theirs.parameters(), lr=5e-3)
    rng = np.random.default_rng(1)
    x0, x1 = rng.standard_normal((10, 2)), rng.standard_normal((10, 2)) * 0.5 + 2.0
    pairs = np.stack([x0, x1], axis=1)
    run = compiled(rf_step, mode)
    sample = av.compile(lambda m, z: RectifiedFlow(av, m, 4).sample_ode(z0=z)[-1], backend=mode)
    for rnd in range(2):  # 1-rectified flow, then reflow on its own sampled pairs
        for it in range(2):
            indices, t = rng.permutation(len(pairs))[:6], rng.random((6, 1))
            tl = torch_rf_step(theirs, tema, topt, T(pairs), T(indices), T(t))
            with strict():
                loss = (run if it or rnd else rf_step)(ours, ema, opt, av.tensor(pairs), av.tensor(indices),
                                                       av.tensor(t))
            assert rel(loss, tl) < 1e-12, (rnd, it)
            same_weights(ours, theirs, 1e-11)
            same_weights(ema, tema, 1e-11)
        z0 = rng.standard_normal((10, 2))
        with torch.no_grad():
            want = RectifiedFlow(torch, tema, 4).sample_ode(z0=T(z0))
        with strict(), av.no_grad():
            traj = RectifiedFlow(av, ema, 4).sample_ode(z0=av.tensor(z0))
            z1 = sample(ema, av.tensor(z0))
        assert len(traj) == len(want) == 5 and all(rel(a, b) < 1e-12 for a, b in zip(traj, want))
        assert rel(z1, want[-1]) < 1e-12
        pairs = np.stack([z0, want[-1].numpy()], axis=1)  # reflow: z10 = z0, z11 = the sampled end points
    assert run.cache_info().misses == 1


def flow_matching(lib, F_, th, dim=2, h=16):
    class Flow(lib.Module):
        def __init__(self, dim: int = 2, h: int = 64):
            super().__init__()
            self.net = lib.Sequential(
                lib.Linear(dim + 1, h), lib.ELU(),
                lib.Linear(h, h), lib.ELU(),
                lib.Linear(h, h), lib.ELU(),
                lib.Linear(h, dim))

        def forward(self, t, x_t):
            return self.net(th.cat((t, x_t), -1))

        def step(self, x_t, t_start, t_end):
            t_start = t_start.view(1, 1).expand(x_t.shape[0], 1)

            return x_t + (t_end - t_start) * self(t=t_start + (t_end - t_start) / 2,
                                                  x_t=x_t + self(x_t=x_t, t=t_start) * (t_end - t_start) / 2)
    return Flow(dim, h)


def fm_loss(F_, th):
    loss_fn = th.nn.MSELoss()

    def loss(flow, x_1, x_0, t):  # x_0 = torch.randn_like(x_1), t = torch.rand(len(x_1), 1): given
        x_t = (1 - t) * x_0 + t * x_1
        dx_t = x_1 - x_0
        return loss_fn(flow(t=t, x_t=x_t), dx_t)
    return loss


def fm_step(flow, swa, optimizer, x_1, x_0, t):
    loss, grads = av.value_and_grad(fm_loss(F, av))(flow, x_1, x_0, t)
    optimizer.step(grads)
    swa.update_parameters(flow)
    return loss


def fm_sample(th, flow, x, n_steps=3):
    time_steps = th.linspace(0, 1.0, n_steps + 1)
    for i in range(n_steps):
        x = flow.step(x_t=x, t_start=time_steps[i], t_end=time_steps[i + 1])
    return x


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_flow_matching_midpoint_steps_adamw_and_an_averaged_model_ema(mode):
    ours, theirs = pair(flow_matching)
    swa = optim.swa_utils
    ema = swa.AveragedModel(ours, multi_avg_fn=swa.get_ema_multi_avg_fn(0.8))
    tema = torch.optim.swa_utils.AveragedModel(theirs, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.8))
    kw = dict(lr=1e-2, weight_decay=0.05)
    opt, topt = optim.AdamW(ours.parameters(), **kw), torch.optim.AdamW(theirs.parameters(), **kw)
    rng = np.random.default_rng(2)
    run = compiled(fm_step, mode)
    for it in range(3):
        x_1 = rng.standard_normal((8, 2)) * 0.3 + [1.0, -1.0]
        x_0, t = rng.standard_normal(x_1.shape), rng.random((8, 1))
        topt.zero_grad()
        tl = fm_loss(TF, torch)(theirs, T(x_1), T(x_0), T(t))
        tl.backward()
        topt.step()
        tema.update_parameters(theirs)
        with strict():
            loss = (run if it else fm_step)(ours, ema, opt, av.tensor(x_1), av.tensor(x_0), av.tensor(t))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-11)
        same_weights(ema, tema, 1e-11)
    assert run.cache_info().misses == 1
    x = rng.standard_normal((5, 2))
    with torch.no_grad():
        want = fm_sample(torch, tema.module, T(x))
    sample = av.compile(lambda m, x: fm_sample(av, m, x), backend=mode)
    with strict(), av.no_grad():
        for got in (fm_sample(av, ema.module, av.tensor(x)), sample(ema.module, av.tensor(x))):
            assert got.dtype == av.float64 and rel(got, want) < 1e-12


# -- 3. DiT with classifier-free guidance (facebookresearch/DiT: models.py, train.py's update_ema, sample.py) and
#       DDIM sampling (ermongroup/ddim: functions/denoising.py's generalized_steps) -------------------------------

def dit(lib, F_, th, input_size=4, patch_size=2, in_channels=3, hidden_size=8, depth=2, num_heads=2, mlp_ratio=2.0,
        class_dropout_prob=0.1, num_classes=3, learn_sigma=False, frequency_embedding_size=16, num_timesteps=20):
    from test_port_programs_14 import get_2d_sincos_pos_embed

    class PatchEmbed(lib.Module):  # timm's, flattened
        def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True):
            super().__init__()
            self.patch_size = (patch_size, patch_size)
            self.grid_size = (img_size // patch_size, img_size // patch_size)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
            self.proj = lib.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
            self.norm = lib.Identity()

        def forward(self, x):
            x = self.proj(x)
            x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
            return self.norm(x)

    class Attention(lib.Module):  # timm's, fused
        def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0., proj_drop=0.):
            super().__init__()
            self.num_heads = num_heads
            self.head_dim = dim // num_heads
            self.scale = self.head_dim ** -0.5
            self.qkv = lib.Linear(dim, dim * 3, bias=qkv_bias)
            self.q_norm = lib.Identity()
            self.k_norm = lib.Identity()
            self.attn_drop = lib.Dropout(attn_drop)
            self.proj = lib.Linear(dim, dim)
            self.proj_drop = lib.Dropout(proj_drop)

        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            q, k = self.q_norm(q), self.k_norm(k)
            x = F_.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
            x = x.transpose(1, 2).reshape(B, N, C)
            x = self.proj(x)
            x = self.proj_drop(x)
            return x

    class Mlp(lib.Module):  # timm's
        def __init__(self, in_features, hidden_features=None, act_layer=lib.GELU, drop=0.):
            super().__init__()
            self.fc1 = lib.Linear(in_features, hidden_features)
            self.act = act_layer()
            self.drop1 = lib.Dropout(drop)
            self.norm = lib.Identity()
            self.fc2 = lib.Linear(hidden_features, in_features)
            self.drop2 = lib.Dropout(drop)

        def forward(self, x):
            return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))

    def modulate(x, shift, scale):
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    class TimestepEmbedder(lib.Module):
        def __init__(self, hidden_size, frequency_embedding_size=256):
            super().__init__()
            self.mlp = lib.Sequential(
                lib.Linear(frequency_embedding_size, hidden_size, bias=True),
                lib.SiLU(),
                lib.Linear(hidden_size, hidden_size, bias=True),
            )
            self.frequency_embedding_size = frequency_embedding_size

        @staticmethod
        def timestep_embedding(t, dim, max_period=10000):
            half = dim // 2
            freqs = th.exp(
                -math.log(max_period) * th.arange(start=0, end=half, dtype=th.float64) / half
            ).to(device=t.device)  # float32 in the repository, as t[:, None].float() below: see the docstring
            args = t[:, None].double() * freqs[None]
            embedding = th.cat([th.cos(args), th.sin(args)], dim=-1)
            if dim % 2:
                embedding = th.cat([embedding, th.zeros_like(embedding[:, :1])], dim=-1)
            return embedding

        def forward(self, t):
            t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
            t_emb = self.mlp(t_freq)
            return t_emb

    class LabelEmbedder(lib.Module):
        def __init__(self, num_classes, hidden_size, dropout_prob):
            super().__init__()
            use_cfg_embedding = dropout_prob > 0
            self.embedding_table = lib.Embedding(num_classes + use_cfg_embedding, hidden_size)
            self.num_classes = num_classes
            self.dropout_prob = dropout_prob

        def token_drop(self, labels, force_drop_ids=None):
            if force_drop_ids is None:
                drop_ids = th.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            else:
                drop_ids = force_drop_ids == 1
            labels = th.where(drop_ids, self.num_classes, labels)
            return labels

        def forward(self, labels, train, force_drop_ids=None):
            use_dropout = self.dropout_prob > 0
            if (train and use_dropout) or (force_drop_ids is not None):
                labels = self.token_drop(labels, force_drop_ids)
            embeddings = self.embedding_table(labels)
            return embeddings

    class DiTBlock(lib.Module):
        def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, **block_kwargs):
            super().__init__()
            self.norm1 = lib.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, **block_kwargs)
            self.norm2 = lib.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            mlp_hidden_dim = int(hidden_size * mlp_ratio)
            approx_gelu = lambda: lib.GELU(approximate="tanh")  # noqa: E731
            self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden_dim, act_layer=approx_gelu, drop=0)
            self.adaLN_modulation = lib.Sequential(
                lib.SiLU(),
                lib.Linear(hidden_size, 6 * hidden_size, bias=True)
            )

        def forward(self, x, c):
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
            x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
            x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
            return x

    class FinalLayer(lib.Module):
        def __init__(self, hidden_size, patch_size, out_channels):
            super().__init__()
            self.norm_final = lib.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.linear = lib.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
            self.adaLN_modulation = lib.Sequential(
                lib.SiLU(),
                lib.Linear(hidden_size, 2 * hidden_size, bias=True)
            )

        def forward(self, x, c):
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
            x = modulate(self.norm_final(x), shift, scale)
            x = self.linear(x)
            return x

    class DiT(lib.Module):
        def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                     mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True):
            super().__init__()
            self.learn_sigma = learn_sigma
            self.in_channels = in_channels
            self.out_channels = in_channels * 2 if learn_sigma else in_channels
            self.patch_size = patch_size
            self.num_heads = num_heads

            self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
            self.t_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size)
            self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
            num_patches = self.x_embedder.num_patches
            # Will use fixed sin-cos embedding:
            self.pos_embed = lib.Parameter(th.zeros(1, num_patches, hidden_size), requires_grad=False)

            self.blocks = lib.ModuleList([
                DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)
            ])
            self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
            self.initialize_weights()

        def initialize_weights(self):
            # Initialize transformer layers:
            def _basic_init(module):
                if isinstance(module, lib.Linear):
                    lib.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        lib.init.constant_(module.bias, 0)
            self.apply(_basic_init)

            # Initialize (and freeze) pos_embed by sin-cos embedding:
            pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], int(self.x_embedder.num_patches ** 0.5))
            self.pos_embed.data.copy_(th.from_numpy(pos_embed).float().unsqueeze(0))

            # Initialize patch_embed like nn.Linear (instead of nn.Conv2d):
            w = self.x_embedder.proj.weight.data
            lib.init.xavier_uniform_(w.view([w.shape[0], -1]))
            lib.init.constant_(self.x_embedder.proj.bias, 0)

            # Initialize label embedding table:
            lib.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)

            # Initialize timestep embedding MLP:
            lib.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
            lib.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

            # Zero-out adaLN modulation layers in DiT blocks:
            for block in self.blocks:
                lib.init.constant_(block.adaLN_modulation[-1].weight, 0)
                lib.init.constant_(block.adaLN_modulation[-1].bias, 0)

            # Zero-out output layers:
            lib.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
            lib.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
            lib.init.constant_(self.final_layer.linear.weight, 0)
            lib.init.constant_(self.final_layer.linear.bias, 0)

        def unpatchify(self, x):
            c = self.out_channels
            p = self.x_embedder.patch_size[0]
            h = w = int(x.shape[1] ** 0.5)
            assert h * w == x.shape[1]

            x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
            x = th.einsum('nhwpqc->nchpwq', x)
            imgs = x.reshape(shape=(x.shape[0], c, h * p, h * p))
            return imgs

        def forward(self, x, t, y, force_drop_ids=None):  # force_drop_ids: train.py's torch.rand draws, given
            x = self.x_embedder(x) + self.pos_embed  # (N, T, D), where T = H * W / patch_size ** 2
            t = self.t_embedder(t)                   # (N, D)
            y = self.y_embedder(y, self.training, force_drop_ids)    # (N, D)
            c = t + y                                # (N, D)
            for block in self.blocks:
                x = block(x, c)                      # (N, T, D)
            x = self.final_layer(x, c)                # (N, T, patch_size ** 2 * out_channels)
            x = self.unpatchify(x)                   # (N, out_channels, H, W)
            return x

        def forward_with_cfg(self, x, t, y, cfg_scale):
            half = x[: len(x) // 2]
            combined = th.cat([half, half], dim=0)
            model_out = self.forward(combined, t, y)
            eps, rest = model_out[:, :3], model_out[:, 3:]
            cond_eps, uncond_eps = th.split(eps, len(eps) // 2, dim=0)
            half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
            eps = th.cat([half_eps, half_eps], dim=0)
            return th.cat([eps, rest], dim=1)

    class Diffusion(lib.Module):
        """The linear schedule (DiT's get_named_beta_schedule) as buffers; q_sample and the eps loss."""
        def __init__(self, model):
            super().__init__()
            self.model = model
            scale = 1000 / num_timesteps
            betas = np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
            self.register_buffer("betas", th.tensor(betas))
            self.register_buffer("alphas_cumprod", th.cumprod(1.0 - self.betas, dim=0))

        def training_losses(self, x_start, t, noise, y, force_drop_ids):
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x_start + (1 - a).sqrt() * noise
            model_output = self.model(x_t, t, y, force_drop_ids)
            return ((noise - model_output) ** 2).mean(dim=list(range(1, len(noise.shape))))

    return Diffusion(DiT(input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio,
                         class_dropout_prob, num_classes, learn_sigma))


def update_ema(ema_model, model, decay=0.9999):
    """DiT's train.py update_ema (under torch.no_grad())."""
    ema_params = dict(ema_model.named_parameters())
    model_params = dict(model.named_parameters())
    for name, param in model_params.items():
        ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)


def compute_alpha(th, beta, t):
    beta = th.cat([th.zeros(1).to(beta.device), beta], dim=0)
    a = (1 - beta).cumprod(dim=0).index_select(0, t + 1).view(-1, 1, 1, 1)
    return a


def generalized_steps(th, x, seq, model, b, **kwargs):
    n = x.size(0)
    seq_next = [-1] + list(seq[:-1])
    x0_preds = []
    xs = [x]
    for i, j in zip(reversed(seq), reversed(seq_next)):
        t = (th.ones(n) * i).to(x.device)
        next_t = (th.ones(n) * j).to(x.device)
        at = compute_alpha(th, b, t.long())
        at_next = compute_alpha(th, b, next_t.long())
        xt = xs[-1]
        et = model(xt, t)
        x0_t = (xt - et * (1 - at).sqrt()) / at.sqrt()
        x0_preds.append(x0_t)
        c1 = (kwargs.get("eta", 0) * ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt())
        c2 = ((1 - at_next) - c1 ** 2).sqrt()
        xt_next = at_next.sqrt() * x0_t + c1 * th.randn_like(x) + c2 * et
        xs.append(xt_next)
    return xs, x0_preds


def dit_cfg_sample(th, diffusion, z, class_labels, cfg_scale=4.0, steps=3):
    """sample.py's classifier-free guidance (the batch doubled with the null class) by DDIM (eta = 0) over
    ermongroup/ddim's quadratic np.linspace timesteps."""
    model = diffusion.model
    n = len(class_labels)
    y = th.tensor(class_labels)
    z = th.cat([z, z], 0)
    y_null = th.tensor([model.y_embedder.num_classes] * n)
    y = th.cat([y, y_null], 0)
    seq = [int(s) for s in list(np.linspace(0, np.sqrt(len(diffusion.betas) * 0.8), steps) ** 2)]
    xs, _ = generalized_steps(th, z, seq, lambda x, t: model.forward_with_cfg(x, t, y, cfg_scale), diffusion.betas,
                              eta=0.0)
    samples, _ = xs[-1].chunk(2, dim=0)  # Remove null class samples
    return samples


def dit_loss(diffusion, x, t, noise, y, force_drop_ids):
    return diffusion.training_losses(x, t, noise, y, force_drop_ids).mean()


def dit_step(diffusion, ema, opt, x, t, noise, y, force_drop_ids):
    loss, grads = av.value_and_grad(dit_loss)(diffusion, x, t, noise, y, force_drop_ids)
    opt.step(grads)
    with av.no_grad():
        update_ema(ema, diffusion.model, decay=0.5)
    return loss


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_dit_adaln_zero_label_dropout_ema_and_cfg_ddim_sampling(mode):
    ours, theirs = pair(dit)
    assert not ours.model.pos_embed.requires_grad and np.abs(ours.model.pos_embed.numpy()).max() > 0.5
    ema, tema = copy.deepcopy(ours.model).requires_grad_(False), copy.deepcopy(theirs.model).requires_grad_(False)
    kw = dict(lr=1e-2, weight_decay=0)
    opt, topt = optim.AdamW(ours.model.parameters(), **kw), torch.optim.AdamW(theirs.model.parameters(), **kw)
    rng = np.random.default_rng(3)
    run = compiled(dit_step, mode)
    for it in range(4):
        x, t = rng.standard_normal((4, 3, 4, 4)), rng.integers(0, 20, 4)
        noise, y, drop = rng.standard_normal(x.shape), rng.integers(0, 3, 4), np.array([0, 1, 0, 0]) ^ (it % 2)
        topt.zero_grad()
        tl = dit_loss(theirs, T(x), T(t), T(noise), T(y), T(drop))
        tl.backward()
        topt.step()
        with torch.no_grad():
            update_ema(tema, theirs.model, decay=0.5)
        with strict():
            loss = (run if it else dit_step)(ours, ema, opt, *map(av.tensor, (x, t, noise, y, drop)))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
        same_weights(ema, tema, 1e-10)
    assert run.cache_info().misses == 1
    assert np.abs(ours.model.final_layer.linear.weight.numpy()).max() > 1e-3  # the zero init trained away
    ema.eval()
    tema.eval()
    ours_ema, theirs_ema = copy.copy(ours), copy.copy(theirs)
    ours_ema.model, theirs_ema.model = ema, tema
    z = rng.standard_normal((2, 3, 4, 4))
    with torch.no_grad():
        want = dit_cfg_sample(torch, theirs_ema, T(z), [0, 2])
    sample = av.compile(lambda d, z: dit_cfg_sample(av, d, z, [0, 2]), backend=mode)
    with strict(), av.no_grad():
        for got in (dit_cfg_sample(av, ours_ema, av.tensor(z), [0, 2]), sample(ours_ema, av.tensor(z))):
            assert rel(got, want) < 1e-10


# -- regressions: what the programs above found -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_nan_to_num_out_writes_the_gradient_tensor_in_place(mode):
    """EDM's training loop cleans its gradients with `torch.nan_to_num(param.grad, nan=0, posinf=1e5,
    neginf=-1e5, out=param.grad)`: Avalon refused `out=` ("argument 'out' is not supported"). The result is now
    written into `out` as the in-place methods write (every reference sees it; the same shape is required),
    and `out` is returned."""
    x = np.array([[1.0, np.nan], [np.inf, -np.inf]])

    def clean(grads):
        for g in grads.values():
            r = av.nan_to_num(g, nan=0, posinf=1e5, neginf=-1e5, out=g)
            assert r is g
        return grads["w"] * 2

    want = torch.nan_to_num(T(x), nan=0, posinf=1e5, neginf=-1e5)
    grads = {"w": av.tensor(x)}
    with strict():
        got = compiled(clean, mode)(grads)
    assert rel(grads["w"], want) == 0 and rel(got, 2 * want) == 0
    with pytest.raises(ValueError, match="shape"):
        av.nan_to_num(av.tensor(x), out=av.zeros(3, dtype=av.float64))

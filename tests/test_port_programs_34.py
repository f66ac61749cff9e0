"""Round 9t of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: state-spaces/mamba's Mamba-2 (ssd_minimal.py's `segsum` by `repeat`, `tril` masks, `masked_fill` with
-inf and `cumsum`, `ssd_minimal_discrete`'s four einsums over chunks with `initial_states` and the final state,
Mamba2Simple's in_proj split by `torch.split` with a list of sizes, the depthwise causal Conv1d cut to `[:, :seqlen]`,
the dt-bias init by `exp`/`clamp`/`expm1` with `_no_weight_decay` attributes on parameters, and the gated RMSNorm of
layernorm_gated.py's reference; as a tied-embedding LM with AdamW groups, and the chunked scan checked against the
sequential recurrence and against itself resumed from its final state); facebookresearch/ConvNeXt-V2's FCMAE
(convnextv2.py's GRN by `torch.norm(x, p=2, dim=(1, 2), keepdim=True)`, its channels-first LayerNorm by hand,
fcmae.py's `gen_random_mask` by two argsorts, `mask[:, :len_keep] = 0` and `gather`, `upsample_mask`'s
`repeat_interleave(scale, axis=1)`, `x *= (1. - mask)` after the stem (the dense stand-in for the sparse encoder),
the decoder's mask token by `repeat`, `patchify`'s `reshape(shape=...)` and `einsum('nchpwq->nhwpqc')`, the
norm-pix loss with `var`, and `_init_weights`' `trunc_normal_(w.view([w.shape[0], -1]))` through `self.apply`);
lucidrains/g-mlp-pytorch (a causal gMLP LM with two gating heads, a circulant spatial weight built by `F.pad`,
`repeat` and a reshape, its tril mask by `triu_(1).bool()`, token shifting by `F.pad(t, (0, 0, 1, -1))`, the tiny
attention's `sim.masked_fill_` and `-torch.finfo(dtype).max`, and `nn.Sequential(*layers)` built in forward);
lucidrains/nystrom-attention (landmarks by einops `reduce`, the Moore-Penrose iterative pseudo-inverse with
`torch.eye` and the global `torch.max` of row and column sums, the padding mask by `F.pad(mask, (p, 0), value=False)`,
bool products in `masked_fill_`, the depthwise (k, 1) residual Conv2d and `out[:, -n:]`; a masked-mean classifier);
raminmh/CfC (the closed-form continuous-time cell with its backbone, LeCun's tanh, time gates `sigmoid(t_a * ts +
t_b)`, the minimal and no-gate forms, the mixed-memory LSTMCell with `orthogonal_` and `xavier_uniform_` inits, and
Cfc.forward's irregularly sampled inputs: `timespans[:, t].squeeze()`, the forwarded input and time since update
under a mask, `torch.max(mask[:, t], dim=1)` for the forwarded output).

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`); the random draws the programs
make in the forward pass (FCMAE's mask noise) are given. Not Avalon: sizes are small; FCMAE's sparse (Minkowski)
encoder is the dense ConvNeXt-V2 with the masked stem output, as fcmae.py's dense ablation.

Bugs found (regressions at the end): `torch.inf` (Mamba-2's segsum), `torch.nan`, `torch.pi` and `torch.e` were missing
from `avalon` (avalon/__init__.py); numpy's `axis` for `dim` and `keepdims` for `keepdim`, which torch's argument parser
takes in every function and Tensor method (FCMAE's `repeat_interleave(scale, axis=1)`), were a TypeError wherever
Avalon's signature named only `dim` (sort, topk, prod, gather, index_select, narrow, repeat_interleave, ... and
methods such as softmax, unsqueeze, chunk): avalon/ops/__init__.py's `_numpy_names` maps them for every such function
(in its defining module too, so autocast's lists still find it) and avalon/__init__.py applies it to `avalon`'s
names and Tensor's own methods.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import lm_steps, rel
from test_port_programs_30 import randn, same_grads
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache", "torch_on_one_thread")

F32 = torch.float32


def no_decay_groups(th, model, lr, weight_decay):
    """AdamW with the parameters marked `_no_weight_decay` (Mamba's A_log, D, dt_bias) in a group without decay."""
    decay = [p for p in model.parameters() if not getattr(p, "_no_weight_decay", False)]
    no_decay = [p for p in model.parameters() if getattr(p, "_no_weight_decay", False)]
    return th.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr)


# -- 1. Mamba-2 (state-spaces/mamba mamba_ssm/modules/ssd_minimal.py, mamba2_simple.py, ops/triton/layernorm_gated.py's
#       rms_norm_ref) ------------------------------------------------------------------------------------------------

def ssd_fns(torch, F):  # noqa: N803 (ssd_minimal.py, written against torch and F)
    from einops import rearrange, repeat

    def segsum(x):
        """More stable segment sum calculation."""
        T = x.size(-1)  # noqa: N806
        x = repeat(x, "... d -> ... d e", e=T)
        mask = torch.tril(torch.ones(T, T, device=x.device, dtype=bool), diagonal=-1)
        x = x.masked_fill(~mask, 0)
        x_segsum = torch.cumsum(x, dim=-2)
        mask = torch.tril(torch.ones(T, T, device=x.device, dtype=bool), diagonal=0)
        x_segsum = x_segsum.masked_fill(~mask, -torch.inf)
        return x_segsum

    def ssd_minimal_discrete(X, A, B, C, block_len, initial_states=None):  # noqa: N803
        """
        Arguments:
            X: (batch, length, n_heads, d_head)
            A: (batch, length, n_heads)
            B: (batch, length, n_heads, d_state)
            C: (batch, length, n_heads, d_state)
        Return:
            Y: (batch, length, n_heads, d_head)
        """
        assert X.dtype == A.dtype == B.dtype == C.dtype
        assert X.shape[1] % block_len == 0

        # Rearrange into blocks/chunks
        X, A, B, C = [rearrange(x, "b (c l) ... -> b c l ...", l=block_len) for x in (X, A, B, C)]  # noqa: N806

        A = rearrange(A, "b c l h -> b h c l")  # noqa: N806
        A_cumsum = torch.cumsum(A, dim=-1)  # noqa: N806

        # 1. Compute the output for each intra-chunk (diagonal blocks)
        L = torch.exp(segsum(A))  # noqa: N806
        Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X)  # noqa: N806

        # 2. Compute the state for each intra-chunk
        # (right term of low-rank factorization of off-diagonal blocks; B terms)
        decay_states = torch.exp((A_cumsum[:, :, :, -1:] - A_cumsum))  # noqa: UP034
        states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)

        # 3. Compute the inter-chunk SSM recurrence; produces correct SSM states at chunk boundaries
        # (middle term of factorization of off-diag blocks; A terms)
        if initial_states is None:
            initial_states = torch.zeros_like(states[:, :1])
        states = torch.cat([initial_states, states], dim=1)
        decay_chunk = torch.exp(segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0))))
        new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
        states, final_state = new_states[:, :-1], new_states[:, -1]

        # 4. Compute state -> output conversion per chunk
        # (left term of low-rank factorization of off-diagonal blocks; C terms)
        state_decay_out = torch.exp(A_cumsum)
        Y_off = torch.einsum('bclhn,bchpn,bhcl->bclhp', C, states, state_decay_out)  # noqa: N806

        # Add output of intra-chunk and inter-chunk terms (diagonal and off-diagonal blocks)
        Y = rearrange(Y_diag + Y_off, "b c l h p -> b (c l) h p")  # noqa: N806
        return Y, final_state

    return segsum, ssd_minimal_discrete


def mamba2(lib, F_, th, d_model=8, d_state=4, d_conv=3, expand=2, headdim=4, chunk_size=3, vocab=9):
    torch, nn, F = th, lib, F_
    from einops import rearrange, repeat
    _, ssd_minimal_discrete = ssd_fns(th, F_)

    def rms_norm_ref(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True, upcast=True):
        dtype = x.dtype
        weight = weight.float()
        bias = bias.float() if bias is not None else None
        if upcast:
            x = x.float()
            z = z.float() if z is not None else z
        if z is not None and not norm_before_gate:
            x = x * F.silu(z)
        rstd = 1 / torch.sqrt((x.square()).mean(dim=-1, keepdim=True) + eps)
        out = (x * rstd * weight) + bias if bias is not None else (x * rstd * weight)
        if z is not None and norm_before_gate:
            out *= F.silu(z)
        return out.to(dtype)

    class RMSNorm(nn.Module):
        def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=True):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.empty(hidden_size))
            self.register_parameter("bias", None)
            self.group_size = group_size
            self.norm_before_gate = norm_before_gate
            self.reset_parameters()

        def reset_parameters(self):
            torch.nn.init.ones_(self.weight)

        def forward(self, x, z=None):
            return rms_norm_ref(x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
                                norm_before_gate=self.norm_before_gate)

    class Mamba2Simple(nn.Module):
        def __init__(self, d_model, d_state=64, d_conv=4, conv_init=None, expand=2, headdim=128, ngroups=1,
                     A_init_range=(1, 16), dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, learnable_init_states=False,  # noqa: N803
                     bias=False, conv_bias=True, chunk_size=256, layer_idx=None):
            super().__init__()
            self.d_model = d_model
            self.d_state = d_state
            self.d_conv = d_conv
            self.conv_init = conv_init
            self.expand = expand
            self.d_inner = self.expand * self.d_model
            self.headdim = headdim
            self.ngroups = ngroups
            assert self.d_inner % self.headdim == 0
            self.nheads = self.d_inner // self.headdim
            self.chunk_size = chunk_size
            self.layer_idx = layer_idx

            # Order: [z, x, B, C, dt]
            d_in_proj = 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads
            self.in_proj = nn.Linear(self.d_model, d_in_proj, bias=bias)

            conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
            self.conv1d = nn.Conv1d(in_channels=conv_dim, out_channels=conv_dim, bias=conv_bias, kernel_size=d_conv,
                                    groups=conv_dim, padding=d_conv - 1)
            if self.conv_init is not None:
                nn.init.uniform_(self.conv1d.weight, -self.conv_init, self.conv_init)
            self.act = nn.SiLU()

            # Initialize log dt bias
            dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = torch.clamp(dt, min=dt_init_floor)
            # Inverse of softplus: https://github.com/pytorch/pytorch/issues/72759
            inv_dt = dt + torch.log(-torch.expm1(-dt))
            self.dt_bias = nn.Parameter(inv_dt)
            # Just to be explicit. Without this we already don't put wd on dt_bias because of the check
            # name.endswith("bias") in param_grouping.py
            self.dt_bias._no_weight_decay = True

            # A parameter
            assert A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]
            A = torch.empty(self.nheads, dtype=torch.float32).uniform_(*A_init_range)  # noqa: N806
            A_log = torch.log(A)  # noqa: N806
            self.A_log = nn.Parameter(A_log)
            self.A_log._no_weight_decay = True

            # D "skip" parameter
            self.D = nn.Parameter(torch.ones(self.nheads))
            self.D._no_weight_decay = True

            # Extra normalization layer right before output projection
            self.norm = RMSNorm(self.d_inner, eps=1e-5, norm_before_gate=False)
            self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias)

        def forward(self, u):
            """
            u: (B, L, D)
            Returns: same shape as u
            """
            batch, seqlen, dim = u.shape

            zxbcdt = self.in_proj(u)  # (B, L, d_in_proj)
            A = -torch.exp(self.A_log)  # (nheads) or (d_inner, d_state)  # noqa: N806

            z, xBC, dt = torch.split(  # noqa: N806
                zxbcdt, [self.d_inner, self.d_inner + 2 * self.ngroups * self.d_state, self.nheads], dim=-1
            )
            dt = F.softplus(dt + self.dt_bias)  # (B, L, nheads)

            # 1D Convolution
            xBC = self.act(self.conv1d(xBC.transpose(1, 2)).transpose(1, 2))  # (B, L, self.d_inner + 2 * ngroups * d_state)  # noqa: N806
            xBC = xBC[:, :seqlen, :]  # noqa: N806

            # Split into 3 main branches: X, B, C
            # These correspond to V, K, Q respectively in the SSM/attention duality
            x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)  # noqa: N806
            # ssd_minimal_discrete in place of the Triton mamba_chunk_scan_combined, as test_ssd_minimal calls it
            x = rearrange(x, "b l (h p) -> b l h p", p=self.headdim)
            B = repeat(rearrange(B, "b l (g n) -> b l g n", g=self.ngroups), "b l 1 n -> b l h n", h=self.nheads)  # noqa: N806
            C = repeat(rearrange(C, "b l (g n) -> b l g n", g=self.ngroups), "b l 1 n -> b l h n", h=self.nheads)  # noqa: N806
            y, _ = ssd_minimal_discrete(x * dt.unsqueeze(-1), A * dt, B, C, block_len=self.chunk_size)
            y = y + x * self.D[:, None]
            y = rearrange(y, "b l h p -> b l (h p)")

            # Multiply "gate" branch and apply extra normalization layer
            y = self.norm(y, z)
            out = self.out_proj(y)
            return out

    class MambaLM(nn.Module):  # MambaLMHeadModel's shape: embedding, pre-norm residual block, norm_f, tied head
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab, d_model)
            self.norm = nn.LayerNorm(d_model)
            self.mixer = Mamba2Simple(d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim,
                                      chunk_size=chunk_size)
            self.norm_f = nn.LayerNorm(d_model)
            self.lm_head = nn.Linear(d_model, vocab, bias=False)
            self.lm_head.weight = self.embedding.weight

        def forward(self, input_ids):
            hidden_states = self.embedding(input_ids)
            hidden_states = hidden_states + self.mixer(self.norm(hidden_states))
            return self.lm_head(self.norm_f(hidden_states))

    return MambaLM()


def ssd_sequential(th, X, A, B, C):  # noqa: N803
    """The SSM recurrence h_t = exp(A_t) h_{t-1} + B_t x_t, y_t = C_t h_t, one step at a time."""
    b, length, h, p = X.shape
    state = th.zeros(b, h, p, B.shape[-1], dtype=X.dtype)
    ys = []
    for t in range(length):
        state = state * th.exp(A[:, t])[:, :, None, None] + X[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append(th.einsum("bhpn,bhn->bhp", state, C[:, t]))
    return th.stack(ys, dim=1), state


def test_mamba2_ssd_chunked_scan_segsum_gated_rmsnorm_and_no_weight_decay_groups():
    model, tmodel = pair(mamba2, dtype=F32)
    assert model.mixer.dt_bias._no_weight_decay and model.lm_head.weight is model.embedding.weight
    optimizer = no_decay_groups(av, model, 1e-2, 0.1)
    toptimizer = no_decay_groups(torch, tmodel, 1e-2, 0.1)
    assert [len(g["params"]) for g in optimizer.param_groups] == [len(g["params"]) for g in toptimizer.param_groups]
    lm_steps(model, tmodel, optimizer, toptimizer, 9, (2, 7), seed=0, clip=1.0)

    # the chunked scan is the recurrence, and resumes from its final state
    rng = np.random.default_rng(1)
    X, B, C = randn(rng, 2, 6, 2, 3), randn(rng, 2, 6, 2, 4), randn(rng, 2, 6, 2, 4)  # noqa: N806
    A = -np.exp(randn(rng, 2, 6, 2))  # noqa: N806
    _, ssd = ssd_fns(av, F)
    _, tssd = ssd_fns(torch, TF)
    with strict():
        y, final = compiled(lambda *a: ssd(*a, block_len=3), "numpy")(X, A, B, C)
    ty, tfinal = tssd(*map(torch.tensor, (X, A, B, C)), block_len=3)
    sy, sfinal = ssd_sequential(torch, *map(torch.tensor, (X, A, B, C)))
    assert rel(ty, sy) < 1e-5 and rel(tfinal, sfinal) < 1e-5
    assert rel(y, ty) < 1e-5 and rel(final, tfinal) < 1e-5
    y1, f1 = ssd(*map(av.tensor, (X[:, :3], A[:, :3], B[:, :3], C[:, :3])), block_len=3)
    y2, f2 = ssd(*map(av.tensor, (X[:, 3:], A[:, 3:], B[:, 3:], C[:, 3:])), block_len=3, initial_states=f1[:, None])
    assert rel(av.cat([y1, y2], dim=1), ty) < 1e-5 and rel(f2, tfinal) < 1e-5

    def sum_y(X, A, B, C):  # noqa: N803 (the -inf of segsum's mask must not reach the gradients)
        return ssd(X, A, B, C, block_len=3)[0].sum()
    gx, ga = av.grad(sum_y, argnums=(0, 1))(*map(av.tensor, (X, A, B, C)))
    tX, tA = torch.tensor(X, requires_grad=True), torch.tensor(A, requires_grad=True)  # noqa: N806
    tssd(tX, tA, torch.tensor(B), torch.tensor(C), block_len=3)[0].sum().backward()
    assert np.isfinite(ga.numpy()).all() and rel(gx, tX.grad) < 1e-5 and rel(ga, tA.grad) < 1e-5


# -- 2. ConvNeXt-V2 FCMAE (facebookresearch/ConvNeXt-V2 models/convnextv2.py's GRN, LayerNorm and Block, models/fcmae.py;
#       the encoder dense, its stem output masked as the sparse encoder's) ----------------------------------------------

def fcmae(lib, F_, th, img_size=16, in_chans=3, depths=(1, 1), dims=(4, 8), decoder_depth=1, decoder_embed_dim=8,
          patch_size=8, mask_ratio=0.5, norm_pix_loss=True):
    torch, nn, F = th, lib, F_
    trunc_normal_ = nn.init.trunc_normal_  # timm's trunc_normal_ (a=-2, b=2), as torch's

    class LayerNorm(nn.Module):
        """ LayerNorm that supports two data formats: channels_last (default) or channels_first. """

        def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(normalized_shape))
            self.bias = nn.Parameter(torch.zeros(normalized_shape))
            self.eps = eps
            self.data_format = data_format
            if self.data_format not in ["channels_last", "channels_first"]:
                raise NotImplementedError
            self.normalized_shape = (normalized_shape, )

        def forward(self, x):
            if self.data_format == "channels_last":
                return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            elif self.data_format == "channels_first":
                u = x.mean(1, keepdim=True)
                s = (x - u).pow(2).mean(1, keepdim=True)
                x = (x - u) / torch.sqrt(s + self.eps)
                x = self.weight[:, None, None] * x + self.bias[:, None, None]
                return x

    class GRN(nn.Module):
        """ GRN (Global Response Normalization) layer """

        def __init__(self, dim):
            super().__init__()
            self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
            self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

        def forward(self, x):
            Gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)  # noqa: N806
            Nx = Gx / (Gx.mean(dim=-1, keepdim=True) + 1e-6)  # noqa: N806
            return self.gamma * (x * Nx) + self.beta + x

    class Block(nn.Module):
        """ ConvNeXtV2 Block. """

        def __init__(self, dim, drop_path=0.):
            super().__init__()
            self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)  # depthwise conv
            self.norm = LayerNorm(dim, eps=1e-6)
            self.pwconv1 = nn.Linear(dim, 4 * dim)  # pointwise/1x1 convs, implemented with linear layers
            self.act = nn.GELU()
            self.grn = GRN(4 * dim)
            self.pwconv2 = nn.Linear(4 * dim, dim)
            self.drop_path = nn.Identity()

        def forward(self, x):
            input = x  # noqa: A001
            x = self.dwconv(x)
            x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
            x = self.norm(x)
            x = self.pwconv1(x)
            x = self.act(x)
            x = self.grn(x)
            x = self.pwconv2(x)
            x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)

            x = input + self.drop_path(x)
            return x

    class ConvNeXtV2Encoder(nn.Module):
        def __init__(self, in_chans=3, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)):
            super().__init__()
            self.depths = depths
            self.downsample_layers = nn.ModuleList()  # stem and 3 intermediate downsampling conv layers
            stem = nn.Sequential(
                nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
                LayerNorm(dims[0], eps=1e-6, data_format="channels_first")
            )
            self.downsample_layers.append(stem)
            for i in range(len(dims) - 1):
                downsample_layer = nn.Sequential(
                    LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
                )
                self.downsample_layers.append(downsample_layer)

            self.stages = nn.ModuleList()
            for i in range(len(dims)):
                stage = nn.Sequential(*[Block(dim=dims[i]) for j in range(depths[i])])
                self.stages.append(stage)

        def upsample_mask(self, mask, scale):
            assert len(mask.shape) == 2
            p = int(mask.shape[1] ** .5)
            return mask.reshape(-1, p, p).repeat_interleave(scale, axis=1).repeat_interleave(scale, axis=2)

        def forward(self, x, mask):
            num_stages = len(self.stages)
            mask = self.upsample_mask(mask, 2**(num_stages - 1))
            mask = mask.unsqueeze(1).type_as(x)

            # patch embedding
            x = self.downsample_layers[0](x)
            x *= (1. - mask)

            for i in range(num_stages):
                x = self.downsample_layers[i](x) if i > 0 else x
                x = self.stages[i](x)
            return x

    class FCMAE(nn.Module):
        """ Fully Convolutional Masked Autoencoder with ConvNeXtV2 backbone
        """

        def __init__(self, img_size=224, in_chans=3, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), decoder_depth=1,
                     decoder_embed_dim=512, patch_size=32, mask_ratio=0.6, norm_pix_loss=False):
            super().__init__()

            # configs
            self.img_size = img_size
            self.depths = depths
            self.imds = dims
            self.patch_size = patch_size
            self.mask_ratio = mask_ratio
            self.num_patches = (img_size // patch_size) ** 2
            self.decoder_embed_dim = decoder_embed_dim
            self.decoder_depth = decoder_depth
            self.norm_pix_loss = norm_pix_loss

            # encoder
            self.encoder = ConvNeXtV2Encoder(in_chans=in_chans, depths=depths, dims=dims)
            # decoder
            self.proj = nn.Conv2d(in_channels=dims[-1], out_channels=decoder_embed_dim, kernel_size=1)
            # mask tokens
            self.mask_token = nn.Parameter(torch.zeros(1, decoder_embed_dim, 1, 1))
            decoder = [Block(dim=decoder_embed_dim, drop_path=0.) for i in range(decoder_depth)]
            self.decoder = nn.Sequential(*decoder)
            # pred
            self.pred = nn.Conv2d(in_channels=decoder_embed_dim, out_channels=patch_size ** 2 * in_chans, kernel_size=1)

            self.apply(self._init_weights)

        def _init_weights(self, m):
            if isinstance(m, nn.Conv2d):
                w = m.weight.data
                trunc_normal_(w.view([w.shape[0], -1]))
                nn.init.constant_(m.bias, 0)
            if isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.bias, 0)
                nn.init.constant_(m.weight, 1.0)
            if hasattr(self, 'mask_token'):
                torch.nn.init.normal_(self.mask_token, std=.02)

        def patchify(self, imgs):
            """
            imgs: (N, 3, H, W)
            x: (N, L, patch_size**2 *3)
            """
            p = self.patch_size
            assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0

            h = w = imgs.shape[2] // p
            x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
            x = torch.einsum('nchpwq->nhwpqc', x)
            x = x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))
            return x

        def gen_random_mask(self, x, mask_ratio, noise=None):
            N = x.shape[0]  # noqa: N806
            L = (x.shape[2] // self.patch_size) ** 2  # noqa: N806
            len_keep = int(L * (1 - mask_ratio))

            if noise is None:  # the port's draws are given
                noise = torch.randn(N, L, device=x.device)

            # sort noise for each sample
            ids_shuffle = torch.argsort(noise, dim=1)
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            # generate the binary mask: 0 is keep 1 is remove
            mask = torch.ones([N, L], device=x.device)
            mask[:, :len_keep] = 0
            # unshuffle to get the binary mask
            mask = torch.gather(mask, dim=1, index=ids_restore)
            return mask

        def forward_encoder(self, imgs, mask_ratio, noise=None):
            # generate random masks
            mask = self.gen_random_mask(imgs, mask_ratio, noise)
            # encoding
            x = self.encoder(imgs, mask)
            return x, mask

        def forward_decoder(self, x, mask):
            x = self.proj(x)
            # append mask token
            n, c, h, w = x.shape
            mask = mask.reshape(-1, h, w).unsqueeze(1).type_as(x)
            mask_token = self.mask_token.repeat(x.shape[0], 1, x.shape[2], x.shape[3])
            x = x * (1. - mask) + mask_token * mask
            # decoding
            x = self.decoder(x)
            # pred
            pred = self.pred(x)
            return pred

        def forward_loss(self, imgs, pred, mask):
            """
            imgs: [N, 3, H, W]
            pred: [N, L, p*p*3]
            mask: [N, L], 0 is keep, 1 is remove
            """
            if len(pred.shape) == 4:
                n, c, _, _ = pred.shape
                pred = pred.reshape(n, c, -1)
                pred = torch.einsum('ncl->nlc', pred)

            target = self.patchify(imgs)
            if self.norm_pix_loss:
                mean = target.mean(dim=-1, keepdim=True)
                var = target.var(dim=-1, keepdim=True)
                target = (target - mean) / (var + 1.e-6)**.5
            loss = (pred - target) ** 2
            loss = loss.mean(dim=-1)  # [N, L], mean loss per patch

            loss = (loss * mask).sum() / mask.sum()  # mean loss on removed patches
            return loss

        def forward(self, imgs, labels=None, mask_ratio=0.6, noise=None):
            x, mask = self.forward_encoder(imgs, mask_ratio, noise)
            pred = self.forward_decoder(x, mask)
            loss = self.forward_loss(imgs, pred, mask)
            return loss, pred, mask

    return FCMAE(img_size=img_size, in_chans=in_chans, depths=depths, dims=dims, decoder_depth=decoder_depth,
                 decoder_embed_dim=decoder_embed_dim, patch_size=patch_size, mask_ratio=mask_ratio,
                 norm_pix_loss=norm_pix_loss)


def test_convnextv2_fcmae_grn_random_masks_by_argsort_gather_patchify_einsum_and_norm_pix_loss():
    av.manual_seed(0)
    fresh = fcmae(nn, F, av)  # _init_weights' trunc_normal_ through `w.view(...)` of `.data` reaches the weight
    w = fresh.pred.weight.numpy()
    assert np.abs(w).max() <= 2 and w.std() > 0.5 and not fresh.pred.bias.numpy().any()
    model, tmodel = pair(fcmae, dtype=F32)
    model.train(), tmodel.train()
    optimizer = av.optim.AdamW(model.parameters(), lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.05)
    toptimizer = torch.optim.AdamW(tmodel.parameters(), lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.05)

    def loss_fn(model, samples, noise):
        loss, pred, mask = model(samples, mask_ratio=0.5, noise=noise)
        return loss, (pred, mask)

    def train_step(model, optimizer, samples, noise):
        (loss, (pred, mask)), grads = av.value_and_grad(loss_fn, has_aux=True)(model, samples, noise)
        optimizer.step(grads)
        return loss, pred, mask, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(2)
    for it in range(3):
        samples, noise = randn(rng, 2, 3, 16, 16), randn(rng, 2, 4)
        tloss, tpred, tmask = tmodel(torch.tensor(samples), mask_ratio=0.5, noise=torch.tensor(noise))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, pred, mask, grads = (run if it else train_step)(model, optimizer, av.tensor(samples),
                                                                   av.tensor(noise))
        assert rel(mask, tmask) == 0 and tmask.sum() == 4
        assert rel(loss, tloss) < 1e-5 and rel(pred, tpred) < 1e-5, it
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 1


# -- 3. gMLP (lucidrains/g-mlp-pytorch g_mlp_pytorch/g_mlp_pytorch.py: a causal LM with tiny attention, multi-head
#       circulant spatial gating and token shifting) ---------------------------------------------------------------

def gmlp(lib, F_, th, num_tokens=9, dim=8, depth=2, seq_len=6, heads=2, ff_mult=2, attn_dim=4, shift_tokens=1):
    torch, nn, F = th, lib, F_
    from einops import rearrange, repeat
    einsum = torch.einsum

    def exists(val):
        return val is not None

    def dropout_layers(layers, prob_survival):
        if prob_survival == 1:
            return layers

        num_layers = len(layers)
        to_drop = torch.zeros(num_layers).uniform_(0., 1.) > prob_survival

        # make sure at least one layer makes it
        if all(to_drop):
            rand_index = randrange(num_layers)  # noqa: F821 (unreached: prob_survival is 1)
            to_drop[rand_index] = False

        layers = [layer for (layer, drop) in zip(layers, to_drop) if not drop]
        return layers

    def shift(t, amount, mask=None):
        if amount == 0:
            return t
        return F.pad(t, (0, 0, amount, -amount), value=0.)

    class Residual(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x) + x

    class PreShiftTokens(nn.Module):
        def __init__(self, shifts, fn):
            super().__init__()
            self.fn = fn
            self.shifts = tuple(shifts)

        def forward(self, x, **kwargs):
            if self.shifts == (0,):
                return self.fn(x, **kwargs)

            shifts = self.shifts
            segments = len(shifts)
            feats_per_shift = x.shape[-1] // segments
            splitted = x.split(feats_per_shift, dim=-1)
            segments_to_shift, rest = splitted[:segments], splitted[segments:]
            segments_to_shift = list(map(lambda args: shift(*args), zip(segments_to_shift, shifts)))
            x = torch.cat((*segments_to_shift, *rest), dim=-1)
            return self.fn(x, **kwargs)

    class PreNorm(nn.Module):
        def __init__(self, dim, fn):
            super().__init__()
            self.fn = fn
            self.norm = nn.LayerNorm(dim)

        def forward(self, x, **kwargs):
            x = self.norm(x)
            return self.fn(x, **kwargs)

    class Attention(nn.Module):
        def __init__(self, dim_in, dim_out, dim_inner, causal=False):
            super().__init__()
            self.scale = dim_inner ** -0.5
            self.causal = causal

            self.to_qkv = nn.Linear(dim_in, dim_inner * 3, bias=False)
            self.to_out = nn.Linear(dim_inner, dim_out)

        def forward(self, x):
            device = x.device
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
            sim = einsum('b i d, b j d -> b i j', q, k) * self.scale

            if self.causal:
                mask = torch.ones(sim.shape[-2:], device=device).triu(1).bool()
                sim.masked_fill_(mask[None, ...], -torch.finfo(q.dtype).max)

            attn = sim.softmax(dim=-1)
            out = einsum('b i j, b j d -> b i d', attn, v)
            return self.to_out(out)

    class SpatialGatingUnit(nn.Module):
        def __init__(self, dim, dim_seq, causal=False, act=nn.Identity(), heads=1, init_eps=1e-3,  # noqa: B008
                     circulant_matrix=False):
            super().__init__()
            dim_out = dim // 2
            self.heads = heads
            self.causal = causal
            self.norm = nn.LayerNorm(dim_out)

            self.act = act

            # parameters

            if circulant_matrix:
                self.circulant_pos_x = nn.Parameter(torch.ones(heads, dim_seq))
                self.circulant_pos_y = nn.Parameter(torch.ones(heads, dim_seq))

            self.circulant_matrix = circulant_matrix
            shape = (heads, dim_seq,) if circulant_matrix else (heads, dim_seq, dim_seq)
            weight = torch.zeros(shape)

            self.weight = nn.Parameter(weight)
            init_eps /= dim_seq
            nn.init.uniform_(self.weight, -init_eps, init_eps)

            self.bias = nn.Parameter(torch.ones(heads, dim_seq))

        def forward(self, x, gate_res=None):
            device, n, h = x.device, x.shape[1], self.heads

            res, gate = x.chunk(2, dim=-1)
            gate = self.norm(gate)

            weight, bias = self.weight, self.bias

            if self.circulant_matrix:
                # build the circulant matrix

                dim_seq = weight.shape[-1]
                weight = F.pad(weight, (0, dim_seq), value=0)
                weight = repeat(weight, '... n -> ... (r n)', r=dim_seq)
                weight = weight[:, :-dim_seq].reshape(h, dim_seq, 2 * dim_seq - 1)
                weight = weight[:, :, (dim_seq - 1):]

                # give circulant matrix absolute position awareness

                pos_x, pos_y = self.circulant_pos_x, self.circulant_pos_y
                weight = weight * rearrange(pos_x, 'h i -> h i ()') * rearrange(pos_y, 'h j -> h () j')

            if self.causal:
                weight, bias = weight[:, :n, :n], bias[:, :n]
                mask = torch.ones(weight.shape[-2:], device=device).triu_(1).bool()
                mask = rearrange(mask, 'i j -> () i j')
                weight = weight.masked_fill(mask, 0.)

            gate = rearrange(gate, 'b n (h d) -> b h n d', h=h)

            gate = einsum('b h n d, h m n -> b h m d', gate, weight)
            gate = gate + rearrange(bias, 'h n -> () h n ()')

            gate = rearrange(gate, 'b h n d -> b n (h d)')

            if exists(gate_res):
                gate = gate + gate_res

            return self.act(gate) * res

    class gMLPBlock(nn.Module):  # noqa: N801
        def __init__(self, *, dim, dim_ff, seq_len, heads=1, attn_dim=None, causal=False, act=nn.Identity(),  # noqa: B008
                     circulant_matrix=False):
            super().__init__()
            self.proj_in = nn.Sequential(
                nn.Linear(dim, dim_ff),
                nn.GELU()
            )

            self.attn = Attention(dim, dim_ff // 2, attn_dim, causal) if exists(attn_dim) else None

            self.sgu = SpatialGatingUnit(dim_ff, seq_len, causal, act, heads, circulant_matrix=circulant_matrix)
            self.proj_out = nn.Linear(dim_ff // 2, dim)

        def forward(self, x):
            gate_res = self.attn(x) if exists(self.attn) else None
            x = self.proj_in(x)
            x = self.sgu(x, gate_res=gate_res)
            x = self.proj_out(x)
            return x

    class gMLP(nn.Module):  # noqa: N801
        def __init__(self, *, num_tokens=None, dim, depth, seq_len, heads=1, ff_mult=4, attn_dim=None,
                     prob_survival=1., causal=False, circulant_matrix=False, shift_tokens=0, act=nn.Identity()):  # noqa: B008
            super().__init__()
            assert (dim % heads) == 0, 'dimension must be divisible by number of heads'

            dim_ff = dim * ff_mult
            self.seq_len = seq_len
            self.prob_survival = prob_survival

            self.to_embed = nn.Embedding(num_tokens, dim) if exists(num_tokens) else nn.Identity()

            token_shifts = tuple(range(0 if causal else -shift_tokens, shift_tokens + 1))
            self.layers = nn.ModuleList([Residual(PreNorm(dim, PreShiftTokens(token_shifts, gMLPBlock(
                dim=dim, heads=heads, dim_ff=dim_ff, seq_len=seq_len, attn_dim=attn_dim, causal=causal, act=act,
                circulant_matrix=circulant_matrix)))) for i in range(depth)])

            self.to_logits = nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, num_tokens)
            ) if exists(num_tokens) else nn.Identity()

        def forward(self, x):
            x = self.to_embed(x)
            layers = self.layers if not self.training else dropout_layers(self.layers, self.prob_survival)
            out = nn.Sequential(*layers)(x)
            return self.to_logits(out)

    return gMLP(num_tokens=num_tokens, dim=dim, depth=depth, seq_len=seq_len, heads=heads, ff_mult=ff_mult,
                attn_dim=attn_dim, causal=True, circulant_matrix=True, shift_tokens=shift_tokens, act=nn.Tanh())


def test_gmlp_causal_circulant_spatial_gating_token_shift_and_tiny_attention():
    model, tmodel = pair(gmlp, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    tokens = lm_steps(model, tmodel, optimizer, toptimizer, 9, (2, 7), seed=4)
    with av.no_grad(), torch.no_grad(), strict():  # causal: a prefix's logits do not see what follows
        model.eval(), tmodel.eval()
        short = tokens[:, :-1].copy()
        short[:, 4:] = 0
        got, want = model(av.tensor(short)), tmodel(torch.tensor(tokens[:, :-1]))
        assert rel(got[:, :4], want[:, :4]) < 1e-5 and rel(got, tmodel(torch.tensor(short))) < 1e-5


# -- 4. Nystromformer (lucidrains/nystrom-attention nystrom_attention/nystrom_attention.py; a masked-mean classifier) --

def nystromformer(lib, F_, th, num_tokens=11, dim=8, depth=2, dim_head=4, heads=2, num_landmarks=3, pinv_iterations=6,
                  attn_values_residual_conv_kernel=3, classes=3):
    torch, nn, F = th, lib, F_
    from math import ceil

    from einops import rearrange, reduce

    def exists(val):
        return val is not None

    def moore_penrose_iter_pinv(x, iters=6):
        device = x.device

        abs_x = torch.abs(x)
        col = abs_x.sum(dim=-1)
        row = abs_x.sum(dim=-2)
        z = rearrange(x, '... i j -> ... j i') / (torch.max(col) * torch.max(row))

        I = torch.eye(x.shape[-1], device=device)  # noqa: E741
        I = rearrange(I, 'i j -> () i j')  # noqa: E741

        for _ in range(iters):
            xz = x @ z
            z = 0.25 * z @ (13 * I - (xz @ (15 * I - (xz @ (7 * I - xz)))))

        return z

    class NystromAttention(nn.Module):
        def __init__(self, dim, dim_head=64, heads=8, num_landmarks=256, pinv_iterations=6, residual=True,
                     residual_conv_kernel=33, eps=1e-8, dropout=0.):
            super().__init__()
            self.eps = eps
            inner_dim = heads * dim_head

            self.num_landmarks = num_landmarks
            self.pinv_iterations = pinv_iterations

            self.heads = heads
            self.scale = dim_head ** -0.5
            self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)

            self.to_out = nn.Sequential(
                nn.Linear(inner_dim, dim),
                nn.Dropout(dropout)
            )

            self.residual = residual
            if residual:
                kernel_size = residual_conv_kernel
                padding = residual_conv_kernel // 2
                self.res_conv = nn.Conv2d(heads, heads, (kernel_size, 1), padding=(padding, 0), groups=heads,
                                          bias=False)

        def forward(self, x, mask=None, return_attn=False):
            b, n, _, h, m, iters, eps = *x.shape, self.heads, self.num_landmarks, self.pinv_iterations, self.eps  # noqa: F841

            # pad so that sequence can be evenly divided into m landmarks

            remainder = n % m
            if remainder > 0:
                padding = m - (n % m)
                x = F.pad(x, (0, 0, padding, 0), value=0)

                if exists(mask):
                    mask = F.pad(mask, (padding, 0), value=False)

            # derive query, keys, values

            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
            q, k, v = map(lambda t: rearrange(t, 'b n (h d) -> b h n d', h=h), (q, k, v))

            # set masked positions to 0 in queries, keys, values

            if exists(mask):
                mask = rearrange(mask, 'b n -> b () n')
                q, k, v = map(lambda t: t * mask[..., None], (q, k, v))

            q = q * self.scale

            # generate landmarks by sum reduction, and then calculate mean using the mask

            l = ceil(n / m)  # noqa: E741
            landmark_einops_eq = '... (n l) d -> ... n d'
            q_landmarks = reduce(q, landmark_einops_eq, 'sum', l=l)
            k_landmarks = reduce(k, landmark_einops_eq, 'sum', l=l)

            # calculate landmark mask, and also get sum of non-masked elements in preparation for masked mean

            divisor = l
            if exists(mask):
                mask_landmarks_sum = reduce(mask, '... (n l) -> ... n', 'sum', l=l)
                divisor = mask_landmarks_sum[..., None] + eps
                mask_landmarks = mask_landmarks_sum > 0

            # masked mean (if mask exists)

            q_landmarks = q_landmarks / divisor
            k_landmarks = k_landmarks / divisor

            # similarities

            einops_eq = '... i d, ... j d -> ... i j'
            sim1 = torch.einsum(einops_eq, q, k_landmarks)
            sim2 = torch.einsum(einops_eq, q_landmarks, k_landmarks)
            sim3 = torch.einsum(einops_eq, q_landmarks, k)

            # masking

            if exists(mask):
                mask_value = -torch.finfo(q.dtype).max
                sim1.masked_fill_(~(mask[..., None] * mask_landmarks[..., None, :]), mask_value)
                sim2.masked_fill_(~(mask_landmarks[..., None] * mask_landmarks[..., None, :]), mask_value)
                sim3.masked_fill_(~(mask_landmarks[..., None] * mask[..., None, :]), mask_value)

            # eq (15) in the paper and aggregate values

            attn1, attn2, attn3 = map(lambda t: t.softmax(dim=-1), (sim1, sim2, sim3))
            attn2_inv = moore_penrose_iter_pinv(attn2, iters)

            out = (attn1 @ attn2_inv) @ (attn3 @ v)

            # add depth-wise conv residual of values

            if self.residual:
                out = out + self.res_conv(v)

            # merge and combine heads

            out = rearrange(out, 'b h n d -> b n (h d)', h=h)
            out = self.to_out(out)
            out = out[:, -n:]

            if return_attn:
                attn = attn1 @ attn2_inv @ attn3
                return out, attn

            return out

    class PreNorm(nn.Module):
        def __init__(self, dim, fn):
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.fn = fn

        def forward(self, x, **kwargs):
            x = self.norm(x)
            return self.fn(x, **kwargs)

    class FeedForward(nn.Module):
        def __init__(self, dim, mult=4, dropout=0.):
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(dim, dim * mult),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(dim * mult, dim)
            )

        def forward(self, x):
            return self.net(x)

    class Nystromformer(nn.Module):
        def __init__(self, *, dim, depth, dim_head=64, heads=8, num_landmarks=256, pinv_iterations=6,
                     attn_values_residual=True, attn_values_residual_conv_kernel=33, attn_dropout=0., ff_dropout=0.):
            super().__init__()

            self.layers = nn.ModuleList([])
            for _ in range(depth):
                self.layers.append(nn.ModuleList([
                    PreNorm(dim, NystromAttention(dim=dim, dim_head=dim_head, heads=heads, num_landmarks=num_landmarks,
                                                  pinv_iterations=pinv_iterations, residual=attn_values_residual,
                                                  residual_conv_kernel=attn_values_residual_conv_kernel,
                                                  dropout=attn_dropout)),
                    PreNorm(dim, FeedForward(dim=dim, dropout=ff_dropout))
                ]))

        def forward(self, x, mask=None):
            for attn, ff in self.layers:
                x = attn(x, mask=mask) + x
                x = ff(x) + x
            return x

    class Classifier(nn.Module):  # the usual head: embeddings, the encoder, a masked mean and a linear layer
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(num_tokens, dim)
            self.encoder = Nystromformer(dim=dim, depth=depth, dim_head=dim_head, heads=heads,
                                         num_landmarks=num_landmarks, pinv_iterations=pinv_iterations,
                                         attn_values_residual_conv_kernel=attn_values_residual_conv_kernel)
            self.head = nn.Linear(dim, classes)

        def forward(self, tokens, mask):
            x = self.encoder(self.emb(tokens), mask=mask)
            m = mask.unsqueeze(-1).float()
            return self.head((x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0))

    return Classifier()


def test_nystromformer_landmarks_iterative_pinv_padding_masks_and_depthwise_value_residual():
    model, tmodel = pair(nystromformer, dtype=F32)
    optimizer = av.optim.AdamW(model.parameters(), lr=3e-3)
    toptimizer = torch.optim.AdamW(tmodel.parameters(), lr=3e-3)

    def loss_fn(model, tokens, mask, labels):
        logits = model(tokens, mask)
        return F.cross_entropy(logits, labels), logits

    def train_step(model, optimizer, tokens, mask, labels):
        (loss, logits), grads = av.value_and_grad(loss_fn, has_aux=True)(model, tokens, mask, labels)
        optimizer.step(grads)
        return loss, logits, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(6)
    for it in range(3):
        tokens, labels = rng.integers(1, 11, (3, 7)), rng.integers(0, 3, 3)
        mask = np.arange(7)[None] < np.array([7, 5, 2])[:, None]  # the last sequence leaves a landmark empty
        tokens[~mask] = 0
        tlogits = tmodel(torch.tensor(tokens), torch.tensor(mask))
        tloss = TF.cross_entropy(tlogits, torch.tensor(labels))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, logits, grads = (run if it else train_step)(model, optimizer, *map(av.tensor, (tokens, mask, labels)))
        assert rel(loss, tloss) < 1e-5 and rel(logits, tlogits) < 1e-5, it
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 1
    with av.no_grad(), torch.no_grad():  # no mask: the landmark means by `divisor = l`, and return_attn
        x = randn(rng, 2, 8, 8)
        tout, tattn = tmodel.encoder.layers[0][0].fn(torch.tensor(x), return_attn=True)
        out, attn = model.encoder.layers[0][0].fn(av.tensor(x), return_attn=True)
        assert rel(out, tout) < 1e-5 and rel(attn, tattn) < 1e-5


# -- 5. CfC (raminmh/CfC torch_cfc.py: CfcCell, LSTMCell, Cfc with irregularly sampled, masked inputs) -----------------

def cfc(lib, F_, th, hparams, in_features=3, hidden_size=5, out_feature=2, use_mixed=True):
    torch, nn = th, lib

    class LeCun(nn.Module):
        def __init__(self):
            super(LeCun, self).__init__()  # noqa: UP008
            self.tanh = nn.Tanh()

        def forward(self, x):
            return 1.7159 * self.tanh(0.666 * x)

    class CfcCell(nn.Module):
        def __init__(self, input_size, hidden_size, hparams):
            super(CfcCell, self).__init__()  # noqa: UP008
            self.input_size = input_size
            self.hidden_size = hidden_size
            self.hparams = hparams
            self._no_gate = False
            if "no_gate" in self.hparams:
                self._no_gate = self.hparams["no_gate"]
            self._minimal = False
            if "minimal" in self.hparams:
                self._minimal = self.hparams["minimal"]

            if self.hparams["backbone_activation"] == "silu":
                backbone_activation = nn.SiLU
            elif self.hparams["backbone_activation"] == "relu":
                backbone_activation = nn.ReLU
            elif self.hparams["backbone_activation"] == "tanh":
                backbone_activation = nn.Tanh
            elif self.hparams["backbone_activation"] == "gelu":
                backbone_activation = nn.GELU
            elif self.hparams["backbone_activation"] == "lecun":
                backbone_activation = LeCun
            else:
                raise ValueError("Unknown activation")
            layer_list = [
                nn.Linear(input_size + hidden_size, self.hparams["backbone_units"]),
                backbone_activation(),
            ]
            for i in range(1, self.hparams["backbone_layers"]):  # noqa: B007
                layer_list.append(
                    nn.Linear(
                        self.hparams["backbone_units"], self.hparams["backbone_units"]
                    )
                )
                layer_list.append(backbone_activation())
                if "backbone_dr" in self.hparams.keys():
                    layer_list.append(torch.nn.Dropout(self.hparams["backbone_dr"]))
            self.backbone = nn.Sequential(*layer_list)
            self.tanh = nn.Tanh()
            self.sigmoid = nn.Sigmoid()
            self.ff1 = nn.Linear(self.hparams["backbone_units"], hidden_size)
            if self._minimal:
                self.w_tau = torch.nn.Parameter(
                    data=torch.zeros(1, self.hidden_size), requires_grad=True
                )
                self.A = torch.nn.Parameter(
                    data=torch.ones(1, self.hidden_size), requires_grad=True
                )
            else:
                self.ff2 = nn.Linear(self.hparams["backbone_units"], hidden_size)
                self.time_a = nn.Linear(self.hparams["backbone_units"], hidden_size)
                self.time_b = nn.Linear(self.hparams["backbone_units"], hidden_size)
            self.init_weights()

        def init_weights(self):
            init_gain = self.hparams.get("init")
            if init_gain is not None:
                for w in self.parameters():
                    if w.dim() == 2:
                        torch.nn.init.xavier_uniform_(w, gain=init_gain)

        def forward(self, input, hx, ts):  # noqa: A002
            batch_size = input.size(0)
            ts = ts.view(batch_size, 1)
            x = torch.cat([input, hx], 1)

            x = self.backbone(x)
            if self._minimal:
                # Solution
                ff1 = self.ff1(x)
                new_hidden = (
                    -self.A
                    * torch.exp(-ts * (torch.abs(self.w_tau) + torch.abs(ff1)))
                    * ff1
                    + self.A
                )
            else:
                # Cfc
                ff1 = self.tanh(self.ff1(x))
                ff2 = self.tanh(self.ff2(x))
                t_a = self.time_a(x)
                t_b = self.time_b(x)
                t_interp = self.sigmoid(t_a * ts + t_b)
                if self._no_gate:
                    new_hidden = ff1 + t_interp * ff2
                else:
                    new_hidden = ff1 * (1.0 - t_interp) + t_interp * ff2
            return new_hidden

    class LSTMCell(nn.Module):
        def __init__(self, input_size, hidden_size):
            super(LSTMCell, self).__init__()  # noqa: UP008
            self.input_size = input_size
            self.hidden_size = hidden_size
            self.input_map = nn.Linear(input_size, 4 * hidden_size, bias=True)
            self.recurrent_map = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
            self.init_weights()

        def init_weights(self):
            for w in self.input_map.parameters():
                if w.dim() == 1:
                    torch.nn.init.uniform_(w, -0.1, 0.1)
                else:
                    torch.nn.init.xavier_uniform_(w)
            for w in self.recurrent_map.parameters():
                if w.dim() == 1:
                    torch.nn.init.uniform_(w, -0.1, 0.1)
                else:
                    torch.nn.init.orthogonal_(w)

        def forward(self, inputs, states):
            output_state, cell_state = states
            z = self.input_map(inputs) + self.recurrent_map(output_state)
            i, ig, fg, og = z.chunk(4, 1)

            input_activation = torch.tanh(i)
            input_gate = torch.sigmoid(ig)
            forget_gate = torch.sigmoid(fg + 1.0)
            output_gate = torch.sigmoid(og)

            new_cell = cell_state * forget_gate + input_activation * input_gate
            output_state = torch.tanh(new_cell) * output_gate

            return output_state, new_cell

    class Cfc(nn.Module):
        def __init__(self, in_features, hidden_size, out_feature, hparams, return_sequences=False, use_mixed=False,
                     use_ltc=False):
            super(Cfc, self).__init__()  # noqa: UP008
            self.in_features = in_features
            self.hidden_size = hidden_size
            self.out_feature = out_feature
            self.return_sequences = return_sequences

            self.rnn_cell = CfcCell(in_features, hidden_size, hparams)
            self.use_mixed = use_mixed
            if self.use_mixed:
                self.lstm = LSTMCell(in_features, hidden_size)

            self.fc = nn.Linear(self.hidden_size, self.out_feature)

        def forward(self, x, timespans=None, mask=None):
            device = x.device
            batch_size = x.size(0)
            seq_len = x.size(1)
            true_in_features = x.size(2)
            h_state = torch.zeros((batch_size, self.hidden_size), device=device)
            if self.use_mixed:
                c_state = torch.zeros((batch_size, self.hidden_size), device=device)
            output_sequence = []
            if mask is not None:
                forwarded_output = torch.zeros(
                    (batch_size, self.out_feature), device=device
                )
                forwarded_input = torch.zeros((batch_size, true_in_features), device=device)
                time_since_update = torch.zeros(
                    (batch_size, true_in_features), device=device
                )
            for t in range(seq_len):
                inputs = x[:, t]
                ts = timespans[:, t].squeeze()
                if mask is not None:
                    if mask.size(-1) == true_in_features:
                        forwarded_input = (
                            mask[:, t] * inputs + (1 - mask[:, t]) * forwarded_input
                        )
                        time_since_update = (ts.view(batch_size, 1) + time_since_update) * (
                            1 - mask[:, t]
                        )
                    else:
                        forwarded_input = inputs
                    if (
                        true_in_features * 2 < self.in_features
                        and mask.size(-1) == true_in_features
                    ):
                        # we have 3x in-features
                        inputs = torch.cat(
                            (forwarded_input, time_since_update, mask[:, t]), dim=1
                        )
                    else:
                        # we have 2x in-feature
                        inputs = torch.cat((forwarded_input, mask[:, t]), dim=1)
                if self.use_mixed:
                    h_state, c_state = self.lstm(inputs, (h_state, c_state))
                h_state = self.rnn_cell.forward(inputs, h_state, ts)
                if mask is not None:
                    cur_mask, _ = torch.max(mask[:, t], dim=1)
                    cur_mask = cur_mask.view(batch_size, 1)
                    current_output = self.fc(h_state)
                    forwarded_output = (
                        cur_mask * current_output + (1.0 - cur_mask) * forwarded_output
                    )
                if self.return_sequences:
                    output_sequence.append(self.fc(h_state))

            if self.return_sequences:
                readout = torch.stack(output_sequence, dim=1)
            elif mask is not None:
                readout = forwarded_output
            else:
                readout = self.fc(h_state)
            return readout

    return Cfc(in_features * 3, hidden_size, out_feature, hparams, use_mixed=use_mixed)


@pytest.mark.parametrize("hparams", [
    {"backbone_activation": "lecun", "backbone_units": 6, "backbone_layers": 2, "init": 1.3},
    {"backbone_activation": "silu", "backbone_units": 6, "backbone_layers": 1, "minimal": True, "init": 0.8},
], ids=["cfc-mixed-memory", "minimal"])
def test_cfc_closed_form_cell_irregular_timespans_masked_forwarded_inputs_and_mixed_memory(hparams):
    import functools
    make = functools.partial(cfc, hparams=hparams, use_mixed="minimal" not in hparams)
    model, tmodel = pair(lambda lib, F_, th: make(lib, F_, th), dtype=F32)
    optimizer = av.optim.RMSprop(model.parameters(), lr=5e-3)
    toptimizer = torch.optim.RMSprop(tmodel.parameters(), lr=5e-3)

    def loss_fn(model, x, timespans, mask, y):
        logits = model(x, timespans, mask)
        return F.cross_entropy(logits, y), logits

    def train_step(model, optimizer, x, timespans, mask, y):
        (loss, logits), grads = av.value_and_grad(loss_fn, has_aux=True)(model, x, timespans, mask, y)
        optimizer.step(grads)
        return loss, logits, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(7)
    for it in range(3):
        x, timespans = randn(rng, 4, 5, 3), rng.uniform(0.1, 2.0, (4, 5, 1)).astype(np.float32)
        mask = (rng.uniform(size=(4, 5, 3)) < 0.6).astype(np.float32)
        y = rng.integers(0, 2, 4)
        tlogits = tmodel(*map(torch.tensor, (x, timespans, mask)))
        tloss = TF.cross_entropy(tlogits, torch.tensor(y))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, logits, grads = (run if it else train_step)(model, optimizer, *map(av.tensor, (x, timespans, mask, y)))
        assert rel(loss, tloss) < 1e-5 and rel(logits, tlogits) < 1e-5, it
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 1


# -- regressions ------------------------------------------------------------------------------------------------------

def test_torch_constants_inf_nan_pi_e():
    """Mamba-2's segsum writes `x_segsum.masked_fill(~mask, -torch.inf)`: `av.inf` (and nan, pi, e) were missing."""
    for name in ("inf", "nan", "pi", "e"):
        got, want = getattr(av, name), getattr(torch, name)
        assert type(got) is float and (got == want or (math.isnan(got) and math.isnan(want))), name
    x = av.zeros(2, 2).masked_fill(av.tensor([[True, False], [False, True]]), -av.inf)
    assert x.numpy().tolist() == [[-math.inf, 0.0], [0.0, -math.inf]]


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_numpy_axis_and_keepdims_names_for_dim_and_keepdim_as_torch(mode):
    """ConvNeXt-V2's upsample_mask calls `mask.repeat_interleave(scale, axis=1)`: torch's argument parser takes numpy's
    `axis` for `dim` and `keepdims` for `keepdim` in every function and Tensor method; Avalon's functions without
    `axis` in their signatures raised TypeError (repeat_interleave, sort, topk, prod, gather, index_select, narrow,
    select, unbind, chunk, softmax and unsqueeze as methods, ...)."""
    def f(th, x):
        m = x.reshape(-1, 2, 2).repeat_interleave(2, axis=1).repeat_interleave(2, axis=2)
        s = th.sort(x, axis=1)[0] + x.softmax(axis=1) + x.prod(axis=1, keepdims=True) + th.cumprod(x, axis=1)
        t = th.topk(x, 2, axis=1)[0].sum(axis=1, keepdims=True) + th.gather(x, axis=1, index=th.zeros_like(x).long())
        u = x.unsqueeze(axis=0).squeeze(axis=0) + th.index_select(x, axis=1, index=th.tensor([1, 0, 3, 2]))
        return th.cat([m.reshape(2, -1), s, t, u, th.stack(x.unbind(axis=1), axis=1), th.cat(x.chunk(2, axis=1), axis=1),
                       x.narrow(axis=1, start=0, length=4), th.logsumexp(x, axis=1, keepdims=True).expand(2, 4)], axis=1)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    got = compiled(lambda x: f(av, x), mode)(av.tensor(x))
    assert rel(got, f(torch, torch.tensor(x))) < 1e-6
    with pytest.raises(TypeError, match="'dim' and its alias 'axis'"):
        av.repeat_interleave(av.tensor(x), 2, dim=1, axis=1)

"""Round 9u of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: lucidrains/mlp-mixer-pytorch and res-mlp-pytorch (MLPMixer's token mixing by `partial(nn.Conv1d,
kernel_size=1)` over the patches, FeedForward with a `dense` factory, PreNormResidual, einops' Rearrange and Reduce
layers in one `nn.Sequential(*[...])`; ResMLP's Affine and PreAffinePostLayerScale with its `torch.zeros(1, 1,
dim).fill_(init_eps)` layer scale; cross entropy with label smoothing); lucidrains/slot-attention with
evelinehong/slot-attention-pytorch's object-discovery autoencoder (slots_mu and an `xavier_uniform_` slots_logsigma,
the slots sampled as `mu + sigma * noise`, the iterative attention softmaxed over the slots with `+ eps` and
renormalized, GRUCell updates over `reshape(-1, d)`, `nn.ReLU(inplace=True)`, SoftPositionEmbed's numpy
`build_grid` made by `torch.from_numpy`, the per-call `nn.LayerNorm(x.shape[1:])` in forward,
the spatial broadcast decoder by `repeat((1, 4, 4, 1))` and ConvTranspose2d, the crop `x[:, :, :h, :w]`, and the
alpha masks' `split([3, 1], dim=-1)` softmaxed over the slots); ml-jku/hopfield-layers (HopfieldPooling's trainable
state pattern expanded by `expand(size=...)`, the stored, state and projection patterns' LayerNorms called with
`input=` on `reshape(shape=...)`, HopfieldCore's `F.linear` over slices of one in-projection bias, `view(...)
.transpose(0, 1)` into heads, the key padding mask by `masked_fill(float('-inf'))`, and the Hopfield update
iterations: `torch.bmm(xi, k)` written into the state patterns of the heads still moving, a per-head mask made
under no_grad from `norm(p=2, dim=(2, 3)).max(axis=0)[0]` and `&=`; a multiple-instance classifier over padded bags
with BCE-with-logits); lucidrains/linformer (LinformerLM: `init_`'s `tensor.uniform_(-std, std)` of the sequence
projections, `einsum('bnd,nk->bkd')` mapped over `zip((keys, values), kv_projs)`, projections sliced `t[:kv_len]` for
shorter sequences, `expand(-1, h, -1, -1)` of one shared key/value head, SequentialSequence's `route_args` and GLU
feed-forward by `chunk`); pyg-team/pytorch_geometric's SchNet (GaussianSmearing's `linspace` buffer and
`.item()`-made coefficient, ShiftedSoftplus' `torch.log(torch.tensor(2.0)).item()`, CFConv's cosine cutoff and
MessagePassing's gather of `x_j` by `index_select` and its sum by `new_zeros(...).scatter_add_(0,
index.view(-1, 1).expand_as(src), src)`, the atomref Embedding copied by `weight.data.copy_`, reset_parameters'
`bias.data.fill_(0)`, and the per-molecule readout by scatter).

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`); the random draws made in the
forward pass (Slot Attention's slot noise) are given. Not Avalon: sizes are small; hopfield-layers' `while
update_active_heads.any()` is the `for` loop over `update_steps_max + 1` steps that it equals (an inactive head's
update is a no-op); SchNet's radius graph (torch_cluster, not torch) is the fully connected graph inside each
molecule, built once outside the step (its cutoff is wider than any molecule).
hopfield-layers writes the update as `torch.masked_scatter(input=q, mask=m, source=torch.bmm(xi, k).masked_select(m))`,
whose intermediate's shape depends on the mask's values, which a traced function cannot have (README): the port writes
the same update as `torch.where(m, torch.bmm(xi, k), q)`.

Deliberate differences met: SoftPositionEmbed keeps its grid in a plain attribute, `self.grid = build_grid(...)`, which
torch leaves out of the model; a plain tensor attribute is state here (the README), so the port registers it as a
non-persistent buffer.
"""
from __future__ import annotations

import functools
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


def steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-4, loss_tol=1e-5, floor=1e-4):
    """`loss_fn(model, *batch) -> (loss, out)` trained on `batches` (tuples of numpy arrays) by torch's
    `zero_grad(); backward(); step()` and by the port's `av.value_and_grad` step (the first eager, the rest compiled on
    numpy, one trace); loss, output, gradients, parameters and buffers compared after each step."""
    def train_step(model, optimizer, *batch):
        (loss, out), grads = av.value_and_grad(loss_fn, has_aux=True)(model, *batch)
        optimizer.step(grads)
        return loss, out, grads
    run = compiled(train_step, "numpy")
    for it, batch in enumerate(batches):
        tloss, tout = loss_fn(tmodel, *map(torch.tensor, batch))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, out, grads = (run if it else train_step)(model, optimizer, *map(av.tensor, batch))
        outs, touts = (out, tout) if isinstance(tout, tuple) else ((out,), (tout,))
        assert rel(loss, tloss) < loss_tol and all(rel(a, b) < loss_tol for a, b in zip(outs, touts)), it
        same_grads(grads, tmodel, tol, floor)
        same_weights(model, tmodel, tol)
    assert run.cache_info().misses == 1


def einops_layers(lib):
    if lib is nn:
        return nn.Rearrange, nn.Reduce
    from einops.layers.torch import Rearrange, Reduce
    return Rearrange, Reduce


# -- 1. MLP-Mixer and ResMLP (lucidrains/mlp-mixer-pytorch mlp_mixer_pytorch.py, res-mlp-pytorch res_mlp_pytorch.py) --

def mlp_mixer(lib, F_, th, image_size=8, channels=3, patch_size=4, dim=8, depth=2, num_classes=3, expansion_factor=4,
              expansion_factor_token=0.5, dropout=0.):
    torch, nn = th, lib
    from functools import partial
    Rearrange, Reduce = einops_layers(lib)  # noqa: N806

    pair = lambda x: x if isinstance(x, tuple) else (x, x)  # noqa: E731

    class PreNormResidual(nn.Module):
        def __init__(self, dim, fn):
            super().__init__()
            self.fn = fn
            self.norm = nn.LayerNorm(dim)

        def forward(self, x):
            return self.fn(self.norm(x)) + x

    def FeedForward(dim, expansion_factor=4, dropout=0., dense=nn.Linear):  # noqa: N802
        inner_dim = int(dim * expansion_factor)
        return nn.Sequential(
            dense(dim, inner_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            dense(inner_dim, dim),
            nn.Dropout(dropout)
        )

    def MLPMixer(*, image_size, channels, patch_size, dim, depth, num_classes, expansion_factor=4,  # noqa: N802
                 expansion_factor_token=0.5, dropout=0.):
        image_h, image_w = pair(image_size)
        assert (image_h % patch_size) == 0 and (image_w % patch_size) == 0, 'image must be divisible by patch size'
        num_patches = (image_h // patch_size) * (image_w // patch_size)
        chan_first, chan_last = partial(nn.Conv1d, kernel_size=1), nn.Linear

        return nn.Sequential(
            Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)', p1=patch_size, p2=patch_size),
            nn.Linear((patch_size ** 2) * channels, dim),
            *[nn.Sequential(
                PreNormResidual(dim, FeedForward(num_patches, expansion_factor, dropout, chan_first)),
                PreNormResidual(dim, FeedForward(dim, expansion_factor_token, dropout, chan_last))
            ) for _ in range(depth)],
            nn.LayerNorm(dim),
            Reduce('b n c -> b c', 'mean'),
            nn.Linear(dim, num_classes)
        )

    del torch
    return MLPMixer(image_size=image_size, channels=channels, patch_size=patch_size, dim=dim, depth=depth,
                    num_classes=num_classes, expansion_factor=expansion_factor,
                    expansion_factor_token=expansion_factor_token, dropout=dropout)


def res_mlp(lib, F_, th, image_size=8, patch_size=4, dim=8, depth=2, num_classes=3, expansion_factor=2):
    torch, nn = th, lib
    Rearrange, Reduce = einops_layers(lib)  # noqa: N806

    pair = lambda x: x if isinstance(x, tuple) else (x, x)  # noqa: E731

    class Affine(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.g = nn.Parameter(torch.ones(1, 1, dim))
            self.b = nn.Parameter(torch.zeros(1, 1, dim))

        def forward(self, x):
            return x * self.g + self.b

    class PreAffinePostLayerScale(nn.Module):  # https://arxiv.org/abs/2103.17239
        def __init__(self, dim, depth, fn):
            super().__init__()
            if depth <= 18:
                init_eps = 0.1
            elif depth > 18 and depth <= 24:
                init_eps = 1e-5
            else:
                init_eps = 1e-6

            scale = torch.zeros(1, 1, dim).fill_(init_eps)
            self.scale = nn.Parameter(scale)
            self.affine = Affine(dim)
            self.fn = fn

        def forward(self, x):
            return self.fn(self.affine(x)) * self.scale + x

    def ResMLP(*, image_size, patch_size, dim, depth, num_classes, expansion_factor=4):  # noqa: N802
        image_height, image_width = pair(image_size)
        assert (image_height % patch_size) == 0 and (image_width % patch_size) == 0, \
            'image height and width must be divisible by patch size'
        num_patches = (image_height // patch_size) * (image_width // patch_size)
        wrapper = lambda i, fn: PreAffinePostLayerScale(dim, i + 1, fn)  # noqa: E731

        return nn.Sequential(
            Rearrange('b c (h p1) (w p2) -> b (h w) (c p1 p2)', p1=patch_size, p2=patch_size),
            nn.Linear((patch_size ** 2) * 3, dim),
            *[nn.Sequential(
                wrapper(i, nn.Conv1d(num_patches, num_patches, 1)),
                wrapper(i, nn.Sequential(
                    nn.Linear(dim, dim * expansion_factor),
                    nn.GELU(),
                    nn.Linear(dim * expansion_factor, dim)
                ))
            ) for i in range(depth)],
            Affine(dim),
            Reduce('b n c -> b c', 'mean'),
            nn.Linear(dim, num_classes)
        )

    return ResMLP(image_size=image_size, patch_size=patch_size, dim=dim, depth=depth, num_classes=num_classes,
                  expansion_factor=expansion_factor)


@pytest.mark.parametrize("make", [mlp_mixer, res_mlp], ids=["mlp-mixer", "resmlp"])
def test_mlp_mixer_and_resmlp_token_mixing_conv1d_einops_layers_and_layer_scale(make):
    """The mixer's token-mixing biases shift a token's features by one constant, which the next LayerNorm removes: their
    gradients are zero in exact arithmetic, roundoff on both sides (Adam would make those lr-sized steps), so SGD."""
    model, tmodel = pair(make, dtype=F32)
    optimizer = av.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    def loss_fn(model, img, y):
        logits = model(img)
        return (TF if isinstance(model, torch.nn.Module) else F).cross_entropy(logits, y, label_smoothing=0.1), logits

    rng = np.random.default_rng(0)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn,
                     [(randn(rng, 2, 3, 8, 8), rng.integers(0, 3, 2)) for _ in range(3)], floor=1e-3)


# -- 2. Slot Attention (lucidrains/slot-attention slot_attention/slot_attention.py; evelinehong/slot-attention-pytorch
#       model.py's object-discovery autoencoder) ------------------------------------------------------------------------

def slot_autoencoder(lib, F_, th, resolution=(8, 8), num_slots=3, num_iterations=2, hid_dim=6, decoder_size=(4, 4)):
    torch, nn, F = th, lib, F_
    init = nn.init
    device = "cpu"

    class SlotAttention(nn.Module):
        def __init__(self, num_slots, dim, iters=3, eps=1e-8, hidden_dim=128):
            super().__init__()
            self.num_slots = num_slots
            self.iters = iters
            self.eps = eps
            self.scale = dim ** -0.5

            self.slots_mu = nn.Parameter(torch.randn(1, 1, dim))

            self.slots_logsigma = nn.Parameter(torch.zeros(1, 1, dim))
            init.xavier_uniform_(self.slots_logsigma)

            self.to_q = nn.Linear(dim, dim)
            self.to_k = nn.Linear(dim, dim)
            self.to_v = nn.Linear(dim, dim)

            self.gru = nn.GRUCell(dim, dim)

            hidden_dim = max(dim, hidden_dim)

            self.mlp = nn.Sequential(
                nn.Linear(dim, hidden_dim),
                nn.ReLU(inplace=True),
                nn.Linear(hidden_dim, dim)
            )

            self.norm_input = nn.LayerNorm(dim)
            self.norm_slots = nn.LayerNorm(dim)
            self.norm_pre_ff = nn.LayerNorm(dim)

        def forward(self, inputs, noise, num_slots=None):
            b, n, d, device, dtype = *inputs.shape, inputs.device, inputs.dtype  # noqa: F841
            n_s = num_slots if num_slots is not None else self.num_slots

            mu = self.slots_mu.expand(b, n_s, -1)
            sigma = self.slots_logsigma.exp().expand(b, n_s, -1)

            slots = mu + sigma * noise  # torch.randn(mu.shape, device=device, dtype=dtype), given

            inputs = self.norm_input(inputs)
            k, v = self.to_k(inputs), self.to_v(inputs)

            for _ in range(self.iters):
                slots_prev = slots

                slots = self.norm_slots(slots)
                q = self.to_q(slots)

                dots = torch.einsum('bid,bjd->bij', q, k) * self.scale
                attn = dots.softmax(dim=1) + self.eps

                attn = attn / attn.sum(dim=-1, keepdim=True)

                updates = torch.einsum('bjd,bij->bid', v, attn)

                slots = self.gru(
                    updates.reshape(-1, d),
                    slots_prev.reshape(-1, d)
                )

                slots = slots.reshape(b, -1, d)
                slots = slots + self.mlp(self.norm_pre_ff(slots))

            return slots

    def build_grid(resolution):
        ranges = [np.linspace(0., 1., num=res) for res in resolution]
        grid = np.meshgrid(*ranges, sparse=False, indexing="ij")
        grid = np.stack(grid, axis=-1)
        grid = np.reshape(grid, [resolution[0], resolution[1], -1])
        grid = np.expand_dims(grid, axis=0)
        grid = grid.astype(np.float32)
        return torch.from_numpy(np.concatenate([grid, 1.0 - grid], axis=-1)).to(device)

    class SoftPositionEmbed(nn.Module):
        def __init__(self, hidden_size, resolution):
            """Builds the soft position embedding layer.
            Args:
            hidden_size: Size of input feature dimension.
            resolution: Tuple of integers specifying width and height of grid.
            """
            super().__init__()
            self.embedding = nn.Linear(4, hidden_size, bias=True)
            # (a plain attribute in torch; a plain tensor attribute is state here, README: the port's buffer)
            self.register_buffer("grid", build_grid(resolution), persistent=False)

        def forward(self, inputs):
            grid = self.embedding(self.grid)
            return inputs + grid

    class Encoder(nn.Module):
        def __init__(self, resolution, hid_dim):
            super().__init__()
            self.conv1 = nn.Conv2d(3, hid_dim, 5, padding=2)
            self.conv2 = nn.Conv2d(hid_dim, hid_dim, 5, padding=2)
            self.encoder_pos = SoftPositionEmbed(hid_dim, resolution)

        def forward(self, x):
            x = self.conv1(x)
            x = F.relu(x)
            x = self.conv2(x)
            x = F.relu(x)
            x = x.permute(0, 2, 3, 1)
            x = self.encoder_pos(x)
            x = torch.flatten(x, 1, 2)
            return x

    class Decoder(nn.Module):
        def __init__(self, hid_dim, resolution):
            super().__init__()
            self.conv1 = nn.ConvTranspose2d(hid_dim, hid_dim, 5, stride=(2, 2), padding=2, output_padding=1).to(device)
            self.conv2 = nn.ConvTranspose2d(hid_dim, 4, 3, stride=(1, 1), padding=1)
            self.decoder_initial_size = decoder_size
            self.decoder_pos = SoftPositionEmbed(hid_dim, self.decoder_initial_size)
            self.resolution = resolution

        def forward(self, x):
            x = self.decoder_pos(x)
            x = x.permute(0, 3, 1, 2)
            x = self.conv1(x)
            x = F.relu(x)
            x = self.conv2(x)
            x = x[:, :, :self.resolution[0], :self.resolution[1]]
            x = x.permute(0, 2, 3, 1)
            return x

    class SlotAttentionAutoEncoder(nn.Module):
        def __init__(self, resolution, num_slots, num_iterations, hid_dim):
            """Builds the Slot Attention-based auto-encoder.
            Args:
            resolution: Tuple of integers specifying width and height of input image.
            num_slots: Number of slots in Slot Attention.
            num_iterations: Number of iterations in Slot Attention.
            """
            super().__init__()
            self.hid_dim = hid_dim
            self.resolution = resolution
            self.num_slots = num_slots
            self.num_iterations = num_iterations

            self.encoder_cnn = Encoder(self.resolution, self.hid_dim)
            self.decoder_cnn = Decoder(self.hid_dim, self.resolution)

            self.fc1 = nn.Linear(hid_dim, hid_dim)
            self.fc2 = nn.Linear(hid_dim, hid_dim)

            self.slot_attention = SlotAttention(
                num_slots=self.num_slots,
                dim=hid_dim,
                iters=self.num_iterations,
                eps=1e-8,
                hidden_dim=8)

        def forward(self, image, noise):
            # `image` has shape: [batch_size, num_channels, width, height].

            # Convolutional encoder with position embedding.
            x = self.encoder_cnn(image)  # CNN Backbone.
            x = nn.LayerNorm(x.shape[1:]).to(device)(x)
            x = self.fc1(x)
            x = F.relu(x)
            x = self.fc2(x)  # Feedforward network on set.
            # `x` has shape: [batch_size, width*height, input_size].

            # Slot Attention module.
            slots = self.slot_attention(x, noise)
            # `slots` has shape: [batch_size, num_slots, slot_size].

            # """Broadcast slot features to a 2D grid and collapse slot dimension.""".
            slots = slots.reshape((-1, slots.shape[-1])).unsqueeze(1).unsqueeze(2)
            slots = slots.repeat((1, *decoder_size, 1))

            # `slots` has shape: [batch_size*num_slots, width_init, height_init, slot_size].
            x = self.decoder_cnn(slots)
            # `x` has shape: [batch_size*num_slots, width, height, num_channels+1].

            # Undo combination of slot and batch dimension; split alpha masks.
            recons, masks = x.reshape(image.shape[0], -1, x.shape[1], x.shape[2], x.shape[3]).split([3, 1], dim=-1)
            # `recons` has shape: [batch_size, num_slots, width, height, num_channels].
            # `masks` has shape: [batch_size, num_slots, width, height, 1].

            # Normalize alpha masks over slots.
            masks = nn.Softmax(dim=1)(masks)
            recon_combined = torch.sum(recons * masks, dim=1)  # Recombine image.
            recon_combined = recon_combined.permute(0, 3, 1, 2)
            # `recon_combined` has shape: [batch_size, width, height, num_channels].

            return recon_combined, recons, masks, slots

    return SlotAttentionAutoEncoder(resolution, num_slots, num_iterations, hid_dim)


def test_slot_attention_autoencoder_iterative_gru_slots_soft_position_grid_and_alpha_masks():
    av.manual_seed(0)
    fresh = slot_autoencoder(nn, F, av)
    bound = math.sqrt(6 / 12)  # xavier_uniform_ of a (1, 1, dim) tensor: fan_in = fan_out = dim
    w = fresh.slot_attention.slots_logsigma.numpy()
    assert w.shape == (1, 1, 6) and np.abs(w).max() <= bound and np.abs(w).max() > 0.1
    model, tmodel = pair(slot_autoencoder, dtype=F32)
    # (the alpha channel's decoder bias is the same for every slot, which the softmax over slots removes: a zero
    # gradient in exact arithmetic, roundoff on both sides, that Adam would make lr-sized steps of; so SGD)
    optimizer = av.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9)

    def loss_fn(model, image, noise):
        recon_combined, recons, masks, slots = model(image, noise)
        lib = TF if isinstance(model, torch.nn.Module) else F
        return lib.mse_loss(recon_combined, image), (recon_combined, masks)

    rng = np.random.default_rng(1)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn,
                     [(randn(rng, 2, 3, 8, 8), randn(rng, 2, 3, 6)) for _ in range(3)])


# -- 3. Hopfield pooling (ml-jku/hopfield-layers hflayers/__init__.py's Hopfield and HopfieldPooling, activation.py's
#       HopfieldCore, functional.py's hopfield_core_forward) -------------------------------------------------------------

def hopfield_mil(lib, F_, th, input_size=6, hidden_size=4, num_heads=2, update_steps_max=2, update_steps_eps=1e-4):
    torch, nn, F = th, lib, F_
    Tensor = th.Tensor  # noqa: N806

    class HopfieldCore(nn.Module):
        def __init__(self, embed_dim, num_heads, head_dim, kdim=None, vdim=None):
            super().__init__()
            self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
            self.kdim = kdim if kdim is not None else embed_dim
            self.vdim = vdim if vdim is not None else embed_dim
            self.hopfield_dim = num_heads * head_dim
            self.q_proj_weight = nn.Parameter(torch.Tensor(self.hopfield_dim, embed_dim))
            self.k_proj_weight = nn.Parameter(torch.Tensor(self.hopfield_dim, self.kdim))
            self.v_proj_weight = nn.Parameter(torch.Tensor(self.hopfield_dim, self.vdim))
            self.in_proj_bias = nn.Parameter(torch.empty(3 * self.hopfield_dim))
            self.out_proj = nn.Linear(self.hopfield_dim, embed_dim, bias=True)
            self._reset_parameters()

        def _reset_parameters(self):
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
            nn.init.constant_(self.in_proj_bias, 0.)
            nn.init.constant_(self.out_proj.bias, 0.)

        def forward(self, query, key, value, key_padding_mask=None, scaling=None, update_steps_max=0,
                    update_steps_eps=1e-4):
            tgt_len, bsz, embed_dim = query.shape
            src_len = key.shape[0]
            num_heads, head_dim, hd = self.num_heads, self.head_dim, self.hopfield_dim
            scaling = (float(head_dim) ** -0.5) if scaling is None else scaling

            q = F.linear(query, self.q_proj_weight, self.in_proj_bias[0:hd])
            k = F.linear(key, self.k_proj_weight, self.in_proj_bias[hd:(hd * 2)])
            v = F.linear(value, self.v_proj_weight, self.in_proj_bias[(hd * 2):])
            q = q * scaling

            q = q.contiguous().view(tgt_len, -1, head_dim).transpose(0, 1)
            k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
            v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)

            xi, xi_old = None, None
            update_active_heads = torch.ones(num_heads, dtype=torch.bool, device=q.device)
            for update_step in range(update_steps_max + 1):  # `while update_active_heads.any():`
                attn_output_weights = torch.bmm(q, k.transpose(1, 2))
                assert list(attn_output_weights.size()) == [bsz * num_heads, tgt_len, src_len]

                if key_padding_mask is not None:
                    attn_output_weights = attn_output_weights.view(bsz, num_heads, tgt_len, src_len)
                    attn_output_weights = attn_output_weights.masked_fill(
                        key_padding_mask.unsqueeze(1).unsqueeze(2),
                        float('-inf'),
                    )
                    attn_output_weights = attn_output_weights.view(bsz * num_heads, tgt_len, src_len)

                # Compute new xi for Hopfield retrieve iterations.
                xi = F.softmax(attn_output_weights, dim=-1)

                # Compute threshold-based stopping criterion for Hopfield retrieve iterations.
                with torch.no_grad():
                    xi_active = xi.view(size=(bsz, num_heads, tgt_len, src_len))
                    update_active_heads = torch.full((num_heads,), (update_step < update_steps_max) or (
                        update_steps_max < 0), dtype=torch.bool, device=q.device)
                    if xi_old is not None:
                        update_active_heads &= ((xi_old - xi_active).norm(p=2, dim=(2, 3)).max(axis=0)[0]) > \
                            update_steps_eps
                    update_active_heads = update_active_heads.unsqueeze(dim=1).unsqueeze(dim=2).repeat(
                        repeats=(bsz, 1, 1))
                    xi_old = xi_active

                # Compute new state pattern (Hopfield retrieval): the active heads' state patterns move.
                if update_step < update_steps_max:  # (masked_scatter of a masked_select: the shape-stable where)
                    q = torch.where(update_active_heads, torch.bmm(xi, k), q)

            attn_output = torch.bmm(xi, v)
            assert list(attn_output.shape[:2]) == [bsz * num_heads, tgt_len]
            attn_output = attn_output.transpose(0, 1).contiguous().view(tgt_len, bsz, -1)
            return self.out_proj(attn_output)

    class Hopfield(nn.Module):
        def __init__(self, input_size, hidden_size, num_heads, scaling=None, update_steps_max=0, update_steps_eps=1e-4,
                     batch_first=True):
            super().__init__()
            self.association_core = HopfieldCore(embed_dim=input_size, num_heads=num_heads, head_dim=hidden_size)
            self.norm_stored_pattern = nn.LayerNorm(normalized_shape=input_size, elementwise_affine=True)
            self.norm_state_pattern = nn.LayerNorm(normalized_shape=input_size, elementwise_affine=True)
            self.norm_pattern_projection = nn.LayerNorm(normalized_shape=input_size, elementwise_affine=True)
            self.batch_first = batch_first
            self.__scaling = (1.0 / math.sqrt(hidden_size)) if scaling is None else scaling
            self.__update_steps_max = update_steps_max
            self.__update_steps_eps = update_steps_eps

        def _maybe_transpose(self, *args):
            transposed_result = tuple(_.transpose(0, 1) for _ in args) if self.batch_first else args
            return transposed_result[0] if len(transposed_result) == 1 else transposed_result

        def _associate(self, data, stored_pattern_padding_mask=None):
            stored_pattern, state_pattern, pattern_projection = self._maybe_transpose(*data)
            stored_pattern = self.norm_stored_pattern(
                input=stored_pattern.reshape(shape=(-1, stored_pattern.shape[2]))).reshape(shape=stored_pattern.shape)
            state_pattern = self.norm_state_pattern(
                input=state_pattern.reshape(shape=(-1, state_pattern.shape[2]))).reshape(shape=state_pattern.shape)
            pattern_projection = self.norm_pattern_projection(
                input=pattern_projection.reshape(shape=(-1, pattern_projection.shape[2]))).reshape(
                shape=pattern_projection.shape)
            return self.association_core(
                query=state_pattern, key=stored_pattern, value=pattern_projection,
                key_padding_mask=stored_pattern_padding_mask, scaling=self.__scaling,
                update_steps_max=self.__update_steps_max, update_steps_eps=self.__update_steps_eps)

        def forward(self, input, stored_pattern_padding_mask=None):
            return self._maybe_transpose(self._associate(data=input,
                                                         stored_pattern_padding_mask=stored_pattern_padding_mask))

    class HopfieldPooling(nn.Module):
        def __init__(self, input_size, hidden_size, num_heads, quantity=1, trainable=True, batch_first=True,
                     **kwargs):
            super().__init__()
            self.hopfield = Hopfield(input_size=input_size, hidden_size=hidden_size, num_heads=num_heads,
                                     batch_first=batch_first, **kwargs)
            self.quantity = quantity
            pooling_weight_size = (1, quantity) if batch_first else (quantity, 1)
            self.batch_first = batch_first
            self.pooling_weights = nn.Parameter(torch.empty(size=(*pooling_weight_size, input_size)),
                                                requires_grad=trainable)
            self.reset_parameters()

        def reset_parameters(self):
            nn.init.normal_(self.pooling_weights, mean=0.0, std=0.02)

        def _prepare_input(self, input):
            assert (type(input) == Tensor) or ((type(input) == tuple) and (len(input) == 2)), (  # noqa: E721
                r'either one tensor to be used as "stored pattern" and'
                r' "pattern_projection" must be provided, or two separate ones.')
            batch_size = input.shape[0 if self.batch_first else 1]
            return input[0] if (type(input) == tuple) else input, self.pooling_weights.expand(size=(*(  # noqa: E721
                (batch_size, self.quantity) if self.batch_first else (self.quantity, batch_size)
            ), self.pooling_weights.shape[2])), input[1] if (type(input) == tuple) else input  # noqa: E721

        def forward(self, input, stored_pattern_padding_mask=None):
            return self.hopfield(input=self._prepare_input(input=input),
                                 stored_pattern_padding_mask=stored_pattern_padding_mask).flatten(start_dim=1)

    class MILNet(nn.Module):  # examples/mnist_bags: embedding, Hopfield pooling, a linear head
        def __init__(self):
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(3, input_size), nn.ReLU())
            self.pooling = HopfieldPooling(input_size, hidden_size, num_heads, update_steps_max=update_steps_max,
                                           update_steps_eps=update_steps_eps)
            self.head = nn.Linear(input_size, 1)

        def forward(self, bags, mask):
            return self.head(self.pooling(self.embed(bags), stored_pattern_padding_mask=mask)).flatten()

    return MILNet()


def test_hopfield_pooling_update_steps_masked_scatter_padded_bags_and_layer_norms_by_keyword():
    model, tmodel = pair(hopfield_mil, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=5e-3)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=5e-3)

    def loss_fn(model, bags, mask, y):
        logits = model(bags, mask)
        lib = TF if isinstance(model, torch.nn.Module) else F
        return lib.binary_cross_entropy_with_logits(logits, y), logits

    rng = np.random.default_rng(3)
    mask = np.zeros((3, 5), bool)
    mask[0, 3:], mask[2, 4:] = True, True  # bags of 3, 5 and 4 instances
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn,
                     [(randn(rng, 3, 5, 3), mask, rng.integers(0, 2, 3).astype(np.float32)) for _ in range(3)])


# -- 4. Linformer (lucidrains/linformer linformer/linformer.py, reversible.py's SequentialSequence) ------------------------

def linformer_lm(lib, F_, th, num_tokens=9, dim=8, seq_len=8, depth=2, k=3, heads=2, one_kv_head=True, share_kv=True):
    torch, nn = th, lib

    def route_args(router, args, depth):
        routed_args = [(dict(), dict()) for _ in range(depth)]
        matched_keys = [key for key in args.keys() if key in router]

        for key in matched_keys:
            val = args[key]
            for d, ((f_args, g_args), routes) in enumerate(zip(routed_args, router[key])):
                new_f_args, new_g_args = map(lambda route: ({key: val} if route else {}), routes)
                routed_args[d] = ({**f_args, **new_f_args}, {**g_args, **new_g_args})
        return routed_args

    class SequentialSequence(nn.Module):
        def __init__(self, layers, args_route={}, layer_dropout=0.):  # noqa: B006
            super().__init__()
            assert all(len(route) == len(layers) for route in args_route.values()), \
                'each argument route map must have the same depth as the number of sequential layers'
            self.layers = layers
            self.args_route = args_route
            self.layer_dropout = layer_dropout

        def forward(self, x, **kwargs):
            args = route_args(self.args_route, kwargs, len(self.layers))
            layers_and_args = list(zip(self.layers, args))

            for (f, g), (f_args, g_args) in layers_and_args:
                x = x + f(x, **f_args)
                x = x + g(x, **g_args)
            return x

    def default(val, default_val):
        return val if val is not None else default_val

    def init_(tensor):
        dim = tensor.shape[-1]
        std = 1 / math.sqrt(dim)
        tensor.uniform_(-std, std)
        return tensor

    class PreNorm(nn.Module):
        def __init__(self, dim, fn):
            super().__init__()
            self.fn = fn
            self.norm = nn.LayerNorm(dim)

        def forward(self, x):
            x = self.norm(x)
            return self.fn(x)

    class GELU_(nn.Module):  # noqa: N801
        def forward(self, x):
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))

    GELU = nn.GELU if hasattr(nn, 'GELU') else GELU_  # noqa: N806

    class FeedForward(nn.Module):
        def __init__(self, dim, mult=4, dropout=0., activation=None, glu=False):
            super().__init__()
            activation = default(activation, GELU)

            self.glu = glu
            self.w1 = nn.Linear(dim, dim * mult * (2 if glu else 1))
            self.act = activation()
            self.dropout = nn.Dropout(dropout)
            self.w2 = nn.Linear(dim * mult, dim)

        def forward(self, x, **kwargs):
            if not self.glu:
                x = self.w1(x)
                x = self.act(x)
            else:
                x, v = self.w1(x).chunk(2, dim=-1)
                x = self.act(x) * v

            x = self.dropout(x)
            x = self.w2(x)
            return x

    class LinformerSelfAttention(nn.Module):
        def __init__(self, dim, seq_len, k=256, heads=8, dim_head=None, one_kv_head=False, share_kv=False,
                     dropout=0.):
            super().__init__()
            assert (dim % heads) == 0, 'dimension must be divisible by the number of heads'

            self.seq_len = seq_len
            self.k = k

            self.heads = heads

            dim_head = default(dim_head, dim // heads)
            self.dim_head = dim_head

            self.to_q = nn.Linear(dim, dim_head * heads, bias=False)

            kv_dim = dim_head if one_kv_head else (dim_head * heads)
            self.to_k = nn.Linear(dim, kv_dim, bias=False)
            self.proj_k = nn.Parameter(init_(torch.zeros(seq_len, k)))

            self.share_kv = share_kv
            if not share_kv:
                self.to_v = nn.Linear(dim, kv_dim, bias=False)
                self.proj_v = nn.Parameter(init_(torch.zeros(seq_len, k)))

            self.dropout = nn.Dropout(dropout)
            self.to_out = nn.Linear(dim_head * heads, dim)

        def forward(self, x, context=None, **kwargs):
            b, n, d, d_h, h, k = *x.shape, self.dim_head, self.heads, self.k  # noqa: F841

            kv_len = n if context is None else context.shape[1]
            assert kv_len <= self.seq_len, \
                f'the sequence length of the key / values must be {self.seq_len} - {kv_len} given'

            queries = self.to_q(x)

            proj_seq_len = lambda args: torch.einsum('bnd,nk->bkd', *args)  # noqa: E731

            kv_input = x if context is None else context

            keys = self.to_k(kv_input)
            values = self.to_v(kv_input) if not self.share_kv else keys

            kv_projs = (self.proj_k, self.proj_v if not self.share_kv else self.proj_k)

            # allow for variable sequence lengths (less than maximum sequence length) by slicing projections

            if kv_len < self.seq_len:
                kv_projs = map(lambda t: t[:kv_len], kv_projs)

            # project keys and values along the sequence length dimension to k

            keys, values = map(proj_seq_len, zip((keys, values), kv_projs))

            # merge head into batch for queries and key / values

            queries = queries.reshape(b, n, h, -1).transpose(1, 2)

            merge_key_values = lambda t: t.reshape(b, k, -1, d_h).transpose(1, 2).expand(-1, h, -1, -1)  # noqa: E731
            keys, values = map(merge_key_values, (keys, values))

            # attention

            dots = torch.einsum('bhnd,bhkd->bhnk', queries, keys) * (d_h ** -0.5)
            attn = dots.softmax(dim=-1)
            attn = self.dropout(attn)
            out = torch.einsum('bhnk,bhkd->bhnd', attn, values)

            # split heads
            out = out.transpose(1, 2).reshape(b, n, -1)
            return self.to_out(out)

    class Linformer(nn.Module):
        def __init__(self, dim, seq_len, depth, k=256, heads=8, dim_head=None, one_kv_head=False, share_kv=False,
                     reversible=False, dropout=0.):
            super().__init__()
            layers = nn.ModuleList([])
            for _ in range(depth):
                attn = LinformerSelfAttention(dim, seq_len, k=k, heads=heads, dim_head=dim_head,
                                              one_kv_head=one_kv_head, share_kv=share_kv, dropout=dropout)
                ff = FeedForward(dim, dropout=dropout, glu=True)

                layers.append(nn.ModuleList([
                    PreNorm(dim, attn),
                    PreNorm(dim, ff)
                ]))

            execute_type = SequentialSequence
            self.net = execute_type(layers)

        def forward(self, x):
            return self.net(x)

    class LinformerLM(nn.Module):
        def __init__(self, num_tokens, dim, seq_len, depth, k=256, heads=8, dim_head=None, one_kv_head=False,
                     share_kv=False, reversible=False, dropout=0.):
            super().__init__()
            self.token_emb = nn.Embedding(num_tokens, dim)
            self.pos_emb = nn.Embedding(seq_len, dim)
            self.linformer = Linformer(dim, seq_len, depth, k=k, heads=heads, dim_head=dim_head,
                                       one_kv_head=one_kv_head, share_kv=share_kv, reversible=reversible,
                                       dropout=dropout)
            self.to_logits = nn.Linear(dim, num_tokens)

        def forward(self, x):
            x = self.token_emb(x)
            x = self.pos_emb(torch.arange(x.shape[1], device=x.device)) + x
            x = self.linformer(x)
            out = self.to_logits(x)
            return out

    return LinformerLM(num_tokens, dim, seq_len, depth, k=k, heads=heads, one_kv_head=one_kv_head, share_kv=share_kv)


@pytest.mark.parametrize("kv", [dict(one_kv_head=True, share_kv=True), dict(one_kv_head=False, share_kv=False)],
                         ids=["one-shared-kv-head", "per-head-kv"])
def test_linformer_lm_sequence_projections_sliced_for_short_inputs_and_glu_feed_forward(kv):
    av.manual_seed(0)
    p = linformer_lm(nn, F, av, **kv).linformer.net.layers[0][0].fn.proj_k.numpy()  # init_'s uniform_(-std, std)
    assert np.abs(p).max() <= 1 / math.sqrt(3) and p.std() > 0.2
    model, tmodel = pair(functools.partial(linformer_lm, **kv), dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    lm_steps(model, tmodel, optimizer, toptimizer, 9, (2, 7), seed=5)  # 6 < seq_len tokens: the projections sliced


# -- 5. SchNet (pyg-team/pytorch_geometric torch_geometric/nn/models/schnet.py; MessagePassing's gather and sum,
#       torch_geometric/utils/scatter.py's scatter by `scatter_add_`) ---------------------------------------------------

def schnet(lib, F_, th, hidden_channels=8, num_filters=8, num_interactions=2, num_gaussians=6, cutoff=10.0,
           atomref=True):
    torch, F = th, F_
    nn = lib
    Embedding, Linear, ModuleList, Sequential = nn.Embedding, nn.Linear, nn.ModuleList, nn.Sequential  # noqa: N806
    PI = math.pi  # noqa: N806

    def scatter(src, index, dim=0, dim_size=None, reduce='sum'):
        # torch_geometric.utils.scatter, the 'sum' / 'add' path: `index` broadcast along `src` and `scatter_add_`
        dim = src.dim() + dim if dim < 0 else dim
        if dim_size is None:
            dim_size = int(index.max()) + 1 if index.numel() > 0 else 0
        size = src.size()[:dim] + (dim_size, ) + src.size()[dim + 1:]
        index = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)  # broadcast(index, src, dim)
        if reduce == 'sum' or reduce == 'add':
            return src.new_zeros(size).scatter_add_(dim, index, src)
        raise ValueError(f"Encountered invalid `reduce` argument '{reduce}'")

    class ShiftedSoftplus(nn.Module):
        def __init__(self):
            super().__init__()
            self.shift = torch.log(torch.tensor(2.0)).item()

        def forward(self, x):
            return F.softplus(x) - self.shift

    class GaussianSmearing(nn.Module):
        def __init__(self, start=0.0, stop=5.0, num_gaussians=50):
            super().__init__()
            offset = torch.linspace(start, stop, num_gaussians)
            self.coeff = -0.5 / (offset[1] - offset[0]).item()**2
            self.register_buffer('offset', offset)

        def forward(self, dist):
            dist = dist.view(-1, 1) - self.offset.view(1, -1)
            return torch.exp(self.coeff * torch.pow(dist, 2))

    class CFConv(nn.Module):  # MessagePassing(aggr='add'), flow source_to_target
        def __init__(self, in_channels, out_channels, num_filters, nn, cutoff):
            super().__init__()
            self.lin1 = Linear(in_channels, num_filters, bias=False)
            self.lin2 = Linear(num_filters, out_channels)
            self.nn = nn
            self.cutoff = cutoff
            self.reset_parameters()

        def reset_parameters(self):
            torch.nn.init.xavier_uniform_(self.lin1.weight)
            torch.nn.init.xavier_uniform_(self.lin2.weight)
            self.lin2.bias.data.fill_(0)

        def forward(self, x, edge_index, edge_weight, edge_attr):
            C = 0.5 * (torch.cos(edge_weight * PI / self.cutoff) + 1.0)  # noqa: N806
            W = self.nn(edge_attr) * C.view(-1, 1)  # noqa: N806

            x = self.lin1(x)
            x = self.propagate(edge_index, x=x, W=W)
            x = self.lin2(x)
            return x

        def propagate(self, edge_index, x, W):  # noqa: N803
            x_j = x.index_select(0, edge_index[0])
            return scatter(self.message(x_j, W), edge_index[1], dim=0, dim_size=x.size(0), reduce='sum')

        def message(self, x_j, W):  # noqa: N803
            return x_j * W

    class InteractionBlock(nn.Module):
        def __init__(self, hidden_channels, num_gaussians, num_filters, cutoff):
            super().__init__()
            self.mlp = Sequential(
                Linear(num_gaussians, num_filters),
                ShiftedSoftplus(),
                Linear(num_filters, num_filters),
            )
            self.conv = CFConv(hidden_channels, hidden_channels, num_filters, self.mlp, cutoff)
            self.act = ShiftedSoftplus()
            self.lin = Linear(hidden_channels, hidden_channels)
            self.reset_parameters()

        def reset_parameters(self):
            torch.nn.init.xavier_uniform_(self.mlp[0].weight)
            self.mlp[0].bias.data.fill_(0)
            torch.nn.init.xavier_uniform_(self.mlp[2].weight)
            self.mlp[2].bias.data.fill_(0)
            self.conv.reset_parameters()
            torch.nn.init.xavier_uniform_(self.lin.weight)
            self.lin.bias.data.fill_(0)

        def forward(self, x, edge_index, edge_weight, edge_attr):
            x = self.conv(x, edge_index, edge_weight, edge_attr)
            x = self.act(x)
            x = self.lin(x)
            return x

    class SchNet(nn.Module):
        def __init__(self, hidden_channels=128, num_filters=128, num_interactions=6, num_gaussians=50, cutoff=10.0,
                     readout='add', mean=None, std=None, atomref=None):
            super().__init__()
            self.hidden_channels = hidden_channels
            self.num_filters = num_filters
            self.num_interactions = num_interactions
            self.num_gaussians = num_gaussians
            self.cutoff = cutoff
            self.readout = readout
            self.mean = mean
            self.std = std
            self.scale = None

            self.embedding = Embedding(100, hidden_channels, padding_idx=0)
            self.distance_expansion = GaussianSmearing(0.0, cutoff, num_gaussians)

            self.interactions = ModuleList()
            for _ in range(num_interactions):
                block = InteractionBlock(hidden_channels, num_gaussians, num_filters, cutoff)
                self.interactions.append(block)

            self.lin1 = Linear(hidden_channels, hidden_channels // 2)
            self.act = ShiftedSoftplus()
            self.lin2 = Linear(hidden_channels // 2, 1)

            self.register_buffer('initial_atomref', atomref)
            self.atomref = None
            if atomref is not None:
                self.atomref = Embedding(100, 1)
                self.atomref.weight.data.copy_(atomref)

            self.reset_parameters()

        def reset_parameters(self):
            self.embedding.reset_parameters()
            for interaction in self.interactions:
                interaction.reset_parameters()
            torch.nn.init.xavier_uniform_(self.lin1.weight)
            self.lin1.bias.data.fill_(0)
            torch.nn.init.xavier_uniform_(self.lin2.weight)
            self.lin2.bias.data.fill_(0)
            if self.atomref is not None:
                self.atomref.weight.data.copy_(self.initial_atomref)

        def forward(self, z, pos, batch, edge_index, num_graphs):
            batch = torch.zeros_like(z) if batch is None else batch

            h = self.embedding(z)
            row, col = edge_index  # RadiusInteractionGraph's radius_graph, given
            edge_weight = (pos[row] - pos[col]).norm(dim=-1)
            edge_attr = self.distance_expansion(edge_weight)

            for interaction in self.interactions:
                h = h + interaction(h, edge_index, edge_weight, edge_attr)

            h = self.lin1(h)
            h = self.act(h)
            h = self.lin2(h)

            if self.mean is not None and self.std is not None:
                h = h * self.std + self.mean

            if self.atomref is not None:
                h = h + self.atomref(z)

            out = scatter(h, batch, dim=0, dim_size=num_graphs, reduce=self.readout)

            if self.scale is not None:
                out = self.scale * out

            return out

    ref = torch.linspace(-1.0, 1.0, 100).view(-1, 1) if atomref else None
    return SchNet(hidden_channels, num_filters, num_interactions, num_gaussians, cutoff, mean=0.5, std=2.0,
                  atomref=ref)


def molecules(rng, sizes=(3, 4, 2)):
    """Atomic numbers, positions, the batch vector and the fully connected graph inside each molecule."""
    n = sum(sizes)
    batch = np.repeat(np.arange(len(sizes)), sizes)
    row, col = np.nonzero((batch[:, None] == batch[None, :]) & ~np.eye(n, dtype=bool))
    return (rng.integers(1, 10, n), randn(rng, n, 3), batch, np.stack([row, col]))


def test_schnet_gaussian_smearing_cosine_cutoff_cfconv_scatter_add_readout_and_atomref():
    model, tmodel = pair(schnet, dtype=F32)
    assert model.atomref.weight.numpy()[5, 0] == pytest.approx(-1 + 10 / 99)  # `weight.data.copy_`
    optimizer = av.optim.Adam(model.parameters(), lr=3e-3)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=3e-3)

    def loss_fn(model, z, pos, batch, edge_index, y):
        out = model(z, pos, batch, edge_index, 3)
        lib = TF if isinstance(model, torch.nn.Module) else F
        return lib.l1_loss(out.view(-1), y), out

    rng = np.random.default_rng(4)
    z, pos, batch, edge_index = molecules(rng)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn,
                     [(z, randn(rng, 9, 3), batch, edge_index, randn(rng, 3)) for _ in range(3)])


# -- regressions ------------------------------------------------------------------------------------------------------

def test_a_layer_built_in_forward_is_literal_data_unless_randomly_initialized():
    """slot-attention-pytorch normalizes by `nn.LayerNorm(x.shape[1:])(x)` in forward: its ones and zeros were taken for
    arrays captured from outside, so the compiled step warned and traced again on every call. A layer's deterministic
    parameters are literal data now; a random initializer's draw is not (torch draws anew each call: so does this)."""
    def normed(x):
        return (nn.LayerNorm(x.shape[1:])(x) * nn.GroupNorm(1, 3)(x)).sum()
    run = av.compile(normed, backend="numpy")
    x = randn(np.random.default_rng(0), 2, 3, 4)
    with strict():
        for _ in range(2):
            got = run(av.tensor(x))
    t = torch.tensor(x)
    assert run.cache_info().misses == 1 and rel(got, (TF.layer_norm(t, (3, 4)) * TF.group_norm(t, 1)).sum()) < 1e-5
    drawn = av.compile(lambda x: nn.Linear(4, 2)(x), backend="numpy")
    with pytest.warns(UserWarning, match="not among its arguments"):
        a, b = drawn(av.tensor(x)).numpy(), drawn(av.tensor(x)).numpy()
    assert not np.allclose(a, b)


def test_type_of_a_tensor_equals_av_tensor_as_torch():
    """hopfield-layers asserts `type(input) == Tensor` (torch.Tensor): `av.Tensor`, torch's legacy constructor, is a
    stand-in class, so the comparison was False for every Avalon tensor."""
    x = av.zeros(2)
    assert type(x) == av.Tensor and av.Tensor == type(x) and not (type(x) != av.Tensor)  # noqa: E721
    assert {av.Tensor: 1}[type(x)] == 1 and av.Tensor != av.FloatTensor and type(x) != av.FloatTensor  # noqa: E721
    assert type(torch.zeros(2)) == torch.Tensor  # noqa: E721 (torch's rule)

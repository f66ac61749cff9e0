"""Round 8b of port QA (after test_port_programs.py, _more and _3 to _13): self-supervised and detection
training code as the popular repositories write it, written once over `lib` (torch.nn or avalon.nn), `F_` and
`th` (torch or avalon), trained a few steps from torch's weights on random data in float64 and compared with
torch after every step (losses, parameters, buffers), eagerly and compiled, with warnings as errors while
tracing: MAE as facebookresearch/mae's models_mae.py writes it on a tiny ViT (patchify by reshape and
einsum, fixed 2-d sin-cos position embeddings built in numpy and copied into a frozen parameter,
random_masking by argsort of the noise and gather, the decoder's mask tokens unshuffled by gather,
norm_pix_loss on the removed patches, AdamW over timm's weight-decay param groups with the half-cycle cosine
LR set on param_groups), DINO as facebookresearch/dino writes it (a student and an EMA teacher, the
MultiCropWrapper's unique_consecutive/cumsum over the crops' sizes, DINOHead's weight-normalized last layer
with a frozen weight_g, DINOLoss's teacher temperature schedule and centering buffer, per-parameter
clip_gradients and the last layer frozen for the first epoch) and DETR's SetCriterion (the matched
permutation index, empty_weight for the no-object class, L1 and generalized-IoU box losses, auxiliary losses
over the decoder layers, AdamW with a lower backbone lr and max-norm clipping).

The random draws (MAE's masking noise, the crops, the boxes) are drawn beforehand and given as inputs, and
DETR's Hungarian matching (brute force in numpy here, as scipy's linear_sum_assignment) runs outside the loss
and passes its indices in. The ports change what the README says differs: gradients are values, so dino's
`p.grad.data.mul_(clip_coef)` and `p.grad = None` act on the gradient dict, and its `if clip_coef < 1` (Python
control flow on a tensor value) is `clip_coef.clamp(max=1)`, which multiplies by exactly 1 where torch's
branch skips; DETR's `assert (boxes[:, 2:] >= boxes[:, :2]).all()` is guarded as code that torch.compile traces guards it,
by `torch.compiler.is_compiling()`. The regressions at the end are what the programs found: Avalon had no
`torch.compiler.is_compiling()` (True while its tracer records, so such guarded checks port), and refused
`F.interpolate(..., mode='bicubic')`, with which DINO's ViT resizes its position embeddings for the local crops
(dino's interpolate_pos_encoding, values and gradients)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

MODES = ("eager", "numpy", "cpu")


def arr(x) -> av.Tensor:
    """An Avalon tensor of numpy data, float64 kept."""
    return av.tensor(np.asarray(x))


# -- 1. MAE (facebookresearch/mae models_mae.py, util/pos_embed.py, util/lr_sched.py) ------------------------

def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False):
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0)

    grid = grid.reshape([2, 1, grid_size, grid_size])
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid)
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


def get_2d_sincos_pos_embed_from_grid(embed_dim, grid):
    assert embed_dim % 2 == 0

    # use half of dimensions to encode grid_h
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # (H*W, D/2)
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # (H*W, D/2)

    emb = np.concatenate([emb_h, emb_w], axis=1)  # (H*W, D)
    return emb


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    assert embed_dim % 2 == 0
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.
    omega = 1. / 10000**omega  # (D/2,)

    pos = pos.reshape(-1)  # (M,)
    out = np.einsum('m,d->md', pos, omega)  # (M, D/2), outer product

    emb_sin = np.sin(out)  # (M, D/2)
    emb_cos = np.cos(out)  # (M, D/2)

    emb = np.concatenate([emb_sin, emb_cos], axis=1)  # (M, D)
    return emb


def timm_vit_parts(lib, F_, th):
    """timm's PatchEmbed and Block (pre-norm attention and MLP), as MAE imports them."""
    class PatchEmbed(lib.Module):
        def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
            super().__init__()
            self.img_size = (img_size, img_size)
            self.patch_size = (patch_size, patch_size)
            self.grid_size = (img_size // patch_size, img_size // patch_size)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
            self.proj = lib.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
            self.norm = lib.Identity()

        def forward(self, x):
            x = self.proj(x)
            x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
            return self.norm(x)

    class Attention(lib.Module):
        def __init__(self, dim, num_heads=8, qkv_bias=False):
            super().__init__()
            self.num_heads = num_heads
            head_dim = dim // num_heads
            self.scale = head_dim ** -0.5
            self.qkv = lib.Linear(dim, dim * 3, bias=qkv_bias)
            self.proj = lib.Linear(dim, dim)

        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = attn.softmax(dim=-1)
            x = (attn @ v).transpose(1, 2).reshape(B, N, C)
            return self.proj(x)

    class Mlp(lib.Module):
        def __init__(self, in_features, hidden_features):
            super().__init__()
            self.fc1 = lib.Linear(in_features, hidden_features)
            self.act = lib.GELU()
            self.fc2 = lib.Linear(hidden_features, in_features)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(lib.Module):
        def __init__(self, dim, num_heads, mlp_ratio=4., qkv_bias=False, norm_layer=lib.LayerNorm):
            super().__init__()
            self.norm1 = norm_layer(dim)
            self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            x = x + self.mlp(self.norm2(x))
            return x

    return PatchEmbed, Block


def mae(lib, F_, th, norm_pix_loss=True):
    from functools import partial
    PatchEmbed, Block = timm_vit_parts(lib, F_, th)

    class MaskedAutoencoderViT(lib.Module):
        """ Masked Autoencoder with VisionTransformer backbone
        """
        def __init__(self, img_size=224, patch_size=16, in_chans=3,
                     embed_dim=1024, depth=24, num_heads=16,
                     decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                     mlp_ratio=4., norm_layer=lib.LayerNorm, norm_pix_loss=False):
            super().__init__()

            # --------------------------------------------------------------------------
            # MAE encoder specifics
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
            num_patches = self.patch_embed.num_patches

            self.cls_token = lib.Parameter(th.zeros(1, 1, embed_dim))
            self.pos_embed = lib.Parameter(th.zeros(1, num_patches + 1, embed_dim), requires_grad=False)  # fixed sin-cos embedding

            self.blocks = lib.ModuleList([
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for i in range(depth)])
            self.norm = norm_layer(embed_dim)
            # --------------------------------------------------------------------------

            # --------------------------------------------------------------------------
            # MAE decoder specifics
            self.decoder_embed = lib.Linear(embed_dim, decoder_embed_dim, bias=True)

            self.mask_token = lib.Parameter(th.zeros(1, 1, decoder_embed_dim))

            self.decoder_pos_embed = lib.Parameter(th.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)  # fixed sin-cos embedding

            self.decoder_blocks = lib.ModuleList([
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for i in range(decoder_depth)])

            self.decoder_norm = norm_layer(decoder_embed_dim)
            self.decoder_pred = lib.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)  # decoder to patch
            # --------------------------------------------------------------------------

            self.norm_pix_loss = norm_pix_loss

            self.initialize_weights()

        def initialize_weights(self):
            # initialization
            # initialize (and freeze) pos_embed by sin-cos embedding
            pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], int(self.patch_embed.num_patches**.5), cls_token=True)
            self.pos_embed.data.copy_(th.from_numpy(pos_embed).float().unsqueeze(0))

            decoder_pos_embed = get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], int(self.patch_embed.num_patches**.5), cls_token=True)
            self.decoder_pos_embed.data.copy_(th.from_numpy(decoder_pos_embed).float().unsqueeze(0))

            # initialize patch_embed like nn.Linear (instead of nn.Conv2d)
            w = self.patch_embed.proj.weight.data
            lib.init.xavier_uniform_(w.view([w.shape[0], -1]))

            # timm's trunc_normal_(std=.02) is effectively normal_(std=0.02) as cutoff is too big (2.)
            th.nn.init.normal_(self.cls_token, std=.02)
            th.nn.init.normal_(self.mask_token, std=.02)

            # initialize nn.Linear and nn.LayerNorm
            self.apply(self._init_weights)

        def _init_weights(self, m):
            if isinstance(m, lib.Linear):
                # we use xavier_uniform following official JAX ViT:
                th.nn.init.xavier_uniform_(m.weight)
                if isinstance(m, lib.Linear) and m.bias is not None:
                    lib.init.constant_(m.bias, 0)
            elif isinstance(m, lib.LayerNorm):
                lib.init.constant_(m.bias, 0)
                lib.init.constant_(m.weight, 1.0)

        def patchify(self, imgs):
            """
            imgs: (N, 3, H, W)
            x: (N, L, patch_size**2 *3)
            """
            p = self.patch_embed.patch_size[0]
            assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0

            h = w = imgs.shape[2] // p
            x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
            x = th.einsum('nchpwq->nhwpqc', x)
            x = x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))
            return x

        def unpatchify(self, x):
            """
            x: (N, L, patch_size**2 *3)
            imgs: (N, 3, H, W)
            """
            p = self.patch_embed.patch_size[0]
            h = w = int(x.shape[1]**.5)
            assert h * w == x.shape[1]

            x = x.reshape(shape=(x.shape[0], h, w, p, p, 3))
            x = th.einsum('nhwpqc->nchpwq', x)
            imgs = x.reshape(shape=(x.shape[0], 3, h * p, h * p))
            return imgs

        def random_masking(self, x, mask_ratio, noise):
            """
            Perform per-sample random masking by per-sample shuffling.
            Per-sample shuffling is done by argsort random noise.
            x: [N, L, D], sequence
            """
            N, L, D = x.shape  # batch, length, dim
            len_keep = int(L * (1 - mask_ratio))

            # (the port: the noise, `torch.rand(N, L, device=x.device)`, comes in as an argument)

            # sort noise for each sample
            ids_shuffle = th.argsort(noise, dim=1)  # ascend: small is keep, large is remove
            ids_restore = th.argsort(ids_shuffle, dim=1)

            # keep the first subset
            ids_keep = ids_shuffle[:, :len_keep]
            x_masked = th.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))

            # generate the binary mask: 0 is keep, 1 is remove
            mask = th.ones([N, L], device=x.device)
            mask[:, :len_keep] = 0
            # unshuffle to get the binary mask
            mask = th.gather(mask, dim=1, index=ids_restore)

            return x_masked, mask, ids_restore

        def forward_encoder(self, x, mask_ratio, noise):
            # embed patches
            x = self.patch_embed(x)

            # add pos embed w/o cls token
            x = x + self.pos_embed[:, 1:, :]

            # masking: length -> length * mask_ratio
            x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)

            # append cls token
            cls_token = self.cls_token + self.pos_embed[:, :1, :]
            cls_tokens = cls_token.expand(x.shape[0], -1, -1)
            x = th.cat((cls_tokens, x), dim=1)

            # apply Transformer blocks
            for blk in self.blocks:
                x = blk(x)
            x = self.norm(x)

            return x, mask, ids_restore

        def forward_decoder(self, x, ids_restore):
            # embed tokens
            x = self.decoder_embed(x)

            # append mask tokens to sequence
            mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
            x_ = th.cat([x[:, 1:, :], mask_tokens], dim=1)  # no cls token
            x_ = th.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))  # unshuffle
            x = th.cat([x[:, :1, :], x_], dim=1)  # append cls token

            # add pos embed
            x = x + self.decoder_pos_embed

            # apply Transformer blocks
            for blk in self.decoder_blocks:
                x = blk(x)
            x = self.decoder_norm(x)

            # predictor projection
            x = self.decoder_pred(x)

            # remove cls token
            x = x[:, 1:, :]

            return x

        def forward_loss(self, imgs, pred, mask):
            """
            imgs: [N, 3, H, W]
            pred: [N, L, p*p*3]
            mask: [N, L], 0 is keep, 1 is remove,
            """
            target = self.patchify(imgs)
            if self.norm_pix_loss:
                mean = target.mean(dim=-1, keepdim=True)
                var = target.var(dim=-1, keepdim=True)
                target = (target - mean) / (var + 1.e-6)**.5

            loss = (pred - target) ** 2
            loss = loss.mean(dim=-1)  # [N, L], mean loss per patch

            loss = (loss * mask).sum() / mask.sum()  # mean loss on removed patches
            return loss

        def forward(self, imgs, noise, mask_ratio=0.75):
            latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
            pred = self.forward_decoder(latent, ids_restore)  # [N, L, p*p*3]
            loss = self.forward_loss(imgs, pred, mask)
            return loss, pred, mask

    return MaskedAutoencoderViT(
        img_size=8, patch_size=2, embed_dim=8, depth=1, num_heads=2,
        decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2,
        mlp_ratio=2, norm_layer=partial(lib.LayerNorm, eps=1e-6), norm_pix_loss=norm_pix_loss)


def param_groups_weight_decay(model, weight_decay=1e-5, no_weight_decay_list=()):
    """timm.optim.optim_factory.param_groups_weight_decay (add_weight_decay in the timm MAE pins)."""
    no_weight_decay_list = set(no_weight_decay_list)
    decay = []
    no_decay = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue

        if param.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay_list:
            no_decay.append(param)
        else:
            decay.append(param)

    return [
        {'params': no_decay, 'weight_decay': 0.},
        {'params': decay, 'weight_decay': weight_decay}]


class MaeArgs:
    lr, min_lr, warmup_epochs, epochs = 1e-2, 1e-4, 1, 3


def adjust_learning_rate(optimizer, epoch, args):
    """Decay the learning rate with half-cycle cosine after warmup"""
    if epoch < args.warmup_epochs:
        lr = args.lr * epoch / args.warmup_epochs
    else:
        lr = args.min_lr + (args.lr - args.min_lr) * 0.5 * \
            (1. + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
    for param_group in optimizer.param_groups:
        if "lr_scale" in param_group:
            param_group["lr"] = lr * param_group["lr_scale"]
        else:
            param_group["lr"] = lr
    return lr


def mae_step(model, opt, imgs, noise):
    (loss, (pred, mask)), grads = av.value_and_grad(
        lambda m, x, n: (lambda out: (out[0], out[1:]))(m(x, n)), has_aux=True)(model, imgs, noise)
    opt.step(grads)
    return loss, pred, mask


@pytest.mark.parametrize("norm_pix_loss, n_steps", [(True, 6), (False, 3)])
def test_mae_patchify_random_masking_by_argsort_and_gather_norm_pix_loss_with_adamw_param_groups(norm_pix_loss, n_steps):
    ours, theirs = pair(lambda lib, F_, th: mae(lib, F_, th, norm_pix_loss))
    assert not ours.pos_embed.requires_grad and rel(ours.pos_embed, theirs.pos_embed.detach()) == 0
    groups = param_groups_weight_decay(ours, 0.05)
    tgroups = param_groups_weight_decay(theirs, 0.05)
    assert [len(g['params']) for g in groups] == [len(g['params']) for g in tgroups]
    opt = optim.AdamW(groups, lr=MaeArgs.lr, betas=(0.9, 0.95))
    topt = torch.optim.AdamW(tgroups, lr=MaeArgs.lr, betas=(0.9, 0.95))
    steps = {m: compiled(mae_step, m) for m in MODES}
    rng = np.random.default_rng(0)
    accum_iter, n_iter = 1, 2
    for it in range(n_steps):
        mode = MODES[it % 3]
        epoch = it // n_iter
        imgs, noise = rng.standard_normal((2, 3, 8, 8)), rng.random((2, 16))
        if it % accum_iter == 0:
            lr = adjust_learning_rate(opt, (it % n_iter + 1) / n_iter + epoch, MaeArgs)
            assert adjust_learning_rate(topt, (it % n_iter + 1) / n_iter + epoch, MaeArgs) == lr
        topt.zero_grad()
        tl, tpred, tmask = theirs(T(imgs), T(noise))
        tl.backward()
        topt.step()
        with strict():
            loss, pred, mask = steps[mode](ours, opt, arr(imgs), arr(noise))
        assert rel(loss, tl) < 1e-12 and rel(pred, tpred) < 1e-12 and rel(mask, tmask) == 0, (it, mode)
        assert mask.dtype == av.float32 and float(mask.sum()) == 2 * 12
        # the key's bias has a zero gradient in exact arithmetic (softmax is shift-invariant): AdamW's
        # update of its roundoff, ~1e-17 / eps, differs by ~1e-12 between any two orders of summation
        same_weights(ours, theirs, 1e-8)
        assert rel(ours.unpatchify(pred), theirs.unpatchify(tpred)) < 1e-12
    assert [steps[m].cache_info().misses for m in MODES[1:]] == [1, 1]  # the lr on param_groups is state
    assert rel(ours.unpatchify(ours.patchify(arr(imgs))), imgs) == 0
    assert rel(ours.pos_embed, theirs.pos_embed.detach()) == 0  # frozen


# -- 2. DINO (facebookresearch/dino: vision_transformer.DINOHead, utils.MultiCropWrapper, main_dino) ---------

DINO_OUT, N_GLOBAL, N_LOCAL = 6, 2, 2


def dino_parts(lib, F_, th):
    class Backbone(lib.Module):
        """A tiny ResNet-like trunk: its `fc` is what MultiCropWrapper replaces by Identity."""
        def __init__(self):
            super().__init__()
            self.conv1 = lib.Conv2d(3, 4, 3, padding=1, bias=False)
            self.bn1 = lib.BatchNorm2d(4)
            self.relu = lib.ReLU(inplace=True)
            self.avgpool = lib.AdaptiveAvgPool2d((1, 1))
            self.fc = lib.Linear(4, 10)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = th.flatten(self.avgpool(x), 1)
            return self.fc(x)

    class DINOHead(lib.Module):
        def __init__(self, in_dim, out_dim, use_bn=False, norm_last_layer=True, nlayers=3, hidden_dim=2048, bottleneck_dim=256):
            super().__init__()
            nlayers = max(nlayers, 1)
            if nlayers == 1:
                self.mlp = lib.Linear(in_dim, bottleneck_dim)
            else:
                layers = [lib.Linear(in_dim, hidden_dim)]
                if use_bn:
                    layers.append(lib.BatchNorm1d(hidden_dim))
                layers.append(lib.GELU())
                for _ in range(nlayers - 2):
                    layers.append(lib.Linear(hidden_dim, hidden_dim))
                    if use_bn:
                        layers.append(lib.BatchNorm1d(hidden_dim))
                    layers.append(lib.GELU())
                layers.append(lib.Linear(hidden_dim, bottleneck_dim))
                self.mlp = lib.Sequential(*layers)
            self.apply(self._init_weights)
            self.last_layer = lib.utils.weight_norm(lib.Linear(bottleneck_dim, out_dim, bias=False))
            self.last_layer.weight_g.data.fill_(1)
            if norm_last_layer:
                self.last_layer.weight_g.requires_grad = False

        def _init_weights(self, m):
            if isinstance(m, lib.Linear):
                lib.init.trunc_normal_(m.weight, std=.02)
                if isinstance(m, lib.Linear) and m.bias is not None:
                    lib.init.constant_(m.bias, 0)

        def forward(self, x):
            x = self.mlp(x)
            x = lib.functional.normalize(x, dim=-1, p=2)
            x = self.last_layer(x)
            return x

    class MultiCropWrapper(lib.Module):
        """
        Perform forward pass separately on each resolution input.
        The inputs corresponding to a single resolution are clubbed and single
        forward is run on the same resolution inputs. Hence we do several
        forward passes = number of different resolutions used. We then
        concatenate all the output features and run the head forward on these
        concatenated features.
        """
        def __init__(self, backbone, head):
            super(MultiCropWrapper, self).__init__()  # noqa: UP008
            # disable layers dedicated to ImageNet labels classification
            backbone.fc, backbone.head = lib.Identity(), lib.Identity()
            self.backbone = backbone
            self.head = head

        def forward(self, x):
            # convert to list
            if not isinstance(x, list):
                x = [x]
            idx_crops = th.cumsum(th.unique_consecutive(
                th.tensor([inp.shape[-1] for inp in x]),
                return_counts=True,
            )[1], 0)
            start_idx, output = 0, th.empty(0).to(x[0].device)
            for end_idx in idx_crops:
                _out = self.backbone(th.cat(x[start_idx: end_idx]))
                # The output is a tuple with XCiT model. See:
                # https://github.com/facebookresearch/xcit/blob/master/xcit.py#L404-L405
                if isinstance(_out, tuple):
                    _out = _out[0]
                # accumulate outputs
                output = th.cat((output, _out))
                start_idx = end_idx
            # Run the head forward on the concatenated features.
            return self.head(output)

    class DINOLoss(lib.Module):
        def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp,
                     warmup_teacher_temp_epochs, nepochs, student_temp=0.1,
                     center_momentum=0.9):
            super().__init__()
            self.student_temp = student_temp
            self.center_momentum = center_momentum
            self.ncrops = ncrops
            self.register_buffer("center", th.zeros(1, out_dim))
            # we apply a warm up for the teacher temperature because
            # a too high temperature makes the training instable at the beginning
            self.teacher_temp_schedule = np.concatenate((
                np.linspace(warmup_teacher_temp,
                            teacher_temp, warmup_teacher_temp_epochs),
                np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp
            ))

        def forward(self, student_output, teacher_output, epoch):
            """
            Cross-entropy between softmax outputs of the teacher and student networks.
            """
            student_out = student_output / self.student_temp
            student_out = student_out.chunk(self.ncrops)

            # teacher centering and sharpening
            temp = self.teacher_temp_schedule[epoch]
            teacher_out = F_.softmax((teacher_output - self.center) / temp, dim=-1)
            teacher_out = teacher_out.detach().chunk(2)

            total_loss = 0
            n_loss_terms = 0
            for iq, q in enumerate(teacher_out):
                for v in range(len(student_out)):
                    if v == iq:
                        # we skip cases where student and teacher operate on the same view
                        continue
                    loss = th.sum(-q * F_.log_softmax(student_out[v], dim=-1), dim=-1)
                    total_loss += loss.mean()
                    n_loss_terms += 1
            total_loss /= n_loss_terms
            self.update_center(teacher_output)
            return total_loss

        @th.no_grad()
        def update_center(self, teacher_output):
            """
            Update center used for teacher output.
            """
            batch_center = th.sum(teacher_output, dim=0, keepdim=True)
            # (one process: dist.all_reduce(batch_center) and get_world_size() == 1)
            batch_center = batch_center / (len(teacher_output) * 1)

            # ema update
            self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)

    def student_teacher():
        head = dict(use_bn=False, nlayers=3, hidden_dim=8, bottleneck_dim=5)
        student = MultiCropWrapper(Backbone(), DINOHead(4, DINO_OUT, norm_last_layer=True, **head))
        teacher = MultiCropWrapper(Backbone(), DINOHead(4, DINO_OUT, **head))
        # teacher and student start with the same weights
        teacher.load_state_dict(student.state_dict())
        # there is no backpropagation through the teacher, so no need for gradients
        for p in teacher.parameters():
            p.requires_grad = False
        return student, teacher

    loss = DINOLoss(DINO_OUT, N_GLOBAL + N_LOCAL, warmup_teacher_temp=0.04, teacher_temp=0.07,
                    warmup_teacher_temp_epochs=2, nepochs=3)
    return student_teacher, loss


def dino_models(lib, F_, th):
    class Models(lib.Module):  # one state_dict for pair() and same_weights
        def __init__(self):
            super().__init__()
            make, self.dino_loss = dino_parts(lib, F_, th)
            self.student, self.teacher = make()
    return Models()


def get_params_groups(model):
    regularized = []
    not_regularized = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # we do not regularize biases nor Norm parameters
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{'params': regularized}, {'params': not_regularized, 'weight_decay': 0.}]


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)

    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))

    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def clip_gradients(grads, clip):
    """dino's utils.clip_gradients over the gradients (`p.grad` of each named parameter): the port's
    `clip_coef.clamp(max=1)` for its `if clip_coef < 1:`."""
    norms = []
    for _name, g in grads.items():
        if g is not None:
            param_norm = g.data.norm(2)
            norms.append(param_norm)
            clip_coef = clip / (param_norm + 1e-6)
            g.data.mul_(clip_coef.clamp(max=1))
    return norms


def cancel_gradients_last_layer(epoch, grads, freeze_last_layer):
    if epoch >= freeze_last_layer:
        return
    for n in grads:
        if "last_layer" in n:
            grads[n] = None


def ema_teacher(th, student, teacher, m):
    with th.no_grad():
        for param_q, param_k in zip(student.parameters(), teacher.parameters()):
            param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)


def dino_step(student, teacher, dino_loss, optimizer, images, epoch, m, clip):
    def loss_fn(student, teacher, dino_loss, images, epoch):  # (what it reads, as arguments: no closure)
        teacher_output = teacher(images[:2])  # only the 2 global views pass through the teacher
        student_output = student(images)
        return dino_loss(student_output, teacher_output, epoch)

    loss, grads = av.value_and_grad(loss_fn)(student, teacher, dino_loss, images, epoch)
    param_norms = clip_gradients(grads, clip)
    cancel_gradients_last_layer(epoch, grads, 1)
    optimizer.step(grads)
    ema_teacher(av, student, teacher, m)
    return loss, param_norms


@pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated:FutureWarning")  # torch's and Avalon's
@pytest.mark.parametrize("opt_name, n_iter", [("adamw", 2), ("sgd", 1)])
def test_dino_student_teacher_multicrop_centering_ema_and_frozen_last_layer(opt_name, n_iter):
    ours, theirs = pair(dino_models)
    assert [n for n, _ in ours.student.named_parameters()] == [n for n, _ in theirs.student.named_parameters()]
    assert not ours.student.head.last_layer.weight_g.requires_grad
    if opt_name == "adamw":
        opt = optim.AdamW(get_params_groups(ours.student))
        topt = torch.optim.AdamW(get_params_groups(theirs.student))
    else:
        opt = optim.SGD(get_params_groups(ours.student), lr=0, momentum=0.9)
        topt = torch.optim.SGD(get_params_groups(theirs.student), lr=0, momentum=0.9)
    epochs = 3
    lr_schedule = cosine_scheduler(0.05, 1e-3, epochs, n_iter, warmup_epochs=1)
    wd_schedule = cosine_scheduler(0.04, 0.4, epochs, n_iter)
    momentum_schedule = cosine_scheduler(0.9, 1, epochs, n_iter)
    steps = {m: compiled(dino_step, m) for m in MODES}
    rng = np.random.default_rng(1)
    for epoch in range(epochs):
        for i in range(n_iter):
            it = n_iter * epoch + i
            mode = MODES[it % 3]
            for o in (opt, topt):
                for k, param_group in enumerate(o.param_groups):
                    param_group["lr"] = lr_schedule[it]
                    if k == 0:  # only the first group is regularized
                        param_group["weight_decay"] = wd_schedule[it]
            images = [rng.standard_normal((2, 3, 8, 8)) for _ in range(N_GLOBAL)] + \
                [rng.standard_normal((2, 3, 4, 4)) for _ in range(N_LOCAL)]
            timages = [T(im) for im in images]
            teacher_output = theirs.teacher(timages[:2])
            student_output = theirs.student(timages)
            tl = theirs.dino_loss(student_output, teacher_output, epoch)
            topt.zero_grad()
            tl.backward()
            tnorms = clip_gradients({n: p.grad for n, p in theirs.student.named_parameters() if p.grad is not None},
                                    0.3)
            for n, p in theirs.student.named_parameters():
                if epoch < 1 and "last_layer" in n:
                    p.grad = None
            topt.step()
            ema_teacher(torch, theirs.student, theirs.teacher, momentum_schedule[it])
            with strict():
                loss, norms = steps[mode](ours.student, ours.teacher, ours.dino_loss, opt, [arr(im) for im in images],
                                          epoch, arr(momentum_schedule[it]), 0.3)  # (a tensor: no retrace)
            assert rel(loss, tl) < 1e-12 and rel(av.stack(norms), torch.stack(tnorms)) < 1e-12, (it, mode)
            same_weights(ours, theirs, 1e-10)
    # one trace per epoch each saw (the temperature, the freezing): then epochs 0 and 2 / 1 and 2, or one each
    assert [steps[m].cache_info().misses for m in MODES[1:]] == ([2, 2] if n_iter == 2 else [1, 1])
    assert rel(ours.dino_loss.center, theirs.dino_loss.center) < 1e-12 and np.abs(ours.dino_loss.center.numpy()).max() > 0
    assert rel(ours.student.head.last_layer.weight_g, torch.ones(DINO_OUT, 1)) == 0  # frozen
    assert rel(ours.student.backbone.bn1.running_var, theirs.student.backbone.bn1.running_var) < 1e-12


# -- 3. DETR's SetCriterion (facebookresearch/detr: models/detr.py, util/box_ops.py, util/misc.accuracy) -----

N_CLASSES, N_QUERIES, N_LAYERS, HIDDEN = 3, 4, 2, 6


def box_ops(th):
    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def box_cxcywh_to_xyxy(x):
        x_c, y_c, w, h = x.unbind(-1)
        b = [(x_c - 0.5 * w), (y_c - 0.5 * h),
             (x_c + 0.5 * w), (y_c + 0.5 * h)]
        return th.stack(b, dim=-1)

    # modified from torchvision to also return the union
    def box_iou(boxes1, boxes2):
        area1 = box_area(boxes1)
        area2 = box_area(boxes2)

        lt = th.max(boxes1[:, None, :2], boxes2[:, :2])  # [N,M,2]
        rb = th.min(boxes1[:, None, 2:], boxes2[:, 2:])  # [N,M,2]

        wh = (rb - lt).clamp(min=0)  # [N,M,2]
        inter = wh[:, :, 0] * wh[:, :, 1]  # [N,M]

        union = area1[:, None] + area2 - inter

        iou = inter / union
        return iou, union

    def generalized_box_iou(boxes1, boxes2):
        """
        Generalized IoU from https://giou.stanford.edu/

        The boxes should be in [x0, y0, x1, y1] format

        Returns a [N, M] pairwise matrix, where N = len(boxes1)
        and M = len(boxes2)
        """
        # degenerate boxes gives inf / nan results
        # so do an early check
        if not th.compiler.is_compiling():  # (as later code guards it: no Python branch on a traced value)
            assert (boxes1[:, 2:] >= boxes1[:, :2]).all()
            assert (boxes2[:, 2:] >= boxes2[:, :2]).all()
        iou, union = box_iou(boxes1, boxes2)

        lt = th.min(boxes1[:, None, :2], boxes2[:, :2])
        rb = th.max(boxes1[:, None, 2:], boxes2[:, 2:])

        wh = (rb - lt).clamp(min=0)  # [N,M,2]
        area = wh[:, :, 0] * wh[:, :, 1]

        return iou - (area - union) / area

    return box_cxcywh_to_xyxy, generalized_box_iou


def detr(lib, F_, th):
    box_cxcywh_to_xyxy, generalized_box_iou = box_ops(th)

    @th.no_grad()
    def accuracy(output, target, topk=(1,)):
        """Computes the precision@k for the specified values of k"""
        if target.numel() == 0:
            return [th.zeros([], device=output.device)]
        maxk = max(topk)
        batch_size = target.size(0)

        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))

        res = []
        for k in topk:
            correct_k = correct[:k].view(-1).float().sum(0)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res

    class MLP(lib.Module):
        """ Very simple multi-layer perceptron (also called FFN)"""

        def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
            super().__init__()
            self.num_layers = num_layers
            h = [hidden_dim] * (num_layers - 1)
            self.layers = lib.ModuleList(lib.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = F_.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
            return x

    class TinyDETR(lib.Module):
        """DETR's prediction heads over a stand-in for backbone + transformer: each decoder layer's output hs[l]
        from the queries and the image's pooled features."""
        def __init__(self, num_classes, num_queries, aux_loss=True):
            super().__init__()
            self.num_queries = num_queries
            self.backbone = lib.Sequential(lib.Conv2d(3, HIDDEN, 3, stride=2), lib.ReLU(), lib.AdaptiveAvgPool2d(1))
            self.decoder = lib.ModuleList(lib.Linear(HIDDEN, HIDDEN) for _ in range(N_LAYERS))
            self.class_embed = lib.Linear(HIDDEN, num_classes + 1)
            self.bbox_embed = MLP(HIDDEN, HIDDEN, 4, 3)
            self.query_embed = lib.Embedding(num_queries, HIDDEN)
            self.aux_loss = aux_loss

        def forward(self, samples):
            src = self.backbone(samples).flatten(1)  # [B, HIDDEN]
            tgt = th.zeros_like(self.query_embed.weight).unsqueeze(0).repeat(src.shape[0], 1, 1)
            hs = []
            for layer in self.decoder:
                tgt = th.tanh(layer(tgt + self.query_embed.weight + src[:, None]))
                hs.append(tgt)
            hs = th.stack(hs)

            outputs_class = self.class_embed(hs)
            outputs_coord = self.bbox_embed(hs).sigmoid()
            out = {'pred_logits': outputs_class[-1], 'pred_boxes': outputs_coord[-1]}
            if self.aux_loss:
                out['aux_outputs'] = self._set_aux_loss(outputs_class, outputs_coord)
            return out

        @th.jit.unused
        def _set_aux_loss(self, outputs_class, outputs_coord):
            # this is a workaround to make torchscript happy, as torchscript
            # doesn't support dictionary with non-homogeneous values, such
            # as a dict having both a Tensor and a list.
            return [{'pred_logits': a, 'pred_boxes': b}
                    for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]

    class SetCriterion(lib.Module):
        """ This class computes the loss for DETR.
        The process happens in two steps:
            1) we compute hungarian assignment between ground truth boxes and the outputs of the model
            2) we supervise each pair of matched ground-truth / prediction (supervise class and box)
        """
        def __init__(self, num_classes, matcher, weight_dict, eos_coef, losses):
            super().__init__()
            self.num_classes = num_classes
            self.matcher = matcher
            self.weight_dict = weight_dict
            self.eos_coef = eos_coef
            self.losses = losses
            empty_weight = th.ones(self.num_classes + 1)
            empty_weight[-1] = self.eos_coef
            self.register_buffer('empty_weight', empty_weight)

        def loss_labels(self, outputs, targets, indices, num_boxes, log=True):
            """Classification loss (NLL)
            targets dicts must contain the key "labels" containing a tensor of dim [nb_target_boxes]
            """
            assert 'pred_logits' in outputs
            src_logits = outputs['pred_logits']

            idx = self._get_src_permutation_idx(indices)
            target_classes_o = th.cat([t["labels"][J] for t, (_, J) in zip(targets, indices)])
            target_classes = th.full(src_logits.shape[:2], self.num_classes,
                                     dtype=th.int64, device=src_logits.device)
            target_classes[idx] = target_classes_o

            loss_ce = F_.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
            losses = {'loss_ce': loss_ce}

            if log:
                # TODO this should probably be a separate loss, not hacked in this one here
                losses['class_error'] = 100 - accuracy(src_logits[idx], target_classes_o)[0]
            return losses

        @th.no_grad()
        def loss_cardinality(self, outputs, targets, indices, num_boxes):
            """ Compute the cardinality error, ie the absolute error in the number of predicted non-empty boxes
            This is not really a loss, it is intended for logging purposes only. It doesn't propagate gradients
            """
            pred_logits = outputs['pred_logits']
            device = pred_logits.device
            tgt_lengths = th.as_tensor([len(v["labels"]) for v in targets], device=device)
            # Count the number of predictions that are NOT "no-object" (which is the last class)
            card_pred = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1)
            card_err = F_.l1_loss(card_pred.float(), tgt_lengths.float())
            losses = {'cardinality_error': card_err}
            return losses

        def loss_boxes(self, outputs, targets, indices, num_boxes):
            """Compute the losses related to the bounding boxes, the L1 regression loss and the GIoU loss
               targets dicts must contain the key "boxes" containing a tensor of dim [nb_target_boxes, 4]
               The target boxes are expected in format (center_x, center_y, w, h), normalized by the image size.
            """
            assert 'pred_boxes' in outputs
            idx = self._get_src_permutation_idx(indices)
            src_boxes = outputs['pred_boxes'][idx]
            target_boxes = th.cat([t['boxes'][i] for t, (_, i) in zip(targets, indices)], dim=0)

            loss_bbox = F_.l1_loss(src_boxes, target_boxes, reduction='none')

            losses = {}
            losses['loss_bbox'] = loss_bbox.sum() / num_boxes

            loss_giou = 1 - th.diag(generalized_box_iou(
                box_cxcywh_to_xyxy(src_boxes),
                box_cxcywh_to_xyxy(target_boxes)))
            losses['loss_giou'] = loss_giou.sum() / num_boxes
            return losses

        def _get_src_permutation_idx(self, indices):
            # permute predictions following indices
            batch_idx = th.cat([th.full_like(src, i) for i, (src, _) in enumerate(indices)])
            src_idx = th.cat([src for (src, _) in indices])
            return batch_idx, src_idx

        def get_loss(self, loss, outputs, targets, indices, num_boxes, **kwargs):
            loss_map = {
                'labels': self.loss_labels,
                'cardinality': self.loss_cardinality,
                'boxes': self.loss_boxes,
            }
            assert loss in loss_map, f'do you really want to compute {loss} loss?'
            return loss_map[loss](outputs, targets, indices, num_boxes, **kwargs)

        def forward(self, outputs, targets):
            """ This performs the loss computation.
            Parameters:
                 outputs: dict of tensors, see the output specification of the model for the format
                 targets: list of dicts, such that len(targets) == batch_size.
                          The expected keys in each dict depends on the losses applied, see each loss' doc
            """
            outputs_without_aux = {k: v for k, v in outputs.items() if k != 'aux_outputs'}

            # Retrieve the matching between the outputs of the last layer and the targets
            indices = self.matcher(outputs_without_aux, targets)

            # Compute the average number of target boxes accross all nodes, for normalization purposes
            num_boxes = sum(len(t["labels"]) for t in targets)
            num_boxes = th.as_tensor([num_boxes], dtype=th.float, device=next(iter(outputs.values())).device)
            # (one process: no all_reduce, get_world_size() == 1)
            num_boxes = th.clamp(num_boxes / 1, min=1).item()

            # Compute all the requested losses
            losses = {}
            for loss in self.losses:
                losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))

            # In case of auxiliary losses, we repeat this process with the output of each intermediate layer.
            if 'aux_outputs' in outputs:
                for i, aux_outputs in enumerate(outputs['aux_outputs']):
                    indices = self.matcher(aux_outputs, targets)
                    for loss in self.losses:
                        kwargs = {}
                        if loss == 'labels':
                            # Logging is enabled only for the last layer
                            kwargs = {'log': False}
                        l_dict = self.get_loss(loss, aux_outputs, targets, indices, num_boxes, **kwargs)
                        l_dict = {k + f'_{i}': v for k, v in l_dict.items()}
                        losses.update(l_dict)

            return losses

    class GivenMatcher:
        """The port's matcher: HungarianMatcher's indices, computed outside the loss, come in the targets
        ('matches': the last layer's, then each auxiliary layer's, in the order SetCriterion asks for them)."""
        def __init__(self):
            self.calls = 0

        def __call__(self, outputs, targets):
            layer, self.calls = self.calls, (self.calls + 1) % N_LAYERS
            return [t['matches'][layer] for t in targets]

    weight_dict = {'loss_ce': 1, 'loss_bbox': 5, 'loss_giou': 2}
    aux_weight_dict = {}
    for i in range(N_LAYERS - 1):
        aux_weight_dict.update({k + f'_{i}': v for k, v in weight_dict.items()})
    weight_dict.update(aux_weight_dict)

    class Models(lib.Module):
        def __init__(self):
            super().__init__()
            self.model = TinyDETR(N_CLASSES, N_QUERIES)
            self.criterion = SetCriterion(N_CLASSES, GivenMatcher(), weight_dict, eos_coef=0.1,
                                          losses=['labels', 'boxes', 'cardinality'])
    return Models()


def linear_sum_assignment(c):
    """scipy.optimize.linear_sum_assignment for a tall cost matrix (queries x targets), by brute force."""
    c = np.asarray(c)
    best = min(itertools.permutations(range(c.shape[0]), c.shape[1]),
               key=lambda rows: c[list(rows), range(c.shape[1])].sum())
    order = np.argsort(best)
    return np.asarray(best)[order], np.arange(c.shape[1])[order]


@torch.no_grad()
def hungarian_matcher(outputs, targets, cost_class=1, cost_bbox=5, cost_giou=2):
    """DETR's HungarianMatcher.forward on torch's outputs: (index_i, index_j) per image."""
    box_cxcywh_to_xyxy, generalized_box_iou = box_ops(torch)
    bs, num_queries = outputs["pred_logits"].shape[:2]
    out_prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)  # [batch_size * num_queries, num_classes]
    out_bbox = outputs["pred_boxes"].flatten(0, 1)  # [batch_size * num_queries, 4]
    tgt_ids = torch.cat([v["labels"] for v in targets])
    tgt_bbox = torch.cat([v["boxes"] for v in targets])
    cost_class_ = -out_prob[:, tgt_ids]
    cost_bbox_ = torch.cdist(out_bbox, tgt_bbox, p=1)
    cost_giou_ = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
    C = cost_bbox * cost_bbox_ + cost_class * cost_class_ + cost_giou * cost_giou_
    C = C.view(bs, num_queries, -1).cpu()
    sizes = [len(v["boxes"]) for v in targets]
    indices = [linear_sum_assignment(c[i]) for i, c in enumerate(C.split(sizes, -1))]
    return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]


def detr_loss(model, criterion, samples, targets):
    outputs = model(samples)
    loss_dict = criterion(outputs, targets)
    weight_dict = criterion.weight_dict
    losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict.keys() if k in weight_dict)
    return losses, loss_dict


def detr_step(model, criterion, optimizer, samples, targets, max_norm):
    (losses, loss_dict), grads = av.value_and_grad(detr_loss, has_aux=True)(model, criterion, samples, targets)
    if max_norm > 0:
        nn.utils.clip_grad_norm_(grads, max_norm)
    optimizer.step(grads)
    return losses, loss_dict


def detr_param_dicts(model_without_ddp, lr_backbone):
    return [
        {"params": [p for n, p in model_without_ddp.named_parameters() if "backbone" not in n and p.requires_grad]},
        {"params": [p for n, p in model_without_ddp.named_parameters() if "backbone" in n and p.requires_grad],
         "lr": lr_backbone},
    ]


def detr_targets(rng, sizes=(2, 1)):
    out = []
    for n in sizes:
        boxes = np.concatenate([rng.uniform(0.3, 0.7, (n, 2)), rng.uniform(0.1, 0.4, (n, 2))], 1)
        out.append({'labels': rng.integers(0, N_CLASSES, n), 'boxes': boxes})
    return out


def test_detr_set_criterion_matched_permutation_empty_weight_giou_and_aux_losses():
    ours, theirs = pair(detr)
    opt = optim.AdamW(detr_param_dicts(ours.model, 1e-3), lr=1e-2, weight_decay=1e-4)
    topt = torch.optim.AdamW(detr_param_dicts(theirs.model, 1e-3), lr=1e-2, weight_decay=1e-4)
    sched = optim.lr_scheduler.StepLR(opt, 2)
    tsched = torch.optim.lr_scheduler.StepLR(topt, 2)
    steps = {m: compiled(detr_step, m) for m in MODES}
    rng = np.random.default_rng(2)
    for it in range(6):
        mode = MODES[it % 3]
        samples, targets = rng.standard_normal((2, 3, 7, 7)), detr_targets(rng)
        ttargets = [{k: T(v) for k, v in t.items()} for t in targets]
        outputs = theirs.model(T(samples))
        layers = [outputs] + outputs['aux_outputs']
        matches = [hungarian_matcher(o, ttargets) for o in layers]
        for b, t in enumerate(ttargets):
            t['matches'] = [m[b] for m in matches]
        tlosses, tloss_dict = detr_loss(theirs.model, theirs.criterion, T(samples), ttargets)
        topt.zero_grad()
        tlosses.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.model.parameters(), 0.1)
        topt.step()
        tsched.step()
        atargets = [{'labels': arr(t['labels']), 'boxes': arr(t['boxes']),
                     'matches': [(arr(i.numpy()), arr(j.numpy())) for i, j in t['matches']]} for t in ttargets]
        with strict():
            losses, loss_dict = steps[mode](ours.model, ours.criterion, opt, arr(samples), atargets, 0.1)
        sched.step()
        assert tnorm > 0.1 and rel(losses, tlosses) < 1e-12, (it, mode)
        assert sorted(loss_dict) == sorted(tloss_dict)
        for k, v in tloss_dict.items():
            assert rel(loss_dict[k], v) < 1e-12, (it, mode, k)
        same_weights(ours, theirs, 1e-10)
    assert [steps[m].cache_info().misses for m in MODES[1:]] == [1, 1]
    assert opt.param_groups[1]['lr'] == topt.param_groups[1]['lr'] == 1e-3 * 0.1 ** 3


# -- regressions: what the programs above found --------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_compiler_is_compiling_is_true_while_avalon_traces(mode):
    """DETR's generalized_box_iou asserts `(boxes[:, 2:] >= boxes[:, :2]).all()`, a Python branch on a tensor's
    value; code that torch.compile traces guards such checks by `torch.compiler.is_compiling()`, which Avalon
    lacked (an AttributeError). It is True whenever Avalon's tracer records (av.compile, and av.grad, which
    traces too), False eagerly."""
    _, generalized_box_iou = box_ops(av)
    seen = []

    def f(b1, b2):
        seen.append(av.compiler.is_compiling())
        return generalized_box_iou(b1, b2).sum()

    rng = np.random.default_rng(3)
    b1, b2 = (np.concatenate([rng.uniform(0, .5, (n, 2)), rng.uniform(.5, 1, (n, 2))], 1) for n in (3, 2))
    want = box_ops(torch)[1](T(b1), T(b2)).sum()
    assert not av.compiler.is_compiling() and not av.compiler.is_dynamo_compiling()
    assert rel(f(arr(b1), arr(b2)), want) < 1e-15 and seen == [False]  # eagerly the asserts run
    with strict():
        g = compiled(av.grad(f), mode)(arr(b1), arr(b2))
    assert seen[1:] == [True] and g.shape == (3, 4)
    with pytest.raises(AssertionError):  # and still check a degenerate box eagerly
        f(arr(b1[:, [2, 3, 0, 1]]), arr(b2))


def interpolate_pos_encoding(th, F_, pos_embed, w, h, patch_size=2):
    """dino's VisionTransformer.interpolate_pos_encoding (pos_embed given, x's size as w, h)."""
    npatch = (w // patch_size) * (h // patch_size)
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    # we add a small number to avoid floating point error in the interpolation
    # see discussion at https://github.com/facebookresearch/dino/issues/8
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = F_.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode='bicubic',
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return th.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


@pytest.mark.parametrize("mode", MODES)
def test_interpolate_bicubic_as_dino_resizes_position_embeddings_for_local_crops(mode):
    """DINO's ViT (and DeiT's, timm's) resizes its position embeddings for the multi-crop's smaller crops by
    `F.interpolate(..., mode='bicubic')`, which Avalon refused: torch's cubic convolution (A = -0.75, four
    neighbours clamped into the image, an unclamped source index), values and gradients."""
    pe = np.random.default_rng(4).standard_normal((1, 17, 6))
    for w, h in ((4, 4), (6, 10), (12, 12)):
        tp = T(pe).requires_grad_()
        want = interpolate_pos_encoding(torch, TF, tp, w, h)
        want.pow(2).sum().backward()
        with strict():
            got = compiled(av.value_and_grad(lambda p: interpolate_pos_encoding(av, F, p, w, h).pow(2).sum()),  # noqa: B023
                           mode)(arr(pe))
        assert rel(interpolate_pos_encoding(av, F, arr(pe), w, h), want.detach()) < 1e-14
        assert rel(got[0], want.pow(2).sum().detach()) < 1e-14 and rel(got[1], tp.grad) < 1e-14, (w, h)
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 7))
    for kw in ({"size": (9, 4)}, {"size": 3, "align_corners": True}, {"scale_factor": 2.5},
               {"scale_factor": (0.6, 1.7), "align_corners": True}, {"size": (1, 1)}):
        want = TF.interpolate(T(x), mode="bicubic", **kw)
        assert rel(F.interpolate(arr(x), mode="bicubic", **kw), want) < 1e-14, kw
        want32 = TF.interpolate(T(x).float(), mode="bicubic", **kw)
        got32 = F.interpolate(av.tensor(x.astype(np.float32)), mode="bicubic", **kw)
        assert got32.dtype == av.float32 and rel(got32, want32) < 1e-6, kw
    assert rel(nn.Upsample(scale_factor=2, mode="bicubic")(arr(x)), torch.nn.Upsample(scale_factor=2, mode="bicubic")(T(x))) < 1e-14

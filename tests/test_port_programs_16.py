"""Round 9b of port QA (after test_port_programs.py, _more and _3 to _15): fine-tuning and model-surgery code
as the popular repositories write it, written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or
avalon), trained a few steps from torch's weights on random data in float64 and compared with torch after
every step (losses, parameters, buffers), the first step eagerly and the rest compiled (numpy and cpu
backends), with warnings as errors while tracing: LoRA as microsoft/LoRA's loralib writes it (a Linear
subclass mixing in LoRALayer, lora_A by kaiming_uniform_(a=sqrt(5)) and lora_B zeros, scaling alpha/r,
mark_only_lora_as_trainable, the merge `W += B @ A * scaling` in its train(False) override and the unmerge in
train(), lora_state_dict loaded back with strict=False), injected into a small pretrained encoder as peft
does (named_modules(), get_submodule of the parent, setattr, the base weight and bias shared), trained with
AdamW over the filtered trainable parameters; Swin Transformer's stage as microsoft/Swin-Transformer writes
it (window_partition/window_reverse by view and permute, the cyclic shift by torch.roll, the SW-MSA mask by
slice assignment into img_mask and masked_fill with -100.0, the relative_position_bias_table indexed by the
relative_position_index buffer from meshgrid/flatten/permute/sum, a None attn_mask buffer, PatchMerging by
strided slices and cat; with and without use_checkpoint) trained with AdamW over its no-decay groups and
gradient clipping; quantization-aware training by hand (per-channel symmetric fake quantization of conv and
linear weights with the straight-through `w + (q - w).detach()`, scale from amax with keepdim, and a min/max
observer updating its buffers under no_grad in training mode only, frozen in eval) and torch.nn.utils.prune
(local L1 on a weight and a bias, global L1 over three layers, Ln-structured on top, trained with Nesterov
SGD while the masks keep the pruned entries zero, then prune.remove mid-training); and
torch.nn.utils.parametrize with custom parametrizations (a symmetric matrix and a softplus-positive weight,
each with right_inverse) and parametrizations.orthogonal, trained with SGD, then removed.

The ports change only what the README says differs: gradients are values (`av.value_and_grad`,
`opt.step(grads)`, clipping the gradient dict), dropout is 0 (random draws are not torch's), and torch's
pruned `module.weight` is the tensor its forward pre-hook computed before the optimizer's step, where
Avalon's is computed on access, so torch's is recomputed to compare. The regressions at the end are what
the programs found: Avalon's Module had no `get_submodule` (peft's surgery finds the parent by it);
`train()`/`eval()` set the `training` flags by walking the model without calling a submodule's own
`train(mode)` override, so loralib's merge on eval() never ran (a frozen-batch-norm override was skipped
the same way); and Conv1d/2d/3d had no `_conv_forward(input, weight, bias)`, through which QAT convolutions
pass their fake-quantized weight."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
import torch.nn.utils.prune as tprune
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F
from avalon.nn.utils import prune

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

MODES = ("eager", "numpy", "cpu")


def arr(x) -> av.Tensor:
    """An Avalon tensor of numpy data, float64 kept."""
    return av.tensor(np.asarray(x))


def step_fn(loss_fn):
    """The port of `loss = loss_fn(model, *xs); loss.backward(); optimizer.step()`."""
    def step(model, opt, *xs):
        loss, grads = av.value_and_grad(loss_fn)(model, *xs)
        opt.step(grads)
        return loss
    return step


# -- 1. LoRA (microsoft/LoRA loralib/layers.py and utils.py; peft's module injection) ------------------------

def loralib(lib, F_, th):
    class LoRALayer():  # noqa: UP039
        def __init__(
            self,
            r: int,
            lora_alpha: int,
            lora_dropout: float,
            merge_weights: bool,
        ):
            self.r = r
            self.lora_alpha = lora_alpha
            # Optional dropout
            if lora_dropout > 0.:
                self.lora_dropout = lib.Dropout(p=lora_dropout)
            else:
                self.lora_dropout = lambda x: x
            # Mark the weight as unmerged
            self.merged = False
            self.merge_weights = merge_weights

    class Linear(lib.Linear, LoRALayer):
        # LoRA implemented in a dense layer
        def __init__(
            self,
            in_features: int,
            out_features: int,
            r: int = 0,
            lora_alpha: int = 1,
            lora_dropout: float = 0.,
            fan_in_fan_out: bool = False,  # Set this to True if the layer to replace stores weight like (fan_in, fan_out)
            merge_weights: bool = True,
            **kwargs
        ):
            lib.Linear.__init__(self, in_features, out_features, **kwargs)
            LoRALayer.__init__(self, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                               merge_weights=merge_weights)

            self.fan_in_fan_out = fan_in_fan_out
            # Actual trainable parameters
            if r > 0:
                self.lora_A = lib.Parameter(self.weight.new_zeros((r, in_features)))
                self.lora_B = lib.Parameter(self.weight.new_zeros((out_features, r)))
                self.scaling = self.lora_alpha / self.r
                # Freezing the pre-trained weight matrix
                self.weight.requires_grad = False
            self.reset_parameters()
            if fan_in_fan_out:
                self.weight.data = self.weight.data.transpose(0, 1)

        def reset_parameters(self):
            lib.Linear.reset_parameters(self)
            if hasattr(self, 'lora_A'):
                # initialize B the same way as the default for nn.Linear and A to zero
                # this is different than what is described in the paper but should not affect performance
                lib.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
                lib.init.zeros_(self.lora_B)

        def train(self, mode: bool = True):
            def T(w):
                return w.transpose(0, 1) if self.fan_in_fan_out else w
            lib.Linear.train(self, mode)
            if mode:
                if self.merge_weights and self.merged:
                    # Make sure that the weights are not merged
                    if self.r > 0:
                        self.weight.data -= T(self.lora_B @ self.lora_A) * self.scaling
                    self.merged = False
            else:
                if self.merge_weights and not self.merged:
                    # Merge the weights and mark it
                    if self.r > 0:
                        self.weight.data += T(self.lora_B @ self.lora_A) * self.scaling
                    self.merged = True

        def forward(self, x):
            def T(w):
                return w.transpose(0, 1) if self.fan_in_fan_out else w
            if self.r > 0 and not self.merged:
                result = F_.linear(x, T(self.weight), bias=self.bias)
                result += (self.lora_dropout(x) @ self.lora_A.transpose(0, 1) @ self.lora_B.transpose(0, 1)) * self.scaling
                return result
            else:
                return F_.linear(x, T(self.weight), bias=self.bias)

    def mark_only_lora_as_trainable(model, bias: str = 'none') -> None:
        for n, p in model.named_parameters():
            if 'lora_' not in n:
                p.requires_grad = False
        if bias == 'none':
            return
        elif bias == 'all':
            for n, p in model.named_parameters():
                if 'bias' in n:
                    p.requires_grad = True
        elif bias == 'lora_only':
            for m in model.modules():
                if isinstance(m, LoRALayer) and \
                        hasattr(m, 'bias') and \
                        m.bias is not None:
                    m.bias.requires_grad = True
        else:
            raise NotImplementedError

    def lora_state_dict(model, bias: str = 'none'):
        my_state_dict = model.state_dict()
        if bias == 'none':
            return {k: my_state_dict[k] for k in my_state_dict if 'lora_' in k}
        elif bias == 'all':
            return {k: my_state_dict[k] for k in my_state_dict if 'lora_' in k or 'bias' in k}
        raise NotImplementedError

    return Linear, mark_only_lora_as_trainable, lora_state_dict


def tiny_encoder(lib, F_, th, vocab=11, dim=8, heads=2, classes=3):
    """The 'pretrained' model: a post-norm BERT-style encoder layer with separate q/k/v projections."""
    class SelfAttention(lib.Module):
        def __init__(self):
            super().__init__()
            self.heads = heads
            self.query = lib.Linear(dim, dim)
            self.key = lib.Linear(dim, dim)
            self.value = lib.Linear(dim, dim)
            self.dense = lib.Linear(dim, dim)

        def forward(self, x, mask):
            B, N, C = x.shape
            q, k, v = (t.view(B, N, self.heads, C // self.heads).transpose(1, 2)
                       for t in (self.query(x), self.key(x), self.value(x)))
            scores = q @ k.transpose(-1, -2) / math.sqrt(C // self.heads)
            scores = scores + (1.0 - mask[:, None, None, :]) * th.finfo(scores.dtype).min
            ctx = scores.softmax(-1) @ v
            return self.dense(ctx.transpose(1, 2).reshape(B, N, C))

    class Layer(lib.Module):
        def __init__(self):
            super().__init__()
            self.attention = SelfAttention()
            self.ln1 = lib.LayerNorm(dim)
            self.intermediate = lib.Linear(dim, 2 * dim)
            self.output = lib.Linear(2 * dim, dim)
            self.ln2 = lib.LayerNorm(dim)

        def forward(self, x, mask):
            x = self.ln1(x + self.attention(x, mask))
            return self.ln2(x + self.output(F_.gelu(self.intermediate(x))))

    class Classifier(lib.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = lib.Embedding(vocab, dim)
            self.layers = lib.ModuleList([Layer(), Layer()])
            self.classifier = lib.Linear(dim, classes)

        def forward(self, ids, mask):
            x = self.embeddings(ids)
            for layer in self.layers:
                x = layer(x, mask)
            return self.classifier(x[:, 0])

    return Classifier()


def inject_lora(lib, F_, th, model, target_modules=("query", "value"), r=2, lora_alpha=4, lora_dropout=0.0):
    """peft's LoraModel._create_and_replace: find the targets by walking named_modules(), build the LoRA layer,
    share the base layer's weight and bias with it, and setattr it on the parent."""
    Linear, mark_only_lora_as_trainable, _ = loralib(lib, F_, th)
    key_list = [key for key, _ in model.named_modules()]
    for key in key_list:
        if not any(key.endswith(target_key) for target_key in target_modules):
            continue
        parent = model.get_submodule(".".join(key.split(".")[:-1]))
        target_name = key.split(".")[-1]
        target = model.get_submodule(key)
        if not isinstance(target, lib.Linear):
            continue
        new_module = Linear(target.in_features, target.out_features, r=r, lora_alpha=lora_alpha,
                            lora_dropout=lora_dropout, bias=target.bias is not None)
        setattr(parent, target_name, new_module)
        new_module.weight = target.weight
        if getattr(target, "bias", None) is not None:
            new_module.bias = target.bias
        new_module.to(target.weight.device, target.weight.dtype)
    mark_only_lora_as_trainable(model)
    return model


def lora_model(lib, F_, th):
    model = tiny_encoder(lib, F_, th)
    inject_lora(lib, F_, th, model)
    lib.init.normal_(model.layers[0].attention.query.lora_B, std=0.1)  # as after some training: merging shows
    return model


def seq_cls_loss(F_):
    def loss_fn(model, ids, mask, labels):
        return F_.cross_entropy(model(ids, mask), labels)
    return loss_fn


def lora_batch(rng):
    ids = rng.integers(0, 11, (3, 5))
    mask = np.ones((3, 5))
    mask[1, 3:] = 0
    mask[2, 4:] = 0
    return ids, mask, rng.integers(0, 3, 3)


def test_lora_injected_by_named_modules_frozen_base_merge_unmerge_and_lora_state_dict():
    ours, theirs = pair(lora_model)
    _, _, lora_state_dict = loralib(nn, F, av)
    _, _, tlora_state_dict = loralib(torch.nn, TF, torch)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
           [n for n, p in theirs.named_parameters() if p.requires_grad] == \
           [f"layers.{i}.attention.{m}.lora_{x}" for i in (0, 1) for m in ("query", "value") for x in "AB"]
    assert isinstance(ours.layers[1].attention.value, nn.Linear) and hasattr(ours.layers[1].attention.value, "lora_A")
    assert not ours.layers[1].attention.value.weight.requires_grad
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == \
           sum(p.numel() for p in theirs.parameters() if p.requires_grad) == 4 * (2 * 8 + 8 * 2)
    frozen = {k: v.numpy().copy() for k, v in ours.state_dict().items() if 'lora_' not in k}
    opt = optim.AdamW(filter(lambda p: p.requires_grad, ours.parameters()), lr=1e-2, weight_decay=0.01)
    topt = torch.optim.AdamW(filter(lambda p: p.requires_grad, theirs.parameters()), lr=1e-2, weight_decay=0.01)
    steps = {m: compiled(step_fn(seq_cls_loss(F)), m) for m in MODES}
    rng = np.random.default_rng(0)
    for it in range(6):
        mode = MODES[it % 3]
        ids, mask, labels = lora_batch(rng)
        topt.zero_grad()
        tl = seq_cls_loss(TF)(theirs, T(ids), T(mask), T(labels))
        tl.backward()
        topt.step()
        with strict():
            loss = steps[mode](ours, opt, arr(ids), arr(mask), arr(labels))
        assert rel(loss, tl) < 1e-12, (it, mode)
        same_weights(ours, theirs, 1e-10)
        for k, v in frozen.items():  # the base weights never move
            assert np.array_equal(ours.state_dict()[k].numpy(), v), k
        if it == 2:  # evaluate: loralib's train(False) merges W += B @ A * scaling, train() unmerges
            ours.eval()
            theirs.eval()
            assert ours.layers[0].attention.query.merged and theirs.layers[0].attention.query.merged
            same_weights(ours, theirs, 1e-12)
            with torch.no_grad():
                tout = theirs(T(ids), T(mask))
            with strict():
                out = compiled(lambda m, i, k: m(i, k), "numpy")(ours, arr(ids), arr(mask))
            assert rel(out, tout) < 1e-12 and rel(ours(arr(ids), arr(mask)), tout) < 1e-12
            w = ours.layers[0].attention.query
            assert rel(w.weight, frozen["layers.0.attention.query.weight"] + (w.lora_B @ w.lora_A).numpy() * 2) < 1e-14
            ours.train()
            theirs.train()
            assert not ours.layers[0].attention.query.merged
            same_weights(ours, theirs, 1e-12)
            for k, v in frozen.items():  # W + BA*s - BA*s: the base weights are back, to roundoff as in torch
                assert rel(ours.state_dict()[k], v) < 1e-14, k
            frozen = {k: v.numpy().copy() for k, v in ours.state_dict().items() if 'lora_' not in k}
    assert [steps[m].cache_info().misses for m in MODES[1:]] == [1, 1]
    # the adapter checkpoint: only the lora_ keys, loaded into a fresh model with strict=False
    sd, tsd = lora_state_dict(ours), tlora_state_dict(theirs)
    assert list(sd) == list(tsd) and len(sd) == 8
    fresh, tfresh = pair(lora_model, seed=1)
    res, tres = fresh.load_state_dict(sd, strict=False), tfresh.load_state_dict(tsd, strict=False)
    assert res.missing_keys == tres.missing_keys and res.unexpected_keys == tres.unexpected_keys == []
    for k in sd:
        assert rel(fresh.state_dict()[k], tsd[k].detach()) < 1e-10, k
    ids, mask, labels = lora_batch(rng)
    assert rel(fresh(arr(ids), arr(mask)), tfresh(T(ids), T(mask)).detach()) < 1e-12


# -- 2. Swin Transformer (microsoft/Swin-Transformer models/swin_transformer.py, optimizer.py) ----------------

def to_2tuple(x):
    return (x, x)


def window_partition(x, window_size):
    """
    Args:
        x: (B, H, W, C)
        window_size (int): window size

    Returns:
        windows: (num_windows*B, window_size, window_size, C)
    """
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)
    return windows


def window_reverse(windows, window_size, H, W):
    """
    Args:
        windows: (num_windows*B, window_size, window_size, C)
        window_size (int): Window size
        H (int): Height of image
        W (int): Width of image

    Returns:
        x: (B, H, W, C)
    """
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)
    return x


def swin(lib, F_, th, use_checkpoint=False):
    trunc_normal_ = lib.init.trunc_normal_
    checkpoint = th.utils.checkpoint

    class Mlp(lib.Module):
        def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=lib.GELU, drop=0.):
            super().__init__()
            out_features = out_features or in_features
            hidden_features = hidden_features or in_features
            self.fc1 = lib.Linear(in_features, hidden_features)
            self.act = act_layer()
            self.fc2 = lib.Linear(hidden_features, out_features)
            self.drop = lib.Dropout(drop)

        def forward(self, x):
            x = self.fc1(x)
            x = self.act(x)
            x = self.drop(x)
            x = self.fc2(x)
            x = self.drop(x)
            return x

    class WindowAttention(lib.Module):
        r""" Window based multi-head self attention (W-MSA) module with relative position bias.
        It supports both of shifted and non-shifted window.
        """

        def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0., proj_drop=0.):

            super().__init__()
            self.dim = dim
            self.window_size = window_size  # Wh, Ww
            self.num_heads = num_heads
            head_dim = dim // num_heads
            self.scale = qk_scale or head_dim ** -0.5

            # define a parameter table of relative position bias
            self.relative_position_bias_table = lib.Parameter(
                th.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))  # 2*Wh-1 * 2*Ww-1, nH

            # get pair-wise relative position index for each token inside the window
            coords_h = th.arange(self.window_size[0])
            coords_w = th.arange(self.window_size[1])
            coords = th.stack(th.meshgrid([coords_h, coords_w], indexing="ij"))  # 2, Wh, Ww
            coords_flatten = th.flatten(coords, 1)  # 2, Wh*Ww
            relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]  # 2, Wh*Ww, Wh*Ww
            relative_coords = relative_coords.permute(1, 2, 0).contiguous()  # Wh*Ww, Wh*Ww, 2
            relative_coords[:, :, 0] += self.window_size[0] - 1  # shift to start from 0
            relative_coords[:, :, 1] += self.window_size[1] - 1
            relative_coords[:, :, 0] *= 2 * self.window_size[1] - 1
            relative_position_index = relative_coords.sum(-1)  # Wh*Ww, Wh*Ww
            self.register_buffer("relative_position_index", relative_position_index)

            self.qkv = lib.Linear(dim, dim * 3, bias=qkv_bias)
            self.attn_drop = lib.Dropout(attn_drop)
            self.proj = lib.Linear(dim, dim)
            self.proj_drop = lib.Dropout(proj_drop)

            trunc_normal_(self.relative_position_bias_table, std=.02)
            self.softmax = lib.Softmax(dim=-1)

        def forward(self, x, mask=None):
            """
            Args:
                x: input features with shape of (num_windows*B, N, C)
                mask: (0/-inf) mask with shape of (num_windows, Wh*Ww, Wh*Ww) or None
            """
            B_, N, C = x.shape
            qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # make torchscript happy (cannot use tensor as tuple)

            q = q * self.scale
            attn = (q @ k.transpose(-2, -1))

            relative_position_bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(
                self.window_size[0] * self.window_size[1], self.window_size[0] * self.window_size[1], -1)  # Wh*Ww,Wh*Ww,nH
            relative_position_bias = relative_position_bias.permute(2, 0, 1).contiguous()  # nH, Wh*Ww, Wh*Ww
            attn = attn + relative_position_bias.unsqueeze(0)

            if mask is not None:
                nW = mask.shape[0]
                attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
                attn = attn.view(-1, self.num_heads, N, N)
                attn = self.softmax(attn)
            else:
                attn = self.softmax(attn)

            attn = self.attn_drop(attn)

            x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
            x = self.proj(x)
            x = self.proj_drop(x)
            return x

    class SwinTransformerBlock(lib.Module):
        r""" Swin Transformer Block.
        """

        def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0,
                     mlp_ratio=4., qkv_bias=True, qk_scale=None, drop=0., attn_drop=0., drop_path=0.,
                     act_layer=lib.GELU, norm_layer=lib.LayerNorm,
                     fused_window_process=False):
            super().__init__()
            self.dim = dim
            self.input_resolution = input_resolution
            self.num_heads = num_heads
            self.window_size = window_size
            self.shift_size = shift_size
            self.mlp_ratio = mlp_ratio
            if min(self.input_resolution) <= self.window_size:
                # if window size is larger than input resolution, we don't partition windows
                self.shift_size = 0
                self.window_size = min(self.input_resolution)
            assert 0 <= self.shift_size < self.window_size, "shift_size must in 0-window_size"

            self.norm1 = norm_layer(dim)
            self.attn = WindowAttention(
                dim, window_size=to_2tuple(self.window_size), num_heads=num_heads,
                qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop)

            self.drop_path = lib.Identity()  # (drop_path=0.: timm's DropPath is not built)
            self.norm2 = norm_layer(dim)
            mlp_hidden_dim = int(dim * mlp_ratio)
            self.mlp = Mlp(in_features=dim, hidden_features=mlp_hidden_dim, act_layer=act_layer, drop=drop)

            if self.shift_size > 0:
                # calculate attention mask for SW-MSA
                H, W = self.input_resolution
                img_mask = th.zeros((1, H, W, 1))  # 1 H W 1
                h_slices = (slice(0, -self.window_size),
                            slice(-self.window_size, -self.shift_size),
                            slice(-self.shift_size, None))
                w_slices = (slice(0, -self.window_size),
                            slice(-self.window_size, -self.shift_size),
                            slice(-self.shift_size, None))
                cnt = 0
                for h in h_slices:
                    for w in w_slices:
                        img_mask[:, h, w, :] = cnt
                        cnt += 1

                mask_windows = window_partition(img_mask, self.window_size)  # nW, window_size, window_size, 1
                mask_windows = mask_windows.view(-1, self.window_size * self.window_size)
                attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
                attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))  # noqa: UP018
            else:
                attn_mask = None

            self.register_buffer("attn_mask", attn_mask)
            self.fused_window_process = fused_window_process

        def forward(self, x):
            H, W = self.input_resolution
            B, L, C = x.shape
            assert L == H * W, "input feature has wrong size"

            shortcut = x
            x = self.norm1(x)
            x = x.view(B, H, W, C)

            # cyclic shift
            if self.shift_size > 0:
                shifted_x = th.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
                # partition windows
                x_windows = window_partition(shifted_x, self.window_size)  # nW*B, window_size, window_size, C
            else:
                shifted_x = x
                # partition windows
                x_windows = window_partition(shifted_x, self.window_size)  # nW*B, window_size, window_size, C

            x_windows = x_windows.view(-1, self.window_size * self.window_size, C)  # nW*B, window_size*window_size, C

            # W-MSA/SW-MSA
            attn_windows = self.attn(x_windows, mask=self.attn_mask)  # nW*B, window_size*window_size, C

            # merge windows
            attn_windows = attn_windows.view(-1, self.window_size, self.window_size, C)

            # reverse cyclic shift
            if self.shift_size > 0:
                shifted_x = window_reverse(attn_windows, self.window_size, H, W)  # B H' W' C
                x = th.roll(shifted_x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
            else:
                shifted_x = window_reverse(attn_windows, self.window_size, H, W)  # B H' W' C
                x = shifted_x
            x = x.view(B, H * W, C)
            x = shortcut + self.drop_path(x)

            # FFN
            x = x + self.drop_path(self.mlp(self.norm2(x)))

            return x

    class PatchMerging(lib.Module):
        r""" Patch Merging Layer.
        """

        def __init__(self, input_resolution, dim, norm_layer=lib.LayerNorm):
            super().__init__()
            self.input_resolution = input_resolution
            self.dim = dim
            self.reduction = lib.Linear(4 * dim, 2 * dim, bias=False)
            self.norm = norm_layer(4 * dim)

        def forward(self, x):
            """
            x: B, H*W, C
            """
            H, W = self.input_resolution
            B, L, C = x.shape
            assert L == H * W, "input feature has wrong size"
            assert H % 2 == 0 and W % 2 == 0, f"x size ({H}*{W}) are not even."

            x = x.view(B, H, W, C)

            x0 = x[:, 0::2, 0::2, :]  # B H/2 W/2 C
            x1 = x[:, 1::2, 0::2, :]  # B H/2 W/2 C
            x2 = x[:, 0::2, 1::2, :]  # B H/2 W/2 C
            x3 = x[:, 1::2, 1::2, :]  # B H/2 W/2 C
            x = th.cat([x0, x1, x2, x3], -1)  # B H/2 W/2 4*C
            x = x.view(B, -1, 4 * C)  # B H/2*W/2 4*C

            x = self.norm(x)
            x = self.reduction(x)

            return x

    class BasicLayer(lib.Module):
        """ A basic Swin Transformer layer for one stage.
        """

        def __init__(self, dim, input_resolution, depth, num_heads, window_size,
                     mlp_ratio=4., qkv_bias=True, qk_scale=None, drop=0., attn_drop=0.,
                     drop_path=0., norm_layer=lib.LayerNorm, downsample=None, use_checkpoint=False,
                     fused_window_process=False):

            super().__init__()
            self.dim = dim
            self.input_resolution = input_resolution
            self.depth = depth
            self.use_checkpoint = use_checkpoint

            # build blocks
            self.blocks = lib.ModuleList([
                SwinTransformerBlock(dim=dim, input_resolution=input_resolution,
                                     num_heads=num_heads, window_size=window_size,
                                     shift_size=0 if (i % 2 == 0) else window_size // 2,
                                     mlp_ratio=mlp_ratio,
                                     qkv_bias=qkv_bias, qk_scale=qk_scale,
                                     drop=drop, attn_drop=attn_drop,
                                     drop_path=drop_path[i] if isinstance(drop_path, list) else drop_path,
                                     norm_layer=norm_layer,
                                     fused_window_process=fused_window_process)
                for i in range(depth)])

            # patch merging layer
            if downsample is not None:
                self.downsample = downsample(input_resolution, dim=dim, norm_layer=norm_layer)
            else:
                self.downsample = None

        def forward(self, x):
            for blk in self.blocks:
                if self.use_checkpoint:
                    x = checkpoint.checkpoint(blk, x, use_reentrant=False)
                else:
                    x = blk(x)
            if self.downsample is not None:
                x = self.downsample(x)
            return x

    class PatchEmbed(lib.Module):
        def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None):
            super().__init__()
            img_size = to_2tuple(img_size)
            patch_size = to_2tuple(patch_size)
            patches_resolution = [img_size[0] // patch_size[0], img_size[1] // patch_size[1]]
            self.img_size = img_size
            self.patch_size = patch_size
            self.patches_resolution = patches_resolution
            self.num_patches = patches_resolution[0] * patches_resolution[1]
            self.proj = lib.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
            self.norm = norm_layer(embed_dim) if norm_layer is not None else None

        def forward(self, x):
            x = self.proj(x).flatten(2).transpose(1, 2)  # B Ph*Pw C
            if self.norm is not None:
                x = self.norm(x)
            return x

    class TinySwin(lib.Module):
        """SwinTransformer's stem, one 2-block stage with PatchMerging, and its head."""
        def __init__(self, img_size=8, patch_size=2, embed_dim=8, num_heads=2, window_size=2, num_classes=3):
            super().__init__()
            self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim, norm_layer=lib.LayerNorm)
            res = self.patch_embed.patches_resolution
            self.layers = lib.ModuleList([BasicLayer(embed_dim, (res[0], res[1]), depth=2, num_heads=num_heads,
                                                     window_size=window_size, mlp_ratio=2., downsample=PatchMerging,
                                                     use_checkpoint=use_checkpoint)])
            self.num_features = 2 * embed_dim
            self.norm = lib.LayerNorm(self.num_features)
            self.avgpool = lib.AdaptiveAvgPool1d(1)
            self.head = lib.Linear(self.num_features, num_classes)
            self.apply(self._init_weights)

        def _init_weights(self, m):
            if isinstance(m, lib.Linear):
                trunc_normal_(m.weight, std=.02)
                if isinstance(m, lib.Linear) and m.bias is not None:
                    lib.init.constant_(m.bias, 0)
            elif isinstance(m, lib.LayerNorm):
                lib.init.constant_(m.bias, 0)
                lib.init.constant_(m.weight, 1.0)

        def no_weight_decay_keywords(self):
            return {'relative_position_bias_table'}

        def forward_features(self, x):
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            x = self.norm(x)  # B L C
            x = self.avgpool(x.transpose(1, 2))  # B C 1
            x = th.flatten(x, 1)
            return x

        def forward(self, x):
            return self.head(self.forward_features(x))

    return TinySwin()


def check_keywords_in_name(name, keywords=()):
    isin = False
    for keyword in keywords:
        if keyword in name:
            isin = True
    return isin


def set_weight_decay(model, skip_list=(), skip_keywords=()):
    """Swin-Transformer's optimizer.py: no weight decay for 1-d parameters, biases, and the bias tables."""
    has_decay = []
    no_decay = []

    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights
        if len(param.shape) == 1 or name.endswith(".bias") or (name in skip_list) or \
                check_keywords_in_name(name, skip_keywords):
            no_decay.append(param)
        else:
            has_decay.append(param)
    return [{'params': has_decay},
            {'params': no_decay, 'weight_decay': 0.}]


def cls_loss(F_):
    def loss_fn(model, x, y):
        return F_.cross_entropy(model(x), y, label_smoothing=0.1)
    return loss_fn


def swin_step(model, optimizer, samples, targets, clip_grad):
    """Swin's train_one_epoch: the loss, clip_grad_norm_ to config.TRAIN.CLIP_GRAD, the step; the norm."""
    loss, grads = av.value_and_grad(cls_loss(F))(model, samples, targets)
    grad_norm = nn.utils.clip_grad_norm_(grads, clip_grad)
    optimizer.step(grads)
    return loss, grad_norm


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_swin_shifted_window_attention_roll_mask_relative_position_bias_and_patch_merging(use_checkpoint):
    ours, theirs = pair(lambda lib, F_, th: swin(lib, F_, th, use_checkpoint))
    blocks, tblocks = ours.layers[0].blocks, theirs.layers[0].blocks
    assert blocks[0].attn_mask is None and blocks[1].shift_size == 1
    assert rel(blocks[1].attn_mask, tblocks[1].attn_mask) == 0 and set(np.unique(blocks[1].attn_mask.numpy())) == {0., -100.}
    idx = blocks[0].attn.relative_position_index
    assert idx.dtype == av.int64 and rel(idx, tblocks[0].attn.relative_position_index) == 0
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())  # the None attn_mask is no entry
    groups = set_weight_decay(ours, skip_keywords=ours.no_weight_decay_keywords())
    tgroups = set_weight_decay(theirs, skip_keywords=theirs.no_weight_decay_keywords())
    opt = optim.AdamW(groups, eps=1e-8, betas=(0.9, 0.999), lr=5e-3, weight_decay=0.05)
    topt = torch.optim.AdamW(tgroups, eps=1e-8, betas=(0.9, 0.999), lr=5e-3, weight_decay=0.05)
    steps = {m: compiled(swin_step, m) for m in MODES}
    rng = np.random.default_rng(1)
    for it in range(4):
        mode = MODES[it % 3]
        x, y = rng.standard_normal((2, 3, 8, 8)), rng.integers(0, 3, 2)
        topt.zero_grad()
        tl = cls_loss(TF)(theirs, T(x), T(y))
        tl.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
        topt.step()
        with strict():
            loss, norm = steps[mode](ours, opt, arr(x), arr(y), 0.5)
        assert rel(loss, tl) < 1e-12 and rel(norm, tnorm) < 1e-12 and tnorm > 0.5, (it, mode)
        same_weights(ours, theirs, 1e-9)
    assert [steps[m].cache_info().misses for m in MODES[1:]] == [1, 1]
    # window_partition and window_reverse are inverse, and the shift cycles
    x = rng.standard_normal((2, 4, 4, 3))
    w = window_partition(arr(x), 2)
    assert rel(w, window_partition(T(x), 2)) == 0 and rel(window_reverse(w, 2, 4, 4), x) == 0
    assert rel(av.roll(arr(x), shifts=(-1, -1), dims=(1, 2)), torch.roll(T(x), shifts=(-1, -1), dims=(1, 2))) == 0


# -- 3. quantization-aware training by hand (fake quantization, STE, an observer) and nn.utils.prune ------------

def qat_cnn(lib, F_, th, num_bits=8):
    def fake_quant_per_channel(w, num_bits=8, ch_axis=0):
        """Symmetric per-output-channel fake quantization, straight-through: scale from amax with keepdim."""
        qmax = 2 ** (num_bits - 1) - 1
        dims = tuple(d for d in range(w.dim()) if d != ch_axis)
        scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp(min=1e-8) / qmax
        q = th.clamp(th.round(w / scale), -qmax - 1, qmax) * scale
        return w + (q - w).detach()

    class MinMaxObserverFakeQuant(lib.Module):
        """Asymmetric per-tensor activation fake quantization; the observer's min/max buffers are updated in
        training mode only, under no_grad, and frozen in eval."""
        def __init__(self, num_bits=8):
            super().__init__()
            self.quant_min, self.quant_max = 0, 2 ** num_bits - 1
            self.register_buffer("min_val", th.tensor(float("inf")))
            self.register_buffer("max_val", th.tensor(float("-inf")))

        @th.no_grad()
        def observe(self, x):
            self.min_val.copy_(th.minimum(self.min_val, x.min()))
            self.max_val.copy_(th.maximum(self.max_val, x.max()))

        def calculate_qparams(self):
            min_val_neg = th.clamp(self.min_val, max=0.)
            max_val_pos = th.clamp(self.max_val, min=0.)
            scale = (max_val_pos - min_val_neg) / float(self.quant_max - self.quant_min)
            scale = th.max(scale, th.tensor(1e-8, dtype=scale.dtype))
            zero_point = self.quant_min - th.round(min_val_neg / scale)
            zero_point = th.clamp(zero_point, self.quant_min, self.quant_max)
            return scale, zero_point

        def forward(self, x):
            if self.training:
                self.observe(x.detach())
            scale, zero_point = self.calculate_qparams()
            q = (th.clamp(th.round(x / scale) + zero_point, self.quant_min, self.quant_max) - zero_point) * scale
            return x + (q - x).detach()

    class QConv2d(lib.Conv2d):
        def forward(self, input):
            return self._conv_forward(input, fake_quant_per_channel(self.weight, num_bits), self.bias)

    class QLinear(lib.Linear):
        def forward(self, input):
            return F_.linear(input, fake_quant_per_channel(self.weight, num_bits), self.bias)

    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = QConv2d(1, 4, 3, padding=1, bias=False)
            self.bn1 = lib.BatchNorm2d(4)
            self.act1 = MinMaxObserverFakeQuant(num_bits)
            self.conv2 = QConv2d(4, 6, 3)
            self.act2 = MinMaxObserverFakeQuant(num_bits)
            self.fc = QLinear(24, 3)

        def forward(self, x):
            x = F_.max_pool2d(self.act1(F_.relu(self.bn1(self.conv1(x)))), 2)
            x = self.act2(F_.relu(self.conv2(x)))
            return self.fc(th.flatten(x, 1))

    return Net()


def test_qat_fake_quant_straight_through_per_channel_amax_scale_and_minmax_observer_buffers():
    ours, theirs = pair(lambda lib, F_, th: qat_cnn(lib, F_, th, num_bits=4))
    opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    steps = {m: compiled(step_fn(cls_loss(F)), m) for m in MODES}
    rng = np.random.default_rng(2)
    for it in range(6):
        mode = MODES[it % 3]
        x, y = rng.standard_normal((4, 1, 8, 8)) * (1 + it), rng.integers(0, 3, 4)  # growing ranges: observed
        topt.zero_grad()
        tl = cls_loss(TF)(theirs, T(x), T(y))
        tl.backward()
        topt.step()
        with strict():
            loss = steps[mode](ours, opt, arr(x), arr(y))
        assert rel(loss, tl) < 1e-12, (it, mode)
        same_weights(ours, theirs, 1e-10)
        assert float(ours.act1.min_val) == 0.0 and float(ours.act2.max_val) > 0  # after a ReLU
    assert [steps[m].cache_info().misses for m in MODES[1:]] == [1, 1]
    # in eval the observers are frozen and the batch norm uses its running statistics
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((3, 1, 8, 8)) * 20
    before = ours.act2.max_val.numpy().copy()
    with torch.no_grad():
        want = theirs(T(x))
    with strict():
        got = compiled(lambda m, x: m(x), "cpu")(ours, arr(x))
    assert rel(got, want) < 1e-12 and rel(ours(arr(x)), want) < 1e-12
    assert ours.act2.max_val.numpy() == before and theirs.act2.max_val.item() == before
    # the weights the forward uses are on the 4-bit grid: at most 16 levels per output channel
    w = ours.conv2.weight.numpy()
    scale = np.abs(w).max(axis=(1, 2, 3), keepdims=True) / 7
    q = np.clip(np.round(w / scale), -8, 7)
    assert all(len(np.unique(q[c])) <= 16 for c in range(6))


def prune_cnn(lib, F_, th):
    class LeNet(lib.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = lib.Conv2d(1, 3, 3)
            self.conv2 = lib.Conv2d(3, 4, 3)
            self.fc1 = lib.Linear(4 * 2 * 2, 8)
            self.fc2 = lib.Linear(8, 3)

        def forward(self, x):
            x = F_.max_pool2d(F_.relu(self.conv1(x)), (2, 2))
            x = F_.relu(self.conv2(x))
            x = x.view(-1, int(x.nelement() / x.shape[0]))
            x = F_.relu(self.fc1(x))
            return self.fc2(x)
    return LeNet()


def apply_pruning(prune, model):
    """The pruning tutorial's calls: local L1, global L1 over several layers, then structured on top (a
    PruningContainer)."""
    prune.l1_unstructured(model.conv1, name="weight", amount=0.3)
    prune.l1_unstructured(model.conv1, name="bias", amount=1)
    parameters_to_prune = ((model.conv2, 'weight'), (model.fc1, 'weight'), (model.fc2, 'weight'))
    prune.global_unstructured(parameters_to_prune, pruning_method=prune.L1Unstructured, amount=0.4)
    prune.ln_structured(model.fc1, name="weight", amount=0.25, n=2, dim=0)


def test_prune_l1_global_and_structured_masks_keep_zeros_while_training_then_remove():
    ours, theirs = pair(prune_cnn)
    apply_pruning(prune, ours)
    apply_pruning(tprune, theirs)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    same_weights(ours, theirs, 1e-300)  # the same masks
    assert prune.is_pruned(ours) and int((ours.fc1.weight_mask.sum(1) == 0).sum()) == 2
    opt = optim.SGD(ours.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = {m: compiled(step_fn(cls_loss(F)), m) for m in MODES}
    rng = np.random.default_rng(3)
    for it in range(8):
        mode = MODES[it % 3]
        if it == 5:  # make the pruning permanent in conv2 and fc1; the optimizers keep their momentum
            for m, tm in ((ours.conv2, theirs.conv2), (ours.fc1, theirs.fc1)):
                prune.remove(m, "weight")
                tprune.remove(tm, "weight")
            assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
            assert "conv2.weight" in dict(ours.named_parameters())
        x, y = rng.standard_normal((4, 1, 10, 10)), rng.integers(0, 3, 4)
        topt.zero_grad()
        tl = cls_loss(TF)(theirs, T(x), T(y))
        tl.backward()
        topt.step()
        with strict():
            loss = steps[mode](ours, opt, arr(x), arr(y))
        assert rel(loss, tl) < 1e-12, (it, mode)
        same_weights(ours, theirs, 1e-10)
        for m, tm in ((ours.conv1, theirs.conv1), (ours.fc2, theirs.fc2)):
            # (torch's `weight` is what its forward pre-hook computed, before the step: recompute it)
            assert rel(m.weight, (tm.weight_orig * tm.weight_mask).detach()) < 1e-10
            assert not m.weight.numpy()[m.weight_mask.numpy() == 0].any()  # pruned entries stay zero
        assert (ours.conv1.bias.numpy() == 0).sum() == 1  # amount=1: one entry
    assert not prune.is_pruned(ours.fc1) and prune.is_pruned(ours)


# -- 4. torch.nn.utils.parametrize: custom parametrizations with right_inverse, and orthogonal -----------------

def parametrized_mlp(lib, F_, th):
    P = lib.utils.parametrize

    class Symmetric(lib.Module):
        def forward(self, X):
            return X.triu() + X.triu(1).transpose(-1, -2)

        def right_inverse(self, A):
            return A.triu()

    class PositiveSoftplus(lib.Module):
        def forward(self, X):
            return F_.softplus(X)

        def right_inverse(self, W):
            return th.log(th.expm1(W))

    class MLP(lib.Module):
        def __init__(self):
            super().__init__()
            self.sym = lib.Linear(4, 4)
            self.orth = lib.Linear(4, 4, bias=False)
            self.pos = lib.Linear(4, 3)
            P.register_parametrization(self.sym, "weight", Symmetric())
            lib.utils.parametrizations.orthogonal(self.orth)
            with th.no_grad():
                self.pos.weight.abs_().add_(0.05)
            P.register_parametrization(self.pos, "weight", PositiveSoftplus())

        def forward(self, x):
            return self.pos(th.tanh(self.orth(th.tanh(self.sym(x)))))

    return MLP()


def mse_loss(F_):
    def loss_fn(model, x, y):
        return F_.mse_loss(model(x), y)
    return loss_fn


def test_parametrize_symmetric_and_softplus_right_inverse_and_orthogonal_trained_with_sgd():
    ours, theirs = pair(parametrized_mlp)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    assert "orth.parametrizations.weight.original" in ours.state_dict()
    for name in ("sym", "orth", "pos"):
        assert rel(getattr(ours, name).weight, getattr(theirs, name).weight.detach()) < 1e-14, name
        assert nn.utils.parametrize.is_parametrized(getattr(ours, name), "weight")
    assert rel(ours.sym.parametrizations.weight.original, theirs.sym.parametrizations.weight.original.detach()) == 0
    opt = optim.SGD(ours.parameters(), lr=0.2, momentum=0.9)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.2, momentum=0.9)
    steps = {m: compiled(step_fn(mse_loss(F)), m) for m in MODES}
    rng = np.random.default_rng(4)
    for it in range(6):
        mode = MODES[it % 3]
        x, y = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
        topt.zero_grad()
        tl = mse_loss(TF)(theirs, T(x), T(y))
        tl.backward()
        topt.step()
        with strict():
            loss = steps[mode](ours, opt, arr(x), arr(y))
        assert rel(loss, tl) < 1e-12, (it, mode)
        same_weights(ours, theirs, 1e-10)
        for name in ("sym", "orth", "pos"):
            m, tm = getattr(ours, name), getattr(theirs, name)
            assert rel(m.weight, tm.weight.detach()) < 1e-10, (it, name)
            assert rel(m.parametrizations.weight.original, tm.parametrizations.weight.original.detach()) < 1e-10
        w = ours.sym.weight.numpy()
        q, tq = ours.orth.weight.numpy(), theirs.orth.weight.detach().numpy()
        # orthogonal to the float32 roundoff of the `base` registered before `.to(float64)`, as torch's
        orth_err = np.abs(q @ q.T - np.eye(4)).max()
        assert np.array_equal(w, w.T) and orth_err < 1e-6 and abs(orth_err - np.abs(tq @ tq.T - np.eye(4)).max()) < 1e-12
        assert (ours.pos.weight.numpy() > 0).all()
    assert [steps[m].cache_info().misses for m in MODES[1:]] == [1, 1]
    with nn.utils.parametrize.cached(), torch.nn.utils.parametrize.cached():
        x = rng.standard_normal((2, 4))
        assert rel(ours(arr(x)), theirs(T(x)).detach()) < 1e-12
    for name in ("sym", "orth", "pos"):  # bake the parametrized weights in
        nn.utils.parametrize.remove_parametrizations(getattr(ours, name), "weight")
        torch.nn.utils.parametrize.remove_parametrizations(getattr(theirs, name), "weight")
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict()) == \
        ["orth.weight", "pos.bias", "pos.weight", "sym.bias", "sym.weight"]
    same_weights(ours, theirs, 1e-10)


# -- regressions: what the programs above found --------------------------------------------------------------

def test_get_submodule_finds_the_parent_for_model_surgery():
    """peft's and torchao's module replacement finds a layer's parent by `model.get_submodule(...)` and then
    `setattr`s the new layer on it; Avalon's Module had no get_submodule (an AttributeError)."""
    for lib in (nn, torch.nn):
        model = lib.Sequential(lib.Linear(2, 3), lib.ModuleList([lib.ReLU(), lib.Sequential(lib.Linear(3, 1))]))
        assert model.get_submodule("") is model and model.get_submodule("1.1.0") is model[1][1][0]
        assert isinstance(model.get_submodule("1.0"), lib.ReLU)
        parent = model.get_submodule("1.1")
        setattr(parent, "0", lib.Linear(3, 4))
        assert model[1][1][0].out_features == 4
        with pytest.raises(AttributeError, match="has no attribute `2`"):
            model.get_submodule("1.2")
        with pytest.raises(AttributeError, match="is not an nn.Module"):
            model.get_submodule("0.weight")

    class Plain(nn.Module):  # Avalon keeps modules in a plain list too: entered by index
        def __init__(self):
            super().__init__()
            self.blocks = [nn.Linear(2, 2), nn.Linear(2, 1)]
    p = Plain()
    assert p.get_submodule("blocks.1") is p.blocks[1]


def frozen_bn_model(lib, calls):
    class FrozenBN(lib.BatchNorm1d):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(False)  # always in eval mode

    class Backbone(lib.Module):
        def __init__(self):
            super().__init__()
            self.bn = FrozenBN(2)
            self.drop = lib.Dropout(0.5)

    class Model(lib.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone()
            self.heads = lib.ModuleList([FrozenBN(2), lib.Linear(2, 2)])

    return Model(), FrozenBN


def test_train_and_eval_call_each_submodules_own_train_override():
    """torch's Module.train(mode) sets `training` and calls every child's `train(mode)`, so an override runs:
    loralib merges the LoRA weights on `eval()` and unmerges them on `train()`, a backbone keeps its batch
    norms in eval mode. Avalon set the `training` flags by walking the model, calling no override."""
    for lib in (nn, torch.nn):
        calls = []
        m, FrozenBN = frozen_bn_model(lib, calls)
        assert m.eval() is m and not m.training and not m.backbone.drop.training and calls == [False, False]
        m.train()
        assert m.training and m.backbone.drop.training and m.heads[1].training
        assert not m.backbone.bn.training and not m.heads[0].training and calls == [False, False, True, True]
        if lib is nn:  # a plain (non-Module) model holding one: nn.train / nn.eval reach the override too
            holder = type("Holder", (), {})()
            holder.net, holder.training = FrozenBN(2), True
            nn.eval(holder)
            assert not holder.training and calls[-1] is False and len(calls) == 5


@pytest.mark.parametrize("mode", MODES)
def test_conv_forward_with_another_weight_as_qat_layers_call_it(mode):
    """torch.ao's QAT Conv2d (and hand-written ones) compute `self._conv_forward(x, fake_quant(self.weight),
    self.bias)`, which Avalon's Conv1d/2d/3d lacked; the padding modes go through it as in torch."""
    rng = np.random.default_rng(5)
    for lib_dim, shape in ((1, (2, 3, 7)), (2, (2, 3, 6, 5)), (3, (1, 3, 4, 5, 4))):
        for padding_mode in ("zeros", "reflect"):
            pair_ = [getattr(lib, f"Conv{lib_dim}d")(3, 4, 3, padding=1, padding_mode=padding_mode).double()
                     for lib in (nn, torch.nn)]
            ours, theirs = pair_
            nn.load_state_dict(ours, theirs.state_dict())
            x, w = rng.standard_normal(shape), rng.standard_normal(tuple(theirs.weight.shape))
            want = theirs._conv_forward(T(x), T(w), None)
            with strict():
                got = compiled(lambda m, x, w: m._conv_forward(x, w, None), mode)(ours, arr(x), arr(w))
            assert rel(got, want.detach()) < 1e-13, (lib_dim, padding_mode)
            assert rel(ours(arr(x)), theirs(T(x)).detach()) < 1e-13

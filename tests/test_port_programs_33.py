"""Round 9s of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: HazyResearch/safari's Hyena (hyena.py: fftconv's `torch.fft.rfft(k, n=2 * seqlen) / fft_size` and
`irfft(u_f * k_f, norm="forward")[..., :seqlen]`, PositionalEmbedding's complex `torch.exp(-1j * f * w)` split into
`z.real` and `z.imag`, OptimModule.register's parameter-or-buffer by lr with an `_optim` attribute set on parameters,
Sin activations sharing one `freq` parameter across the implicit filter's Sequential, ExponentialModulation,
HyenaOperator's grouped short Conv1d, `uc.split` into `*x, v` and einops rearranges; as a small LM with tied
embedding, trained with safari's optimizer groups made from the distinct `_optim` dicts by `add_param_group`);
lucidrains/byol-pytorch (the `singleton` decorator caching a lazily built projector and the target encoder,
NetWrapper's forward hook on `children()[-2]` storing the flattened hidden output in a dict keyed by device,
`copy.deepcopy` of the online encoder (its hook rebound to the copy), `p.requires_grad = False` on the target,
update_moving_average's `ma_params.data = old * beta + (1 - beta) * new` after each compiled step, with the BYOL
paper's cosine momentum schedule written into `target_ema_updater.beta`; `return_embedding` in eval mode); NX-AI/xlstm's
mLSTM (backends.py's parallel_stabilized_simple: `logsigmoid`, the cumsum matrix by `repeat` and transpose, a bool
`causal_mask` buffer (persistent=False) in `torch.where(..., -float("inf"))`, the row-wise max stabilizer and
`torch.maximum` normalizer, and recurrent_step_stabilized_simple with its in-place `q.squeeze_(2)`; MultiHeadLayerNorm
by `F.group_norm` with a `1.0 + weight` property, LinearHeadwiseExpand's `einsum("...hd,hod->...ho")`, CausalConv1d and
its conv1d_step's `conv_state.copy_(torch.roll(...))`, `conv_state[:, -1:, :] = x` and `y += bias`, the inits by
`linspace` under no_grad; as a pre-norm LM with AdamW and clip_grad_norm_, then the token-by-token recurrent form,
compiled, checked equal to the parallel one on both sides); lucidrains/perceiver-pytorch (fourier_encode's
`scales[(*((None,) * (len(x.shape) - 1)), Ellipsis)]`, the meshgrid of linspaces over the input axes, `cache_fn`'s
weight-tied layers after the first, PreNorm's context norm through `kwargs.update`, GEGLU, cross attention whose mask
is repeated by einops and applied by `sim.masked_fill_(~mask, -torch.finfo(sim.dtype).max)`, the latents repeated by
einops, and einops' Reduce layer in the head); facebookresearch/mega's MultiHeadEMA (the damped EMA kernel from
`torch.arange(length).to(p).view(1, 1, length) * torch.log(q)` and `einsum('dnl,dn->dl')`, reset_parameters'
`val.index_fill_` and `self.beta.normal_(...).add_(val)` under no_grad, the bidirectional kernel by `F.pad` of both
halves (one flipped) and the shifted FFT window `[..., s:s + seq_len]`, the padding mask, truncation, the eval-mode
kernel cache, and `step`'s chunked form carrying the state `hx` between chunks, checked equal to the whole sequence).

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`); the test's recurrent xLSTM
loop takes the library to concatenate with. Not Avalon: sizes are small; the stand-in for BYOL's resnet50 is a small
Sequential of bias-free convolutions, batch norms and an adaptive pool, whose `children()[-2]` is hooked as there.

Deliberate differences met: Mega's MultiHeadEMA caches its kernel and coefficients in eval mode in plain attributes
(`self._kernel = self._compute_kernel(...)`), tensors computed from the parameters, which a compiled function takes as
inputs: a compiled eval writes the cache back after the call (avalon/trace_state.py), as torch keeps it; the port's
eval then also runs eagerly, where the cache works as torch's. Conditioning, not
Avalon: a bias followed by BatchNorm1d has a zero gradient in exact arithmetic (BYOL's MLPs; the projector's last bias
too, since the predictor's first layer and its batch norm follow it), so its gradient is roundoff on both sides; with
Adam (byol-pytorch's README) these become lr-sized steps either way, which the EMA carries into the target's projector,
whose last bias reaches the loss unnormalized: the test trains with SGD and momentum (the paper's LARS is SGD-based) and
compares those biases within 1e-5.

Bugs found (regressions at the end): `named_modules`, `named_parameters` and `named_buffers` took no
`remove_duplicate` (a TypeError; accelerate's find_tied_parameters reads `named_parameters(remove_duplicate=False)`),
and `named_modules` no `memo`; avalon/nn/module.py now lists a shared module or tied tensor under each of its names
when asked (only the containers on the current path are skipped, as cycles), skips the modules of a given memo with
what is inside them and adds those it lists, as torch's (with `recurse=False`, a shared submodule's entries are left
out under each of its names). Met beside the complex FFT values: `torch.vdot`, `dot` and `inner` of complex vectors
converted the ComplexTensor as data ("numpy dtype complex64 has no Avalon equivalent"); avalon/complex.py's table of
complex rules now has them, as real-bilinear products of the parts (vdot conjugating its first operand).
"""
from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, lm_steps, rel
from test_port_programs_30 import randn, same_grads, same_weights_but
from test_port_programs_more import compiled, pair, same_weights, strict, train_step

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache", "torch_on_one_thread")

F32 = torch.float32


# -- 1. Hyena (HazyResearch/safari src/models/sequence/hyena.py: fftconv, Sin, PositionalEmbedding,
#       ExponentialModulation, HyenaFilter, HyenaOperator; src/utils/optim_groups-style AdamW groups from `_optim`) ------

def hyena(lib, F_, th, d_model=6, l_max=10, order=2, filter_order=8, vocab=9):
    torch = th
    nn = lib
    from einops import rearrange

    def fftconv(u, k, D):
        seqlen = u.shape[-1]
        fft_size = 2 * seqlen

        k_f = torch.fft.rfft(k, n=fft_size) / fft_size
        u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)

        if len(u.shape) > 3:
            k_f = k_f.unsqueeze(1)
        y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]

        out = y + u * D.unsqueeze(-1)
        return out.to(dtype=u.dtype)

    class OptimModule(nn.Module):
        """ Interface for Module that allows registering buffers/parameters with configurable optimizer hyperparameters """

        def register(self, name, tensor, lr=None, wd=0.0):
            """Register a tensor with a configurable learning rate and 0 weight decay"""

            if lr == 0.0:
                self.register_buffer(name, tensor)
            else:
                self.register_parameter(name, nn.Parameter(tensor))

                optim = {}
                if lr is not None:
                    optim["lr"] = lr
                if wd is not None:
                    optim["weight_decay"] = wd
                setattr(getattr(self, name), "_optim", optim)  # noqa: B010

    class Sin(nn.Module):
        def __init__(self, dim, w=10, train_freq=True):
            super().__init__()
            self.freq = nn.Parameter(w * torch.ones(1, dim)) if train_freq else w * torch.ones(1, dim)

        def forward(self, x):
            return torch.sin(self.freq * x)

    class PositionalEmbedding(OptimModule):
        def __init__(self, emb_dim: int, seq_len: int, lr_pos_emb: float = 1e-5, **kwargs):
            """Complex exponential positional embeddings for Hyena filters."""
            super().__init__()

            self.seq_len = seq_len
            # The time embedding fed to the filteres is normalized so that t_f = 1
            t = torch.linspace(0, 1, self.seq_len)[None, :, None]  # 1, L, 1

            if emb_dim > 1:
                bands = (emb_dim - 1) // 2
            # To compute the right embeddings we use the "proper" linspace
            t_rescaled = torch.linspace(0, seq_len - 1, seq_len)[None, :, None]
            w = 2 * math.pi * t_rescaled / seq_len  # 1, L, 1

            f = torch.linspace(1e-4, bands - 1, bands)[None, None]
            z = torch.exp(-1j * f * w)
            z = torch.cat([t, z.real, z.imag], dim=-1)
            self.register("z", z, lr=lr_pos_emb)
            self.register("t", t, lr=0.0)

        def forward(self, L):  # noqa: N803
            return self.z[:, :L], self.t[:, :L]

    class ExponentialModulation(OptimModule):
        def __init__(
            self,
            d_model,
            fast_decay_pct=0.3,
            slow_decay_pct=1.5,
            target=1e-2,
            modulation_lr=0.0,
            modulate: bool = True,
            shift: float = 0.0,
            **kwargs,
        ):
            super().__init__()
            self.modulate = modulate
            self.shift = shift
            max_decay = math.log(target) / fast_decay_pct
            min_decay = math.log(target) / slow_decay_pct
            deltas = torch.linspace(min_decay, max_decay, d_model)[None, None]
            self.register("deltas", deltas, lr=modulation_lr)

        def forward(self, t, x):
            if self.modulate:
                decay = torch.exp(-t * self.deltas.abs())
                x = x * (decay + self.shift)
            return x

    class HyenaFilter(OptimModule):
        def __init__(
            self,
            d_model,
            emb_dim=3,  # dim of input to MLP, augments with positional encoding
            order=16,  # width of the implicit MLP
            fused_fft_conv=False,
            seq_len=1024,
            lr=1e-3,
            lr_pos_emb=1e-5,
            dropout=0.0,
            w=1,  # frequency of periodic activations
            wd=0,  # weight decay of kernel parameters
            bias=True,
            num_inner_mlps=2,
            normalized=False,
            **kwargs,
        ):
            super().__init__()
            self.d_model = d_model
            self.use_bias = bias
            self.fused_fft_conv = fused_fft_conv
            self.bias = nn.Parameter(torch.randn(self.d_model))
            self.dropout = nn.Dropout(dropout)

            act = Sin(dim=order, w=w)
            self.emb_dim = emb_dim
            assert emb_dim % 2 != 0 and emb_dim >= 3, "emb_dim must be odd and greater or equal to 3 (time, sine and cosine)"
            self.seq_len = seq_len

            self.pos_emb = PositionalEmbedding(emb_dim, seq_len, lr_pos_emb)

            self.implicit_filter = nn.Sequential(
                nn.Linear(emb_dim, order),
                act,
            )
            for i in range(num_inner_mlps):  # noqa: B007
                self.implicit_filter.append(nn.Linear(order, order))
                self.implicit_filter.append(act)

            self.implicit_filter.append(nn.Linear(order, d_model, bias=False))

            self.modulation = ExponentialModulation(d_model, **kwargs)

            self.normalized = normalized
            for c in self.implicit_filter.children():
                for name, v in c.state_dict().items():  # noqa: B007
                    optim = {"weight_decay": wd, "lr": lr}
                    setattr(getattr(c, name), "_optim", optim)  # noqa: B010

        def filter(self, L, *args, **kwargs):  # noqa: N803
            z, t = self.pos_emb(L)
            h = self.implicit_filter(z)
            h = self.modulation(t, h)
            return h

        def forward(self, x, L, k=None, bias=None, *args, **kwargs):  # noqa: N803
            if k is None:
                k = self.filter(L)

            # Ensure compatibility with filters that return a tuple
            k = k[0] if type(k) is tuple else k

            y = fftconv(x, k, bias)
            return y

    class HyenaOperator(nn.Module):
        def __init__(
            self,
            d_model,
            l_max,
            order=2,
            filter_order=64,
            dropout=0.0,
            filter_dropout=0.0,
            **filter_args,
        ):
            super().__init__()
            self.d_model = d_model
            self.l_max = l_max
            self.order = order
            inner_width = d_model * (order + 1)
            self.dropout = nn.Dropout(dropout)
            self.in_proj = nn.Linear(d_model, inner_width)
            self.out_proj = nn.Linear(d_model, d_model)

            self.short_filter = nn.Conv1d(
                inner_width,
                inner_width,
                3,
                padding=2,
                groups=inner_width
            )
            self.filter_fn = HyenaFilter(
                d_model * (order - 1),
                order=filter_order,
                seq_len=l_max,
                channels=1,
                dropout=filter_dropout,
                **filter_args
            )

        def forward(self, u, *args, **kwargs):
            l = u.size(-2)  # noqa: E741
            l_filter = min(l, self.l_max)
            u = self.in_proj(u)
            u = rearrange(u, 'b l d -> b d l')

            uc = self.short_filter(u)[..., :l_filter]
            *x, v = uc.split(self.d_model, dim=1)

            k = self.filter_fn.filter(l_filter)[0]
            k = rearrange(k, 'l (o d) -> o d l', o=self.order - 1)
            bias = rearrange(self.filter_fn.bias, '(o d) -> o d', o=self.order - 1)

            for o, x_i in enumerate(reversed(x[1:])):
                v = self.dropout(v * x_i)
                v = self.filter_fn(v, l_filter, k=k[o], bias=bias[o])

            y = rearrange(v * x[0], 'b d l -> b l d')

            y = self.out_proj(y)
            return y

    class HyenaLM(nn.Module):  # a token embedding, a pre-norm residual Hyena block and a tied head (safari's SimpleLMHeadModel)
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model)
            self.norm = nn.LayerNorm(d_model)
            self.mixer = HyenaOperator(d_model, l_max, order=order, filter_order=filter_order, modulation_lr=0.0)
            self.norm_f = nn.LayerNorm(d_model)

        def forward(self, tokens):
            h = self.embed(tokens)
            h = h + self.mixer(self.norm(h))
            return F_.linear(self.norm_f(h), self.embed.weight)

    return HyenaLM()


def safari_optimizer(th, model, lr, weight_decay):
    """safari's train.py configure_optimizers: parameters without `_optim` in one AdamW group, then one group per
    distinct `_optim` dict."""
    all_parameters = list(model.parameters())
    params = [p for p in all_parameters if not hasattr(p, "_optim")]
    optimizer = th.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    hps = [getattr(p, "_optim") for p in all_parameters if hasattr(p, "_optim")]  # noqa: B009
    hps = [dict(s) for s in sorted(list(dict.fromkeys(frozenset(hp.items()) for hp in hps)))]
    for hp in hps:
        params = [p for p in all_parameters if getattr(p, "_optim", None) == hp]
        optimizer.add_param_group({"params": params, **hp})
    return optimizer


def test_hyena_fft_long_convolution_implicit_sine_filters_complex_positional_embedding_and_optim_groups():
    model, tmodel = pair(hyena, dtype=F32)
    optimizer = safari_optimizer(av, model, 1e-3, 0.1)
    toptimizer = safari_optimizer(torch, tmodel, 1e-3, 0.1)
    assert [len(g["params"]) for g in optimizer.param_groups] == [len(g["params"]) for g in toptimizer.param_groups]
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in toptimizer.param_groups]

    lm_steps(model, tmodel, optimizer, toptimizer, 9, (2, 9), seed=0)


# -- 2. BYOL (lucidrains/byol-pytorch byol_pytorch/byol_pytorch.py: the `singleton` decorator, NetWrapper's forward hook
#       on a hidden layer, the lazily built projector, the deep-copied target encoder, EMA and update_moving_average;
#       the paper's cosine momentum schedule written into `target_ema_updater.beta`) -----------------------------------

def byol(lib, F_, th, image_size=6, projection_size=4, projection_hidden_size=8):
    torch = th
    nn = lib
    F = F_  # noqa: N806

    def default(val, def_val):
        return def_val if val is None else val

    def flatten(t):
        return t.reshape(t.shape[0], -1)

    def singleton(cache_key):
        def inner_fn(fn):
            @functools.wraps(fn)
            def wrapper(self, *args, **kwargs):
                instance = getattr(self, cache_key)
                if instance is not None:
                    return instance

                instance = fn(self, *args, **kwargs)
                setattr(self, cache_key, instance)
                return instance
            return wrapper
        return inner_fn

    def get_module_device(module):
        return next(module.parameters()).device

    def set_requires_grad(model, val):
        for p in model.parameters():
            p.requires_grad = val

    def loss_fn(x, y):
        x = F.normalize(x, dim=-1, p=2)
        y = F.normalize(y, dim=-1, p=2)
        return 2 - 2 * (x * y).sum(dim=-1)

    class EMA():  # noqa: UP039
        def __init__(self, beta):
            super().__init__()
            self.beta = beta

        def update_average(self, old, new):
            if old is None:
                return new
            return old * self.beta + (1 - self.beta) * new

    def update_moving_average(ema_updater, ma_model, current_model):
        for current_params, ma_params in zip(current_model.parameters(), ma_model.parameters()):
            old_weight, up_weight = ma_params.data, current_params.data
            ma_params.data = ema_updater.update_average(old_weight, up_weight)

    def MLP(dim, projection_size, hidden_size=4096, sync_batchnorm=None):  # noqa: N802
        return nn.Sequential(
            nn.Linear(dim, hidden_size),
            nn.BatchNorm1d(hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, projection_size)
        )

    class NetWrapper(nn.Module):
        def __init__(self, net, projection_size, projection_hidden_size, layer=-2, use_simsiam_mlp=False,
                     sync_batchnorm=None):
            super().__init__()
            self.net = net
            self.layer = layer

            self.projector = None
            self.projection_size = projection_size
            self.projection_hidden_size = projection_hidden_size

            self.use_simsiam_mlp = use_simsiam_mlp
            self.sync_batchnorm = sync_batchnorm

            self.hidden = {}
            self.hook_registered = False

        def _find_layer(self):
            if type(self.layer) == str:  # noqa: E721
                modules = dict([*self.net.named_modules()])
                return modules.get(self.layer, None)
            elif type(self.layer) == int:  # noqa: E721
                children = [*self.net.children()]
                return children[self.layer]
            return None

        def _hook(self, _, input, output):  # noqa: A002
            device = input[0].device
            self.hidden[device] = flatten(output)

        def _register_hook(self):
            layer = self._find_layer()
            assert layer is not None, f'hidden layer ({self.layer}) not found'
            handle = layer.register_forward_hook(self._hook)  # noqa: F841
            self.hook_registered = True

        @singleton('projector')
        def _get_projector(self, hidden):
            _, dim = hidden.shape
            create_mlp_fn = MLP
            projector = create_mlp_fn(dim, self.projection_size, self.projection_hidden_size,
                                      sync_batchnorm=self.sync_batchnorm)
            return projector.to(hidden)

        def get_representation(self, x):
            if self.layer == -1:
                return self.net(x)

            if not self.hook_registered:
                self._register_hook()

            self.hidden.clear()
            _ = self.net(x)
            hidden = self.hidden[x.device]
            self.hidden.clear()

            assert hidden is not None, f'hidden layer {self.layer} never emitted an output'
            return hidden

        def forward(self, x, return_projection=True):
            representation = self.get_representation(x)

            if not return_projection:
                return representation

            projector = self._get_projector(representation)
            projection = projector(representation)
            return projection, representation

    class BYOL(nn.Module):
        def __init__(
            self,
            net,
            image_size,
            hidden_layer=-2,
            projection_size=256,
            projection_hidden_size=4096,
            augment_fn=None,
            augment_fn2=None,
            moving_average_decay=0.99,
            use_momentum=True,
            sync_batchnorm=None
        ):
            super().__init__()
            self.net = net

            self.augment1 = augment_fn
            self.augment2 = default(augment_fn2, self.augment1)

            self.online_encoder = NetWrapper(
                net,
                projection_size,
                projection_hidden_size,
                layer=hidden_layer,
                use_simsiam_mlp=not use_momentum,
                sync_batchnorm=sync_batchnorm
            )

            self.use_momentum = use_momentum
            self.target_encoder = None
            self.target_ema_updater = EMA(moving_average_decay)

            self.online_predictor = MLP(projection_size, projection_size, projection_hidden_size)

            # get device of network and make wrapper same device
            device = get_module_device(net)
            self.to(device)

            # send a mock image tensor to instantiate singleton parameters
            self.forward(torch.randn(2, 3, image_size, image_size, device=device))

        @singleton('target_encoder')
        def _get_target_encoder(self):
            target_encoder = copy.deepcopy(self.online_encoder)
            set_requires_grad(target_encoder, False)
            return target_encoder

        def reset_moving_average(self):
            del self.target_encoder
            self.target_encoder = None

        def update_moving_average(self):
            assert self.use_momentum, 'you do not need to update the moving average, since you have turned off momentum for the target encoder'  # noqa: E501
            assert self.target_encoder is not None, 'target encoder has not been created yet'
            update_moving_average(self.target_ema_updater, self.target_encoder, self.online_encoder)

        def forward(
            self,
            x,
            return_embedding=False,
            return_projection=True
        ):
            assert not (self.training and x.shape[0] == 1), 'you must have greater than 1 sample when training, due to the batchnorm in the projection layer'  # noqa: E501

            if return_embedding:
                return self.online_encoder(x, return_projection=return_projection)

            image_one, image_two = self.augment1(x), self.augment2(x)

            images = torch.cat((image_one, image_two), dim=0)

            online_projections, _ = self.online_encoder(images)
            online_predictions = self.online_predictor(online_projections)

            online_pred_one, online_pred_two = online_predictions.chunk(2, dim=0)

            with torch.no_grad():
                target_encoder = self._get_target_encoder() if self.use_momentum else self.online_encoder

                target_projections, _ = target_encoder(images)
                target_projections = target_projections.detach()

                target_proj_one, target_proj_two = target_projections.chunk(2, dim=0)

            loss_one = loss_fn(online_pred_one, target_proj_two.detach())
            loss_two = loss_fn(online_pred_two, target_proj_one.detach())

            loss = loss_one + loss_two
            return loss.mean()

    resnet = nn.Sequential(  # a small stand-in for torchvision's resnet50 (children()[-2] is its pooled output)
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 5, 3, stride=2, bias=False),
        nn.BatchNorm2d(5), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Linear(1, 3))
    return BYOL(resnet, image_size, hidden_layer=-2, projection_size=projection_size,
                projection_hidden_size=projection_hidden_size,
                augment_fn=lambda x: x.flip(-1), augment_fn2=lambda x: 0.8 * x.transpose(-1, -2) + 0.1)


LOOSE = ("online_encoder.projector.0.bias", "online_encoder.projector.3.bias", "online_predictor.0.bias")


def test_byol_hooked_hidden_layer_singleton_projector_deepcopied_ema_target_and_cosine_momentum():
    learner, tlearner = pair(byol, dtype=F32)
    assert sorted(k for k, _ in learner.named_parameters()) == sorted(k for k, _ in tlearner.named_parameters())
    assert not any(p.requires_grad for p in learner.target_encoder.parameters())
    opt = av.optim.SGD(learner.parameters(), lr=0.05, momentum=0.9, weight_decay=1.5e-6)
    topt = torch.optim.SGD(tlearner.parameters(), lr=0.05, momentum=0.9, weight_decay=1.5e-6)

    def train_step(learner, opt, images):
        loss, grads = av.value_and_grad(lambda m, x: m(x))(learner, images)
        opt.step(grads)
        return loss, grads
    run = compiled(train_step, "numpy")

    rng, steps, base = np.random.default_rng(2), 4, 0.9
    for it in range(steps):
        images = randn(rng, 8, 3, 6, 6)
        tloss = tlearner(T(images))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        with strict():
            loss, grads = (run if it else train_step)(learner, opt, av.tensor(images))
        assert rel(loss, tloss) < 1e-5, it
        # a bias before BatchNorm1d (the MLPs; the projector's last feeds the predictor's) has a zero gradient in exact
        # arithmetic: roundoff on both sides
        same_grads(grads, tlearner, 1e-4, skip=LOOSE)
        assert all(np.abs(grads[k].numpy()).max() < 1e-5 for k in LOOSE)
        for m in (learner, tlearner):  # BYOL's momentum 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2
            m.target_ema_updater.beta = 1 - (1 - base) * (math.cos(math.pi * it / steps) + 1) / 2
            m.update_moving_average()
        same_weights_but(learner, tlearner, 1e-4, LOOSE + ("target_encoder.projector.0.bias", "target_encoder.projector.3.bias"), 1e-5)
    with av.no_grad(), torch.no_grad():
        images = randn(rng, 2, 3, 6, 6)
        proj, rep = learner.eval()(av.tensor(images), return_embedding=True)
        tproj, trep = tlearner.eval()(T(images), return_embedding=True)
        assert rel(proj, tproj) < 1e-5 and rel(rep, trep) < 1e-5


# -- 3. xLSTM's mLSTM (NX-AI/xlstm xlstm/blocks/mlstm/backends.py parallel_stabilized_simple and
#       recurrent_step_stabilized_simple, cell.py's mLSTMCell, layer.py's mLSTMLayer, components/ln.py,
#       components/linear_headwise.py, components/conv.py's CausalConv1d, components/init.py) --------------------------

def mlstm_backends(torch, F):  # noqa: N803 (backends.py, written against torch)
    def parallel_stabilized_simple(
        queries, keys, values, igate_preact, fgate_preact, lower_triangular_matrix=None, stabilize_rowwise=True,
        eps=1e-6, **kwargs,
    ):
        B, NH, S, DH = queries.shape  # noqa: N806
        _dtype, _device = queries.dtype, queries.device

        # forget gate matrix
        log_fgates = torch.nn.functional.logsigmoid(fgate_preact)  # (B, NH, S, 1)
        if lower_triangular_matrix is None or S < lower_triangular_matrix.size(-1):
            ltr = torch.tril(torch.ones((S, S), dtype=torch.bool, device=_device))
        else:
            ltr = lower_triangular_matrix
        assert ltr.dtype == torch.bool, f"lower_triangular_matrix must be of dtype bool, got {ltr.dtype}"

        log_fgates_cumsum = torch.cat(
            [
                torch.zeros((B, NH, 1, 1), dtype=_dtype, device=_device),
                torch.cumsum(log_fgates, dim=-2),
            ],
            dim=-2,
        )  # (B, NH, S+1, 1)
        # for each batch/head this is a matrix of shape (S+1, S+1) containing the cumsum of the log forget gate values
        # in the second dimension (colum dimension). Each row has the same is a copy of the first row.
        # First entry of each row is zero.
        rep_log_fgates_cumsum = log_fgates_cumsum.repeat(1, 1, 1, S + 1)  # (B, NH, S+1, S+1)
        # Now in each row cut off / subtract the forgetgate values of the later timesteps
        # where col j > row i
        _log_fg_matrix = rep_log_fgates_cumsum - rep_log_fgates_cumsum.transpose(-2, -1)  # (B, NH, S+1, S+1)
        # Causal masking & selection of the correct submatrix, such that forgetgate at timestep t is not applied
        # to the input at timestep t
        log_fg_matrix = torch.where(ltr, _log_fg_matrix[:, :, 1:, 1:], -float("inf"))  # (B, NH, S, S)

        # gate decay matrix D (combination of forget gate and input gate)
        log_D_matrix = log_fg_matrix + igate_preact.transpose(-2, -1)  # (B, NH, S, S)  # noqa: N806
        # D matrix stabilization
        if stabilize_rowwise:
            max_log_D, _ = torch.max(log_D_matrix, dim=-1, keepdim=True)  # (B, NH, S, 1)  # noqa: N806
        else:
            max_log_D = torch.max(log_D_matrix.view(B, NH, -1), dim=-1, keepdim=True)[0].unsqueeze(-1)  # noqa: N806
            # (B, NH, 1, 1)
        log_D_matrix_stabilized = log_D_matrix - max_log_D  # (B, NH, S, S)  # noqa: N806
        D_matrix = torch.exp(log_D_matrix_stabilized)  # (B, NH, S, S)  # noqa: N806

        keys_scaled = keys / math.sqrt(DH)

        # combination matrix C
        qk_matrix = queries @ keys_scaled.transpose(-2, -1)  # (B, NH, S, S)
        C_matrix = qk_matrix * D_matrix  # (B, NH, S, S)  # noqa: N806
        normalizer = torch.maximum(C_matrix.sum(dim=-1, keepdim=True).abs(), torch.exp(-max_log_D))  # (B, NH, S, 1)
        # (B, NH, S, S)
        C_matrix_normalized = C_matrix / (normalizer + eps)  # noqa: N806

        # retrieved values
        h_tilde_state = C_matrix_normalized @ values  # (B, NH, S, DH)

        return h_tilde_state

    def recurrent_step_stabilized_simple(
        c_state, n_state, m_state, q, k, v, igate_preact, fgate_preact, eps=1e-6, **kwargs,
    ):
        B, NH, S, DH = q.shape  # noqa: N806
        # projections
        q, k, v = q.squeeze_(2).unsqueeze(-1), k.squeeze_(2).unsqueeze(-1), v.squeeze_(2).unsqueeze(-1)  # (B, NH, DH, 1)

        # gates
        log_fg_act = torch.nn.functional.logsigmoid(fgate_preact)  # (B, NH, 1, 1)

        # update rule
        m_state_new = torch.max(log_fg_act + m_state, igate_preact)  # (B, NH, 1, 1)

        fg_act = torch.exp(log_fg_act + m_state - m_state_new)  # (B, NH, 1, 1)
        ig_act = torch.exp(igate_preact - m_state_new)  # (B, NH, 1, 1)

        k_scaled = k / math.sqrt(DH)

        c_state_new = fg_act * c_state + ig_act * (k_scaled @ v.transpose(-1, -2))  # (B, NH, DH, DH)
        n_state_new = fg_act * n_state + ig_act * k_scaled  # (B, NH, DH, 1)

        h_num = q.transpose(-1, -2) @ c_state_new  # (B, NH, 1, DH)

        qn_dotproduct = q.transpose(-1, -2) @ n_state_new  # (B, NH, 1, 1)
        max_val = torch.exp(-m_state_new)  # (B, NH, 1, 1)
        h_denom = torch.maximum(qn_dotproduct.abs(), max_val) + eps
        h = h_num / h_denom  # (B, NH, 1, DH) / (B, NH, 1, 1) = (B, NH, 1, DH)

        return h, (c_state_new, n_state_new, m_state_new)

    return parallel_stabilized_simple, recurrent_step_stabilized_simple


def xlstm_mlstm(lib, F_, th, embedding_dim=8, num_heads=2, context_length=6, proj_factor=2.0, conv1d_kernel_size=3,
                qkv_proj_blocksize=4, vocab=10):
    torch = th
    nn = lib
    F = F_  # noqa: N806
    parallel_stabilized_simple, recurrent_step_stabilized_simple = mlstm_backends(th, F_)

    def bias_linspace_init_(param, start: float = 3.4, end: float = 6.0):
        """Linearly spaced bias init across dimensions."""
        assert param.dim() == 1, f"param must be 1-dimensional (typically a bias), got {param.dim()}"
        n_dims = param.shape[0]
        init_vals = torch.linspace(start, end, n_dims)
        with torch.no_grad():
            param.copy_(init_vals)
        return param

    def small_init_init_(param, dim: int):
        std = math.sqrt(2 / (5 * dim))
        torch.nn.init.normal_(param, mean=0.0, std=std)
        return param

    def wang_init_(param, dim: int, num_blocks: int):
        std = 2 / num_blocks / math.sqrt(dim)
        torch.nn.init.normal_(param, mean=0.0, std=std)
        return param

    class LayerNorm(nn.Module):
        """LayerNorm but with an optional bias. PyTorch doesn't support simply bias=False."""

        def __init__(self, ndim: int = -1, weight: bool = True, bias: bool = False, eps: float = 1e-5,
                     residual_weight: bool = True):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(ndim)) if weight else None
            self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
            self.eps = eps
            self.residual_weight = residual_weight
            self.ndim = ndim
            self.reset_parameters()

        @property
        def weight_proxy(self):
            if self.weight is None:
                return None
            if self.residual_weight:
                return 1.0 + self.weight
            else:
                return self.weight

        def forward(self, input):  # noqa: A002
            return F.layer_norm(input, normalized_shape=(self.ndim,), weight=self.weight_proxy, bias=self.bias,
                                eps=self.eps)

        def reset_parameters(self):
            if self.weight_proxy is not None:
                if self.residual_weight:
                    nn.init.zeros_(self.weight)
                else:
                    nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    class MultiHeadLayerNorm(LayerNorm):
        def forward(self, input):  # noqa: A002
            assert input.dim() == 4, "Input must be 4D tensor (B, NH, S, DH)"
            B, NH, S, DH = input.shape  # noqa: N806

            gn_in_1 = input.transpose(1, 2)  # (B, S, NH, DH)
            gn_in_2 = gn_in_1.reshape(B * S, NH * DH)  # (B * S, NH * DH)
            out = F.group_norm(
                gn_in_2,
                num_groups=NH,
                weight=self.weight_proxy,
                bias=self.bias,
                eps=self.eps,
            )
            # (B * S), (NH * DH) -> (B, NH, S, DH)
            out = out.view(B, S, NH, DH).transpose(1, 2)
            return out

    class LinearHeadwiseExpand(nn.Module):
        """This is a structured projection layer that projects the input to a higher dimension.
        It only allows integer up-projection factors, i.e. the output dimension is a multiple of the input dimension.
        """

        def __init__(self, in_features, num_heads, bias=False):
            super().__init__()
            self.num_heads = num_heads
            out_features_per_head = in_features // num_heads
            self.weight = nn.Parameter(torch.empty(num_heads, out_features_per_head, in_features // num_heads))
            if bias:
                self.bias = nn.Parameter(torch.empty(in_features))
            else:
                self.bias = None
            self.reset_parameters()

        def reset_parameters(self, **kwargs):
            # small init
            nn.init.normal_(self.weight.data, mean=0.0, std=math.sqrt(2 / 5 / self.weight.shape[-1]))
            if self.bias is not None:
                nn.init.zeros_(self.bias.data)

        def forward(self, x):
            shape = x.shape
            x = x.view(*shape[:-1], self.num_heads, -1)
            x = torch.einsum("...hd,hod->...ho", x, self.weight)
            x = x.reshape(*shape[:-1], -1)
            if self.bias is not None:
                x = x + self.bias
            return x

    class CausalConv1d(nn.Module):
        """Implements causal depthwise convolution of a time series tensor."""

        def __init__(self, feature_dim, kernel_size=4, causal_conv_bias=True, channel_mixing=False):
            super().__init__()
            self.kernel_size = kernel_size
            self.groups = feature_dim
            if channel_mixing:
                self.groups = 1
            if kernel_size == 0:
                self.conv = None  # Noop
            else:
                self.pad = kernel_size - 1  # padding of this size assures temporal causality.
                self.conv = nn.Conv1d(
                    in_channels=feature_dim,
                    out_channels=feature_dim,
                    kernel_size=kernel_size,
                    padding=self.pad,
                    groups=self.groups,
                    bias=causal_conv_bias,
                )
            self.reset_parameters()

        def reset_parameters(self, **kwargs):
            self.conv.reset_parameters()

        def forward(self, x, conv_state=None, return_last_state=False):
            if conv_state is not None:
                x = torch.cat([conv_state, x], dim=1)

            if self.kernel_size == 0:
                return x
            y = x.transpose(2, 1)  # (B,F,T) tensor - now in the right shape for conv layer.
            y = self.conv(y)  # (B,F,T+pad) tensor
            if conv_state is not None:
                y = y[:, :, conv_state.shape[1]:]

            if return_last_state:
                return y[:, :, : -self.pad].transpose(2, 1), x[:, -self.pad:]
            else:
                return y[:, :, : -self.pad].transpose(2, 1)

    class mLSTMCell(nn.Module):  # noqa: N801
        def __init__(self, embedding_dim, num_heads, context_length):
            super().__init__()
            self.num_heads = num_heads
            self.backend_fn = parallel_stabilized_simple
            self.backend_fn_step = recurrent_step_stabilized_simple

            self.igate = nn.Linear(3 * embedding_dim, num_heads)
            self.fgate = nn.Linear(3 * embedding_dim, num_heads)

            self.outnorm = MultiHeadLayerNorm(ndim=embedding_dim, weight=True, bias=False)

            self.register_buffer(
                "causal_mask",
                torch.tril(torch.ones(context_length, context_length, dtype=torch.bool)),
                persistent=False,
            )
            self.reset_parameters()

        def forward(self, q, k, v, **kwargs):
            B, S, _ = q.shape  # (B, S, H)  # noqa: N806

            if_gate_input = torch.cat([q, k, v], dim=-1)
            q = q.view(B, S, self.num_heads, -1)  # (B, S, NH, DH)
            k = k.view(B, S, self.num_heads, -1)  # (B, S, NH, DH)
            v = v.view(B, S, self.num_heads, -1)  # (B, S, NH, DH)

            q = q.transpose(1, 2)  # (B, NH, S, DH)
            k = k.transpose(1, 2)  # (B, NH, S, DH)
            v = v.transpose(1, 2)  # (B, NH, S, DH)

            # compute input and forget gate pre-activations
            igate_preact = self.igate(if_gate_input)  # (B, S, NH)
            igate_preact = igate_preact.transpose(-1, -2).unsqueeze(-1)  # (B, NH, S, 1)
            fgate_preact = self.fgate(if_gate_input)  # (B, S, NH)
            fgate_preact = fgate_preact.transpose(-1, -2).unsqueeze(-1)  # (B, NH, S, 1)#

            h_state = self.backend_fn(
                queries=q,
                keys=k,
                values=v,
                igate_preact=igate_preact,
                fgate_preact=fgate_preact,
                lower_triangular_matrix=self.causal_mask,
            )  # (B, NH, S, DH)

            h_state_norm = self.outnorm(h_state)  # (B, NH, S, DH)
            h_state_norm = h_state_norm.transpose(1, 2).reshape(B, S, -1)  # (B, NH, S, DH) -> (B, S, H)

            return h_state_norm

        def step(self, q, k, v, mlstm_state=None, **kwargs):
            B, S, _ = q.shape  # (B, S, H)  # noqa: N806
            assert S == 1, f"mLSTMCell.step only supports sequence length S=1, but got S={S}."

            if_gate_input = torch.cat([q, k, v], dim=-1)
            q = q.view(B, S, self.num_heads, -1)  # (B, S, NH, DH)
            k = k.view(B, S, self.num_heads, -1)  # (B, S, NH, DH)
            v = v.view(B, S, self.num_heads, -1)  # (B, S, NH, DH)

            _, _, NH, DH = q.shape  # noqa: N806

            q = q.transpose(1, 2)  # (B, NH, S, DH)
            k = k.transpose(1, 2)  # (B, NH, S, DH)
            v = v.transpose(1, 2)  # (B, NH, S, DH)

            # compute input and forget gate pre-activations
            igate_preact = self.igate(if_gate_input)  # (B, S, NH)
            igate_preact = igate_preact.transpose(-1, -2).unsqueeze(-1)  # (B, NH, S, 1)
            fgate_preact = self.fgate(if_gate_input)  # (B, S, NH)
            fgate_preact = fgate_preact.transpose(-1, -2).unsqueeze(-1)  # (B, NH, S, 1)

            if mlstm_state is None:
                c_state = torch.zeros(size=(B, NH, DH, DH), device=q.device, dtype=q.dtype)
                n_state = torch.zeros(size=(B, NH, DH, 1), device=q.device, dtype=q.dtype)
                m_state = torch.zeros(size=(B, NH, 1, 1), device=q.device, dtype=q.dtype)
            else:
                c_state, n_state, m_state = mlstm_state
                c_state = c_state.to(device=q.device, dtype=q.dtype)
                n_state = n_state.to(device=q.device, dtype=q.dtype)
                m_state = m_state.to(device=q.device, dtype=q.dtype)

            assert c_state.shape == (B, NH, DH, DH), f"Expected c_state shape {(B, NH, DH, DH)}, but got {c_state.shape}."
            assert n_state.shape == (B, NH, DH, 1), f"Expected n_state shape {(B, NH, DH, 1)}, but got {n_state.shape}."
            assert m_state.shape == (B, NH, 1, 1), f"Expected m_state shape {(B, NH, 1, 1)}, but got {m_state.shape}."

            h_state, mlstm_state = self.backend_fn_step(
                c_state=c_state,
                n_state=n_state,
                m_state=m_state,
                q=q,
                k=k,
                v=v,
                igate_preact=igate_preact,
                fgate_preact=fgate_preact,
            )  # (B, NH, 1 DH), ((B, NH, DH, DH), (B, NH, DH, 1), (B, NH, 1, 1))

            h_state_norm = self.outnorm(h_state)  # (B, NH, S, DH)
            h_state_norm = h_state_norm.transpose(1, 2).reshape(B, S, -1)  # (B, NH, S, DH) -> (B, S, H)

            return h_state_norm, mlstm_state

        def reset_parameters(self):
            self.outnorm.reset_parameters()
            # forget gate initialization
            torch.nn.init.zeros_(self.fgate.weight)
            bias_linspace_init_(self.fgate.bias, start=3.0, end=6.0)
            # input gate initialization
            torch.nn.init.zeros_(self.igate.weight)
            torch.nn.init.normal_(self.igate.bias, mean=0.0, std=0.1)

    class mLSTMLayer(nn.Module):  # noqa: N801
        def __init__(self):
            super().__init__()
            inner = int(proj_factor * embedding_dim)
            self.inner_embedding_dim = inner
            self.proj_up = nn.Linear(embedding_dim, 2 * inner, bias=False)
            num_proj_heads = round(inner // qkv_proj_blocksize)
            self.q_proj = LinearHeadwiseExpand(inner, num_proj_heads)
            self.k_proj = LinearHeadwiseExpand(inner, num_proj_heads)
            self.v_proj = LinearHeadwiseExpand(inner, num_proj_heads)
            self.conv1d = CausalConv1d(inner, kernel_size=conv1d_kernel_size)
            self.conv_act_fn = nn.SiLU()
            self.mlstm_cell = mLSTMCell(inner, num_heads, context_length)
            self.ogate_act_fn = nn.SiLU()
            self.learnable_skip = nn.Parameter(torch.ones(inner, requires_grad=True))
            self.proj_down = nn.Linear(inner, embedding_dim, bias=False)
            self.dropout = nn.Dropout(0.0)
            self.reset_parameters()

        def forward(self, x, **kwargs):
            B, S, _ = x.shape  # noqa: N806

            # up-projection
            x_inner = self.proj_up(x)
            x_mlstm, z = torch.split(x_inner, split_size_or_sections=self.inner_embedding_dim, dim=-1)

            # mlstm branch
            x_mlstm_conv = self.conv1d(x_mlstm)
            x_mlstm_conv_act = self.conv_act_fn(x_mlstm_conv)

            q = self.q_proj(x_mlstm_conv_act)
            k = self.k_proj(x_mlstm_conv_act)
            v = self.v_proj(x_mlstm)

            h_tilde_state = self.mlstm_cell(q=q, k=k, v=v)

            h_tilde_state_skip = h_tilde_state + (self.learnable_skip * x_mlstm_conv_act)

            # output / z branch
            h_state = h_tilde_state_skip * self.ogate_act_fn(z)

            # down-projection
            y = self.dropout(self.proj_down(h_state))
            return y

        def step(self, x, mlstm_state=None, conv_state=None):
            B, S, _ = x.shape  # noqa: N806

            # up-projection
            x_inner = self.proj_up(x)
            x_mlstm, z = torch.split(x_inner, split_size_or_sections=self.inner_embedding_dim, dim=-1)

            # mlstm branch
            x_mlstm_conv, conv_state = self.conv1d.step(x_mlstm, conv_state=conv_state)
            x_mlstm_conv_act = self.conv_act_fn(x_mlstm_conv)

            q = self.q_proj(x_mlstm_conv_act)
            k = self.k_proj(x_mlstm_conv_act)
            v = self.v_proj(x_mlstm)

            h_tilde_state, mlstm_state = self.mlstm_cell.step(q=q, k=k, v=v, mlstm_state=mlstm_state)

            h_tilde_state_skip = h_tilde_state + (self.learnable_skip * x_mlstm_conv_act)

            # output / z branch
            h_state = h_tilde_state_skip * self.ogate_act_fn(z)

            # down-projection
            y = self.dropout(self.proj_down(h_state))
            return y, {"mlstm_state": mlstm_state, "conv_state": conv_state}

        def reset_parameters(self):
            # init inproj
            small_init_init_(self.proj_up.weight, dim=embedding_dim)
            # init outproj
            wang_init_(self.proj_down.weight, dim=embedding_dim, num_blocks=1)

            nn.init.ones_(self.learnable_skip)

            def _init_qkv_proj(qkv_proj):
                # use the embedding dim instead of the inner embedding dim
                small_init_init_(qkv_proj.weight, dim=embedding_dim)
                if qkv_proj.bias is not None:
                    nn.init.zeros_(qkv_proj.bias)

            _init_qkv_proj(self.q_proj)
            _init_qkv_proj(self.k_proj)
            _init_qkv_proj(self.v_proj)

            self.mlstm_cell.reset_parameters()

    def conv1d_step(x, conv_state, conv1d_weight, conv1d_bias=None):  # components/conv.py's conv1d_step
        """
        B: batch size
        S: sequence length
        D: feature dimension
        KS: kernel size
        Args:
            x (torch.Tensor): (B, S, D)
            conv_state (torch.Tensor): (B, KS, D)
            conv1d_weight (torch.Tensor): (KS, D)
        """
        assert (
            x.shape[0] == conv_state.shape[0]
        ), f"x has batch size {x.shape[0]} but conv_state has batch size {conv_state.shape[0]}"
        assert (
            x.shape[2] == conv_state.shape[2]
        ), f"x has feature dimension {x.shape[2]} but conv_state has feature dimension {conv_state.shape[2]}"
        assert x.shape[1] == 1, f"x has sequence length {x.shape[1]} but it should be 1"
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=1))
        conv_state[:, -1:, :] = x
        y = torch.sum(conv_state * conv1d_weight, dim=1, keepdim=True)
        if conv1d_bias is not None:
            y += conv1d_bias
        return y, conv_state

    def causal_conv_step(self, x, conv_state=None):
        if self.kernel_size == 0:
            return x, conv_state
        B, S, D = x.shape  # noqa: N806
        if conv_state is None:
            conv_state = torch.zeros(size=(B, self.kernel_size, D), device=self.conv.weight.device,
                                     dtype=self.conv.weight.dtype)
        y, conv_state = conv1d_step(
            x,
            conv_state,
            self.conv.weight[:, 0, :].transpose(0, 1),  # rearrange(, "D 1 KS -> KS D")
            conv1d_bias=self.conv.bias,
        )
        return y, conv_state
    CausalConv1d.step = causal_conv_step

    class xLSTMLM(nn.Module):  # noqa: N801 (xlstm_lm_model.py: embedding, a pre-norm mLSTM block, post-blocks norm, head)
        def __init__(self):
            super().__init__()
            self.token_embedding = nn.Embedding(vocab, embedding_dim)
            self.xlstm_norm = LayerNorm(ndim=embedding_dim, weight=True, bias=False)
            self.mlstm_layer = mLSTMLayer()
            self.post_blocks_norm = LayerNorm(ndim=embedding_dim, weight=True, bias=False)
            self.lm_head = nn.Linear(embedding_dim, vocab, bias=False)

        def forward(self, idx):
            x = self.token_embedding(idx)
            x = x + self.mlstm_layer(self.xlstm_norm(x))
            return self.lm_head(self.post_blocks_norm(x))

        def step(self, idx, state=None):
            x = self.token_embedding(idx)
            y, state = self.mlstm_layer.step(self.xlstm_norm(x), **(state or {}))
            return self.lm_head(self.post_blocks_norm(x + y)), state

    return xLSTMLM()


def test_xlstm_mlstm_stabilized_parallel_form_headwise_projections_causal_conv_and_recurrent_steps():
    model, tmodel = pair(xlstm_mlstm, dtype=F32)
    optimizer = av.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    toptimizer = torch.optim.AdamW(tmodel.parameters(), lr=1e-2, weight_decay=0.1)

    lm_steps(model, tmodel, optimizer, toptimizer, 10, (2, 7), seed=3, clip=0.5)

    def recurrent(th, model, idx):  # token by token through mLSTMLayer.step's states
        state, outs = None, []
        for t in range(idx.shape[1]):
            out, state = model.step(idx[:, t:t + 1], state)
            outs.append(out)
        return th.cat(outs, dim=1)
    rec = compiled(functools.partial(recurrent, av), "numpy")

    with av.no_grad(), torch.no_grad(), strict():  # the recurrent form equals the parallel one
        idx = np.random.default_rng(30).integers(0, 10, (2, 6))
        trec = recurrent(torch, tmodel, torch.tensor(idx))
        got = rec(model, av.tensor(idx))
        assert rel(trec, tmodel(torch.tensor(idx))) < 1e-4
        assert rel(got, trec) < 1e-5 and rel(got, model(av.tensor(idx))) < 1e-4


# -- 4. Perceiver (lucidrains/perceiver-pytorch perceiver_pytorch/perceiver_pytorch.py: fourier_encode's
#       `scales[(*((None,) * (len(x.shape) - 1)), Ellipsis)]`, the meshgrid of linspaces, cache_fn's weight-tied layers,
#       PreNorm with a context norm, GEGLU, the latents repeated by einops, masked_fill_ with -finfo.max, Reduce) ------

def perceiver(lib, F_, th, num_freq_bands=3, depth=3, max_freq=10., input_channels=2, input_axis=2, num_latents=4,
              latent_dim=8, cross_heads=1, latent_heads=2, cross_dim_head=4, latent_dim_head=4, num_classes=5,
              attn_dropout=0., ff_dropout=0., weight_tie_layers=True, fourier_encode_data=True, self_per_cross_attn=1,
              final_classifier_head=True):
    torch = th
    nn = lib
    F = F_  # noqa: N806
    from math import pi

    from einops import rearrange, repeat
    einsum = th.einsum
    Reduce = einops_reduce_layer(lib)  # noqa: N806

    def exists(val):
        return val is not None

    def default(val, d):
        return val if exists(val) else d

    def cache_fn(f):
        cache = dict()

        @functools.wraps(f)
        def cached_fn(*args, _cache=True, key=None, **kwargs):
            if not _cache:
                return f(*args, **kwargs)
            nonlocal cache
            if key in cache:
                return cache[key]
            result = f(*args, **kwargs)
            cache[key] = result
            return result
        return cached_fn

    def fourier_encode(x, max_freq, num_bands=4):
        x = x.unsqueeze(-1)
        device, dtype, orig_x = x.device, x.dtype, x

        scales = torch.linspace(1., max_freq / 2, num_bands, device=device, dtype=dtype)
        scales = scales[(*((None,) * (len(x.shape) - 1)), Ellipsis)]

        x = x * scales * pi
        x = torch.cat([x.sin(), x.cos()], dim=-1)
        x = torch.cat((x, orig_x), dim=-1)
        return x

    class PreNorm(nn.Module):
        def __init__(self, dim, fn, context_dim=None):
            super().__init__()
            self.fn = fn
            self.norm = nn.LayerNorm(dim)
            self.norm_context = nn.LayerNorm(context_dim) if exists(context_dim) else None

        def forward(self, x, **kwargs):
            x = self.norm(x)

            if exists(self.norm_context):
                context = kwargs['context']
                normed_context = self.norm_context(context)
                kwargs.update(context=normed_context)

            return self.fn(x, **kwargs)

    class GEGLU(nn.Module):
        def forward(self, x):
            x, gates = x.chunk(2, dim=-1)
            return x * F.gelu(gates)

    class FeedForward(nn.Module):
        def __init__(self, dim, mult=4, dropout=0.):
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(dim, dim * mult * 2),
                GEGLU(),
                nn.Linear(dim * mult, dim),
                nn.Dropout(dropout)
            )

        def forward(self, x):
            return self.net(x)

    class Attention(nn.Module):
        def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.):
            super().__init__()
            inner_dim = dim_head * heads
            context_dim = default(context_dim, query_dim)

            self.scale = dim_head ** -0.5
            self.heads = heads

            self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
            self.to_kv = nn.Linear(context_dim, inner_dim * 2, bias=False)

            self.dropout = nn.Dropout(dropout)
            self.to_out = nn.Linear(inner_dim, query_dim)

        def forward(self, x, context=None, mask=None):
            h = self.heads

            q = self.to_q(x)
            context = default(context, x)
            k, v = self.to_kv(context).chunk(2, dim=-1)

            q, k, v = map(lambda t: rearrange(t, 'b n (h d) -> (b h) n d', h=h), (q, k, v))

            sim = einsum('b i d, b j d -> b i j', q, k) * self.scale

            if exists(mask):
                mask = rearrange(mask, 'b ... -> b (...)')
                max_neg_value = -torch.finfo(sim.dtype).max
                mask = repeat(mask, 'b j -> (b h) () j', h=h)
                sim.masked_fill_(~mask, max_neg_value)

            # attention, what we cannot get enough of
            attn = sim.softmax(dim=-1)
            attn = self.dropout(attn)

            out = einsum('b i j, b j d -> b i d', attn, v)
            out = rearrange(out, '(b h) n d -> b n (h d)', h=h)
            return self.to_out(out)

    class Perceiver(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_axis = input_axis
            self.max_freq = max_freq
            self.num_freq_bands = num_freq_bands

            self.fourier_encode_data = fourier_encode_data
            fourier_channels = (input_axis * ((num_freq_bands * 2) + 1)) if fourier_encode_data else 0
            input_dim = fourier_channels + input_channels

            self.latents = nn.Parameter(torch.randn(num_latents, latent_dim))

            get_cross_attn = lambda: PreNorm(latent_dim, Attention(latent_dim, input_dim, heads=cross_heads,  # noqa: E731
                                                                   dim_head=cross_dim_head, dropout=attn_dropout),
                                             context_dim=input_dim)
            get_cross_ff = lambda: PreNorm(latent_dim, FeedForward(latent_dim, dropout=ff_dropout))  # noqa: E731
            get_latent_attn = lambda: PreNorm(latent_dim, Attention(latent_dim, heads=latent_heads,  # noqa: E731
                                                                    dim_head=latent_dim_head, dropout=attn_dropout))
            get_latent_ff = lambda: PreNorm(latent_dim, FeedForward(latent_dim, dropout=ff_dropout))  # noqa: E731

            get_cross_attn, get_cross_ff, get_latent_attn, get_latent_ff = map(
                cache_fn, (get_cross_attn, get_cross_ff, get_latent_attn, get_latent_ff))

            self.layers = nn.ModuleList([])
            for i in range(depth):
                should_cache = i > 0 and weight_tie_layers
                cache_args = {'_cache': should_cache}

                self_attns = nn.ModuleList([])

                for block_ind in range(self_per_cross_attn):
                    self_attns.append(nn.ModuleList([
                        get_latent_attn(**cache_args, key=block_ind),
                        get_latent_ff(**cache_args, key=block_ind)
                    ]))

                self.layers.append(nn.ModuleList([
                    get_cross_attn(**cache_args),
                    get_cross_ff(**cache_args),
                    self_attns
                ]))

            self.to_logits = nn.Sequential(
                Reduce('b n d -> b d', 'mean'),
                nn.LayerNorm(latent_dim),
                nn.Linear(latent_dim, num_classes)
            ) if final_classifier_head else nn.Identity()

        def forward(self, data, mask=None, return_embeddings=False):
            b, *axis, _, device, dtype = *data.shape, data.device, data.dtype
            assert len(axis) == self.input_axis, 'input data must have the right number of axis'

            if self.fourier_encode_data:
                # calculate fourier encoded positions in the range of [-1, 1], for all axis

                axis_pos = list(map(lambda size: torch.linspace(-1., 1., steps=size, device=device, dtype=dtype),
                                    axis))
                pos = torch.stack(torch.meshgrid(*axis_pos, indexing='ij'), dim=-1)
                enc_pos = fourier_encode(pos, self.max_freq, self.num_freq_bands)
                enc_pos = rearrange(enc_pos, '... n d -> ... (n d)')
                enc_pos = repeat(enc_pos, '... -> b ...', b=b)

                data = torch.cat((data, enc_pos), dim=-1)

            # concat to channels of data and flatten axis

            data = rearrange(data, 'b ... d -> b (...) d')

            x = repeat(self.latents, 'n d -> b n d', b=b)

            # layers

            for cross_attn, cross_ff, self_attns in self.layers:
                x = cross_attn(x, context=data, mask=mask) + x
                x = cross_ff(x) + x

                for self_attn, self_ff in self_attns:
                    x = self_attn(x) + x
                    x = self_ff(x) + x

            # allow for fetching embeddings

            if return_embeddings:
                return x

            # to logits

            return self.to_logits(x)

    return Perceiver()


def einops_reduce_layer(lib):
    if lib is nn:
        return nn.Reduce
    from einops.layers.torch import Reduce
    return Reduce


def test_perceiver_fourier_features_weight_tied_cross_attention_masked_fill_and_einops_reduce():
    model, tmodel = pair(perceiver, dtype=F32)
    assert sorted(k for k, _ in model.named_parameters()) == sorted(k for k, _ in tmodel.named_parameters())
    assert model.layers[2][0] is model.layers[1][0] is not model.layers[0][0]  # cache_fn ties the layers after the first
    assert model.layers[2][2][0][1] is model.layers[1][2][0][1] is not model.layers[0][2][0][1]
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)

    def loss_fn(model, img, mask, y):
        logits = model(img, mask=mask)
        return F.cross_entropy(logits, y), logits

    def train_step(model, optimizer, img, mask, y):
        (loss, logits), grads = av.value_and_grad(loss_fn, has_aux=True)(model, img, mask, y)
        optimizer.step(grads)
        return loss, logits, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(4)
    for it in range(3):
        img, y = randn(rng, 3, 4, 3, 2), rng.integers(0, 5, 3)
        mask = rng.random((3, 4, 3)) < 0.7
        mask[:, 0, 0] = True
        tlogits = tmodel(T(img), mask=torch.tensor(mask))
        tloss = TF.cross_entropy(tlogits, torch.tensor(y))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, logits, grads = (run if it else train_step)(model, optimizer, av.tensor(img), av.tensor(mask),
                                                              av.tensor(y))
        assert rel(loss, tloss) < 1e-5 and rel(logits, tlogits) < 1e-5, it
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    with av.no_grad(), torch.no_grad():
        img = randn(rng, 2, 3, 5, 2)
        assert rel(model(av.tensor(img), return_embeddings=True), tmodel(T(img), return_embeddings=True)) < 1e-5
    assert run.cache_info().misses == 1


# -- 5. Mega's EMA (facebookresearch/mega fairseq/modules/exponential_moving_average.py MultiHeadEMA: the damped EMA
#       kernel from a Vandermonde `arange(length).to(p) * log(q)`, the bidirectional kernel by `F.pad` of both halves
#       (one flipped), the FFT convolution at `n=2 * fft_len`, the eval-mode cache of coefficients and kernel in plain
#       attributes, and `step`'s chunked form with the state carried between chunks) -------------------------------

def mega_ema(lib, F_, th, embed_dim=4, ndim=3, bidirectional=False, truncation=None, classes=3):
    torch = th
    nn = lib
    F = F_  # noqa: N806

    class MultiHeadEMA(nn.Module):
        """Exponential Moving Average Layer.

        See "https://arxiv.org/abs/2209.10655" for more details.
        """

        def __init__(self, embed_dim, ndim=2, bidirectional=False, truncation=None):
            super().__init__()

            self.embed_dim = embed_dim
            self.ndim = ndim
            self.bidirectional = bidirectional
            self.truncation = truncation
            self.scale = math.sqrt(1.0 / self.ndim)

            kernel_dim = 2 * embed_dim if self.bidirectional else embed_dim
            self.delta = nn.Parameter(torch.Tensor(kernel_dim, ndim, 1))
            self.alpha = nn.Parameter(torch.Tensor(kernel_dim, ndim, 1))
            self.beta = nn.Parameter(torch.Tensor(kernel_dim, ndim, 1))
            self.gamma = nn.Parameter(torch.Tensor(kernel_dim, ndim))
            self.omega = nn.Parameter(torch.Tensor(embed_dim))
            self._kernel = None
            self._coeffs = None

            self.reset_parameters()

            self.onnx_trace = False
            self.tpu = False

        def reset_parameters(self):
            with torch.no_grad():
                # delta & alpha
                nn.init.normal_(self.delta, mean=0.0, std=0.2)
                nn.init.normal_(self.alpha, mean=0.0, std=0.2)
                # beta [1, -1, 1, -1, ...] seems more stable.
                val = torch.ones(self.ndim, 1)
                if self.ndim > 1:
                    idx = torch.tensor(list(range(1, self.ndim, 2)))
                    val.index_fill_(0, idx, -1.0)
                self.beta.normal_(mean=0.0, std=0.02).add_(val)
                # gamma & omega
                nn.init.normal_(self.gamma, mean=0.0, std=1.0)
                nn.init.normal_(self.omega, mean=0.0, std=1.0)

        def _calc_coeffs(self):
            self._coeffs = None
            p = torch.sigmoid(self.delta)
            alpha = torch.sigmoid(self.alpha)
            q = 1.0 - p * alpha
            return p, q

        def _compute_kernel(self, length: int):
            self._kernel = None
            # D x N x 1
            p, q = self._calc_coeffs()
            # D x N x L
            vander = torch.arange(length).to(p).view(1, 1, length) * torch.log(q)
            kernel = (p * self.beta) * torch.exp(vander)
            # D x L
            return torch.einsum('dnl,dn->dl', kernel, self.gamma * self.scale)

        def coeffs(self):
            if self.training:
                return self._calc_coeffs()
            else:
                if self._coeffs is None:
                    self._coeffs = self._calc_coeffs()
                return self._coeffs

        def kernel(self, length: int):
            kernel_size = length if self.truncation is None else min(self.truncation, length)
            if self.training:
                return self._compute_kernel(kernel_size)
            else:
                if self._kernel is None or self._kernel.size(-1) < kernel_size:
                    self._kernel = self._compute_kernel(kernel_size)
                return self._kernel[..., :kernel_size]

        def step(self, x, length, hx=None):
            if length == 1:
                return self.one_step(x, hx=hx)

            # D x N x 1
            p, q = self.coeffs()
            # D x N x L+1
            vander = torch.arange(length + 1).to(p).view(1, 1, length + 1) * torch.log(q)
            vander = torch.exp(vander)
            if hx is not None:
                # D x N x L * D x N x 1 -> D x N x L
                k = vander[:, :, 1:] * (self.gamma * self.scale).unsqueeze(-1)
                ox = torch.einsum('bdn,dnl->bdl', hx, k)
                # D x N * B x D x N -> B x D x N
                hh = vander[:, :, -1] * hx
            else:
                ox = None
                hh = None

            # D x N x L
            vander = vander[:, :, :-1]
            kernel = (p * self.beta) * vander
            k = torch.einsum('dnl,dn->dl', kernel, self.gamma * self.scale)

            k_f = torch.fft.rfft(k.float(), n=2 * length)
            x_f = torch.fft.rfft(x.float(), n=2 * length)
            # B x D x L
            out = torch.fft.irfft(x_f * k_f, n=2 * length)[..., 0:length]
            out = out.type_as(x)
            if ox is not None:
                out = out + ox

            h = torch.einsum('bdl,dnl->bdn', x, torch.flip(kernel, dims=[2]))
            if hh is not None:
                h = h + hh
            # L x B x D, B x D x N
            return out.permute(2, 0, 1), h

        def one_step(self, x, hx=None):
            p, q = self.coeffs()
            # (D x N) x (B x D x 1) -> B x D x N
            h = (p * self.beta).squeeze(-1) * x
            if hx is not None:
                h = h + q.squeeze(-1) * hx
            # B x D
            out = torch.einsum('bdn,dn->bd', h, self.gamma * self.scale)
            # 1 x B x D, B x D x N
            return out.unsqueeze(0), h

        def forward(self, x, padding_mask=None):
            """Input shape: Time x Batch x Channel
            Args:
                padding_mask (ByteTensor, optional): mask to exclude
                    keys that are pads, of shape `(batch, src_len)`, where
                    padding elements are indicated by 1s.
            """

            seq_len, bsz, embed_dim = x.size()
            assert embed_dim == self.embed_dim

            # L x B x D
            residual = x * self.omega

            # L x B x D -> B x D x L
            x = x.permute(1, 2, 0)
            if padding_mask is not None:
                x = x * (1.0 - padding_mask.unsqueeze(1).type_as(x))

            # D x L
            k = self.kernel(seq_len)
            fft_len = seq_len
            s = 0
            kernel_size = k.size(1)
            if self.bidirectional:
                k1, k2 = torch.split(k, [self.embed_dim, self.embed_dim], dim=0)
                # D x 2*L-1
                k = F.pad(k1, (kernel_size - 1, 0)) + F.pad(k2.flip(-1), (0, kernel_size - 1))
                x = F.pad(x, (kernel_size - 1, 0))
                fft_len = fft_len + kernel_size - 1
                s = 2 * kernel_size - 2

            k_f = torch.fft.rfft(k.float(), n=2 * fft_len)
            x_f = torch.fft.rfft(x.float(), n=2 * fft_len)
            # B x D x L
            out = torch.fft.irfft(x_f * k_f, n=2 * fft_len)[..., s:s + seq_len]
            out = out.type_as(x)
            # B x D x L -> L x B x D
            out = F.silu(out.permute(2, 0, 1) + residual)
            return out

    class Classifier(nn.Module):  # the EMA over a sequence, mean-pooled over unpadded steps, and a head
        def __init__(self):
            super().__init__()
            self.move = MultiHeadEMA(embed_dim, ndim, bidirectional, truncation)
            self.head = nn.Linear(embed_dim, classes)

        def forward(self, x, padding_mask):
            h = self.move(x, padding_mask)
            keep = (1.0 - padding_mask.transpose(0, 1).unsqueeze(-1).type_as(h))
            return self.head((h * keep).sum(0) / keep.sum(0))

    return Classifier()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_mega_multihead_ema_fft_kernel_bidirectional_padding_eval_cache_and_chunked_steps(bidirectional):
    make = functools.partial(mega_ema, bidirectional=bidirectional, truncation=5 if bidirectional else None)
    model, tmodel = pair(make, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=5e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=5e-2)

    def loss_fn(model, x, padding_mask, y):
        return F.cross_entropy(model(x, padding_mask), y)
    run = compiled(train_step(loss_fn, with_grads=True), "numpy")

    rng = np.random.default_rng(6)
    for it in range(3):
        x, y = randn(rng, 7, 3, 4), rng.integers(0, 3, 3)
        padding_mask = np.zeros((3, 7), dtype=bool)
        padding_mask[1, 5:] = padding_mask[2, 3:] = True
        tloss = TF.cross_entropy(tmodel(T(x), torch.tensor(padding_mask)), torch.tensor(y))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, grads = (run if it else train_step(loss_fn, with_grads=True))(
                model, optimizer, av.tensor(x), av.tensor(padding_mask), av.tensor(y))
        assert rel(loss, tloss) < 1e-5, it
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 1
    model.eval()
    tmodel.eval()
    evaluate = compiled(lambda model, x, m: model(x, m), "numpy")
    with av.no_grad(), torch.no_grad():
        x, padding_mask = av.tensor(randn(rng, 6, 2, 4)), av.zeros(2, 6, dtype=av.bool)
        out = evaluate(model, x, padding_mask)  # eval's kernel cache, made in the compiled call: written back
        assert rel(out, tmodel(T(x.numpy()), torch.tensor(padding_mask.numpy()))) < 1e-5
        assert not model.move._kernel.is_traced and model.move._kernel.shape[-1] == tmodel.move._kernel.shape[-1]
        assert rel(model.move._kernel, tmodel.move._kernel) < 1e-5
        for length in (6, 4, 8):  # eagerly, the cached kernel is computed again when a longer one is asked for
            x, padding_mask = randn(rng, length, 2, 4), np.zeros((2, length), dtype=bool)
            want = tmodel(T(x), torch.tensor(padding_mask))
            assert rel(model(av.tensor(x), av.tensor(padding_mask)), want) < 1e-5, length
            assert model.move._kernel.shape[-1] == tmodel.move._kernel.shape[-1]
        if bidirectional:
            return
        x = randn(rng, 2, 4, 7)  # B x D x L, in chunks of 3, 1 and 3 steps with the state carried: the full one
        tout, toutputs, h, outs = tmodel.move.step(T(x), 7)[0], [], None, []
        th_ = None
        for a, b in ((0, 3), (3, 4), (4, 7)):
            o, th_ = tmodel.move.step(T(x)[..., a:b], b - a, hx=th_)
            toutputs.append(o)
            o, h = model.move.step(av.tensor(x)[..., a:b], b - a, hx=h)
            outs.append(o)
        assert rel(torch.cat(toutputs), tout) < 1e-5
        assert rel(av.cat(outs), torch.cat(toutputs)) < 1e-5 and rel(h, th_) < 1e-5


# -- regressions ------------------------------------------------------------------------------------------------------

def test_named_members_with_remove_duplicate_false_list_shared_modules_under_each_name():
    """accelerate's find_tied_parameters reads `dict(model.named_parameters(remove_duplicate=False))` (and the
    Perceiver's cache_fn ties layers): Avalon's named_modules / named_parameters / named_buffers took no
    remove_duplicate (a TypeError) nor torch's `memo` (skipping the modules in it with what they hold)."""
    def shared(lib, F_, th):
        class M(lib.Module):
            def __init__(self):
                super().__init__()
                self.lin = lib.Linear(2, 2)
                self.w = lib.Parameter(th.ones(2))
                self.seq = lib.Sequential(self.lin, lib.BatchNorm1d(2), self.lin)
                self.register_buffer("b", th.zeros(1))
                self.bn = self.seq[1]
        return M()
    for make in (shared, perceiver):
        model, tmodel = pair(make, dtype=F32)
        for fn in ("named_modules", "named_parameters", "named_buffers"):
            for remove_duplicate in (True, False):
                assert ([k for k, _ in getattr(model, fn)(remove_duplicate=remove_duplicate)]
                        == [k for k, _ in getattr(tmodel, fn)(remove_duplicate=remove_duplicate)]), (fn, make)
        for recurse in (True, False):
            assert ([k for k, _ in model.named_parameters("x", recurse, False)]
                    == [k for k, _ in tmodel.named_parameters("x", recurse, False)])
        memo, tmemo = ({model.layers[1]}, {tmodel.layers[1]}) if make is perceiver else ({model.lin}, {tmodel.lin})
        assert [k for k, _ in model.named_modules(memo, "p")] == [k for k, _ in tmodel.named_modules(tmemo, "p")]
        assert len(memo) == len(tmemo)


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_dot_vdot_and_inner_of_complex_vectors_as_torch(mode):
    """Met beside Hyena's and Mega's complex FFT values: `torch.vdot` (which conjugates its first operand), `dot` and
    `inner` of complex tensors converted the ComplexTensor as data ("numpy dtype complex64 has no Avalon
    equivalent"); they are the real-bilinear products of the parts now, with gradients."""
    def fn(th, a, b):
        z, w = th.complex(a, b), th.complex(b, -a)
        return th.view_as_real(th.stack([th.vdot(z, w), th.dot(z, w), th.inner(z, w), th.vdot(w, z)]))
    rng = np.random.default_rng(7)
    a, b = randn(rng, 5), randn(rng, 5)
    got = compiled(lambda *v: fn(av, *v), mode)(av.tensor(a), av.tensor(b))
    np.testing.assert_allclose(got.numpy(), fn(torch, T(a), T(b)).numpy(), rtol=1e-5, atol=1e-6)
    ta, tb = T(a).requires_grad_(), T(b).requires_grad_()
    want = torch.autograd.grad((fn(torch, ta, tb) * torch.arange(8.0).reshape(4, 2)).sum(), (ta, tb))
    grads = av.grad(lambda a, b: (fn(av, a, b) * av.arange(8.0).reshape(4, 2)).sum(), argnums=(0, 1))(
        av.tensor(a), av.tensor(b))
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)

"""Round 9y of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
outputs, gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: ethanjperez/film (FiLMGen: a GRU question encoder whose output is gathered at the last non-null token,
the linear decoder viewed as (N, num_modules, cond_feat_size), modify_output's slice writes `out[:, :, gs[i]] =
out[:, :, gs[i]] + gamma_shift`; FiLMedNet: coord_map by `linspace`/`expand(torch.Size(...))`, the stem,
FiLMedResBlocks with an input projection and FiLM after the conv (the repository's defaults: no batch norm), `module_inputs` made from
`torch.zeros(feats.size()).unsqueeze(1).expand(...)`, written by `module_inputs[:, 0] = feats` (into the memory all
modules' slots share) and updated through a clone, modules registered by `add_module(str(fn_num), mod)` and kept in a plain dict too, build_classifier's
maxpool2 and Flatten; init_modules' kaiming_uniform; Adam over both nets); 4uiiurz1/pytorch-deform-conv-v2
(DeformConv2d with modulation: offsets from a zero-initialized p_conv, `offset.data.type()` strings given back to
`.type(dtype)`, meshgrid of aranges, `p.detach().floor()`, clamped corners `.long()`, the bilinear kernel by
`type_as`, `_get_x_q`'s gather over `expand(-1, c, -1, -1, -1)`, `x_offset *= m`, `_reshape_x_offset`'s
cat of views, `nn.ZeroPad2d`, the no-op `register_backward_hook(self._set_lr)`; SGD with momentum);
davidmrau/mixture-of-experts (MoE's noisy top-k gating with softplus noise, `zeros_like(...,
requires_grad=True).scatter`, `_prob_in_top_k` by a Normal over buffers and `torch.gt` / `torch.where`,
cv_squared importance and load losses; SparseDispatcher's `nonzero(gates).sort(0)`, `split(1, dim=1)`,
`(gates > 0).sum(0).tolist()` part sizes, dispatch by `torch.split`, combine by `index_add`); fundamentalvision's
Deformable-DETR encoder (MSDeformAttn's grid_init bias by `nn.Parameter` under no_grad, sampling locations
normalized by the spatial shapes, `ms_deform_attn_core_pytorch`'s split by level and `F.grid_sample(...,
padding_mode='zeros', align_corners=False)`, the valid ratios of padding masks, get_reference_points' meshgrid of
linspaces, level embeddings, `torch.as_tensor(spatial_shapes)` and `level_start_index` by `prod(1).cumsum(0)`,
`_get_clones` by deepcopy; AdamW with clipping); Jongchan/attention-module's CBAM ResNet (ChannelGate over avg,
max, lp and lse pools, ChannelPool and SpatialGate, BasicBlock with `out += residual`, ResidualNet's init through
`self.state_dict()[key][...] = 0` and `init.kaiming_normal`; SGD with weight decay).

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`). FiLMGen's before_rnn finds
each question's last token by a Python loop over its elements (`x_cpu.data[i, t] != self.NULL`), which one graph
for all inputs cannot take: the compiled port counts the non-null tokens instead (the error is tested); FiLMedNet's
`self.coords` and default gammas and betas, plain tensor attributes (constants in torch, state in Avalon: README),
are registered as non-persistent buffers. The MoE's
dispatch has sizes only the data knows (`nonzero`, `tolist()`): it runs eagerly (av.grad's error is tested) and
the gating with its losses is trained. The DCN's no-op `register_backward_hook` is left out (Avalon has no backward
hooks, README), and FiLMedNet's `self.fwd_count += 1` too (see below).

Missing features found and added: `torch.Size` (`av.Size`, a tuple subclass); a write into a view of an expanded
tensor that does not overlap itself (FiLM's `module_inputs[:, 0] = feats` into `zeros(...).unsqueeze(1).expand(...)`)
was refused as a write through an overlapping expand: torch writes the memory it reaches, which every expanded copy
then reads (avalon/views.py `Expand.put`, `Tensor.__setitem__`).

Found and left: a Python int that a compiled step rebinds on the model (FiLMedNet's `self.fwd_count += 1`) is part of
the next call's signature, so each step traces again (results agree). Not Avalon: sizes are small,
dropout is 0, learning rates are chosen for a few steps.
"""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import rel
from test_port_programs_30 import randn
from test_port_programs_36 import steps_like_torch
from test_port_programs_more import pair, same_weights

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache", "torch_on_one_thread")

F32 = torch.float32


# -- 1. FiLM (ethanjperez/film vr/models/film_gen.py, filmed_net.py, layers.py) ---------------------------------------

def film(lib, F_, th, vocab=9, wordvec_dim=6, hidden_dim=8, num_modules=2, module_dim=4, feature_dim=(3, 4, 4),
         num_answers=5, vectorized_before_rnn=False):
    torch, nn, F = th, lib, F_
    kaiming_uniform = nn.init.kaiming_uniform_

    def init_modules(modules, init='uniform'):
        if init.lower() == 'normal':
            init_params = nn.init.kaiming_normal_
        elif init.lower() == 'uniform':
            init_params = kaiming_uniform
        else:
            return
        for m in modules:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init_params(m.weight)

    def init_rnn(rnn_type, hidden_dim1, hidden_dim2, rnn_num_layers, dropout=0, bidirectional=False):
        if rnn_type == 'gru':
            return nn.GRU(hidden_dim1, hidden_dim2, rnn_num_layers, dropout=dropout,
                          batch_first=True, bidirectional=bidirectional)
        elif rnn_type == 'linear':
            return None

    class FiLMGen(nn.Module):
        def __init__(self, null_token=0, encoder_vocab_size=100, wordvec_dim=200, hidden_dim=512, rnn_num_layers=1,
                     rnn_dropout=0, bidirectional=False, encoder_type='gru', decoder_type='linear',
                     gamma_option='linear', gamma_baseline=1, num_modules=4, module_num_layers=1, module_dim=128,
                     parameter_efficient=False):
            super(FiLMGen, self).__init__()  # noqa: UP008
            self.encoder_type = encoder_type
            self.decoder_type = decoder_type
            self.bidirectional = bidirectional
            self.num_dir = 2 if self.bidirectional else 1
            self.gamma_option = gamma_option
            self.gamma_baseline = gamma_baseline
            self.num_modules = num_modules
            self.module_num_layers = module_num_layers
            self.module_dim = module_dim
            self.NULL = null_token
            self.func_list = {
                'linear': None,
                'sigmoid': F.sigmoid,
                'tanh': F.tanh,
                'exp': torch.exp,
            }
            self.cond_feat_size = 2 * self.module_dim * self.module_num_layers  # FiLM params per ResBlock
            if not parameter_efficient:  # parameter_efficient=False only used to load older trained models
                self.cond_feat_size = 4 * self.module_dim + 2 * self.num_modules
            self.encoder_embed = nn.Embedding(encoder_vocab_size, wordvec_dim)
            self.encoder_rnn = init_rnn(self.encoder_type, wordvec_dim, hidden_dim, rnn_num_layers,
                                        dropout=rnn_dropout, bidirectional=self.bidirectional)
            self.decoder_rnn = init_rnn(self.decoder_type, hidden_dim, hidden_dim, rnn_num_layers,
                                        dropout=rnn_dropout, bidirectional=self.bidirectional)
            self.decoder_linear = nn.Linear(hidden_dim * self.num_dir, self.num_modules * self.cond_feat_size)
            init_modules(self.modules())

        def get_dims(self, x=None):
            V_in = self.encoder_embed.num_embeddings  # noqa: N806
            V_out = self.cond_feat_size  # noqa: N806
            D = self.encoder_embed.embedding_dim  # noqa: N806
            H = self.encoder_rnn.hidden_size  # noqa: N806
            H_full = self.encoder_rnn.hidden_size * self.num_dir  # noqa: N806
            L = self.encoder_rnn.num_layers * self.num_dir  # noqa: N806
            N = x.size(0) if x is not None else None  # noqa: N806
            T_in = x.size(1) if x is not None else None  # noqa: N806
            T_out = self.num_modules  # noqa: N806
            return V_in, V_out, D, H, H_full, L, N, T_in, T_out

        def before_rnn(self, x, replace=0):
            N, T = x.size()  # noqa: N806
            idx = torch.LongTensor(N).fill_(T - 1)
            # Find the last non-null element in each sequence.
            x_cpu = x.cpu()
            for i in range(N):
                for t in range(T - 1):
                    if x_cpu.data[i, t] != self.NULL and x_cpu.data[i, t + 1] == self.NULL:
                        idx[i] = t
                        break
            idx = idx.type_as(x.data)
            x[x.data == self.NULL] = replace
            return x, idx

        def encoder(self, x):
            V_in, V_out, D, H, H_full, L, N, T_in, T_out = self.get_dims(x=x)  # noqa: N806
            x, idx = self.before_rnn(x)  # Tokenized word sequences (questions), end index
            embed = self.encoder_embed(x)
            h0 = torch.zeros(L, N, H).type_as(embed.data)
            out, _ = self.encoder_rnn(embed, h0)
            # Pull out the hidden state for the last non-null value in each input
            idx = idx.view(N, 1, 1).expand(N, 1, H_full)
            return out.gather(1, idx).view(N, H_full)

        def decoder(self, encoded, dims, h0=None, c0=None):
            V_in, V_out, D, H, H_full, L, N, T_in, T_out = dims  # noqa: N806
            # (N x H) x (H x T_out*V_out) -> (N x T_out*V_out) -> N x T_out x V_out
            return self.decoder_linear(encoded).view(N, T_out, V_out), (None, None)

        def forward(self, x):
            encoded = self.encoder(x)
            film_pre_mod, _ = self.decoder(encoded, self.get_dims(x=x))
            film = self.modify_output(film_pre_mod, gamma_option=self.gamma_option,
                                      gamma_shift=self.gamma_baseline)
            return film

        def modify_output(self, out, gamma_option='linear', gamma_scale=1, gamma_shift=0,
                          beta_option='linear', beta_scale=1, beta_shift=0):
            gamma_func = self.func_list[gamma_option]
            beta_func = self.func_list[beta_option]
            gs = []
            bs = []
            for i in range(self.module_num_layers):
                gs.append(slice(i * (2 * self.module_dim), i * (2 * self.module_dim) + self.module_dim))
                bs.append(slice(i * (2 * self.module_dim) + self.module_dim, (i + 1) * (2 * self.module_dim)))
            if gamma_func is not None:
                for i in range(self.module_num_layers):
                    out[:, :, gs[i]] = gamma_func(out[:, :, gs[i]])
            if gamma_scale != 1:
                for i in range(self.module_num_layers):
                    out[:, :, gs[i]] = out[:, :, gs[i]] * gamma_scale
            if gamma_shift != 0:
                for i in range(self.module_num_layers):
                    out[:, :, gs[i]] = out[:, :, gs[i]] + gamma_shift
            if beta_func is not None:
                for i in range(self.module_num_layers):
                    out[:, :, bs[i]] = beta_func(out[:, :, bs[i]])
            if beta_scale != 1:
                for i in range(self.module_num_layers):
                    out[:, :, bs[i]] = out[:, :, bs[i]] * beta_scale
            if beta_shift != 0:
                for i in range(self.module_num_layers):
                    out[:, :, bs[i]] = out[:, :, bs[i]] + beta_shift
            return out

    class VectorizedFiLMGen(FiLMGen):
        """The port's before_rnn: the last non-null token of a NULL-padded question, by counting."""
        def before_rnn(self, x, replace=0):
            idx = (x != self.NULL).long().sum(1) - 1
            x = x.masked_fill(x == self.NULL, replace)
            return x, idx

    def coord_map(shape, start=-1, end=1):
        m, n = shape
        x_coord_row = torch.linspace(start, end, steps=n).type(torch.FloatTensor)
        y_coord_row = torch.linspace(start, end, steps=m).type(torch.FloatTensor)
        x_coords = x_coord_row.unsqueeze(0).expand(torch.Size((m, n))).unsqueeze(0)
        y_coords = y_coord_row.unsqueeze(1).expand(torch.Size((m, n))).unsqueeze(0)
        return torch.cat([x_coords, y_coords], 0)

    def build_stem(feature_dim, module_dim, num_layers=2, with_batchnorm=True, kernel_size=3, stride=1,
                   padding=None):
        layers = []
        prev_dim = feature_dim
        if padding is None:  # Calculate default padding when None provided
            if kernel_size % 2 == 0:
                raise (NotImplementedError)
            padding = kernel_size // 2
        for _i in range(num_layers):
            layers.append(nn.Conv2d(prev_dim, module_dim, kernel_size=kernel_size, stride=stride, padding=padding))
            if with_batchnorm:
                layers.append(nn.BatchNorm2d(module_dim))
            layers.append(nn.ReLU(inplace=True))
            prev_dim = module_dim
        return nn.Sequential(*layers)

    class Flatten(nn.Module):
        def forward(self, x):
            return x.view(x.size(0), -1)

    def build_classifier(module_C, module_H, module_W, num_answers, fc_dims=(), proj_dim=None,  # noqa: N803
                         downsample='maxpool2', with_batchnorm=True, dropout=0):
        layers = []
        prev_dim = module_C * module_H * module_W
        if proj_dim is not None and proj_dim > 0:
            layers.append(nn.Conv2d(module_C, proj_dim, kernel_size=1))
            if with_batchnorm:
                layers.append(nn.BatchNorm2d(proj_dim))
            layers.append(nn.ReLU(inplace=True))
            prev_dim = proj_dim * module_H * module_W
        if 'maxpool' in downsample or 'avgpool' in downsample:
            pool = nn.MaxPool2d if 'maxpool' in downsample else nn.AvgPool2d
            pool_size = int(downsample[-1])
            # Note: Potentially sub-optimal padding for non-perfectly aligned pooling
            padding = 0 if ((module_H % pool_size == 0) and (module_W % pool_size == 0)) else 1
            layers.append(pool(kernel_size=pool_size, stride=pool_size, padding=padding))
            prev_dim = proj_dim * math.ceil(module_H / pool_size) * math.ceil(module_W / pool_size)
        layers.append(Flatten())
        for next_dim in fc_dims:
            layers.append(nn.Linear(prev_dim, next_dim))
            if with_batchnorm:
                layers.append(nn.BatchNorm1d(next_dim))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(p=dropout))
            prev_dim = next_dim
        layers.append(nn.Linear(prev_dim, num_answers))
        return nn.Sequential(*layers)

    class FiLM(nn.Module):
        def forward(self, x, gammas, betas):
            gammas = gammas.unsqueeze(2).unsqueeze(3).expand_as(x)
            betas = betas.unsqueeze(2).unsqueeze(3).expand_as(x)
            return (gammas * x) + betas

    class FiLMedResBlock(nn.Module):
        def __init__(self, in_dim, out_dim=None, with_residual=True, with_batchnorm=True, with_cond=(False,),
                     dropout=0, num_extra_channels=0, extra_channel_freq=1, with_input_proj=0, num_cond_maps=0,
                     kernel_size=3, batchnorm_affine=False, num_layers=1, condition_method='bn-film'):
            if out_dim is None:
                out_dim = in_dim
            super(FiLMedResBlock, self).__init__()  # noqa: UP008
            self.with_residual = with_residual
            self.with_batchnorm = with_batchnorm
            self.with_cond = with_cond
            self.dropout = dropout
            self.extra_channel_freq = 0 if num_extra_channels == 0 else extra_channel_freq
            self.with_input_proj = with_input_proj  # Kernel size of input projection
            self.num_cond_maps = num_cond_maps
            self.kernel_size = kernel_size
            self.batchnorm_affine = batchnorm_affine
            self.num_layers = num_layers
            self.condition_method = condition_method
            if self.with_input_proj % 2 == 0:
                raise (NotImplementedError)
            if self.with_input_proj:
                self.input_proj = nn.Conv2d(in_dim + (num_extra_channels if self.extra_channel_freq >= 1 else 0),
                                            in_dim, kernel_size=self.with_input_proj, padding=self.with_input_proj // 2)
            self.conv1 = nn.Conv2d(in_dim + self.num_cond_maps +
                                   (num_extra_channels if self.extra_channel_freq >= 2 else 0),
                                   out_dim, kernel_size=self.kernel_size,
                                   padding=self.kernel_size // 2)
            if self.with_batchnorm:
                self.bn1 = nn.BatchNorm2d(out_dim, affine=((not self.with_cond[0]) or self.batchnorm_affine))
            if self.condition_method == 'bn-film' and self.with_cond[0]:
                self.film = FiLM()
            if dropout > 0:
                self.drop = nn.Dropout2d(p=self.dropout)
            init_modules(self.modules())

        def forward(self, x, gammas=None, betas=None, extra_channels=None, cond_maps=None):
            # ResBlock input projection
            if self.with_input_proj:
                if extra_channels is not None and self.extra_channel_freq >= 1:
                    x = torch.cat([x, extra_channels], 1)
                x = F.relu(self.input_proj(x))
            out = x
            # ResBlock body
            if cond_maps is not None:
                out = torch.cat([out, cond_maps], 1)
            if extra_channels is not None and self.extra_channel_freq >= 2:
                out = torch.cat([out, extra_channels], 1)
            out = self.conv1(out)
            if self.with_batchnorm:
                out = self.bn1(out)
            if self.condition_method == 'bn-film' and self.with_cond[0]:
                out = self.film(out, gammas, betas)
            if self.dropout > 0:
                out = self.drop(out)
            out = F.relu(out)
            # ResBlock remainder
            if self.with_residual:
                out = x + out
            return out

    class FiLMedNet(nn.Module):
        def __init__(self, feature_dim=(1024, 14, 14), stem_num_layers=2, stem_batchnorm=False, stem_kernel_size=3,
                     stem_stride=1, stem_padding=None, num_modules=4, module_num_layers=1, module_dim=128,
                     module_residual=True, module_batchnorm=False, module_batchnorm_affine=False, module_dropout=0,
                     module_input_proj=1, module_kernel_size=3, classifier_proj_dim=512,
                     classifier_downsample='maxpool2', classifier_fc_layers=(1024,), classifier_batchnorm=False,
                     classifier_dropout=0, condition_method='bn-film', condition_pattern=(), use_gamma=True,
                     use_beta=True, use_coords=1):
            super(FiLMedNet, self).__init__()  # noqa: UP008
            self.num_modules = num_modules
            self.module_num_layers = module_num_layers
            self.module_batchnorm = module_batchnorm
            self.module_dim = module_dim
            self.condition_method = condition_method
            self.use_gamma = use_gamma
            self.use_beta = use_beta
            self.use_coords_freq = use_coords
            # Initialize helper variables
            self.stem_use_coords = (stem_stride == 1) and (self.use_coords_freq > 0)
            self.condition_pattern = condition_pattern
            if len(condition_pattern) == 0:
                self.condition_pattern = []
                for _i in range(self.module_num_layers * self.num_modules):
                    self.condition_pattern.append(self.condition_method != 'concat')
            else:
                self.condition_pattern = [i > 0 for i in self.condition_pattern]
            self.extra_channel_freq = self.use_coords_freq
            self.block = FiLMedResBlock
            self.num_cond_maps = 2 * self.module_dim if self.condition_method == 'concat' else 0
            self.fwd_count = 0
            self.num_extra_channels = 2 if self.use_coords_freq > 0 else 0
            module_H = feature_dim[1] // (stem_stride ** stem_num_layers)  # Rough calc: work for main cases  # noqa: N806
            module_W = feature_dim[2] // (stem_stride ** stem_num_layers)  # Rough calc: work for main cases  # noqa: N806
            # the port: plain tensor attributes are state in Avalon (README), torch's constants are buffers
            self.register_buffer("coords", coord_map((module_H, module_W)), persistent=False)
            self.register_buffer("default_weight", torch.ones(1, 1, self.module_dim).type(torch.FloatTensor),
                                 persistent=False)
            self.register_buffer("default_bias", torch.zeros(1, 1, self.module_dim).type(torch.FloatTensor),
                                 persistent=False)
            # Initialize stem
            stem_feature_dim = feature_dim[0] + self.stem_use_coords * self.num_extra_channels
            self.stem = build_stem(stem_feature_dim, module_dim, num_layers=stem_num_layers,
                                   with_batchnorm=stem_batchnorm, kernel_size=stem_kernel_size, stride=stem_stride,
                                   padding=stem_padding)
            # Initialize FiLMed network body
            self.function_modules = {}
            for fn_num in range(self.num_modules):
                with_cond = self.condition_pattern[self.module_num_layers * fn_num:
                                                   self.module_num_layers * (fn_num + 1)]
                mod = self.block(module_dim, with_residual=module_residual, with_batchnorm=module_batchnorm,
                                 with_cond=with_cond, dropout=module_dropout,
                                 num_extra_channels=self.num_extra_channels,
                                 extra_channel_freq=self.extra_channel_freq, with_input_proj=module_input_proj,
                                 num_cond_maps=self.num_cond_maps, kernel_size=module_kernel_size,
                                 batchnorm_affine=module_batchnorm_affine, num_layers=self.module_num_layers,
                                 condition_method=condition_method)
                self.add_module(str(fn_num), mod)
                self.function_modules[fn_num] = mod
            # Initialize output classifier
            self.classifier = build_classifier(module_dim + self.num_extra_channels, module_H, module_W,
                                               num_answers, classifier_fc_layers, classifier_proj_dim,
                                               classifier_downsample, with_batchnorm=classifier_batchnorm,
                                               dropout=classifier_dropout)
            init_modules(self.modules())

        def forward(self, x, film):
            # the port: `self.fwd_count += 1` (the repository's debug counter) left out: a Python int rebound on the
            # model in each compiled call is part of the next call's signature, so every step traced again
            gammas, betas = torch.split(film[:, :, :2 * self.module_dim], self.module_dim, dim=-1)
            if not self.use_gamma:
                gammas = self.default_weight.expand_as(gammas)
            if not self.use_beta:
                betas = self.default_bias.expand_as(betas)
            # Propagate up image features CNN
            batch_coords = None
            if self.use_coords_freq > 0:
                batch_coords = self.coords.unsqueeze(0).expand(torch.Size((x.size(0), *self.coords.size())))
            if self.stem_use_coords:
                x = torch.cat([x, batch_coords], 1)
            feats = self.stem(x)
            N, _, H, W = feats.size()  # noqa: N806
            # Propagate up the network from low-to-high numbered blocks
            module_inputs = torch.zeros(feats.size()).unsqueeze(1).expand(
                N, self.num_modules, self.module_dim, H, W).type(torch.FloatTensor)
            module_inputs[:, 0] = feats
            for fn_num in range(self.num_modules):
                layer_output = self.function_modules[fn_num](module_inputs[:, fn_num],
                                                             gammas[:, fn_num, :], betas[:, fn_num, :], batch_coords)
                if fn_num == (self.num_modules - 1):
                    final_module_output = layer_output
                else:
                    module_inputs_updated = module_inputs.clone()
                    module_inputs_updated[:, fn_num + 1] = module_inputs_updated[:, fn_num + 1] + layer_output
                    module_inputs = module_inputs_updated
            # Run the final classifier over the resultant, post-modulated features.
            if self.use_coords_freq > 0:
                final_module_output = torch.cat([final_module_output, batch_coords], 1)
            out = self.classifier(final_module_output)
            return out

    class FiLMPair(nn.Module):
        """train_model.py's program_generator and execution_engine, held together for the optimizer."""
        def __init__(self):
            super().__init__()
            gen = VectorizedFiLMGen if vectorized_before_rnn else FiLMGen
            self.program_generator = gen(encoder_vocab_size=vocab, wordvec_dim=wordvec_dim, hidden_dim=hidden_dim,
                                         num_modules=num_modules, module_dim=module_dim)
            self.execution_engine = FiLMedNet(feature_dim=feature_dim, stem_num_layers=1,
                                              num_modules=num_modules, module_dim=module_dim,
                                              classifier_proj_dim=6, classifier_fc_layers=(7,))

        def forward(self, questions, feats):
            programs_pred = self.program_generator(questions)
            scores = self.execution_engine(feats, programs_pred)
            return scores

    return FiLMPair()


def clevr_questions(rng, n, t, vocab):
    """Questions padded with NULL (0) after their last token."""
    lengths = rng.integers(3, t + 1, n)
    q = rng.integers(1, vocab, (n, t))
    q[np.arange(t)[None, :] >= lengths[:, None]] = 0
    return q


def test_film_generator_gru_gather_and_filmed_resblocks_with_coord_maps():
    model, tmodel = pair(lambda *a: film(*a, vectorized_before_rnn=True), dtype=F32)
    verbatim, _ = pair(film, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-5)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=3e-3, weight_decay=1e-5)
    rng = np.random.default_rng(0)
    batches = [(clevr_questions(rng, 3, 6, 9), randn(rng, 3, 3, 4, 4), rng.integers(0, 5, 3)) for _ in range(3)]
    # the repository's loop over the elements finds the same last tokens, eagerly
    q = av.tensor(batches[0][0])
    with av.no_grad():
        assert rel(verbatim.program_generator(q.clone()), model.program_generator(q.clone())) < 1e-6

    def loss_fn(model, questions, feats, answers):
        scores = model(questions, feats)
        loss = (TF if isinstance(scores, torch.Tensor) else F).cross_entropy(scores, answers)
        return loss, scores
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches)


def test_film_before_rnn_loop_over_traced_tokens_says_what_to_do():
    model, _ = pair(film, dtype=F32)
    q = av.tensor(clevr_questions(np.random.default_rng(1), 2, 5, 9))
    with pytest.raises(av.TracerError):
        av.compile(lambda m, q: m.program_generator(q), backend="numpy")(model, q)


# -- 2. Deformable convolution v2 (4uiiurz1/pytorch-deform-conv-v2 deform_conv_v2.py) ---------------------------------

def deform_net(lib, F_, th, inc=3, outc=4, classes=3):
    torch, nn = th, lib

    class DeformConv2d(nn.Module):
        def __init__(self, inc, outc, kernel_size=3, padding=1, stride=1, bias=None, modulation=False):
            """
            Args:
                modulation (bool, optional): If True, Modulated Defomable Convolution (Deformable ConvNets v2).
            """
            super(DeformConv2d, self).__init__()  # noqa: UP008
            self.kernel_size = kernel_size
            self.padding = padding
            self.stride = stride
            self.zero_padding = nn.ZeroPad2d(padding)
            self.conv = nn.Conv2d(inc, outc, kernel_size=kernel_size, stride=kernel_size, bias=bias)

            self.p_conv = nn.Conv2d(inc, 2 * kernel_size * kernel_size, kernel_size=3, padding=1, stride=stride)
            nn.init.constant_(self.p_conv.weight, 0)
            # the port: `self.p_conv.register_backward_hook(self._set_lr)` (and m_conv's) left out: Avalon has no
            # backward hooks (README; the error is tested), and torch's does nothing (it returns None)

            self.modulation = modulation
            if modulation:
                self.m_conv = nn.Conv2d(inc, kernel_size * kernel_size, kernel_size=3, padding=1, stride=stride)
                nn.init.constant_(self.m_conv.weight, 0)

        @staticmethod
        def _set_lr(module, grad_input, grad_output):
            grad_input = (grad_input[i] * 0.1 for i in range(len(grad_input)))
            grad_output = (grad_output[i] * 0.1 for i in range(len(grad_output)))

        def forward(self, x):
            offset = self.p_conv(x)
            if self.modulation:
                m = torch.sigmoid(self.m_conv(x))

            dtype = offset.data.type()
            ks = self.kernel_size
            N = offset.size(1) // 2  # noqa: N806

            if self.padding:
                x = self.zero_padding(x)

            # (b, 2N, h, w)
            p = self._get_p(offset, dtype)

            # (b, h, w, 2N)
            p = p.contiguous().permute(0, 2, 3, 1)
            q_lt = p.detach().floor()
            q_rb = q_lt + 1

            q_lt = torch.cat([torch.clamp(q_lt[..., :N], 0, x.size(2) - 1),
                              torch.clamp(q_lt[..., N:], 0, x.size(3) - 1)], dim=-1).long()
            q_rb = torch.cat([torch.clamp(q_rb[..., :N], 0, x.size(2) - 1),
                              torch.clamp(q_rb[..., N:], 0, x.size(3) - 1)], dim=-1).long()
            q_lb = torch.cat([q_lt[..., :N], q_rb[..., N:]], dim=-1)
            q_rt = torch.cat([q_rb[..., :N], q_lt[..., N:]], dim=-1)

            # clip p
            p = torch.cat([torch.clamp(p[..., :N], 0, x.size(2) - 1), torch.clamp(p[..., N:], 0, x.size(3) - 1)],
                          dim=-1)

            # bilinear kernel (b, h, w, N)
            g_lt = (1 + (q_lt[..., :N].type_as(p) - p[..., :N])) * (1 + (q_lt[..., N:].type_as(p) - p[..., N:]))
            g_rb = (1 - (q_rb[..., :N].type_as(p) - p[..., :N])) * (1 - (q_rb[..., N:].type_as(p) - p[..., N:]))
            g_lb = (1 + (q_lb[..., :N].type_as(p) - p[..., :N])) * (1 - (q_lb[..., N:].type_as(p) - p[..., N:]))
            g_rt = (1 - (q_rt[..., :N].type_as(p) - p[..., :N])) * (1 + (q_rt[..., N:].type_as(p) - p[..., N:]))

            # (b, c, h, w, N)
            x_q_lt = self._get_x_q(x, q_lt, N)
            x_q_rb = self._get_x_q(x, q_rb, N)
            x_q_lb = self._get_x_q(x, q_lb, N)
            x_q_rt = self._get_x_q(x, q_rt, N)

            # (b, c, h, w, N)
            x_offset = g_lt.unsqueeze(dim=1) * x_q_lt + \
                g_rb.unsqueeze(dim=1) * x_q_rb + \
                g_lb.unsqueeze(dim=1) * x_q_lb + \
                g_rt.unsqueeze(dim=1) * x_q_rt

            # modulation
            if self.modulation:
                m = m.contiguous().permute(0, 2, 3, 1)
                m = m.unsqueeze(dim=1)
                m = torch.cat([m for _ in range(x_offset.size(1))], dim=1)
                x_offset *= m

            x_offset = self._reshape_x_offset(x_offset, ks)
            out = self.conv(x_offset)

            return out

        def _get_p_n(self, N, dtype):  # noqa: N803
            p_n_x, p_n_y = torch.meshgrid(
                torch.arange(-(self.kernel_size - 1) // 2, (self.kernel_size - 1) // 2 + 1),
                torch.arange(-(self.kernel_size - 1) // 2, (self.kernel_size - 1) // 2 + 1))
            # (2N, 1)
            p_n = torch.cat([torch.flatten(p_n_x), torch.flatten(p_n_y)], 0)
            p_n = p_n.view(1, 2 * N, 1, 1).type(dtype)

            return p_n

        def _get_p_0(self, h, w, N, dtype):  # noqa: N803
            p_0_x, p_0_y = torch.meshgrid(
                torch.arange(1, h * self.stride + 1, self.stride),
                torch.arange(1, w * self.stride + 1, self.stride))
            p_0_x = torch.flatten(p_0_x).view(1, 1, h, w).repeat(1, N, 1, 1)
            p_0_y = torch.flatten(p_0_y).view(1, 1, h, w).repeat(1, N, 1, 1)
            p_0 = torch.cat([p_0_x, p_0_y], 1).type(dtype)

            return p_0

        def _get_p(self, offset, dtype):
            N, h, w = offset.size(1) // 2, offset.size(2), offset.size(3)  # noqa: N806

            # (1, 2N, 1, 1)
            p_n = self._get_p_n(N, dtype)
            # (1, 2N, h, w)
            p_0 = self._get_p_0(h, w, N, dtype)
            p = p_0 + p_n + offset
            return p

        def _get_x_q(self, x, q, N):  # noqa: N803
            b, h, w, _ = q.size()
            padded_w = x.size(3)
            c = x.size(1)
            # (b, c, h*w)
            x = x.contiguous().view(b, c, -1)

            # (b, h, w, N)
            index = q[..., :N] * padded_w + q[..., N:]  # offset_x*w + offset_y
            # (b, c, h*w*N)
            index = index.contiguous().unsqueeze(dim=1).expand(-1, c, -1, -1, -1).contiguous().view(b, c, -1)

            x_offset = x.gather(dim=-1, index=index).contiguous().view(b, c, h, w, N)

            return x_offset

        @staticmethod
        def _reshape_x_offset(x_offset, ks):
            b, c, h, w, N = x_offset.size()  # noqa: N806
            x_offset = torch.cat([x_offset[..., s:s + ks].contiguous().view(b, c, h, w * ks) for s in range(0, N, ks)],
                                 dim=-1)
            x_offset = x_offset.contiguous().view(b, c, h * ks, w * ks)

            return x_offset

    class DeformNet(nn.Module):
        """The repository's scaled-MNIST model, cut down: conv, bn, a deformable conv v2, pool, linear."""
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(inc, outc, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(outc)
            self.conv2 = DeformConv2d(outc, outc, 3, padding=1, modulation=True)
            self.bn2 = nn.BatchNorm2d(outc)
            self.fc = nn.Linear(outc, classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            x = nn.functional.adaptive_avg_pool2d(x, (1, 1)).view(x.size(0), -1)
            return self.fc(x)

    return DeformNet()


def test_deform_conv_v2_offsets_by_gathered_bilinear_corners_and_modulation():
    model, tmodel = pair(deform_net, dtype=F32)
    with pytest.raises(RuntimeError, match="gradients are values"):
        model.conv2.p_conv.register_backward_hook(lambda module, grad_input, grad_output: None)
    assert float(model.conv2.p_conv.weight.abs().sum()) == 0
    optimizer = av.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(2)
    batches = [(randn(rng, 2, 3, 5, 5), rng.integers(0, 3, 2)) for _ in range(3)]

    def loss_fn(model, x, y):
        out = model(x)
        return (TF if isinstance(out, torch.Tensor) else F).cross_entropy(out, y), out
    # conv1's bias, which bn1 removes, has a gradient of roundoff on both sides: the floor
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, floor=1e-3)


# -- 3. Sparsely-gated mixture of experts (davidmrau/mixture-of-experts moe.py) ----------------------------------------

def moe(lib, F_, th, input_size=6, output_size=4, num_experts=5, hidden_size=8, k=2, noise=None):
    torch, nn = th, lib
    Normal = torch.distributions.normal.Normal  # noqa: N806

    class SparseDispatcher(object):  # noqa: UP004
        def __init__(self, num_experts, gates):
            """Create a SparseDispatcher."""
            self._gates = gates
            self._num_experts = num_experts
            # sort experts
            sorted_experts, index_sorted_experts = torch.nonzero(gates).sort(0)
            # drop indices
            _, self._expert_index = sorted_experts.split(1, dim=1)
            # get according batch index for each expert
            self._batch_index = torch.nonzero(gates)[index_sorted_experts[:, 1], 0]
            # calculate num samples that each expert gets
            self._part_sizes = (gates > 0).sum(0).tolist()
            # expand gates to match with self._batch_index
            gates_exp = gates[self._batch_index.flatten()]
            self._nonzero_gates = torch.gather(gates_exp, 1, self._expert_index)

        def dispatch(self, inp):
            # assigns samples to experts whose gate is nonzero
            # expand according to batch index so we can just split by _part_sizes
            inp_exp = inp[self._batch_index].squeeze(1)
            return torch.split(inp_exp, self._part_sizes, dim=0)

        def combine(self, expert_out, multiply_by_gates=True):
            # apply exp to expert outputs, so we are not longer in log space
            stitched = torch.cat(expert_out, 0)
            if multiply_by_gates:
                stitched = stitched.mul(self._nonzero_gates)
            zeros = torch.zeros(self._gates.size(0), expert_out[-1].size(1), requires_grad=True,
                                device=stitched.device)
            # combine samples that have been processed by the same k experts
            combined = zeros.index_add(0, self._batch_index, stitched.float())
            return combined

        def expert_to_gates(self):
            # split nonzero gates for each expert
            return torch.split(self._nonzero_gates, self._part_sizes, dim=0)

    class MLP(nn.Module):
        def __init__(self, input_size, output_size, hidden_size):
            super(MLP, self).__init__()  # noqa: UP008
            self.fc1 = nn.Linear(input_size, hidden_size)
            self.fc2 = nn.Linear(hidden_size, output_size)
            self.relu = nn.ReLU()
            self.soft = nn.Softmax(1)

        def forward(self, x):
            out = self.fc1(x)
            out = self.relu(out)
            out = self.fc2(out)
            out = self.soft(out)
            return out

    class MoE(nn.Module):
        def __init__(self, input_size, output_size, num_experts, hidden_size, noisy_gating=True, k=4):
            super(MoE, self).__init__()  # noqa: UP008
            self.noisy_gating = noisy_gating
            self.num_experts = num_experts
            self.output_size = output_size
            self.input_size = input_size
            self.hidden_size = hidden_size
            self.k = k
            # instantiate experts
            self.experts = nn.ModuleList([MLP(self.input_size, self.output_size, self.hidden_size)
                                          for i in range(self.num_experts)])
            self.w_gate = nn.Parameter(torch.zeros(input_size, num_experts), requires_grad=True)
            self.w_noise = nn.Parameter(torch.zeros(input_size, num_experts), requires_grad=True)

            self.softplus = nn.Softplus()
            self.softmax = nn.Softmax(1)
            self.register_buffer("mean", torch.tensor([0.0]))
            self.register_buffer("std", torch.tensor([1.0]))
            assert (self.k <= self.num_experts)

        def cv_squared(self, x):
            eps = 1e-10
            # if only num_experts = 1
            if x.shape[0] == 1:
                return torch.tensor([0], device=x.device, dtype=x.dtype)
            return x.float().var() / (x.float().mean() ** 2 + eps)

        def _gates_to_load(self, gates):
            return (gates > 0).sum(0)

        def _prob_in_top_k(self, clean_values, noisy_values, noise_stddev, noisy_top_values):
            batch = clean_values.size(0)
            m = noisy_top_values.size(1)
            top_values_flat = noisy_top_values.flatten()

            threshold_positions_if_in = torch.arange(batch, device=clean_values.device) * m + self.k
            threshold_if_in = torch.unsqueeze(torch.gather(top_values_flat, 0, threshold_positions_if_in), 1)
            is_in = torch.gt(noisy_values, threshold_if_in)
            threshold_positions_if_out = threshold_positions_if_in - 1
            threshold_if_out = torch.unsqueeze(torch.gather(top_values_flat, 0, threshold_positions_if_out), 1)
            # is each value currently in the top k.
            normal = Normal(self.mean, self.std)
            prob_if_in = normal.cdf((clean_values - threshold_if_in) / noise_stddev)
            prob_if_out = normal.cdf((clean_values - threshold_if_out) / noise_stddev)
            prob = torch.where(is_in, prob_if_in, prob_if_out)
            return prob

        def noisy_top_k_gating(self, x, train, noise_epsilon=1e-2):
            clean_logits = x @ self.w_gate
            if self.noisy_gating and train:
                raw_noise_stddev = x @ self.w_noise
                noise_stddev = ((self.softplus(raw_noise_stddev) + noise_epsilon))  # noqa: UP034
                noisy_logits = clean_logits + (randn_like(clean_logits) * noise_stddev)
                logits = noisy_logits
            else:
                logits = clean_logits

            # calculate topk + 1 that will be needed for the noisy gates
            logits = self.softmax(logits)
            top_logits, top_indices = logits.topk(min(self.k + 1, self.num_experts), dim=1)
            top_k_logits = top_logits[:, :self.k]
            top_k_indices = top_indices[:, :self.k]
            top_k_gates = top_k_logits / (top_k_logits.sum(1, keepdim=True) + 1e-6)  # normalization

            zeros = torch.zeros_like(logits, requires_grad=True)
            gates = zeros.scatter(1, top_k_indices, top_k_gates)

            if self.noisy_gating and self.k < self.num_experts and train:
                load = (self._prob_in_top_k(clean_logits, noisy_logits, noise_stddev, top_logits)).sum(0)
            else:
                load = self._gates_to_load(gates)
            return gates, load

        def forward(self, x, loss_coef=1e-2):
            gates, load = self.noisy_top_k_gating(x, self.training)
            # calculate importance loss
            importance = gates.sum(0)
            #
            loss = self.cv_squared(importance) + self.cv_squared(load)
            loss *= loss_coef

            dispatcher = SparseDispatcher(self.num_experts, gates)
            expert_inputs = dispatcher.dispatch(x)
            gates = dispatcher.expert_to_gates()
            expert_outputs = [self.experts[i](expert_inputs[i]) for i in range(self.num_experts)]
            y = dispatcher.combine(expert_outputs)
            return y, loss

    def randn_like(t):
        """The noise of `torch.randn_like`, drawn by the test so that both sides see the same numbers."""
        return torch.tensor(noise.pop(0))

    m = MoE(input_size, output_size, num_experts, hidden_size, k=k)
    with torch.no_grad():  # zero gate weights tie every expert; the test draws them (ties are ordered either way)
        m.w_gate.copy_(torch.randn(input_size, num_experts))
    return m


def test_sparse_moe_noisy_top_k_gating_dispatcher_and_load_balancing_losses():
    """The dispatcher's sizes are the data's (`nonzero`, `tolist()`): the layer runs eagerly (outside av.grad, which
    says so); the gating and its cv_squared losses, whose shapes are static, are trained by av.value_and_grad."""
    rng = np.random.default_rng(3)
    noise = [randn(rng, 6, 5) for _ in range(7)]
    model, tmodel = pair(lambda *a: moe(*a, noise=list(noise)), dtype=F32)
    x = randn(rng, 6, 6)
    with pytest.raises(TypeError, match="nonzero: the result's shape depends on the tensor's values"):
        av.grad(lambda m, x: m(x)[0].sum())(model, av.tensor(x))
    with torch.no_grad():
        tmodel(torch.tensor(x))  # the noise that call drew
    optimizer = av.optim.Adam([model.w_gate, model.w_noise], lr=1e-2)
    toptimizer = torch.optim.Adam([tmodel.w_gate, tmodel.w_noise], lr=1e-2)

    def gating_loss(model, x):
        gates, load = model.noisy_top_k_gating(x, model.training)
        return model.cv_squared(gates.sum(0)) + model.cv_squared(load)
    for it in range(3):
        x = randn(rng, 6, 6)
        with torch.no_grad(), av.no_grad():  # the whole layer, eagerly, on the same noise
            out, aux = model(av.tensor(x))
            tout, taux = tmodel(torch.tensor(x))
        assert rel(out, tout) < 1e-5 and rel(aux, taux) < 1e-5, it
        tl = gating_loss(tmodel, torch.tensor(x))
        toptimizer.zero_grad()
        tl.backward()
        toptimizer.step()
        with warnings.catch_warnings():  # the test's noise goes in as a captured constant, as meant
            warnings.filterwarnings("ignore", "value_and_grad_gating_loss uses arrays")
            loss, grads = av.value_and_grad(gating_loss)(model, av.tensor(x))
        optimizer.step(grads)
        assert rel(loss, tl) < 1e-5, it
        assert rel(grads["w_gate"], tmodel.w_gate.grad) < 1e-4 and rel(grads["w_noise"], tmodel.w_noise.grad) < 1e-4
        same_weights(model, tmodel, 1e-4)
    # evaluation: the clean gates, the load by counting
    model.eval()
    tmodel.eval()
    x = randn(rng, 6, 6)
    with av.no_grad(), torch.no_grad():
        out, loss = model(av.tensor(x))
        tout, tl = tmodel(torch.tensor(x))
    assert rel(out, tout) < 1e-5 and rel(loss, tl) < 1e-5


# -- 4. Deformable-DETR's encoder (fundamentalvision/Deformable-DETR models/ops/modules/ms_deform_attn.py,
#       models/ops/functions/ms_deform_attn_func.py's ms_deform_attn_core_pytorch, models/deformable_transformer.py) --

def deformable_encoder(lib, F_, th, d_model=8, n_levels=2, n_heads=2, n_points=2, d_ffn=12, num_layers=2,
                       classes=3):
    torch, nn, F = th, lib, F_
    constant_, xavier_uniform_, normal_ = nn.init.constant_, nn.init.xavier_uniform_, nn.init.normal_

    def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
        # for debug and test only,
        # need to use cuda version instead
        N_, S_, M_, D_ = value.shape  # noqa: N806
        _, Lq_, M_, L_, P_, _ = sampling_locations.shape  # noqa: N806
        value_list = value.split([H_ * W_ for H_, W_ in value_spatial_shapes], dim=1)
        sampling_grids = 2 * sampling_locations - 1
        sampling_value_list = []
        for lid_, (H_, W_) in enumerate(value_spatial_shapes):  # noqa: N806
            # N_, H_*W_, M_, D_ -> N_, H_*W_, M_*D_ -> N_, M_*D_, H_*W_ -> N_*M_, D_, H_, W_
            value_l_ = value_list[lid_].flatten(2).transpose(1, 2).reshape(N_ * M_, D_, H_, W_)
            # N_, Lq_, M_, P_, 2 -> N_, M_, Lq_, P_, 2 -> N_*M_, Lq_, P_, 2
            sampling_grid_l_ = sampling_grids[:, :, :, lid_].transpose(1, 2).flatten(0, 1)
            # N_*M_, D_, Lq_, P_
            sampling_value_l_ = F.grid_sample(value_l_, sampling_grid_l_,
                                              mode='bilinear', padding_mode='zeros', align_corners=False)
            sampling_value_list.append(sampling_value_l_)
        # (N_, Lq_, M_, L_, P_) -> (N_, M_, Lq_, L_, P_) -> (N_, M_, 1, Lq_, L_*P_)
        attention_weights = attention_weights.transpose(1, 2).reshape(N_ * M_, 1, Lq_, L_ * P_)
        output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1).view(
            N_, M_ * D_, Lq_)
        return output.transpose(1, 2).contiguous()

    class MSDeformAttn(nn.Module):
        def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
            super().__init__()
            if d_model % n_heads != 0:
                raise ValueError('d_model must be divisible by n_heads, but got {} and {}'.format(d_model, n_heads))  # noqa: UP032
            self.im2col_step = 64
            self.d_model = d_model
            self.n_levels = n_levels
            self.n_heads = n_heads
            self.n_points = n_points
            self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
            self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
            self.value_proj = nn.Linear(d_model, d_model)
            self.output_proj = nn.Linear(d_model, d_model)
            self._reset_parameters()

        def _reset_parameters(self):
            constant_(self.sampling_offsets.weight.data, 0.)
            thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
            grid_init = torch.stack([thetas.cos(), thetas.sin()], -1)
            grid_init = (grid_init / grid_init.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2).repeat(
                1, self.n_levels, self.n_points, 1)
            for i in range(self.n_points):
                grid_init[:, :, i, :] *= i + 1
            with torch.no_grad():
                self.sampling_offsets.bias = nn.Parameter(grid_init.view(-1))
            constant_(self.attention_weights.weight.data, 0.)
            constant_(self.attention_weights.bias.data, 0.)
            xavier_uniform_(self.value_proj.weight.data)
            constant_(self.value_proj.bias.data, 0.)
            xavier_uniform_(self.output_proj.weight.data)
            constant_(self.output_proj.bias.data, 0.)

        def forward(self, query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index,
                    input_padding_mask=None):
            N, Len_q, _ = query.shape  # noqa: N806
            N, Len_in, _ = input_flatten.shape  # noqa: N806
            assert (input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum() == Len_in

            value = self.value_proj(input_flatten)
            if input_padding_mask is not None:
                value = value.masked_fill(input_padding_mask[..., None], float(0))
            value = value.view(N, Len_in, self.n_heads, self.d_model // self.n_heads)
            sampling_offsets = self.sampling_offsets(query).view(N, Len_q, self.n_heads, self.n_levels,
                                                                 self.n_points, 2)
            attention_weights = self.attention_weights(query).view(N, Len_q, self.n_heads,
                                                                   self.n_levels * self.n_points)
            attention_weights = F.softmax(attention_weights, -1).view(N, Len_q, self.n_heads, self.n_levels,
                                                                      self.n_points)
            # N, Len_q, n_heads, n_levels, n_points, 2
            if reference_points.shape[-1] == 2:
                offset_normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
                sampling_locations = reference_points[:, :, None, :, None, :] \
                    + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
            elif reference_points.shape[-1] == 4:
                sampling_locations = reference_points[:, :, None, :, None, :2] \
                    + sampling_offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            else:
                raise ValueError(
                    'Last dim of reference_points must be 2 or 4, but get {} instead.'.format(  # noqa: UP032
                        reference_points.shape[-1]))
            output = ms_deform_attn_core_pytorch(value, input_spatial_shapes, sampling_locations, attention_weights)
            output = self.output_proj(output)
            return output

    class DeformableTransformerEncoderLayer(nn.Module):
        def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8,
                     n_points=4):
            super().__init__()
            # self attention
            self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
            self.dropout1 = nn.Dropout(dropout)
            self.norm1 = nn.LayerNorm(d_model)
            # ffn
            self.linear1 = nn.Linear(d_model, d_ffn)
            self.activation = F.relu
            self.dropout2 = nn.Dropout(dropout)
            self.linear2 = nn.Linear(d_ffn, d_model)
            self.dropout3 = nn.Dropout(dropout)
            self.norm2 = nn.LayerNorm(d_model)

        @staticmethod
        def with_pos_embed(tensor, pos):
            return tensor if pos is None else tensor + pos

        def forward_ffn(self, src):
            src2 = self.linear2(self.dropout2(self.activation(self.linear1(src))))
            src = src + self.dropout3(src2)
            src = self.norm2(src)
            return src

        def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
            # self attention
            src2 = self.self_attn(self.with_pos_embed(src, pos), reference_points, src, spatial_shapes,
                                  level_start_index, padding_mask)
            src = src + self.dropout1(src2)
            src = self.norm1(src)
            # ffn
            src = self.forward_ffn(src)
            return src

    def _get_clones(module, N):  # noqa: N803
        return nn.ModuleList([copy.deepcopy(module) for i in range(N)])

    class DeformableTransformerEncoder(nn.Module):
        def __init__(self, encoder_layer, num_layers):
            super().__init__()
            self.layers = _get_clones(encoder_layer, num_layers)
            self.num_layers = num_layers

        @staticmethod
        def get_reference_points(spatial_shapes, valid_ratios, device):
            reference_points_list = []
            for lvl, (H_, W_) in enumerate(spatial_shapes):  # noqa: N806
                ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, H_ - 0.5, H_, dtype=torch.float32, device=device),
                                              torch.linspace(0.5, W_ - 0.5, W_, dtype=torch.float32, device=device))
                ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * H_)
                ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * W_)
                ref = torch.stack((ref_x, ref_y), -1)
                reference_points_list.append(ref)
            reference_points = torch.cat(reference_points_list, 1)
            reference_points = reference_points[:, :, None] * valid_ratios[:, None]
            return reference_points

        def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos=None, padding_mask=None):
            output = src
            reference_points = self.get_reference_points(spatial_shapes, valid_ratios, device=src.device)
            for _, layer in enumerate(self.layers):
                output = layer(output, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
            return output

    class DeformableEncoderClassifier(nn.Module):
        """DeformableTransformer's encoder half (level embeddings, flattening, valid ratios) and a pooled head."""
        def __init__(self):
            super().__init__()
            encoder_layer = DeformableTransformerEncoderLayer(d_model, d_ffn, 0.0, "relu", n_levels, n_heads,
                                                              n_points)
            self.encoder = DeformableTransformerEncoder(encoder_layer, num_layers)
            self.level_embed = nn.Parameter(torch.Tensor(n_levels, d_model))
            self.head = nn.Linear(d_model, classes)
            normal_(self.level_embed)

        def get_valid_ratio(self, mask):
            _, H, W = mask.shape  # noqa: N806
            valid_H = torch.sum(~mask[:, :, 0], 1)  # noqa: N806
            valid_W = torch.sum(~mask[:, 0, :], 1)  # noqa: N806
            valid_ratio_h = valid_H.float() / H
            valid_ratio_w = valid_W.float() / W
            valid_ratio = torch.stack([valid_ratio_w, valid_ratio_h], -1)
            return valid_ratio

        def forward(self, srcs, masks, pos_embeds):
            src_flatten = []
            mask_flatten = []
            lvl_pos_embed_flatten = []
            spatial_shapes = []
            for lvl, (src, mask, pos_embed) in enumerate(zip(srcs, masks, pos_embeds)):
                bs, c, h, w = src.shape
                spatial_shape = (h, w)
                spatial_shapes.append(spatial_shape)
                src = src.flatten(2).transpose(1, 2)
                mask = mask.flatten(1)
                pos_embed = pos_embed.flatten(2).transpose(1, 2)
                lvl_pos_embed = pos_embed + self.level_embed[lvl].view(1, 1, -1)
                lvl_pos_embed_flatten.append(lvl_pos_embed)
                src_flatten.append(src)
                mask_flatten.append(mask)
            src_flatten = torch.cat(src_flatten, 1)
            mask_flatten = torch.cat(mask_flatten, 1)
            lvl_pos_embed_flatten = torch.cat(lvl_pos_embed_flatten, 1)
            spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=src_flatten.device)
            level_start_index = torch.cat((spatial_shapes.new_zeros((1, )), spatial_shapes.prod(1).cumsum(0)[:-1]))
            valid_ratios = torch.stack([self.get_valid_ratio(m) for m in masks], 1)
            memory = self.encoder(src_flatten, spatial_shapes, level_start_index, valid_ratios,
                                  lvl_pos_embed_flatten, mask_flatten)
            keep = (~mask_flatten).unsqueeze(-1).type_as(memory)
            return self.head((memory * keep).sum(1) / keep.sum(1))

    return DeformableEncoderClassifier()


def test_deformable_detr_encoder_multi_scale_deformable_attention_by_grid_sample():
    model, tmodel = pair(deformable_encoder, dtype=F32)
    optimizer = av.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    toptimizer = torch.optim.AdamW(tmodel.parameters(), lr=2e-3, weight_decay=1e-4)
    rng = np.random.default_rng(4)
    batches = []
    for _ in range(3):
        srcs = [randn(rng, 2, 8, 4, 6), randn(rng, 2, 8, 2, 3)]
        pos = [randn(rng, 2, 8, 4, 6), randn(rng, 2, 8, 2, 3)]
        masks = []
        for h, w in ((4, 6), (2, 3)):  # NestedTensor's padding: each image's valid top-left, interpolated down
            m = np.ones((2, h, w), bool)
            m[0, :, :] = False
            m[1, :h - 1 if h > 2 else h, :w - 1] = False
            masks.append(m)
        batches.append((*srcs, *masks, *pos, rng.integers(0, 3, 2)))

    def loss_fn(model, s0, s1, m0, m1, p0, p1, y):
        out = model([s0, s1], [m0, m1], [p0, p1])
        return (TF if isinstance(out, torch.Tensor) else F).cross_entropy(out, y), out
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, clip=0.1)


# -- 5. CBAM (Jongchan/attention-module MODELS/cbam.py, MODELS/model_resnet.py) ---------------------------------------

def cbam_resnet(lib, F_, th, planes=16, num_classes=3):
    torch, nn, F = th, lib, F_
    init = nn.init

    class BasicConv(nn.Module):
        def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1, relu=True,
                     bn=True, bias=False):
            super(BasicConv, self).__init__()  # noqa: UP008
            self.out_channels = out_planes
            self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride, padding=padding,
                                  dilation=dilation, groups=groups, bias=bias)
            self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True) if bn else None
            self.relu = nn.ReLU() if relu else None

        def forward(self, x):
            x = self.conv(x)
            if self.bn is not None:
                x = self.bn(x)
            if self.relu is not None:
                x = self.relu(x)
            return x

    class Flatten(nn.Module):
        def forward(self, x):
            return x.view(x.size(0), -1)

    def logsumexp_2d(tensor):
        tensor_flatten = tensor.view(tensor.size(0), tensor.size(1), -1)
        s, _ = torch.max(tensor_flatten, dim=2, keepdim=True)
        outputs = s + (tensor_flatten - s).exp().sum(dim=2, keepdim=True).log()
        return outputs

    class ChannelGate(nn.Module):
        def __init__(self, gate_channels, reduction_ratio=16, pool_types=('avg', 'max')):
            super(ChannelGate, self).__init__()  # noqa: UP008
            self.gate_channels = gate_channels
            self.mlp = nn.Sequential(
                Flatten(),
                nn.Linear(gate_channels, gate_channels // reduction_ratio),
                nn.ReLU(),
                nn.Linear(gate_channels // reduction_ratio, gate_channels)
            )
            self.pool_types = pool_types

        def forward(self, x):
            channel_att_sum = None
            for pool_type in self.pool_types:
                if pool_type == 'avg':
                    avg_pool = F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
                    channel_att_raw = self.mlp(avg_pool)
                elif pool_type == 'max':
                    max_pool = F.max_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
                    channel_att_raw = self.mlp(max_pool)
                elif pool_type == 'lp':
                    lp_pool = F.lp_pool2d(x, 2, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
                    channel_att_raw = self.mlp(lp_pool)
                elif pool_type == 'lse':
                    # LSE pool only
                    lse_pool = logsumexp_2d(x)
                    channel_att_raw = self.mlp(lse_pool)

                if channel_att_sum is None:
                    channel_att_sum = channel_att_raw
                else:
                    channel_att_sum = channel_att_sum + channel_att_raw

            scale = torch.sigmoid(channel_att_sum).unsqueeze(2).unsqueeze(3).expand_as(x)
            return x * scale

    class ChannelPool(nn.Module):
        def forward(self, x):
            return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)

    class SpatialGate(nn.Module):
        def __init__(self):
            super(SpatialGate, self).__init__()  # noqa: UP008
            kernel_size = 7
            self.compress = ChannelPool()
            self.spatial = BasicConv(2, 1, kernel_size, stride=1, padding=(kernel_size - 1) // 2, relu=False)

        def forward(self, x):
            x_compress = self.compress(x)
            x_out = self.spatial(x_compress)
            scale = torch.sigmoid(x_out)  # broadcasting
            return x * scale

    class CBAM(nn.Module):
        def __init__(self, gate_channels, reduction_ratio=16, pool_types=('avg', 'max'), no_spatial=False):
            super(CBAM, self).__init__()  # noqa: UP008
            self.ChannelGate = ChannelGate(gate_channels, reduction_ratio, pool_types)
            self.no_spatial = no_spatial
            if not no_spatial:
                self.SpatialGate = SpatialGate()

        def forward(self, x):
            x_out = self.ChannelGate(x)
            if not self.no_spatial:
                x_out = self.SpatialGate(x_out)
            return x_out

    def conv3x3(in_planes, out_planes, stride=1):
        "3x3 convolution with padding"
        return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None, use_cbam=False):
            super(BasicBlock, self).__init__()  # noqa: UP008
            self.conv1 = conv3x3(inplanes, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride
            if use_cbam:
                self.cbam = CBAM(planes, 16, pool_types=('avg', 'max', 'lp', 'lse'))
            else:
                self.cbam = None

        def forward(self, x):
            residual = x
            out = self.conv1(x)
            out = self.bn1(out)
            out = self.relu(out)
            out = self.conv2(out)
            out = self.bn2(out)
            if self.downsample is not None:
                residual = self.downsample(x)
            if self.cbam is not None:
                out = self.cbam(out)
            out += residual
            out = self.relu(out)
            return out

    class ResidualNet(nn.Module):
        """ResNet's CIFAR-style stem, one CBAM BasicBlock with a downsample, the pooled fc."""
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.relu = nn.ReLU(inplace=True)
            downsample = nn.Sequential(nn.Conv2d(8, planes, kernel_size=1, stride=2, bias=False),
                                       nn.BatchNorm2d(planes))
            self.layer1 = nn.Sequential(BasicBlock(8, planes, 2, downsample, use_cbam=True))
            self.fc = nn.Linear(planes, num_classes)

            init.kaiming_normal(self.fc.weight)
            for key in self.state_dict():
                if key.split('.')[-1] == "weight":
                    if "conv" in key:
                        init.kaiming_normal(self.state_dict()[key], mode='fan_out')
                    if "bn" in key:
                        if "SpatialGate" in key:
                            self.state_dict()[key][...] = 0
                        else:
                            self.state_dict()[key][...] = 1
                elif key.split(".")[-1] == 'bias':
                    self.state_dict()[key][...] = 0

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer1(x)
            x = F.avg_pool2d(x, x.size(2))
            x = x.view(x.size(0), -1)
            return self.fc(x)

    return ResidualNet()


def test_cbam_channel_and_spatial_gates_with_state_dict_writes_in_init():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of init.kaiming_normal
        model, tmodel = pair(cbam_resnet, dtype=F32)
        ours_alone = cbam_resnet(nn, F, av)
    # the writes through state_dict() reach the parameters (the spatial gate's bn weight is 0, biases are 0)
    sg = ours_alone.layer1[0].cbam.SpatialGate.spatial.bn
    assert float(sg.weight.abs().sum()) == 0 and float(ours_alone.fc.bias.abs().sum()) == 0
    assert float(ours_alone.bn1.weight.sum()) == 8
    optimizer = av.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(5)
    batches = [(randn(rng, 2, 3, 6, 6), rng.integers(0, 3, 2)) for _ in range(3)]

    def loss_fn(model, x, y):
        out = model(x)
        return (TF if isinstance(out, torch.Tensor) else F).cross_entropy(out, y), out
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches)


# -- what the programs above met -------------------------------------------------------------------------------------

def test_size_is_torch_size():
    s = av.Size((2, 3))
    assert s == (2, 3) and s.numel() == 6 and repr(s) == repr(torch.Size((2, 3))) and isinstance(s[1:], av.Size)
    assert av.ones(1, 3).expand(av.Size((2, 3))).shape == (2, 3) and av.zeros(av.Size([2, 1])).shape == (2, 1)
    with pytest.raises(TypeError, match="takes an iterable of 'int'"):
        av.Size([1.5])


def test_write_into_a_non_overlapping_view_of_an_expanded_tensor():
    """FiLM's `module_inputs = zeros(feats.size()).unsqueeze(1).expand(N, M, ...)`, then `module_inputs[:, 0] =
    feats`: torch writes the memory the indexed view reaches (every slot reads it); a write that overlaps is refused."""
    for lib in (torch, av):
        base = lib.zeros(3, 4)
        e = base.unsqueeze(1).expand(3, 2, 4)
        e[:, 0] = lib.arange(4.0) + 1
        e[1, 1, 1:3] = 7
        assert base.tolist() == [[1, 2, 3, 4], [1, 7, 7, 4], [1, 2, 3, 4]] and e[:, 1].tolist() == base.tolist()
        with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
            e[0, :, 1] = 5

    def f(x, w):
        m = av.zeros(2, 4).unsqueeze(1).expand(2, 3, 4)
        m[:, 1] = x
        return (m * w).sum()
    x, w = randn(np.random.default_rng(6), 2, 4), randn(np.random.default_rng(7), 1, 3, 1)
    want = float((x.astype(np.float64) * w.sum()).sum())
    assert float(f(av.tensor(x), av.tensor(w))) == pytest.approx(want, rel=1e-5)
    assert float(av.compile(f, backend="numpy")(av.tensor(x), av.tensor(w))) == pytest.approx(want, rel=1e-5)
    assert np.allclose(av.grad(f)(av.tensor(x), av.tensor(w)).numpy(), w.sum(), rtol=1e-5)

"""Round 10b of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
outputs, gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: DeepSets (manzilzaheer/DeepSets' PermEqui2_max by `x.max(1, keepdim=True)`, ELU phi, a masked sum and mean
pool over zero-padded sets by `mask.unsqueeze(-1)` and `sum(dim=1) / mask.sum(1, keepdim=True)`, rho) with juho-lee's
Set Transformer (MAB's heads by `torch.cat(Q.split(dim_split, 2), 0)` and `bmm`, the heads joined back by
`split(Q.size(0), 0)`, the optional LayerNorms (off, the default) by `getattr(self, 'ln0', None)`, ISAB's induced points
and PMA's seeds as `nn.Parameter(torch.Tensor(...))` with `repeat`), trained by Adam; open_clip's SigLipLoss (`2 * eye -
1` labels, `-F.logsigmoid(labels * logits).sum() / n`, `logits += logit_bias`) on two tiny towers with normalized
features and `logit_scale.exp()`, by AdamW, and its ClipLoss with `cache_labels=True` (as create_loss builds it) and
training/train.py's `logit_scale.clamp_(0, math.log(100))` under no_grad after each step, by SGD; r9y9/wavenet_vocoder's
WaveNet (modules.py's weight-normed Conv1d, causal by padding both sides and slicing `x[:, :, :residual.size(-1)]`,
checked against a left padding `F.pad(x, (dilation * (k - 1), 0))` in an nn.Conv1d subclass calling `super().forward`;
ResidualConv1dGLU's split tanh * sigmoid gate with residual and skip 1x1 convs, `skips +=` from 0, `* math.sqrt(0.5)`)
on torchaudio's mu-law encoding (`sign`, `log1p`, `+ 0.5` and `.to(torch.int64)`; nnmnkwii's `torch.round(...).long()`
form too, both decoders checked) with one-hot inputs by `F.one_hot(...).transpose(1, 2).float()` and by
`zeros(...).scatter_(1, q.unsqueeze(1), 1.0)`, 256-way cross-entropy, Adam; a Pointer Network (shirgur/PointerNet's
Attention with its uniform-initialized `V`, Conv1d context, frozen `_inf` and `decoder_input0` parameters
(`requires_grad=False`), an LSTM encoder and an LSTMCell decoder loop, greedy `max(1)` pointers `.detach()`ed, chosen
points masked by `mask.scatter(1, idx.unsqueeze(1), True)` or pemami4911's `maskk[[x for x in range(b)], idx] = 1` on a
clone, the next input by `torch.gather` of the embedded inputs, Train.py's CrossEntropyLoss applied to the pointer
probabilities against the target permutation, Adam with clip_grad_norm_); HF's LongformerSelfAttention local attention
(`_chunk` by `as_strided` with halved strides, `_sliding_chunks_query_key_matmul`'s `einsum("bcxd,bcyd->bcxy")`,
`_pad_and_transpose_last_two_dims`, the slice writes into `new_zeros`, `_mask_invalid_locations`' `tril().flip` masks
written in place through a transposed view, the padding mask run through the same matmul, `_pad_and_diagonalize`, the
values chunked by `as_strided` of the `value=-1` padded values, `query_vectors /= sqrt(d)`, `attn_scores +=`,
`masked_fill` of padded queries) in a tiny classifier by AdamW, the three `_chunk` forms (as_strided, `unfold`, the ONNX
loop into `torch.empty`) checked on both sides against dense banded attention in numpy; and the DNC's memory
(ixaxaar/pytorch-dnc memory.py and util.py: θ's cosine similarity by `norm`, σ's softmax through transposes, usage by
`prod`, allocation by sorting the usage, the exclusive cumprod by `cat((ones, sorted), 1)` and `[:, :-1]`, back to
memory order by `scatter_` with the sort indices or `gather` with the inverse permutation, the link matrix's `(1 - w_i -
w_j) * L + w_i * p_j` with its diagonal removed by `1 - eye`, forward and backward weightings by `matmul`, read modes;
deepmind/dnc's `1 + softplus` strengths) under an LSTM controller stepped over a short copy task, by RMSprop (momentum
0.9) with clip_grad_norm_.

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`). shirgur's `if len(att[mask]) > 0:
att[mask] = self.inf[mask]` asks the size of a traced boolean selection in Python: refused under a gradient naming
av.where (tested; eagerly it runs and agrees), the port writes `att.masked_fill(mask, float('-inf'))`. The DNC's `self.I
= 1 - T.eye(m)`, a plain tensor attribute, is state that Avalon trains (README); the port registers it as a
non-persistent buffer on both sides (as written, loading torch's state dict is refused naming "memory.I", tested).
ixaxaar's `T.topk(usage, m, largest=False)` free list is `torch.sort`: the first step's usage is all zeros and torch's
topk leaves the order of ties unspecified (its CPU kernel does not keep them in index order; Avalon's sort, topk and
torch's sort do). Dropouts are off; `nn.Softmax()`'s implicit dim is written `dim=1`.

Bugs found and fixed: a tensor made while tracing that depends on none of the graph's inputs and is kept after the trace
ends (open_clip's ClipLoss(cache_labels=True) storing `torch.arange(n)` in `self.labels[device]` during the first,
differentiated step) was refused when the next trace used it, with a misleading "a tensor traced in an enclosing
function was captured by a nested traced function" (there was none), and eagerly as a leaked value: trace.py
`Trace.value_of` and tensor.py `Tensor._concrete` now read such a constant as its value (a literal, not captured data:
the compiled step is cached), and anything else kept from an ended trace is refused with the leaked-value explanation
(TracerError). For that value to be computable after a compile, compiler/core.py `_build` now runs the pass pipeline on
a copy of the traced graph (it rewrote the trace's own graph in place, fusing away the ops of a kept
`functools.lru_cache` causal mask, and kept the copy for inspection); an eager in-place write into such a kept constant
(`labels.add_(1)`) raised AttributeError from tensor.py `_replace`, and now makes it an eager tensor holding the written
value. `F.one_hot(x)` without num_classes on a traced tensor failed in `Tensor.numpy()`, telling the user to stop
calling numpy; it now asks for num_classes, as bincount asks for minlength (nn/functional.py `one_hot`).

Not Avalon: sizes are small (one ISAB, two there), learning rates chosen for a few steps. The Set Transformer and
DeepSets run in float64, and the Longformer classifier's AdamW uses eps 1e-3: attention keys' biases have zero gradients
in exact arithmetic (a shift of a query's scores that the softmax removes), float32 roundoff there differs between the
two sides, and Adam turns it into lr-sized steps. The pointer network's frozen `_inf` (-inf) is compared exactly
(relative errors of infinities are nan). The DNC's RMSprop takes torch's eps, 1e-8, not ixaxaar's 1e-10, which turns the
float32 roundoff of the controller's smallest gradients (inputs from a nearly empty memory) into lr-sized steps that
differ between the sides.
"""
from __future__ import annotations

import functools
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import rel
from test_port_programs_30 import randn, same_grads
from test_port_programs_36 import steps_like_torch
from test_port_programs_more import pair, same_weights, strict

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache", "torch_on_one_thread")

F32 = torch.float32


def same_weights_but(ours, theirs, tol, skip=()):
    """test_port_programs_more.same_weights but for the state `skip` names"""
    sd = theirs.state_dict()
    assert sorted(ours.state_dict()) == sorted(sd)
    for k, v in ours.state_dict().items():
        if k not in skip:
            a, b = v.numpy().astype(np.float64), sd[k].detach().numpy().astype(np.float64)
            assert np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-4) < tol, k


def ns_of(x):
    """(th, F_, lib) of the side an input tensor belongs to"""
    return (torch, TF, torch.nn) if isinstance(x, torch.Tensor) else (av, F, nn)


# -- 1. DeepSets (manzilzaheer/DeepSets PointClouds/classifier.py's PermEqui2_max, a masked sum/mean pool) and the
#       Set Transformer (juho-lee/set_transformer modules.py's MAB, ISAB, PMA) -----------------------------------------

def set_models(lib, F_, th, d_in=3, d_dim=8, dim_hidden=8, num_heads=2, num_inds=4, num_outputs=1, dim_output=2):
    torch, nn, F = th, lib, F_

    class PermEqui2_max(nn.Module):  # noqa: N801
        def __init__(self, in_dim, out_dim):
            super(PermEqui2_max, self).__init__()  # noqa: UP008
            self.Gamma = nn.Linear(in_dim, out_dim)
            self.Lambda = nn.Linear(in_dim, out_dim, bias=False)

        def forward(self, x):
            xm, _ = x.max(1, keepdim=True)
            xm = self.Lambda(xm)
            x = self.Gamma(x)
            x = x - xm
            return x

    class DeepSet(nn.Module):
        """phi per element, a masked pool over the padded set, rho"""

        def __init__(self):
            super().__init__()
            self.phi = nn.Sequential(
                PermEqui2_max(d_in, d_dim),
                nn.ELU(inplace=True),
                PermEqui2_max(d_dim, d_dim),
                nn.ELU(inplace=True),
            )
            self.rho = nn.Sequential(
                nn.Dropout(p=0.0),  # 0.5 there
                nn.Linear(2 * d_dim, d_dim),
                nn.ELU(inplace=True),
                nn.Linear(d_dim, dim_output),
            )

        def forward(self, x, mask):
            phi_output = self.phi(x)
            phi_output = phi_output * mask.unsqueeze(-1)  # padded elements out of the pool
            sum_output = phi_output.sum(dim=1)
            mean_output = sum_output / mask.sum(1, keepdim=True)
            return self.rho(torch.cat([sum_output, mean_output], dim=1))

    class MAB(nn.Module):
        def __init__(self, dim_Q, dim_K, dim_V, num_heads, ln=False):  # noqa: N803
            super(MAB, self).__init__()  # noqa: UP008
            self.dim_V = dim_V
            self.num_heads = num_heads
            self.fc_q = nn.Linear(dim_Q, dim_V)
            self.fc_k = nn.Linear(dim_K, dim_V)
            self.fc_v = nn.Linear(dim_K, dim_V)
            if ln:
                self.ln0 = nn.LayerNorm(dim_V)
                self.ln1 = nn.LayerNorm(dim_V)
            self.fc_o = nn.Linear(dim_V, dim_V)

        def forward(self, Q, K):  # noqa: N803
            Q = self.fc_q(Q)  # noqa: N806
            K, V = self.fc_k(K), self.fc_v(K)  # noqa: N806

            dim_split = self.dim_V // self.num_heads
            Q_ = torch.cat(Q.split(dim_split, 2), 0)  # noqa: N806
            K_ = torch.cat(K.split(dim_split, 2), 0)  # noqa: N806
            V_ = torch.cat(V.split(dim_split, 2), 0)  # noqa: N806

            A = torch.softmax(Q_.bmm(K_.transpose(1, 2)) / math.sqrt(self.dim_V), 2)  # noqa: N806
            O = torch.cat((Q_ + A.bmm(V_)).split(Q.size(0), 0), 2)  # noqa: N806, E741
            O = O if getattr(self, 'ln0', None) is None else self.ln0(O)  # noqa: N806, E741
            O = O + F.relu(self.fc_o(O))  # noqa: N806, E741
            O = O if getattr(self, 'ln1', None) is None else self.ln1(O)  # noqa: N806, E741
            return O

    class ISAB(nn.Module):
        def __init__(self, dim_in, dim_out, num_heads, num_inds, ln=False):
            super(ISAB, self).__init__()  # noqa: UP008
            self.I = nn.Parameter(torch.Tensor(1, num_inds, dim_out))
            nn.init.xavier_uniform_(self.I)
            self.mab0 = MAB(dim_out, dim_in, dim_out, num_heads, ln=ln)
            self.mab1 = MAB(dim_in, dim_out, dim_out, num_heads, ln=ln)

        def forward(self, X):  # noqa: N803
            H = self.mab0(self.I.repeat(X.size(0), 1, 1), X)  # noqa: N806
            return self.mab1(X, H)

    class PMA(nn.Module):
        def __init__(self, dim, num_heads, num_seeds, ln=False):
            super(PMA, self).__init__()  # noqa: UP008
            self.S = nn.Parameter(torch.Tensor(1, num_seeds, dim))
            nn.init.xavier_uniform_(self.S)
            self.mab = MAB(dim, dim, dim, num_heads, ln=ln)

        def forward(self, X):  # noqa: N803
            return self.mab(self.S.repeat(X.size(0), 1, 1), X)

    class SetTransformer(nn.Module):
        def __init__(self, dim_input, num_outputs, dim_output, num_inds=32, dim_hidden=128, num_heads=4, ln=False):
            super(SetTransformer, self).__init__()  # noqa: UP008
            self.enc = nn.Sequential(
                ISAB(dim_input, dim_hidden, num_heads, num_inds, ln=ln))  # two ISABs there
            self.dec = nn.Sequential(
                PMA(dim_hidden, num_heads, num_outputs, ln=ln),
                nn.Linear(dim_hidden, dim_output))

        def forward(self, X):  # noqa: N803
            return self.dec(self.enc(X))

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.deepset = DeepSet()
            self.set_transformer = SetTransformer(d_in, num_outputs, dim_output, num_inds, dim_hidden, num_heads)
    return Both()


def test_deepsets_masked_pool_and_set_transformer_isab_pma_with_adam():
    # float64: the keys' biases have zero gradients in exact arithmetic (a shift of every key's score by the same
    # q.b, which the softmax removes); float32's roundoff there, ~1e-8, is what Adam makes lr-sized steps of
    model, tmodel = pair(set_models)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-3)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        x = randn(rng, 4, 6, 3)
        lengths = rng.integers(2, 7, 4)
        mask = (np.arange(6)[None] < lengths[:, None]).astype(np.float32)
        x = x * mask[..., None]  # padded with zeros, as a collate function pads
        batches.append((x.astype(np.float64), mask.astype(np.float64), randn(rng, 4, 2).astype(np.float64),
                        rng.integers(0, 2, 4)))

    def loss_fn(model, x, mask, y, cls):
        th, F_, _ = ns_of(x)
        out = model.deepset(x, mask)
        logits = model.set_transformer(x).squeeze(1)
        loss = F_.mse_loss(out, y) + F_.cross_entropy(logits, cls)
        return loss, (out, logits)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-8, loss_tol=1e-10)


# -- 2. SigLIP's sigmoid loss (open_clip loss.py SigLipLoss, big_vision's sigmoid loss) and CLIP's ClipLoss with the
#       logit scale clamped under no_grad after each step (open_clip training/train.py) --------------------------------

def two_towers(lib, F_, th, d_img=6, d_txt=5, embed_dim=4, init_logit_scale=2.302585092994046,
               init_logit_bias=-10):  # np.log(10), SigLIP's init
    torch, nn, F = th, lib, F_

    class TinyCLIP(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = nn.Sequential(nn.Linear(d_img, 8), nn.GELU(), nn.Linear(8, embed_dim))
            self.text = nn.Sequential(nn.Linear(d_txt, 8), nn.GELU(), nn.Linear(8, embed_dim))
            self.logit_scale = nn.Parameter(torch.ones([]) * init_logit_scale)
            if init_logit_bias is not None:
                self.logit_bias = nn.Parameter(torch.ones([]) * init_logit_bias)
            else:
                self.logit_bias = None

        def encode_image(self, image, normalize: bool = False):
            features = self.visual(image)
            return F.normalize(features, dim=-1) if normalize else features

        def encode_text(self, text, normalize: bool = False):
            features = self.text(text)
            return F.normalize(features, dim=-1) if normalize else features

        def forward(self, image=None, text=None):
            image_features = self.encode_image(image, normalize=True) if image is not None else None
            text_features = self.encode_text(text, normalize=True) if text is not None else None
            out_dict = {
                "image_features": image_features,
                "text_features": text_features,
                "logit_scale": self.logit_scale.exp()
            }
            if self.logit_bias is not None:
                out_dict['logit_bias'] = self.logit_bias
            return out_dict
    return TinyCLIP()


def clip_losses(th, F_, cache_labels=True):
    torch, nn, F = th, types.SimpleNamespace(Module=object), F_

    class ClipLoss(nn.Module):
        def __init__(self, cache_labels=False):
            self.cache_labels = cache_labels
            self.prev_num_logits = 0
            self.labels = {}

        def get_ground_truth(self, device, num_logits) -> torch.Tensor:
            # calculated ground-truth and cache if enabled
            if self.prev_num_logits != num_logits or device not in self.labels:
                labels = torch.arange(num_logits, device=device, dtype=torch.long)
                if self.cache_labels:
                    self.labels[device] = labels
                    self.prev_num_logits = num_logits
            else:
                labels = self.labels[device]
            return labels

        def get_logits(self, image_features, text_features, logit_scale):
            logits_per_image = logit_scale * image_features @ text_features.T
            logits_per_text = logit_scale * text_features @ image_features.T
            return logits_per_image, logits_per_text

        def __call__(self, image_features, text_features, logit_scale, output_dict=False):
            device = image_features.device
            logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale)

            labels = self.get_ground_truth(device, logits_per_image.shape[0])

            total_loss = (
                F.cross_entropy(logits_per_image, labels) +
                F.cross_entropy(logits_per_text, labels)
            ) / 2

            return {"contrastive_loss": total_loss} if output_dict else total_loss

    class SigLipLoss(nn.Module):
        def __init__(self):
            pass

        def get_ground_truth(self, device, dtype, num_logits, negative_only=False) -> torch.Tensor:
            labels = -torch.ones((num_logits, num_logits), device=device, dtype=dtype)
            if not negative_only:
                labels = 2 * torch.eye(num_logits, device=device, dtype=dtype) + labels
            return labels

        def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
            logits = logit_scale * image_features @ text_features.T
            if logit_bias is not None:
                logits += logit_bias
            return logits

        def _loss(self, image_features, text_features, logit_scale, logit_bias=None, negative_only=False):
            logits = self.get_logits(image_features, text_features, logit_scale, logit_bias)
            labels = self.get_ground_truth(
                image_features.device,
                image_features.dtype,
                image_features.shape[0],
                negative_only=negative_only,
            )
            loss = -F.logsigmoid(labels * logits).sum() / image_features.shape[0]
            return loss

        def __call__(self, image_features, text_features, logit_scale, logit_bias, output_dict=False):
            loss = self._loss(image_features, text_features, logit_scale, logit_bias)
            return {"contrastive_loss": loss} if output_dict else loss
    return ClipLoss(cache_labels), SigLipLoss()  # open_clip's create_loss: cache_labels=True


def test_siglip_pairwise_sigmoid_loss_with_logit_bias_and_adamw():
    model, tmodel = pair(two_towers, dtype=F32)
    optimizer = av.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    toptimizer = torch.optim.AdamW(tmodel.parameters(), lr=1e-2, weight_decay=0.1)
    rng = np.random.default_rng(1)
    batches = [(randn(rng, 5, 6), randn(rng, 5, 5)) for _ in range(3)]

    def loss_fn(model, images, texts):
        th, F_, _ = ns_of(images)
        _, loss = clip_losses(th, F_)
        model_out = model(images, texts)
        losses = loss(**model_out, output_dict=True)
        total_loss = sum(losses.values())
        return total_loss, model_out["logit_scale"]
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-4)


def test_clip_loss_with_logit_scale_clamped_under_no_grad_after_each_step():
    model, tmodel = pair(lambda lib, F_, th: two_towers(lib, F_, th, init_logit_scale=math.log(1 / 0.07),
                                                        init_logit_bias=None), dtype=F32)
    lr = 0.5  # large enough that the scale reaches the clamp in a few steps
    optimizer, toptimizer = av.optim.SGD(model.parameters(), lr=lr), torch.optim.SGD(tmodel.parameters(), lr=lr)
    rng = np.random.default_rng(2)
    loss, tloss = clip_losses(av, F)[0], clip_losses(torch, TF)[0]

    def train_step(model, optimizer, images, texts):
        def loss_fn(model, images, texts):
            model_out = model(images, texts)
            model_out.pop("logit_bias", None)
            return loss(**model_out)
        total_loss, grads = av.value_and_grad(loss_fn)(model, images, texts)
        optimizer.step(grads)
        # Note: we clamp to 4.6052 = ln(100), as in the original paper.
        with av.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return total_loss, grads

    run = av.compile(train_step, backend="numpy")
    scales = []
    for it in range(4):
        images, texts = randn(rng, 6, 6), randn(rng, 6, 5)
        tout = tmodel(torch.tensor(images), torch.tensor(texts))
        ttotal = tloss(tout["image_features"], tout["text_features"], tout["logit_scale"])
        toptimizer.zero_grad()
        ttotal.backward()
        toptimizer.step()
        with torch.no_grad():
            tmodel.logit_scale.clamp_(0, math.log(100))
        with strict():
            total, grads = (run if it else train_step)(model, optimizer, av.tensor(images), av.tensor(texts))
        assert rel(total, ttotal) < 1e-5, it
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
        scales.append(float(model.logit_scale))
    assert run.cache_info().misses == 1
    # cache_labels: the first (eager, differentiated) step's `torch.arange` labels, kept in the loss's dict and read
    # by the compiled step's trace as the constant they are (refused before: see the regression below)
    assert loss.prev_num_logits == 6 and loss.labels[av.tensor(images).device].numpy().tolist() == list(range(6))
    assert scales[0] > 0 and scales[-1] == 0.0  # the clamp bit (random pairs: the scale falls)


# -- 3. WaveNet on mu-law audio (r9y9/wavenet_vocoder wavenet_vocoder/{modules.py,conv.py,wavenet.py} with
#       nnmnkwii/torchaudio's mu-law companding) ---------------------------------------------------------------------

def mulaw_ops(th):
    torch = th

    def mu_law_encoding(x, quantization_channels):  # torchaudio.functional
        mu = quantization_channels - 1.0
        if not x.is_floating_point():
            x = x.to(torch.float)
        mu = torch.tensor(mu, dtype=x.dtype)
        x_mu = torch.sign(x) * torch.log1p(mu * torch.abs(x)) / torch.log1p(mu)
        x_mu = ((x_mu + 1) / 2 * mu + 0.5).to(torch.int64)
        return x_mu

    def mu_law_decoding(x_mu, quantization_channels):  # torchaudio.functional
        mu = quantization_channels - 1.0
        if not x_mu.is_floating_point():
            x_mu = x_mu.to(torch.float)
        mu = torch.tensor(mu, dtype=x_mu.dtype)
        x = ((x_mu) / mu) * 2 - 1.0
        x = torch.sign(x) * (torch.exp(torch.abs(x) * torch.log1p(mu)) - 1.0) / mu
        return x

    def mulaw(x, mu=256):  # nnmnkwii.preprocessing
        return torch.sign(x) * torch.log1p(mu * torch.abs(x)) / np.log1p(mu)

    def mulaw_quantize(x, mu=256):  # nnmnkwii: quantize by rounding
        y = mulaw(x, mu)
        return torch.round((y + 1) / 2 * mu).long()

    def inv_mulaw_quantize(y, mu=256):
        y = 2 * y.float() / mu - 1
        return torch.sign(y) * (1.0 / mu) * ((1.0 + mu) ** torch.abs(y) - 1.0)
    return types.SimpleNamespace(encode=mu_law_encoding, decode=mu_law_decoding, quantize=mulaw_quantize,
                                 inv_quantize=inv_mulaw_quantize)


def wavenet(lib, F_, th, out_channels=256, layers=4, stacks=2, residual_channels=8, gate_channels=16,
            skip_out_channels=8, kernel_size=2, causal_by="slice"):
    torch, nn, F = th, lib, F_

    class CausalConv1d(nn.Conv1d):
        """causal by left padding, as pytorch-wavenet's and most ports' CausalConv1d"""

        def __init__(self, in_channels, out_channels, kernel_size, dilation=1, **kwargs):
            super().__init__(in_channels, out_channels, kernel_size, padding=0, dilation=dilation, **kwargs)

        def forward(self, x):
            return super().forward(F.pad(x, (self.dilation[0] * (self.kernel_size[0] - 1), 0)))

    def Conv1d(in_channels, out_channels, kernel_size, dropout=0, **kwargs):  # noqa: N802 (modules.py, weight-normed)
        if causal_by == "pad":
            m = CausalConv1d(in_channels, out_channels, kernel_size, dilation=kwargs["dilation"], bias=kwargs["bias"])
        else:  # r9y9's: padded on both sides, the future cut off by slicing in the block
            m = nn.Conv1d(in_channels, out_channels, kernel_size, **kwargs)
        return nn.utils.weight_norm(m)

    def Conv1d1x1(in_channels, out_channels, bias=True):  # noqa: N802
        return Conv1d(in_channels, out_channels, kernel_size=1, padding=0, dilation=1, bias=bias)

    class ResidualConv1dGLU(nn.Module):
        def __init__(self, residual_channels, gate_channels, kernel_size, skip_out_channels=None, dropout=1 - 0.95,
                     dilation=1, bias=True):
            super(ResidualConv1dGLU, self).__init__()  # noqa: UP008
            self.dropout = dropout
            if skip_out_channels is None:
                skip_out_channels = residual_channels
            padding = (kernel_size - 1) * dilation
            self.conv = Conv1d(residual_channels, gate_channels, kernel_size, padding=padding, dilation=dilation,
                               bias=bias)
            gate_out_channels = gate_channels // 2
            self.conv1x1_out = Conv1d1x1(gate_out_channels, residual_channels, bias=bias)
            self.conv1x1_skip = Conv1d1x1(gate_out_channels, skip_out_channels, bias=bias)

        def forward(self, x):
            residual = x
            x = F.dropout(x, p=self.dropout, training=self.training)
            splitdim = 1
            x = self.conv(x)
            # remove future time steps
            x = x[:, :, :residual.size(-1)] if causal_by == "slice" else x
            a, b = x.split(x.size(splitdim) // 2, dim=splitdim)
            x = torch.tanh(a) * torch.sigmoid(b)
            # For skip connection
            s = self.conv1x1_skip(x)
            # For residual connection
            x = self.conv1x1_out(x)
            x = (x + residual) * math.sqrt(0.5)
            return x, s

    class WaveNet(nn.Module):
        def __init__(self):
            super(WaveNet, self).__init__()  # noqa: UP008
            self.first_conv = Conv1d1x1(out_channels, residual_channels)
            layers_per_stack = layers // stacks
            self.conv_layers = nn.ModuleList()
            for layer in range(layers):
                dilation = 2**(layer % layers_per_stack)
                conv = ResidualConv1dGLU(residual_channels, gate_channels, kernel_size=kernel_size,
                                         skip_out_channels=skip_out_channels, bias=True, dilation=dilation,
                                         dropout=0.0)  # 0.05 there
                self.conv_layers.append(conv)
            self.last_conv_layers = nn.ModuleList([
                nn.ReLU(inplace=True),
                Conv1d1x1(skip_out_channels, skip_out_channels),
                nn.ReLU(inplace=True),
                Conv1d1x1(skip_out_channels, out_channels),
            ])

        def forward(self, x, softmax=False):
            # Feed data to network
            x = self.first_conv(x)
            skips = 0
            for f in self.conv_layers:
                x, h = f(x)
                skips += h
            skips *= math.sqrt(1.0 / len(self.conv_layers))

            x = skips
            for f in self.last_conv_layers:
                x = f(x)

            x = F.softmax(x, dim=1) if softmax else x
            return x
    return WaveNet()


def test_mu_law_companding_agrees_with_torch_and_inverts():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-1, 1, 200), [-1.0, 0.0, 1.0, 1e-4, -1e-4]]).astype(np.float32)
    ops, tops = mulaw_ops(av), mulaw_ops(torch)
    q, tq = ops.encode(av.tensor(x), 256), tops.encode(torch.tensor(x), 256)
    assert q.dtype == av.int64 and q.numpy().tolist() == tq.numpy().tolist()
    assert q.numpy().min() == 0 and q.numpy().max() == 255
    assert rel(ops.decode(q, 256), tops.decode(tq, 256)) < 1e-6
    # r9y9's preprocessing: `P.mulaw_quantize(x, hparams.quantize_channels - 1)`
    r, tr = ops.quantize(av.tensor(x), 255), tops.quantize(torch.tensor(x), 255)
    assert r.dtype == av.int64 and r.numpy().tolist() == tr.numpy().tolist() and r.numpy().max() == 255
    assert rel(ops.inv_quantize(r, 255), tops.inv_quantize(tr, 255)) < 1e-6
    # companding then expanding: within half a level's width of the original
    assert np.abs(ops.decode(q, 256).numpy() - x).max() < 0.02


@pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated:FutureWarning")
def test_wavenet_gated_residual_causal_dilated_convs_on_mu_law_one_hot_with_adam():
    model, tmodel = pair(wavenet, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-3)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    rng = np.random.default_rng(4)
    # audio in [-1, 1] (a few sines plus noise)
    t = np.arange(17)
    batches = [((0.5 * np.sin(rng.uniform(0.1, 1.0, (2, 1)) * t) + 0.1 * rng.standard_normal((2, 17))).clip(-1, 1)
                .astype(np.float32), it % 2 == 0) for it in range(3)]

    def loss_fn(model, audio, by_scatter):
        th, F_, _ = ns_of(audio)
        torch = th
        quantized = mulaw_ops(th).encode(audio, 256)
        inputs, target = quantized[:, :-1], quantized[:, 1:]
        if by_scatter:  # the one-hot by scatter_ into zeros (pytorch-wavenet's style)
            x = torch.zeros(inputs.size(0), 256, inputs.size(1)).scatter_(1, inputs.unsqueeze(1), 1.0)
        else:
            x = F_.one_hot(inputs, 256).transpose(1, 2).float()
        y_hat = model(x)
        loss = F_.cross_entropy(y_hat, target)
        return loss, y_hat

    def train_step(model, optimizer, audio, by_scatter):
        (loss, out), grads = av.value_and_grad(loss_fn, has_aux=True)(model, audio, by_scatter)
        optimizer.step(grads)
        return loss, out, grads
    run = av.compile(train_step, backend="numpy")
    for it, (audio, by_scatter) in enumerate(batches):
        tloss, tout = loss_fn(tmodel, torch.tensor(audio), by_scatter)
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, out, grads = (run if it else train_step)(model, optimizer, av.tensor(audio), by_scatter)
        assert rel(loss, tloss) < 1e-5 and rel(out, tout) < 1e-4, it
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 2  # one trace per one-hot style
    # causal: the output at time t does not depend on inputs after t
    x = av.tensor(np.eye(256, dtype=np.float32)[rng.integers(0, 256, (1, 12))].transpose(0, 2, 1))
    g = av.grad(lambda x, model: model(x)[0, :, 5].sum())(x, model).numpy()
    assert np.abs(g[..., 6:]).max() == 0 and np.abs(g[..., :6]).max() > 0
    # causal by left padding instead of r9y9's padding both sides and slicing: the same network
    padded = wavenet(nn, F, av, causal_by="pad")
    nn.load_state_dict(padded, model.state_dict())
    assert rel(padded(x), model(x)) < 1e-6


# -- 4. Pointer Network (shirgur/PointerNet PointerNet.py's Attention with its V parameter, Conv1d context and
#       `nn.Softmax()`, the frozen `decoder_input0`; the masking and next input of pemami4911/neural-combinatorial-
#       rl-pytorch's decoder, `maskk[range(b), prev_idxs] = 1`; Train.py's CrossEntropyLoss of the pointer
#       probabilities against the target permutation) --------------------------------------------------------------

def pointer_net(lib, F_, th, input_dim=2, embedding_dim=8, hidden_dim=8, as_written=False):
    torch, nn = th, lib
    Parameter = nn.Parameter  # noqa: N806

    class Attention(nn.Module):
        def __init__(self, input_dim, hidden_dim):
            super(Attention, self).__init__()  # noqa: UP008
            self.input_dim = input_dim
            self.hidden_dim = hidden_dim
            self.input_linear = nn.Linear(input_dim, hidden_dim)
            self.context_linear = nn.Conv1d(input_dim, hidden_dim, 1, 1)
            self.V = Parameter(torch.FloatTensor(hidden_dim), requires_grad=True)
            self._inf = Parameter(torch.FloatTensor([float('-inf')]), requires_grad=False)
            self.tanh = nn.Tanh()
            self.softmax = nn.Softmax(dim=1)  # `nn.Softmax()` there: the implicit dim, 1, with a warning
            # Initialize vector V
            nn.init.uniform_(self.V, -1, 1)

        def forward(self, input, context, mask):  # noqa: A002
            # (batch, hidden_dim, seq_len)
            inp = self.input_linear(input).unsqueeze(2).expand(-1, -1, context.size(1))
            # (batch, hidden_dim, seq_len)
            context = context.permute(0, 2, 1)
            ctx = self.context_linear(context)
            # (batch, 1, hidden_dim)
            V = self.V.unsqueeze(0).expand(context.size(0), -1).unsqueeze(1)  # noqa: N806
            # (batch, seq_len)
            att = torch.bmm(V, self.tanh(inp + ctx)).squeeze(1)
            if as_written:
                if len(att[mask]) > 0:
                    att[mask] = self._inf.expand(*mask.size())[mask]
            else:  # the port: the same -inf where chosen, by masked_fill
                att = att.masked_fill(mask, float('-inf'))
            alpha = self.softmax(att)
            hidden_state = torch.bmm(ctx, alpha.unsqueeze(2)).squeeze(2)
            return hidden_state, alpha

    class PointerNet(nn.Module):
        def __init__(self):
            super(PointerNet, self).__init__()  # noqa: UP008
            self.embedding_dim = embedding_dim
            self.embedding = nn.Linear(input_dim, embedding_dim)
            self.encoder = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)
            self.decoder = nn.LSTMCell(embedding_dim, hidden_dim)
            self.hidden_out = nn.Linear(hidden_dim * 2, hidden_dim)
            self.att = Attention(hidden_dim, hidden_dim)
            self.decoder_input0 = Parameter(torch.FloatTensor(embedding_dim), requires_grad=False)
            # Initialize decoder_input0
            nn.init.uniform_(self.decoder_input0, -1, 1)

        def forward(self, inputs, by_scatter=True):
            batch_size = inputs.size(0)
            input_length = inputs.size(1)
            # (batch, embedding)
            decoder_input0 = self.decoder_input0.unsqueeze(0).expand(batch_size, -1)
            # (batch, seq_len, embedding)
            inputs = inputs.view(batch_size * input_length, -1)
            embedded_inputs = self.embedding(inputs).view(batch_size, input_length, -1)
            encoder_outputs, (h, c) = self.encoder(embedded_inputs)
            hidden = (h[-1], c[-1])
            mask = torch.zeros(batch_size, input_length, dtype=torch.bool)
            decoder_input = decoder_input0
            outputs = []
            pointers = []
            for _ in range(input_length):
                h_t, c_t = self.decoder(decoder_input, hidden)
                hidden_t, outs = self.att(h_t, encoder_outputs, mask)
                hidden = (torch.tanh(self.hidden_out(torch.cat((hidden_t, h_t), 1))), c_t)
                # Get maximum probabilities and indices (greedy)
                max_probs, indices = outs.max(1)
                indices = indices.detach()
                # Update mask to ignore seen indices
                if by_scatter:
                    mask = mask.scatter(1, indices.unsqueeze(1), True)
                else:
                    maskk = mask.clone()
                    maskk[[x for x in range(batch_size)], indices.data] = 1
                    mask = maskk
                # Get embedded inputs by max indices
                decoder_input = torch.gather(
                    embedded_inputs, 1, indices[:, None, None].expand(-1, 1, self.embedding_dim)).squeeze(1)
                outputs.append(outs.unsqueeze(0))
                pointers.append(indices.unsqueeze(1))
            outputs = torch.cat(outputs).permute(1, 0, 2)
            pointers = torch.cat(pointers, 1)
            return outputs, pointers
    return PointerNet()


def test_pointer_network_greedy_decoding_masks_chosen_points_with_adam_and_clipping():
    model, tmodel = pair(pointer_net, dtype=F32)
    assert not model.decoder_input0.requires_grad and not model.att._inf.requires_grad
    optimizer = av.optim.Adam(model.parameters(), lr=1e-3)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    CCE, tCCE = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()  # noqa: N806
    rng = np.random.default_rng(5)
    batches = []
    for it in range(3):
        points = rng.random((3, 4, 2)).astype(np.float32)
        batches.append((points, np.argsort(points[..., 0], axis=1), it % 2 == 0))  # sort the points by x

    def loss_fn(model, train_batch, target_batch, by_scatter):
        o, p = model(train_batch, by_scatter)
        o = o.contiguous().view(-1, o.size()[-1])
        target_batch = target_batch.view(-1)
        loss = (tCCE if isinstance(o, torch.Tensor) else CCE)(o, target_batch)
        return loss, (o, p)

    def train_step(model, optimizer, *batch):
        (loss, out), grads = av.value_and_grad(loss_fn, has_aux=True)(model, *batch)
        nn.utils.clip_grad_norm_(grads, 1.0)
        optimizer.step(grads)
        return loss, out, grads
    run = av.compile(train_step, backend="numpy")
    for it, (points, target, by_scatter) in enumerate(batches):
        tloss, (to, tp) = loss_fn(tmodel, torch.tensor(points), torch.tensor(target), by_scatter)
        toptimizer.zero_grad()
        tloss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
        toptimizer.step()
        with strict():
            loss, (o, p), grads = (run if it else train_step)(model, optimizer, av.tensor(points), av.tensor(target),
                                                               by_scatter)
        assert rel(loss, tloss) < 1e-5 and rel(o, to) < 1e-5, it
        assert p.numpy().tolist() == tp.numpy().tolist()
        # a permutation: every point chosen once, the chosen ones at probability exactly 0 afterwards
        assert (np.sort(p.numpy(), 1) == np.arange(4)).all()
        assert (o.numpy().reshape(3, 4, 4)[:, -1].max(1) == 1).all()
        same_grads(grads, tmodel, 1e-4)
        assert "decoder_input0" not in grads and "att._inf" not in grads
        assert model.att._inf.numpy().tolist() == [-np.inf]  # frozen, -inf: same_weights' relative error is nan
        same_weights_but(model, tmodel, 1e-4, skip=("att._inf",))
    assert run.cache_info().misses == 2  # one trace per masking style

    # shirgur's `if len(att[mask]) > 0: att[mask] = self.inf[mask]` asks a traced mask's count in Python
    written = pointer_net(nn, F, av, as_written=True)
    nn.load_state_dict(written, model.state_dict())
    points, target, _ = batches[0]
    eager, _ = written(av.tensor(points))  # outside a trace it runs, and agrees with the port
    assert rel(eager, model(av.tensor(points))[0]) < 1e-6
    with pytest.raises(IndexError, match="traced boolean mask.*av.where"):
        av.value_and_grad(lambda m, x, y: loss_fn(m, x, y, True)[0])(written, av.tensor(points), av.tensor(target))


# -- 5. Longformer's sliding-chunk local attention (transformers models/longformer/modeling_longformer.py
#       LongformerSelfAttention: `_chunk` by as_strided, `_sliding_chunks_query_key_matmul`, `_mask_invalid_locations`,
#       `_pad_and_diagonalize`, `_sliding_chunks_matmul_attn_probs_value`; local attention only, no global tokens) ---

def longformer_ops(th, nn_functional, chunk_by="as_strided"):
    torch = th
    nn = types.SimpleNamespace(functional=nn_functional)

    def _pad_and_transpose_last_two_dims(hidden_states_padded, padding):
        """pads rows and then flips rows and columns"""
        hidden_states_padded = nn.functional.pad(
            hidden_states_padded, padding
        )  # padding value is not important because it will be overwritten
        hidden_states_padded = hidden_states_padded.view(
            *hidden_states_padded.size()[:-2], hidden_states_padded.size(-1), hidden_states_padded.size(-2)
        )
        return hidden_states_padded

    def _pad_and_diagonalize(chunked_hidden_states):
        """shift every row 1 step right, converting columns into diagonals."""
        total_num_heads, num_chunks, window_overlap, hidden_dim = chunked_hidden_states.size()
        chunked_hidden_states = nn.functional.pad(
            chunked_hidden_states, (0, window_overlap + 1)
        )  # total_num_heads x num_chunks x window_overlap x (hidden_dim+window_overlap+1). Padding value is not important because it'll be overwritten
        chunked_hidden_states = chunked_hidden_states.view(
            total_num_heads, num_chunks, -1
        )  # total_num_heads x num_chunks x window_overlap*window_overlap+window_overlap
        chunked_hidden_states = chunked_hidden_states[
            :, :, :-window_overlap
        ]  # total_num_heads x num_chunks x window_overlap*window_overlap
        chunked_hidden_states = chunked_hidden_states.view(
            total_num_heads, num_chunks, window_overlap, window_overlap + hidden_dim
        )
        chunked_hidden_states = chunked_hidden_states[:, :, :, :-1]
        return chunked_hidden_states

    def _chunk(hidden_states, window_overlap, onnx_export: bool = False):
        """convert into overlapping chunks. Chunk size = 2w, overlap size = w"""
        if chunk_by == "as_strided":
            # non-overlapping chunks of size = 2w
            hidden_states = hidden_states.view(
                hidden_states.size(0),
                torch.div(hidden_states.size(1), (window_overlap * 2), rounding_mode="trunc"),
                window_overlap * 2,
                hidden_states.size(2),
            )

            # use `as_strided` to make the chunks overlap with an overlap size = window_overlap
            chunk_size = list(hidden_states.size())
            chunk_size[1] = chunk_size[1] * 2 - 1

            chunk_stride = list(hidden_states.stride())
            chunk_stride[1] = chunk_stride[1] // 2
            return hidden_states.as_strided(size=chunk_size, stride=chunk_stride)
        elif chunk_by == "unfold":  # the same chunks by Tensor.unfold (the window dimension last, moved back)
            return hidden_states.unfold(1, 2 * window_overlap, window_overlap).transpose(-1, -2)

        # When exporting to ONNX, use this separate logic
        # have to use slow implementation since as_strided, unfold and 2d-tensor indexing aren't supported (yet) in ONNX export

        # TODO replace this with
        # > return hidden_states.unfold(dimension=1, size=window_overlap * 2, step=window_overlap).transpose(2, 3)
        # once `unfold` is supported
        # the case hidden_states.size(1) == window_overlap * 2 can also simply return hidden_states.unsqueeze(1), but that's control flow

        chunk_size = [
            hidden_states.size(0),
            torch.div(hidden_states.size(1), window_overlap, rounding_mode="trunc") - 1,
            window_overlap * 2,
            hidden_states.size(2),
        ]

        overlapping_chunks = torch.empty(chunk_size, device=hidden_states.device)
        for chunk in range(chunk_size[1]):
            overlapping_chunks[:, chunk, :, :] = hidden_states[
                :, chunk * window_overlap : chunk * window_overlap + 2 * window_overlap, :
            ]
        return overlapping_chunks

    def _mask_invalid_locations(input_tensor, affected_seq_len) -> torch.Tensor:
        beginning_mask_2d = input_tensor.new_ones(affected_seq_len, affected_seq_len + 1).tril().flip(dims=[0])
        beginning_mask = beginning_mask_2d[None, :, None, :]
        ending_mask = beginning_mask.flip(dims=(1, 3))
        beginning_input = input_tensor[:, :affected_seq_len, :, : affected_seq_len + 1]
        beginning_mask = beginning_mask.expand(beginning_input.size())
        input_tensor[:, :affected_seq_len, :, : affected_seq_len + 1] = torch.full_like(
            beginning_input, -float("inf")
        ).where(beginning_mask.bool(), beginning_input)
        ending_input = input_tensor[:, -affected_seq_len:, :, -(affected_seq_len + 1) :]
        ending_mask = ending_mask.expand(ending_input.size())
        input_tensor[:, -affected_seq_len:, :, -(affected_seq_len + 1) :] = torch.full_like(
            ending_input, -float("inf")
        ).where(ending_mask.bool(), ending_input)

    def _sliding_chunks_query_key_matmul(query: torch.Tensor, key: torch.Tensor, window_overlap: int):
        batch_size, seq_len, num_heads, head_dim = query.size()
        assert seq_len % (window_overlap * 2) == 0, (
            f"Sequence length should be multiple of {window_overlap * 2}. Given {seq_len}"
        )
        assert query.size() == key.size()

        chunks_count = torch.div(seq_len, window_overlap, rounding_mode="trunc") - 1

        # group batch_size and num_heads dimensions into one, then chunk seq_len into chunks of size window_overlap * 2
        query = query.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)
        key = key.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)

        query = _chunk(query, window_overlap)
        key = _chunk(key, window_overlap)

        # matrix multiplication
        # bcxd: batch_size * num_heads x chunks x 2window_overlap x head_dim
        # bcyd: batch_size * num_heads x chunks x 2window_overlap x head_dim
        # bcxy: batch_size * num_heads x chunks x 2window_overlap x 2window_overlap
        diagonal_chunked_attention_scores = torch.einsum("bcxd,bcyd->bcxy", (query, key))  # multiply

        # convert diagonals into columns
        diagonal_chunked_attention_scores = _pad_and_transpose_last_two_dims(
            diagonal_chunked_attention_scores, padding=(0, 0, 0, 1)
        )

        # allocate space for the overall attention matrix where the chunks are combined. The last dimension
        # has (window_overlap * 2 + 1) columns. The first (window_overlap) columns are the window_overlap lower triangles (attention from a word to
        # window_overlap previous words). The following column is attention score from each word to itself, then
        # followed by window_overlap columns for the upper triangle.

        diagonal_attention_scores = diagonal_chunked_attention_scores.new_zeros(
            (batch_size * num_heads, chunks_count + 1, window_overlap, window_overlap * 2 + 1)
        )

        # copy parts from diagonal_chunked_attention_scores into the combined matrix of attentions
        # - copying the main diagonal and the upper triangle
        diagonal_attention_scores[:, :-1, :, window_overlap:] = diagonal_chunked_attention_scores[
            :, :, :window_overlap, : window_overlap + 1
        ]
        diagonal_attention_scores[:, -1, :, window_overlap:] = diagonal_chunked_attention_scores[
            :, -1, window_overlap:, : window_overlap + 1
        ]
        # - copying the lower triangle
        diagonal_attention_scores[:, 1:, :, :window_overlap] = diagonal_chunked_attention_scores[
            :, :, -(window_overlap + 1) : -1, window_overlap + 1 :
        ]

        diagonal_attention_scores[:, 0, 1:window_overlap, 1:window_overlap] = diagonal_chunked_attention_scores[
            :, 0, : window_overlap - 1, 1 - window_overlap :
        ]

        # separate batch_size and num_heads dimensions again
        diagonal_attention_scores = diagonal_attention_scores.view(
            batch_size, num_heads, seq_len, 2 * window_overlap + 1
        ).transpose(2, 1)

        _mask_invalid_locations(diagonal_attention_scores, window_overlap)
        return diagonal_attention_scores

    def _sliding_chunks_matmul_attn_probs_value(attn_probs: torch.Tensor, value: torch.Tensor, window_overlap: int):
        batch_size, seq_len, num_heads, head_dim = value.size()

        assert seq_len % (window_overlap * 2) == 0
        assert attn_probs.size()[:3] == value.size()[:3]
        assert attn_probs.size(3) == 2 * window_overlap + 1
        chunks_count = torch.div(seq_len, window_overlap, rounding_mode="trunc") - 1
        # group batch_size and num_heads dimensions into one, then chunk seq_len into chunks of size 2 window overlap

        chunked_attn_probs = attn_probs.transpose(1, 2).reshape(
            batch_size * num_heads,
            torch.div(seq_len, window_overlap, rounding_mode="trunc"),
            window_overlap,
            2 * window_overlap + 1,
        )

        # group batch_size and num_heads dimensions into one
        value = value.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)

        # pad seq_len with w at the beginning of the sequence and another window overlap at the end
        padded_value = nn.functional.pad(value, (0, 0, window_overlap, window_overlap), value=-1)

        # chunk padded_value into chunks of size 3 window overlap and an overlap of size window overlap
        chunked_value_size = (batch_size * num_heads, chunks_count + 1, 3 * window_overlap, head_dim)
        if chunk_by == "as_strided":
            chunked_value_stride = padded_value.stride()
            chunked_value_stride = (
                chunked_value_stride[0],
                window_overlap * chunked_value_stride[1],
                chunked_value_stride[1],
                chunked_value_stride[2],
            )
            chunked_value = padded_value.as_strided(size=chunked_value_size, stride=chunked_value_stride)
        else:
            chunked_value = padded_value.unfold(1, 3 * window_overlap, window_overlap).transpose(-1, -2)
        assert tuple(chunked_value.size()) == chunked_value_size

        chunked_attn_probs = _pad_and_diagonalize(chunked_attn_probs)

        context = torch.einsum("bcwd,bcdh->bcwh", (chunked_attn_probs, chunked_value))
        return context.view(batch_size, num_heads, seq_len, head_dim).transpose(1, 2)
    return types.SimpleNamespace(qk=_sliding_chunks_query_key_matmul, pv=_sliding_chunks_matmul_attn_probs_value,
                                 chunk=_chunk)


def local_attention_classifier(lib, F_, th, vocab=11, hidden=8, num_heads=2, window=4, num_labels=3,
                               chunk_by="as_strided"):
    torch, nn = th, lib

    class LongformerSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads = num_heads
            self.head_dim = hidden // num_heads
            self.embed_dim = hidden
            self.query = nn.Linear(hidden, self.embed_dim)
            self.key = nn.Linear(hidden, self.embed_dim)
            self.value = nn.Linear(hidden, self.embed_dim)
            self.one_sided_attn_window_size = window // 2

        def forward(self, hidden_states, attention_mask):
            """attention_mask: -10000 at padding, 0 at local attention (as LongformerModel hands it down)"""
            ops = longformer_ops(torch, F_, chunk_by)
            hidden_states = hidden_states.transpose(0, 1)
            query_vectors = self.query(hidden_states)
            key_vectors = self.key(hidden_states)
            value_vectors = self.value(hidden_states)
            seq_len, batch_size, embed_dim = hidden_states.size()

            # normalize query
            query_vectors /= math.sqrt(self.head_dim)

            query_vectors = query_vectors.view(seq_len, batch_size, self.num_heads, self.head_dim).transpose(0, 1)
            key_vectors = key_vectors.view(seq_len, batch_size, self.num_heads, self.head_dim).transpose(0, 1)

            attn_scores = ops.qk(query_vectors, key_vectors, self.one_sided_attn_window_size)

            # values to pad for attention probs
            remove_from_windowed_attention_mask = (attention_mask != 0)[:, :, None, None]

            # cast to fp32/fp16 then replace 1's with -inf
            float_mask = remove_from_windowed_attention_mask.type_as(query_vectors).masked_fill(
                remove_from_windowed_attention_mask, torch.finfo(query_vectors.dtype).min
            )
            # diagonal mask with zeros everywhere and -inf inplace of padding
            diagonal_mask = ops.qk(float_mask.new_ones(size=float_mask.size()), float_mask,
                                   self.one_sided_attn_window_size)

            # pad local attention probs
            attn_scores += diagonal_mask

            attn_probs = F_.softmax(attn_scores, dim=-1, dtype=torch.float32)  # use fp32 for numerical stability

            is_index_masked = attention_mask < 0
            # softmax sometimes inserts NaN if all positions are masked, replace them with 0
            attn_probs = torch.masked_fill(attn_probs, is_index_masked[:, :, None, None], 0.0)
            attn_probs = attn_probs.type_as(attn_scores)

            value_vectors = value_vectors.view(seq_len, batch_size, self.num_heads, self.head_dim).transpose(0, 1)
            attn_output = ops.pv(attn_probs, value_vectors, self.one_sided_attn_window_size)
            assert attn_output.size() == (batch_size, seq_len, self.num_heads, self.head_dim), "Unexpected size"
            attn_output = attn_output.transpose(0, 1).reshape(seq_len, batch_size, embed_dim).contiguous()
            return attn_output.transpose(0, 1), attn_probs

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = nn.Embedding(vocab, hidden, padding_idx=1)
            self.attention = LongformerSelfAttention()
            self.dense = nn.Linear(hidden, hidden)
            self.LayerNorm = nn.LayerNorm(hidden)
            self.classifier = nn.Linear(hidden, num_labels)

        def forward(self, input_ids, attention_mask):
            # LongformerModel's extended mask: 1 (local) -> 0, 0 (padding) -> -10000
            extended = (1.0 - attention_mask[:, :].to(torch.float32)) * -10000.0
            h = self.embeddings(input_ids)
            a, probs = self.attention(h, extended)
            h = self.LayerNorm(h + self.dense(a))
            pooled = (h * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)
            return self.classifier(pooled), probs
    return Classifier()


def dense_banded_attention(q, k, v, mask, w):
    """numpy: softmax over the keys within w of each query (and not padding), then the values"""
    b, n, h, d = q.shape
    scores = np.einsum("bqhd,bkhd->bhqk", q, k)
    i = np.arange(n)
    band = np.abs(i[:, None] - i[None]) <= w
    scores = np.where(band[None, None] & (mask[:, None, None, :] > 0), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    p = np.where((mask > 0)[:, None, :, None], p, 0.0)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def test_longformer_sliding_chunks_against_dense_banded_attention():
    rng = np.random.default_rng(6)
    w = 2
    q, k, v = (randn(rng, 2, 8, 2, 3) for _ in range(3))
    mask = np.ones((2, 8), np.float32)
    mask[1, 6:] = 0
    want = dense_banded_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), mask, w)
    for th, F_ in ((torch, TF), (av, F)):
        for chunk_by in ("as_strided", "unfold", "loop"):
            ops = longformer_ops(th, F_, chunk_by)
            t = th.tensor
            scores = ops.qk(t(q), t(k), w)  # (b, n, h, 2w + 1): -inf outside the sequence
            extended = (1.0 - t(mask)) * -10000.0
            float_mask = (extended != 0)[:, :, None, None].float().masked_fill((extended != 0)[:, :, None, None],
                                                                                 th.finfo(th.float32).min)
            scores = scores + ops.qk(float_mask.new_ones(size=float_mask.size()), float_mask, w)
            probs = F_.softmax(scores, dim=-1).masked_fill((extended < 0)[:, :, None, None], 0.0)
            got = ops.pv(probs, t(v), w)
            assert np.abs(got.numpy() - want).max() < 1e-5, (th.__name__, chunk_by)
            assert np.isinf(scores.numpy()[:, 0, :, :w]).all() and np.isinf(scores.numpy()[:, -1, :, -w:]).all()


def test_longformer_local_attention_classifier_with_adamw():
    model, tmodel = pair(local_attention_classifier, dtype=F32)
    # eps 1e-3 (1e-8 there): the keys' biases have zero gradients in exact arithmetic (a shift of a query's scores
    # that the softmax removes); their float32 roundoff, ~1e-9, differs on the two sides and Adam's 1e-8 would make
    # lr-sized steps of it
    optimizer = av.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-3)
    toptimizer = torch.optim.AdamW(tmodel.parameters(), lr=1e-2, eps=1e-3)
    rng = np.random.default_rng(7)
    batches = []
    for _ in range(3):
        ids = rng.integers(2, 11, (3, 8))
        mask = np.ones((3, 8), np.int64)
        mask[1, 5:] = 0
        mask[2, 7:] = 0
        ids[mask == 0] = 1
        batches.append((ids, mask, rng.integers(0, 3, 3)))

    def loss_fn(model, ids, mask, labels):
        logits, probs = model(ids, mask)
        return ns_of(logits)[1].cross_entropy(logits, labels), (logits, probs)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-4)


# -- 6. Differentiable Neural Computer (ixaxaar/pytorch-dnc dnc/memory.py, dnc/util.py, dnc/dnc.py, with
#       deepmind/dnc addressing.py's oneplus strengths and sort-based allocation) ------------------------------------

def dnc(lib, F_, th, input_size=4, hidden_size=8, mem_size=6, cell_size=4, read_heads=2, output_size=4,
        alloc_by="scatter", as_written=False):
    T, nn, F = th, lib, F_  # noqa: N806
    δ = 1e-6

    def θ(a, b, dimA=2, dimB=2, normBy=2):  # noqa: N803
        """Batchwise Cosine similarity"""
        a_norm = T.norm(a, normBy, dimA, keepdim=True).expand_as(a) + δ
        b_norm = T.norm(b, normBy, dimB, keepdim=True).expand_as(b) + δ

        x = T.bmm(a, b.transpose(1, 2)).transpose(1, 2) / (
            T.bmm(a_norm, b_norm.transpose(1, 2)).transpose(1, 2) + δ)
        return x

    def σ(input, axis=1):  # noqa: A002
        """Softmax on an axis"""
        input_size = input.size()

        trans_input = input.transpose(axis, len(input_size) - 1)
        trans_size = trans_input.size()

        input_2d = trans_input.contiguous().view(-1, trans_size[-1])
        soft_max_2d = F.softmax(input_2d, -1)
        soft_max_nd = soft_max_2d.view(*trans_size)
        return soft_max_nd.transpose(axis, len(input_size) - 1)

    def oneplus(x):  # deepmind/dnc addressing.py: strengths in [1, inf)
        return 1 + F.softplus(x)

    class Memory(nn.Module):
        def __init__(self, input_size, mem_size=512, cell_size=32, read_heads=4):
            super(Memory, self).__init__()  # noqa: UP008
            self.input_size = input_size
            self.mem_size = mem_size
            self.cell_size = cell_size
            self.read_heads = read_heads
            m = self.mem_size
            w = self.cell_size
            r = self.read_heads
            self.interface_size = (w * r) + (3 * w) + (5 * r) + 3
            self.interface_weights = nn.Linear(self.input_size, self.interface_size)
            if as_written:
                self.I = 1 - T.eye(m).unsqueeze(0)  # (1 * n * n)
            else:  # the port: a constant in torch, state (trained) in Avalon as a plain attribute (README)
                self.register_buffer("I", 1 - T.eye(m).unsqueeze(0), persistent=False)

        def reset(self, batch_size=1):
            m = self.mem_size
            w = self.cell_size
            r = self.read_heads
            b = batch_size
            return {
                'memory': T.zeros(b, m, w).fill_(0),
                'link_matrix': T.zeros(b, 1, m, m),
                'precedence': T.zeros(b, 1, m),
                'read_weights': T.zeros(b, r, m).fill_(0),
                'write_weights': T.zeros(b, 1, m).fill_(0),
                'usage_vector': T.zeros(b, m),
            }

        def get_usage_vector(self, usage, free_gates, read_weights, write_weights):
            usage = usage + (1 - usage) * (1 - T.prod(1 - write_weights, 1))
            ψ = T.prod(1 - free_gates.unsqueeze(2) * read_weights, 1)
            return usage * ψ

        def allocate(self, usage, write_gate):
            # ensure values are not too small prior to cumprod.
            usage = δ + (1 - δ) * usage
            batch_size = usage.size(0)
            # free list (ascending usage; torch.topk(..., largest=False) there, whose order of ties torch leaves
            # unspecified: the first step's usage is all zeros)
            sorted_usage, φ = T.sort(usage, dim=1)

            # cumprod with exclusive=True
            # https://discuss.pytorch.org/t/cumprod-exclusive-true-equivalences/2614/8
            v = sorted_usage.new_ones(batch_size, 1)
            cat_sorted_usage = T.cat((v, sorted_usage), 1)
            prod_sorted_usage = T.cumprod(cat_sorted_usage, 1)[:, :-1]

            sorted_allocation_weights = (1 - sorted_usage) * prod_sorted_usage.squeeze()

            if alloc_by == "scatter":  # back to memory order: scatter by the sort indices
                allocation_weights = T.zeros_like(sorted_allocation_weights).scatter_(1, φ,
                                                                                       sorted_allocation_weights)
            else:
                # construct the reverse sorting index https://stackoverflow.com/questions/2483696/undo-or-reverse-argsort-python
                _, φ_rev = T.sort(φ, dim=1)
                allocation_weights = sorted_allocation_weights.gather(1, φ_rev.long())

            return allocation_weights.unsqueeze(1), usage

        def write_weighting(self, memory, write_content_weights, allocation_weights, write_gate, allocation_gate):
            ag = allocation_gate.unsqueeze(-1)
            wg = write_gate.unsqueeze(-1)

            return wg * (ag * allocation_weights + (1 - ag) * write_content_weights)

        def get_link_matrix(self, link_matrix, write_weights, precedence):
            precedence = precedence.unsqueeze(2)
            write_weights_i = write_weights.unsqueeze(3)
            write_weights_j = write_weights.unsqueeze(2)

            prev_scale = 1 - write_weights_i - write_weights_j
            new_link_matrix = write_weights_i * precedence

            link_matrix = prev_scale * link_matrix + new_link_matrix
            # trick to delete diag elems
            return self.I.expand_as(link_matrix) * link_matrix

        def update_precedence(self, precedence, write_weights):
            return (1 - T.sum(write_weights, 2, keepdim=True)) * precedence + write_weights

        def write(self, write_key, write_vector, erase_vector, free_gates, read_strengths, write_strength,
                  write_gate, allocation_gate, hidden):
            # get current usage
            hidden['usage_vector'] = self.get_usage_vector(
                hidden['usage_vector'],
                free_gates,
                hidden['read_weights'],
                hidden['write_weights']
            )

            # lookup memory with write_key and write_strength
            write_content_weights = self.content_weightings(hidden['memory'], write_key, write_strength)

            # get memory allocation
            alloc, _ = self.allocate(
                hidden['usage_vector'],
                allocation_gate * write_gate
            )

            # get write weightings
            hidden['write_weights'] = self.write_weighting(
                hidden['memory'],
                write_content_weights,
                alloc,
                write_gate,
                allocation_gate
            )

            weighted_resets = hidden['write_weights'].unsqueeze(3) * erase_vector.unsqueeze(2)
            reset_gate = T.prod(1 - weighted_resets, 1)
            # Update memory
            hidden['memory'] = hidden['memory'] * reset_gate

            hidden['memory'] = hidden['memory'] + \
                T.bmm(hidden['write_weights'].transpose(1, 2), write_vector)

            # update link_matrix
            hidden['link_matrix'] = self.get_link_matrix(
                hidden['link_matrix'],
                hidden['write_weights'],
                hidden['precedence']
            )
            hidden['precedence'] = self.update_precedence(hidden['precedence'], hidden['write_weights'])

            return hidden

        def content_weightings(self, memory, keys, strengths):
            d = θ(memory, keys)
            return σ(d * strengths.unsqueeze(2), 2)

        def directional_weightings(self, link_matrix, read_weights):
            rw = read_weights.unsqueeze(1)

            f = T.matmul(link_matrix, rw.transpose(2, 3)).transpose(2, 3)
            b = T.matmul(rw, link_matrix)
            return f.transpose(1, 2), b.transpose(1, 2)

        def read_weightings(self, memory, content_weights, link_matrix, read_modes, read_weights):
            forward_weight, backward_weight = self.directional_weightings(link_matrix, read_weights)

            content_mode = read_modes[:, :, 2].contiguous().unsqueeze(2) * content_weights
            backward_mode = T.sum(read_modes[:, :, 0:1].contiguous().unsqueeze(3) * backward_weight, 2)
            forward_mode = T.sum(read_modes[:, :, 1:2].contiguous().unsqueeze(3) * forward_weight, 2)

            return backward_mode + content_mode + forward_mode

        def read_vectors(self, memory, read_weights):
            return T.bmm(read_weights, memory)

        def read(self, read_keys, read_strengths, read_modes, hidden):
            content_weights = self.content_weightings(hidden['memory'], read_keys, read_strengths)

            hidden['read_weights'] = self.read_weightings(
                hidden['memory'],
                content_weights,
                hidden['link_matrix'],
                read_modes,
                hidden['read_weights']
            )
            read_vectors = self.read_vectors(hidden['memory'], hidden['read_weights'])
            return read_vectors, hidden

        def forward(self, ξ, hidden):
            w = self.cell_size
            r = self.read_heads
            b = ξ.size()[0]

            ξ = self.interface_weights(ξ)
            # r read keys (b * w * r)
            read_keys = T.tanh(ξ[:, :r * w].contiguous().view(b, r, w))
            # r read strengths (b * r)
            read_strengths = oneplus(ξ[:, r * w:r * w + r].contiguous().view(b, r))
            # write key (b * w * 1)
            write_key = T.tanh(ξ[:, r * w + r:r * w + r + w].contiguous().view(b, 1, w))
            # write strength (b * 1)
            write_strength = oneplus(ξ[:, r * w + r + w].contiguous().view(b, 1))
            # erase vector (b * w)
            erase_vector = T.sigmoid(ξ[:, r * w + r + w + 1: r * w + r + 2 * w + 1].contiguous().view(b, 1, w))
            # write vector (b * w)
            write_vector = T.tanh(ξ[:, r * w + r + 2 * w + 1: r * w + r + 3 * w + 1].contiguous().view(b, 1, w))
            # r free gates (b * r)
            free_gates = T.sigmoid(ξ[:, r * w + r + 3 * w + 1: r * w + 2 * r + 3 * w + 1].contiguous().view(b, r))
            # allocation gate (b * 1)
            allocation_gate = T.sigmoid(ξ[:, r * w + 2 * r + 3 * w + 1].contiguous().unsqueeze(1).view(b, 1))
            # write gate (b * 1)
            write_gate = T.sigmoid(ξ[:, r * w + 2 * r + 3 * w + 2].contiguous()).unsqueeze(1).view(b, 1)
            # read modes (b * 3*r)
            read_modes = σ(ξ[:, r * w + 2 * r + 3 * w + 3: r * w + 5 * r + 3 * w + 3].contiguous().view(b, r, 3), -1)

            hidden = self.write(write_key, write_vector, erase_vector, free_gates,
                                read_strengths, write_strength, write_gate, allocation_gate, hidden)
            return self.read(read_keys, read_strengths, read_modes, hidden)

    class DNC(nn.Module):
        """dnc.py's loop, one controller layer, one memory, no skip connections"""

        def __init__(self):
            super(DNC, self).__init__()  # noqa: UP008
            self.read_heads, self.cell_size = read_heads, cell_size
            self.controller = nn.LSTM(input_size + read_heads * cell_size, hidden_size, batch_first=True)
            self.memory = Memory(hidden_size, mem_size, cell_size, read_heads)
            self.output = nn.Linear(hidden_size + read_heads * cell_size, output_size)

        def forward(self, input):  # noqa: A002
            b, max_length = input.size(0), input.size(1)
            chx, mhx = None, self.memory.reset(b)
            last_read = T.zeros(b, self.read_heads * self.cell_size)
            outs, usages = [], []
            for time in range(max_length):
                inputs = T.cat([input[:, time, :], last_read], 1)
                output, chx = self.controller(inputs.unsqueeze(1), chx)
                output = output.squeeze(1)
                read_vecs, mhx = self.memory(output, mhx)
                last_read = read_vecs.view(-1, self.read_heads * self.cell_size)
                outs.append(self.output(T.cat([output, last_read], 1)))
                usages.append(mhx['usage_vector'])
            return T.stack(outs, 1), (T.stack(usages, 1), mhx['link_matrix'])
    return DNC()


def test_dnc_memory_sort_allocation_temporal_links_with_rmsprop():
    model, tmodel = pair(dnc, dtype=F32)
    # eps 1e-10 there (see the module's docstring)
    optimizer = av.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, eps=1e-8)
    toptimizer = torch.optim.RMSprop(tmodel.parameters(), lr=1e-3, momentum=0.9, eps=1e-8)
    rng = np.random.default_rng(8)
    # the copy task, short: two random bit vectors, then recall the first at a blank step
    batches = []
    for _ in range(3):
        bits = (rng.random((2, 2, 4)) < 0.5).astype(np.float32)
        inputs = np.concatenate([bits, np.zeros((2, 1, 4), np.float32)], 1)
        batches.append((inputs, np.concatenate([np.zeros_like(bits), bits[:, :1]], 1)))

    def loss_fn(model, input_data, target_output):
        output, (usage, links) = model(input_data)
        loss = ns_of(output)[1].binary_cross_entropy_with_logits(output, target_output)
        return loss, (output, usage, links)

    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-4, clip=50)

    # allocation by gathering with the inverse permutation: the same weights
    other = dnc(nn, F, av, alloc_by="gather")
    nn.load_state_dict(other, model.state_dict())
    x = av.tensor(batches[0][0])
    out, (usage, links) = model(x)
    assert rel(other(x)[0], out) < 1e-6
    assert float(usage.numpy().min()) >= 0 and float(usage.numpy().max()) <= 1
    assert np.abs(np.diagonal(links.numpy(), axis1=-2, axis2=-1)).max() == 0  # the zeroed diagonal
    assert np.abs(links.numpy()).max() > 0
    # as written, `self.I = 1 - T.eye(m)` is a trained attribute here: torch's weights do not load silently
    written = dnc(nn, F, av, as_written=True)
    assert "memory.I" in dict(written.named_parameters())
    with pytest.raises(nn.module.StateDictError, match='Missing key.*"memory.I"'):
        nn.load_state_dict(written, tmodel.state_dict())


# -- regressions -------------------------------------------------------------------------------------------------

def test_a_constant_cached_by_an_ended_trace_reads_as_its_value_in_later_traces_and_eagerly():
    # open_clip's ClipLoss(cache_labels=True) keeps `torch.arange(n)` made inside the first (traced) step in a dict;
    # the next trace read it as "a tensor traced in an enclosing function was captured by a nested traced function"
    # (there was no enclosing function), and eagerly it was refused as a leaked value, though it depends on nothing
    cache = {}

    def loss_fn(x):
        if "labels" not in cache:
            cache["labels"] = av.arange(x.shape[0])
        return F.cross_entropy(x, cache["labels"])
    x = av.tensor(randn(np.random.default_rng(9), 3, 4))
    want = av.grad(loss_fn)(x)
    assert cache["labels"].is_traced
    assert cache["labels"].numpy().tolist() == [0, 1, 2] and (cache["labels"] + 1).numpy().tolist() == [1, 2, 3]
    assert rel(F.cross_entropy(x, cache["labels"]), TF.cross_entropy(torch.tensor(x.numpy()), torch.arange(3))) < 1e-6
    run = av.compile(lambda x: av.grad(loss_fn)(x), backend="numpy")
    with strict():  # a constant, not captured data: compiled once
        assert rel(run(x), want) < 1e-7 and rel(run(x), want) < 1e-7
    assert run.cache_info().misses == 1
    labels = cache["labels"]
    labels.add_(1)  # written eagerly in place, as torch's cached tensor can be (an AttributeError before)
    labels[0] = 7
    assert not labels.is_traced and labels.dtype == av.int64 and labels.numpy().tolist() == [7, 2, 3]

    # the same through functools.lru_cache (a causal mask made once, inside whichever trace asks first)
    @functools.lru_cache(maxsize=8)
    def causal_mask(n):
        return av.triu(av.ones(n, n, dtype=av.bool), diagonal=1)

    def attend(scores):
        return F.softmax(scores.masked_fill(causal_mask(scores.shape[-1]), float("-inf")), -1)
    scores = av.tensor(randn(np.random.default_rng(11), 2, 4, 4))
    with strict():
        first = av.compile(lambda s: attend(s) * 2, backend="numpy")(scores)
        second = av.compile(lambda s: av.grad(lambda s: attend(s)[..., 0].sum())(s), backend="numpy")(scores)
    tscores = torch.tensor(scores.numpy(), requires_grad=True)
    tout = TF.softmax(tscores.masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf")), -1)
    tout[..., 0].sum().backward()
    assert causal_mask(4).is_traced and rel(first, 2 * tout) < 1e-6 and rel(second, tscores.grad) < 1e-6

    # a kept value that depends on the traced function's input has no value outside its trace: refused, saying so
    kept = {}

    def g(x):
        kept.setdefault("y", x * 2)
        return (x * kept["y"]).sum()
    av.grad(g)(x)
    with pytest.raises(av.TracerError, match=r"using it in another traced function: this tensor is a value of the "
                                             r"graph traced for @g .*kept after that trace ended"):
        av.grad(g)(x)
    with pytest.raises(av.TracerError, match="kept after that trace ended"):
        kept["y"].numpy()


def test_one_hot_without_num_classes_of_a_traced_tensor_asks_for_num_classes():
    x = av.tensor(randn(np.random.default_rng(10), 3, 4))
    with pytest.raises(ValueError, match="one_hot of a traced tensor without num_classes.*pass num_classes=K"):
        av.grad(lambda x: (F.one_hot(x.argmax(1)).float() * x[:, :3]).sum())(x)
    # eagerly, and for traced indices that depend on no input, the width is read from the values
    assert F.one_hot(av.tensor(np.array([0, 2]))).shape == (2, 3)
    g = av.grad(lambda x: (F.one_hot(av.arange(4)).float() * x[:1]).sum())(x)
    assert g.numpy().tolist() == [[1.0] * 4, [0.0] * 4, [0.0] * 4]

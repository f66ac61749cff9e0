"""Round 9d of port QA: tabular and recommender models as their popular repositories write them, written once
over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights
on random float64 data and compared with torch after every step (losses, parameters, buffers), the first step
eagerly and the rest compiled (numpy and cpu backends), with warnings as errors while tracing: TabNet as
dreamquark-ai/pytorch-tabnet writes it (the EmbeddingGenerator's loop over a boolean mask of continuous
columns, GhostBatchNorm's chunks through one BatchNorm1d, GLU blocks whose first layers are shared between the
steps, `torch.sqrt(torch.FloatTensor([0.5]))` as the residual scale, the attentive transformer's prior and its
sparsemax or entmax15 as autograd.Functions that sort, cumsum, gather the threshold and clamp, the mask-entropy
sparsity loss, Adam with StepLR and gradient clipping), DeepFM and xDeepFM as rixwew/pytorch-fm writes them
(FeaturesLinear and FeaturesEmbedding with np.cumsum offsets, the FM's (square of sum - sum of squares) / 2,
the Compressed Interaction Network by outer product and conv1d or by DeepCTR-Torch's einsum, split_half, an
MLP with batch norm) trained with DeepCTR-Torch's loss (binary cross entropy, summed, plus its
get_regularization_loss: L2 over the embedding parameters accumulated into `torch.zeros((1,))`) and Adam, and
the FT-Transformer as yandex-research/rtdl writes it (numerical and categorical feature tokenizers with
category offsets, the CLS token appended, pre-norm blocks in a ModuleDict with ReGLU feed-forwards, the last
block's query restricted to `[-1]`, AdamW over optimization_param_groups with no weight decay on the tokenizer,
norms and biases), and DCN-V2 as DeepCTR-Torch writes it (CrossNet's vector (tensordot) and matrix
parameterizations, x0 * (W x + b) + x, initialized through views of one stacked parameter, and CrossNetMix's
low-rank experts mixed by a softmax gate) beside a DNN, with binary cross entropy on the logits.

Dropout is 0, as the repositories' defaults for these models. What the ports change is what the README says
differs on purpose: gradients are values (`av.value_and_grad`, `opt.step(grads)`, clipping takes them), and
TabNet's identity group matrix and its EmbeddingGenerator's mask of continuous columns, plain tensor
attributes in the repository (`torch.eye(input_dim)`, `torch.ones(input_dim, dtype=torch.bool)`; a plain
tensor attribute is state in Avalon, and a float one is trained), are non-persistent buffers. rtdl's keys' bias
has a zero gradient in exact arithmetic (softmax removes the shift it adds), which Adam turns into ~1e-11 steps
of roundoff on both sides: it is only checked to stay that small. The regressions at the end are what the
programs found: `bool(self.continuous_idx[i])` (an element of a model's mask buffer) raised while tracing,
where `self.continuous_idx.tolist()` was read and guarded; sparsemax's `input -= max_val` inside an
autograd.Function's forward was refused ("updates state") where torch writes the caller's tensor; and
pytorch-fm's `x.new_tensor(self.offsets)` of a numpy array the model holds warned as captured data and traced
again on every call.
"""
from __future__ import annotations

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


def same_state(ours, theirs, tol, roundoff=""):
    """same_weights, except that the tensors whose names end in `roundoff` (a parameter whose gradient is zero
    in exact arithmetic, which Adam's normalization turns into steps of lr * roundoff / eps, ~1e-11, on both
    sides) only stay that small on both sides."""
    if not roundoff:
        return same_weights(ours, theirs, tol)
    sd = theirs.state_dict()
    assert sorted(ours.state_dict()) == sorted(sd)
    for k, v in ours.state_dict().items():
        a, b = v.numpy(), sd[k].detach().numpy()
        if k.endswith(roundoff):
            assert max(np.abs(a).max(), np.abs(b).max()) < 1e-9, k
        else:
            assert np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-4) < tol, k


def train(ours, theirs, opt, topt, loss_fn, batches, mode, tol=1e-9, sched=None, clip=None, roundoff=""):
    """One step per batch of `loss = loss_fn(model, *batch); loss.backward(); [clip]; opt.step();
    [sched.step()]` on both sides, the first eagerly and the rest in `mode`; losses, parameters and buffers
    compared after each (see same_state for `roundoff`)."""
    def step(model, opt, *xs):
        loss, grads = av.value_and_grad(loss_fn(F, av))(model, *xs)
        if clip is not None:
            nn.utils.clip_grad_norm_(grads, clip)
        opt.step(grads)
        return loss
    run = compiled(step, mode)
    theirs.train()
    ours.train()
    for it, batch in enumerate(batches):
        topt.zero_grad()
        tl = loss_fn(TF, torch)(theirs, *map(T, batch))
        tl.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(theirs.parameters(), clip)
        topt.step()
        with strict():
            loss = (run if it else step)(ours, opt, *map(av.tensor, batch))
        assert rel(loss, tl.reshape(np.shape(loss.numpy()))) < tol, (it, float(loss), float(tl))
        if sched is not None:
            sched[0].step()
            sched[1].step()
        same_state(ours, theirs, tol, roundoff)


# -- 1. TabNet (dreamquark-ai/pytorch-tabnet: sparsemax.py, tab_network.py, abstract_model.py) ----------------------

def tabnet_functions(th):
    def _make_ix_like(input, dim=0):
        d = input.size(dim)
        rho = th.arange(1, d + 1, device=input.device, dtype=input.dtype)
        view = [1] * input.dim()
        view[0] = -1
        return rho.view(view).transpose(0, dim)

    class SparsemaxFunction(th.autograd.Function):
        @staticmethod
        def forward(ctx, input, dim=-1):
            ctx.dim = dim
            max_val, _ = input.max(dim=dim, keepdim=True)
            input -= max_val  # same numerical stability trick as for softmax
            tau, supp_size = SparsemaxFunction._threshold_and_support(input, dim=dim)
            output = th.clamp(input - tau, min=0)
            ctx.save_for_backward(supp_size, output)
            return output

        @staticmethod
        def backward(ctx, grad_output):
            supp_size, output = ctx.saved_tensors
            dim = ctx.dim
            grad_input = grad_output.clone()
            grad_input[output == 0] = 0

            v_hat = grad_input.sum(dim=dim) / supp_size.to(output.dtype).squeeze()
            v_hat = v_hat.unsqueeze(dim)
            grad_input = th.where(output != 0, grad_input - v_hat, grad_input)
            return grad_input, None

        @staticmethod
        def _threshold_and_support(input, dim=-1):
            input_srt, _ = th.sort(input, descending=True, dim=dim)
            input_cumsum = input_srt.cumsum(dim) - 1
            rhos = _make_ix_like(input, dim)
            support = rhos * input_srt > input_cumsum

            support_size = support.sum(dim=dim).unsqueeze(dim)
            tau = input_cumsum.gather(dim, support_size - 1)
            tau /= support_size.to(input.dtype)
            return tau, support_size

    class Entmax15Function(th.autograd.Function):
        @staticmethod
        def forward(ctx, input, dim=-1):
            ctx.dim = dim

            max_val, _ = input.max(dim=dim, keepdim=True)
            input = input - max_val  # same numerical stability trick as for softmax
            input = input / 2  # divide by 2 to solve actual Entmax

            tau_star, _ = Entmax15Function._threshold_and_support(input, dim)
            output = th.clamp(input - tau_star, min=0) ** 2
            ctx.save_for_backward(output)
            return output

        @staticmethod
        def backward(ctx, grad_output):
            Y, = ctx.saved_tensors
            gppr = Y.sqrt()  # = 1 / g'' (Y)
            dX = grad_output * gppr
            q = dX.sum(ctx.dim) / gppr.sum(ctx.dim)
            q = q.unsqueeze(ctx.dim)
            dX -= q * gppr
            return dX, None

        @staticmethod
        def _threshold_and_support(input, dim=-1):
            Xsrt, _ = th.sort(input, descending=True, dim=dim)

            rho = _make_ix_like(input, dim)
            mean = Xsrt.cumsum(dim) / rho
            mean_sq = (Xsrt ** 2).cumsum(dim) / rho
            ss = rho * (mean_sq - mean ** 2)
            delta = (1 - ss) / rho

            delta_nz = th.clamp(delta, 0)
            tau = mean - th.sqrt(delta_nz)

            support_size = (tau <= Xsrt).sum(dim).unsqueeze(dim)
            tau_star = tau.gather(dim, support_size - 1)
            return tau_star, support_size

    return SparsemaxFunction, Entmax15Function


def tabnet(lib, F_, th, mask_type="sparsemax", input_dim=6, output_dim=3, cat_idxs=(1, 4), cat_dims=(3, 4),
           cat_emb_dim=(2, 3), n_d=4, n_a=4, n_steps=2, gamma=1.3, n_independent=2, n_shared=2,
           virtual_batch_size=4, momentum=0.02):
    SparsemaxFunction, Entmax15Function = tabnet_functions(th)
    Linear, BatchNorm1d, ReLU = lib.Linear, lib.BatchNorm1d, lib.ReLU

    class Sparsemax(lib.Module):
        def __init__(self, dim=-1):
            self.dim = dim
            super().__init__()

        def forward(self, input):
            return SparsemaxFunction.apply(input, self.dim)

    class Entmax15(lib.Module):
        def __init__(self, dim=-1):
            self.dim = dim
            super().__init__()

        def forward(self, input):
            return Entmax15Function.apply(input, self.dim)

    def initialize_non_glu(module, input_dim, output_dim):
        gain_value = np.sqrt((input_dim + output_dim) / np.sqrt(4 * input_dim))
        lib.init.xavier_normal_(module.weight, gain=gain_value)
        return

    def initialize_glu(module, input_dim, output_dim):
        gain_value = np.sqrt((input_dim + output_dim) / np.sqrt(input_dim))
        lib.init.xavier_normal_(module.weight, gain=gain_value)
        return

    class GBN(lib.Module):
        """Ghost Batch Normalization https://arxiv.org/abs/1705.08741"""
        def __init__(self, input_dim, virtual_batch_size=128, momentum=0.01):
            super().__init__()

            self.input_dim = input_dim
            self.virtual_batch_size = virtual_batch_size
            self.bn = BatchNorm1d(self.input_dim, momentum=momentum)

        def forward(self, x):
            chunks = x.chunk(int(np.ceil(x.shape[0] / self.virtual_batch_size)), 0)
            res = [self.bn(x_) for x_ in chunks]

            return th.cat(res, dim=0)

    class GLU_Layer(lib.Module):
        def __init__(self, input_dim, output_dim, fc=None, virtual_batch_size=128, momentum=0.02):
            super().__init__()

            self.output_dim = output_dim
            if fc:
                self.fc = fc
            else:
                self.fc = Linear(input_dim, 2 * output_dim, bias=False)
            initialize_glu(self.fc, input_dim, 2 * output_dim)

            self.bn = GBN(2 * output_dim, virtual_batch_size=virtual_batch_size, momentum=momentum)

        def forward(self, x):
            x = self.fc(x)
            x = self.bn(x)
            out = th.mul(x[:, : self.output_dim], th.sigmoid(x[:, self.output_dim:]))
            return out

    class GLU_Block(lib.Module):
        """Independent GLU block, specific to each step"""
        def __init__(self, input_dim, output_dim, n_glu=2, first=False, shared_layers=None, virtual_batch_size=128,
                     momentum=0.02):
            super().__init__()
            self.first = first
            self.shared_layers = shared_layers
            self.n_glu = n_glu
            self.glu_layers = lib.ModuleList()

            params = {"virtual_batch_size": virtual_batch_size, "momentum": momentum}

            fc = shared_layers[0] if shared_layers else None
            self.glu_layers.append(GLU_Layer(input_dim, output_dim, fc=fc, **params))
            for glu_id in range(1, self.n_glu):
                fc = shared_layers[glu_id] if shared_layers else None
                self.glu_layers.append(GLU_Layer(output_dim, output_dim, fc=fc, **params))

        def forward(self, x):
            scale = th.sqrt(th.FloatTensor([0.5]).to(x.device))
            if self.first:  # the first layer of the block has no scale multiplication
                x = self.glu_layers[0](x)
                layers_left = range(1, self.n_glu)
            else:
                layers_left = range(self.n_glu)

            for glu_id in layers_left:
                x = th.add(x, self.glu_layers[glu_id](x))
                x = x * scale
            return x

    class FeatTransformer(lib.Module):
        def __init__(self, input_dim, output_dim, shared_layers, n_glu_independent, virtual_batch_size=128,
                     momentum=0.02):
            super().__init__()
            params = {"n_glu": n_glu_independent, "virtual_batch_size": virtual_batch_size, "momentum": momentum}

            if shared_layers is None:
                # no shared layers
                self.shared = lib.Identity()
                is_first = True
            else:
                self.shared = GLU_Block(input_dim, output_dim, first=True, shared_layers=shared_layers,
                                        n_glu=len(shared_layers), virtual_batch_size=virtual_batch_size,
                                        momentum=momentum)
                is_first = False

            if n_glu_independent == 0:
                # no independent layers
                self.specifics = lib.Identity()
            else:
                spec_input_dim = input_dim if is_first else output_dim
                self.specifics = GLU_Block(spec_input_dim, output_dim, first=is_first, **params)

        def forward(self, x):
            x = self.shared(x)
            x = self.specifics(x)
            return x

    class AttentiveTransformer(lib.Module):
        def __init__(self, input_dim, output_dim, virtual_batch_size=128, momentum=0.02, mask_type="sparsemax"):
            super().__init__()
            self.fc = Linear(input_dim, output_dim, bias=False)
            initialize_non_glu(self.fc, input_dim, output_dim)
            self.bn = GBN(output_dim, virtual_batch_size=virtual_batch_size, momentum=momentum)

            if mask_type == "sparsemax":
                # Sparsemax
                self.selector = Sparsemax(dim=-1)
            elif mask_type == "entmax":
                # Entmax
                self.selector = Entmax15(dim=-1)
            else:
                raise NotImplementedError("Please choose either sparsemax" + "or entmax as masktype")

        def forward(self, priors, processed_feat):
            x = self.fc(processed_feat)
            x = self.bn(x)
            x = th.mul(x, priors)
            x = self.selector(x)
            return x

    class TabNetEncoder(lib.Module):
        def __init__(self, input_dim, output_dim, n_d=8, n_a=8, n_steps=3, gamma=1.3, n_independent=2, n_shared=2,
                     epsilon=1e-15, virtual_batch_size=128, momentum=0.02, mask_type="sparsemax"):
            super().__init__()
            self.input_dim = input_dim
            self.output_dim = output_dim
            self.is_multi_task = isinstance(output_dim, list)
            self.n_d = n_d
            self.n_a = n_a
            self.n_steps = n_steps
            self.gamma = gamma
            self.epsilon = epsilon
            self.n_independent = n_independent
            self.n_shared = n_shared
            self.virtual_batch_size = virtual_batch_size
            self.mask_type = mask_type
            self.initial_bn = BatchNorm1d(self.input_dim, momentum=0.01)
            # the repository's `self.group_attention_matrix = torch.eye(self.input_dim)` (see the docstring)
            self.register_buffer("group_attention_matrix", th.eye(self.input_dim), persistent=False)
            self.attention_dim = self.input_dim

            if self.n_shared > 0:
                shared_feat_transform = lib.ModuleList()
                for i in range(self.n_shared):
                    if i == 0:
                        shared_feat_transform.append(Linear(self.input_dim, 2 * (n_d + n_a), bias=False))
                    else:
                        shared_feat_transform.append(Linear(n_d + n_a, 2 * (n_d + n_a), bias=False))
            else:
                shared_feat_transform = None

            self.initial_splitter = FeatTransformer(self.input_dim, n_d + n_a, shared_feat_transform,
                                                    n_glu_independent=self.n_independent,
                                                    virtual_batch_size=self.virtual_batch_size, momentum=momentum)

            self.feat_transformers = lib.ModuleList()
            self.att_transformers = lib.ModuleList()

            for _step in range(n_steps):
                transformer = FeatTransformer(self.input_dim, n_d + n_a, shared_feat_transform,
                                              n_glu_independent=self.n_independent,
                                              virtual_batch_size=self.virtual_batch_size, momentum=momentum)
                attention = AttentiveTransformer(n_a, self.attention_dim, virtual_batch_size=self.virtual_batch_size,
                                                 momentum=momentum, mask_type=self.mask_type)
                self.feat_transformers.append(transformer)
                self.att_transformers.append(attention)

        def forward(self, x, prior=None):
            x = self.initial_bn(x)

            bs = x.shape[0]  # batch size
            if prior is None:
                prior = th.ones((bs, self.attention_dim)).to(x.device)

            M_loss = 0
            att = self.initial_splitter(x)[:, self.n_d:]
            steps_output = []
            for step in range(self.n_steps):
                M = self.att_transformers[step](prior, att)
                M_loss += th.mean(th.sum(th.mul(M, th.log(M + self.epsilon)), dim=1))
                # update prior
                prior = th.mul(self.gamma - M, prior)
                # output
                M_feature_level = th.matmul(M, self.group_attention_matrix.to(x.device))
                masked_x = th.mul(M_feature_level, x)
                out = self.feat_transformers[step](masked_x)
                d = ReLU()(out[:, : self.n_d])
                steps_output.append(d)
                # update attention
                att = out[:, self.n_d:]

            M_loss /= self.n_steps
            return steps_output, M_loss

    class TabNetNoEmbeddings(lib.Module):
        def __init__(self, input_dim, output_dim, n_d=8, n_a=8, n_steps=3, gamma=1.3, n_independent=2, n_shared=2,
                     epsilon=1e-15, virtual_batch_size=128, momentum=0.02, mask_type="sparsemax"):
            super().__init__()
            self.input_dim = input_dim
            self.output_dim = output_dim
            self.is_multi_task = isinstance(output_dim, list)
            self.n_d = n_d
            self.n_a = n_a
            self.n_steps = n_steps
            self.gamma = gamma
            self.epsilon = epsilon
            self.n_independent = n_independent
            self.n_shared = n_shared
            self.virtual_batch_size = virtual_batch_size
            self.mask_type = mask_type
            self.initial_bn = BatchNorm1d(self.input_dim, momentum=0.01)  # unused, as in the repository

            self.encoder = TabNetEncoder(input_dim=input_dim, output_dim=output_dim, n_d=n_d, n_a=n_a,
                                         n_steps=n_steps, gamma=gamma, n_independent=n_independent,
                                         n_shared=n_shared, epsilon=epsilon, virtual_batch_size=virtual_batch_size,
                                         momentum=momentum, mask_type=mask_type)

            self.final_mapping = Linear(n_d, output_dim, bias=False)
            initialize_non_glu(self.final_mapping, n_d, output_dim)

        def forward(self, x):
            res = 0
            steps_output, M_loss = self.encoder(x)
            res = th.sum(th.stack(steps_output, dim=0), dim=0)
            out = self.final_mapping(res)
            return out, M_loss

    class EmbeddingGenerator(lib.Module):
        """Classical embeddings generator (pytorch-tabnet 3.x)"""
        def __init__(self, input_dim, cat_dims, cat_idxs, cat_emb_dim):
            super().__init__()
            if cat_dims == [] or cat_idxs == []:
                self.skip_embedding = True
                self.post_embed_dim = input_dim
                return

            self.skip_embedding = False
            if isinstance(cat_emb_dim, int):
                self.cat_emb_dims = [cat_emb_dim] * len(cat_idxs)
            else:
                self.cat_emb_dims = cat_emb_dim

            self.post_embed_dim = int(input_dim + np.sum(self.cat_emb_dims) - len(self.cat_emb_dims))

            self.embeddings = lib.ModuleList()

            # Sort dims by cat_idx
            sorted_idxs = np.argsort(cat_idxs)
            cat_dims = [cat_dims[i] for i in sorted_idxs]
            self.cat_emb_dims = [self.cat_emb_dims[i] for i in sorted_idxs]

            for cat_dim, emb_dim in zip(cat_dims, self.cat_emb_dims):
                self.embeddings.append(lib.Embedding(cat_dim, emb_dim))

            # record continuous indices
            # the repository's `self.continuous_idx = torch.ones(input_dim, dtype=torch.bool)` (see the docstring)
            self.register_buffer("continuous_idx", th.ones(input_dim, dtype=th.bool), persistent=False)
            self.continuous_idx[list(cat_idxs)] = 0

        def forward(self, x):
            if self.skip_embedding:
                # no embeddings required
                return x

            cols = []
            cat_feat_counter = 0
            for feat_init_idx, is_continuous in enumerate(self.continuous_idx):
                # Enumerate through continuous idx boolean mask to apply embeddings
                if is_continuous:
                    cols.append(x[:, feat_init_idx].float().view(-1, 1))
                else:
                    cols.append(self.embeddings[cat_feat_counter](x[:, feat_init_idx].long()))
                    cat_feat_counter += 1
            # concat
            post_embeddings = th.cat(cols, dim=1)
            return post_embeddings

    class TabNet(lib.Module):
        def __init__(self):
            super().__init__()
            self.embedder = EmbeddingGenerator(input_dim, list(cat_dims), list(cat_idxs), list(cat_emb_dim))
            self.post_embed_dim = self.embedder.post_embed_dim
            self.tabnet = TabNetNoEmbeddings(self.post_embed_dim, output_dim, n_d, n_a, n_steps, gamma,
                                             n_independent, n_shared, 1e-15, virtual_batch_size, momentum, mask_type)

        def forward(self, x):
            x = self.embedder(x)
            return self.tabnet(x)
    return TabNet()


def tabnet_objective(lambda_sparse=1e-3):
    def objective(F_, th):
        def loss(model, X, y):
            output, M_loss = model(X)
            loss = F_.cross_entropy(output, y)
            return loss - lambda_sparse * M_loss
        return loss
    return objective


def tabular(rng, n, cat_dims=(3, 4)):
    """Numerical columns 0, 2, 3, 5 and categorical columns 1, 4, all as floats (pytorch-tabnet's X)."""
    x = rng.standard_normal((n, 6))
    x[:, 1] = rng.integers(0, cat_dims[0], n)
    x[:, 4] = rng.integers(0, cat_dims[1], n)
    return x


@pytest.mark.parametrize("mask_type,mode", [("sparsemax", "numpy"), ("entmax", "cpu")])
def test_tabnet_ghost_batch_norm_shared_glu_blocks_and_sparsemax_attention(mask_type, mode):
    ours, theirs = pair(lambda lib, F_, th: tabnet(lib, F_, th, mask_type))
    opt, topt = optim.Adam(ours.parameters(), lr=2e-2), torch.optim.Adam(theirs.parameters(), lr=2e-2)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), torch.optim.lr_scheduler.StepLR(topt, 2, 0.5)
    rng = np.random.default_rng(0)
    batches = [(tabular(rng, 12), rng.integers(0, 3, 12)) for _ in range(3)]
    train(ours, theirs, opt, topt, tabnet_objective(), batches, mode, sched=sched, clip=1.0)
    ours.eval()
    theirs.eval()
    x = tabular(rng, 5)
    with torch.no_grad():
        want = theirs(T(x))
    for run in (ours, av.compile(lambda m, x: m(x), backend=mode)):
        with strict():
            got = run(av.tensor(x)) if run is ours else run(ours, av.tensor(x))
        assert rel(got[0], want[0]) < 1e-10 and rel(got[1], want[1]) < 1e-10


# -- 2. DeepFM and xDeepFM (rixwew/pytorch-fm: torchfm/layer.py, model/dfm.py, model/xdfm.py; the CIN by einsum
#       and DeepCTR-Torch's get_regularization_loss) -------------------------------------------------------------

FIELD_DIMS = (3, 5, 2, 4)


def ctr_model(lib, F_, th, kind="deepfm", embed_dim=3, mlp_dims=(8, 4), dropout=0.0, cross_layer_sizes=(4, 4),
              split_half=True):
    field_dims = FIELD_DIMS

    class FeaturesLinear(lib.Module):
        def __init__(self, field_dims, output_dim=1):
            super().__init__()
            self.fc = lib.Embedding(sum(field_dims), output_dim)
            self.bias = lib.Parameter(th.zeros((output_dim,)))
            self.offsets = np.array((0, *np.cumsum(field_dims)[:-1]), dtype=np.int64)

        def forward(self, x):
            """:param x: Long tensor of size ``(batch_size, num_fields)``"""
            x = x + x.new_tensor(self.offsets).unsqueeze(0)
            return th.sum(self.fc(x), dim=1) + self.bias

    class FeaturesEmbedding(lib.Module):
        def __init__(self, field_dims, embed_dim):
            super().__init__()
            self.embedding = lib.Embedding(sum(field_dims), embed_dim)
            self.offsets = np.array((0, *np.cumsum(field_dims)[:-1]), dtype=np.int64)
            lib.init.xavier_uniform_(self.embedding.weight.data)

        def forward(self, x):
            x = x + x.new_tensor(self.offsets).unsqueeze(0)
            return self.embedding(x)

    class FactorizationMachine(lib.Module):
        def __init__(self, reduce_sum=True):
            super().__init__()
            self.reduce_sum = reduce_sum

        def forward(self, x):
            """:param x: Float tensor of size ``(batch_size, num_fields, embed_dim)``"""
            square_of_sum = th.sum(x, dim=1) ** 2
            sum_of_square = th.sum(x ** 2, dim=1)
            ix = square_of_sum - sum_of_square
            if self.reduce_sum:
                ix = th.sum(ix, dim=1, keepdim=True)
            return 0.5 * ix

    class MultiLayerPerceptron(lib.Module):
        def __init__(self, input_dim, embed_dims, dropout, output_layer=True):
            super().__init__()
            layers = list()
            for embed_dim in embed_dims:
                layers.append(lib.Linear(input_dim, embed_dim))
                layers.append(lib.BatchNorm1d(embed_dim))
                layers.append(lib.ReLU())
                layers.append(lib.Dropout(p=dropout))
                input_dim = embed_dim
            if output_layer:
                layers.append(lib.Linear(input_dim, 1))
            self.mlp = lib.Sequential(*layers)

        def forward(self, x):
            return self.mlp(x)

    class CompressedInteractionNetwork(lib.Module):
        def __init__(self, input_dim, cross_layer_sizes, split_half=True, einsum=False):
            super().__init__()
            self.num_layers = len(cross_layer_sizes)
            self.split_half = split_half
            self.einsum = einsum
            self.conv_layers = lib.ModuleList()
            prev_dim, fc_input_dim = input_dim, 0
            for i in range(self.num_layers):
                cross_layer_size = cross_layer_sizes[i]
                self.conv_layers.append(lib.Conv1d(input_dim * prev_dim, cross_layer_size, 1,
                                                   stride=1, dilation=1, bias=True))
                if self.split_half and i != self.num_layers - 1:
                    cross_layer_size //= 2
                prev_dim = cross_layer_size
                fc_input_dim += prev_dim
            self.fc = lib.Linear(fc_input_dim, 1)

        def forward(self, x):
            """:param x: Float tensor of size ``(batch_size, num_fields, embed_dim)``"""
            xs = list()
            x0, h = x.unsqueeze(2), x
            for i in range(self.num_layers):
                if self.einsum:  # DeepCTR-Torch's CIN: the outer product by einsum, then reshaped
                    x = th.einsum('bhd,bmd->bhmd', x0.squeeze(2), h)
                else:
                    x = x0 * h.unsqueeze(1)
                batch_size, f0_dim, fin_dim, embed_dim = x.shape
                x = x.view(batch_size, f0_dim * fin_dim, embed_dim)
                x = F_.relu(self.conv_layers[i](x))
                if self.split_half and i != self.num_layers - 1:
                    x, h = th.split(x, x.shape[1] // 2, dim=1)
                else:
                    h = x
                xs.append(x)
            return self.fc(th.sum(th.cat(xs, dim=1), 2))

    class DeepFactorizationMachineModel(lib.Module):
        """A pytorch implementation of DeepFM."""
        def __init__(self, field_dims, embed_dim, mlp_dims, dropout):
            super().__init__()
            self.linear = FeaturesLinear(field_dims)
            self.fm = FactorizationMachine(reduce_sum=True)
            self.embedding = FeaturesEmbedding(field_dims, embed_dim)
            self.embed_output_dim = len(field_dims) * embed_dim
            self.mlp = MultiLayerPerceptron(self.embed_output_dim, mlp_dims, dropout)

        def forward(self, x):
            embed_x = self.embedding(x)
            x = self.linear(x) + self.fm(embed_x) + self.mlp(embed_x.view(-1, self.embed_output_dim))
            return th.sigmoid(x.squeeze(1))

    class ExtremeDeepFactorizationMachineModel(lib.Module):
        """A pytorch implementation of xDeepFM (its logits: trained with binary_cross_entropy_with_logits)."""
        def __init__(self, field_dims, embed_dim, mlp_dims, dropout, cross_layer_sizes, split_half=True,
                     einsum=False):
            super().__init__()
            self.embedding = FeaturesEmbedding(field_dims, embed_dim)
            self.embed_output_dim = len(field_dims) * embed_dim
            self.cin = CompressedInteractionNetwork(len(field_dims), cross_layer_sizes, split_half, einsum)
            self.mlp = MultiLayerPerceptron(self.embed_output_dim, mlp_dims, dropout)
            self.linear = FeaturesLinear(field_dims)

        def forward(self, x):
            embed_x = self.embedding(x)
            x = self.linear(x) + self.cin(embed_x) + self.mlp(embed_x.view(-1, self.embed_output_dim))
            return x.squeeze(1)

    if kind == "deepfm":
        return DeepFactorizationMachineModel(field_dims, embed_dim, mlp_dims, dropout)
    return ExtremeDeepFactorizationMachineModel(field_dims, embed_dim, mlp_dims, dropout, cross_layer_sizes,
                                                split_half, einsum=kind == "xdeepfm_einsum")


def ctr_objective(logits, l2_reg_embedding=1e-2):
    def objective(F_, th):
        def get_regularization_loss(regularization_weight):
            total_reg_loss = th.zeros((1,))
            for weight_list, l1, l2 in regularization_weight:
                for w in weight_list:
                    if isinstance(w, tuple):
                        parameter = w[1]  # named_parameters
                    else:
                        parameter = w
                    if l1 > 0:
                        total_reg_loss += th.sum(l1 * th.abs(parameter))
                    if l2 > 0:
                        try:
                            total_reg_loss += th.sum(l2 * th.square(parameter))
                        except AttributeError:
                            total_reg_loss += th.sum(l2 * parameter * parameter)
            return total_reg_loss

        def loss(model, x, y):
            regularization_weight = [(list(model.embedding.parameters()) + list(model.linear.parameters()), 0.0,
                                      l2_reg_embedding)]
            y_pred = model(x)
            if logits:
                loss = F_.binary_cross_entropy_with_logits(y_pred, y.squeeze(), reduction='sum')
            else:
                loss = F_.binary_cross_entropy(y_pred, y.squeeze(), reduction='sum')
            reg_loss = get_regularization_loss(regularization_weight)
            return loss + reg_loss
        return loss
    return objective


def ctr_batches(rng, n=3, batch=8):
    return [(np.stack([rng.integers(0, d, batch) for d in FIELD_DIMS], 1), rng.integers(0, 2, (batch, 1)) * 1.0)
            for _ in range(n)]


@pytest.mark.parametrize("kind,mode", [("deepfm", "numpy"), ("xdeepfm", "cpu"), ("xdeepfm_einsum", "numpy")])
def test_deepfm_and_xdeepfm_with_offsets_fm_cin_and_l2_on_embeddings(kind, mode):
    ours, theirs = pair(lambda lib, F_, th: ctr_model(lib, F_, th, kind))
    kw = dict(lr=1e-2, weight_decay=1e-5)
    opt, topt = optim.Adam(ours.parameters(), **kw), torch.optim.Adam(theirs.parameters(), **kw)
    train(ours, theirs, opt, topt, ctr_objective(kind != "deepfm"), ctr_batches(np.random.default_rng(1)), mode)


# -- 3. FT-Transformer (yandex-research/rtdl: rtdl/modules.py's tokenizers, CLSToken, ReGLU, MultiheadAttention,
#       Transformer, FTTransformer.optimization_param_groups) ---------------------------------------------------

def ft_transformer(lib, F_, th, n_num_features=3, cat_cardinalities=(3, 4), d_token=8, n_blocks=2, n_heads=2,
                   ffn_d_hidden=6, d_out=1):
    def _init_token(x, d):
        d_sqrt_inv = 1 / math.sqrt(d)
        lib.init.uniform_(x, a=-d_sqrt_inv, b=d_sqrt_inv)

    class NumericalFeatureTokenizer(lib.Module):
        def __init__(self, n_features, d_token, bias):
            super().__init__()
            self.weight = lib.Parameter(th.Tensor(n_features, d_token))
            self.bias = lib.Parameter(th.Tensor(n_features, d_token)) if bias else None
            for parameter in [self.weight, self.bias]:
                if parameter is not None:
                    _init_token(parameter, d_token)

        @property
        def n_tokens(self):
            return len(self.weight)

        def forward(self, x):
            x = self.weight[None] * x[..., None]
            if self.bias is not None:
                x = x + self.bias[None]
            return x

    class CategoricalFeatureTokenizer(lib.Module):
        def __init__(self, cardinalities, d_token, bias):
            super().__init__()
            assert cardinalities, 'cardinalities must be non-empty'
            assert d_token > 0, 'd_token must be positive'

            category_offsets = th.tensor([0] + cardinalities[:-1]).cumsum(0)
            self.register_buffer('category_offsets', category_offsets, persistent=False)
            self.embeddings = lib.Embedding(sum(cardinalities), d_token)
            self.bias = lib.Parameter(th.Tensor(len(cardinalities), d_token)) if bias else None

            for parameter in [self.embeddings.weight, self.bias]:
                if parameter is not None:
                    _init_token(parameter, d_token)

        def forward(self, x):
            x = self.embeddings(x + self.category_offsets[None])
            if self.bias is not None:
                x = x + self.bias[None]
            return x

    class FeatureTokenizer(lib.Module):
        def __init__(self, n_num_features, cat_cardinalities, d_token):
            super().__init__()
            self.initialization = 'uniform'
            self.d_token = d_token
            self.num_tokenizer = (NumericalFeatureTokenizer(n_features=n_num_features, d_token=d_token, bias=True)
                                  if n_num_features else None)
            self.cat_tokenizer = (CategoricalFeatureTokenizer(cat_cardinalities, d_token, True)
                                  if cat_cardinalities else None)

        def forward(self, x_num, x_cat):
            x = []
            if self.num_tokenizer is not None:
                x.append(self.num_tokenizer(x_num))
            if self.cat_tokenizer is not None:
                x.append(self.cat_tokenizer(x_cat))
            return x[0] if len(x) == 1 else th.cat(x, dim=1)

    class CLSToken(lib.Module):
        def __init__(self, d_token):
            super().__init__()
            self.weight = lib.Parameter(th.Tensor(d_token))
            _init_token(self.weight, d_token)

        def expand(self, *leading_dimensions):
            if not leading_dimensions:
                return self.weight
            new_dims = (1,) * (len(leading_dimensions) - 1)
            return self.weight.view(*new_dims, -1).expand(*leading_dimensions, -1)

        def forward(self, x):
            return th.cat([x, self.expand(len(x), 1)], dim=1)

    def reglu(x):
        assert x.shape[-1] % 2 == 0
        a, b = x.chunk(2, dim=-1)
        return a * F_.relu(b)

    class ReGLU(lib.Module):
        def forward(self, x):
            return reglu(x)

    class MultiheadAttention(lib.Module):
        def __init__(self, *, d_token, n_heads, dropout, bias, initialization):
            super().__init__()
            if n_heads > 1:
                assert d_token % n_heads == 0, 'd_token must be a multiple of n_heads'
            assert initialization in ['kaiming', 'xavier']

            self.W_q = lib.Linear(d_token, d_token, bias)
            self.W_k = lib.Linear(d_token, d_token, bias)
            self.W_v = lib.Linear(d_token, d_token, bias)
            self.W_out = lib.Linear(d_token, d_token, bias) if n_heads > 1 else None
            self.n_heads = n_heads
            self.dropout = lib.Dropout(dropout) if dropout else None

            for m in [self.W_q, self.W_k, self.W_v]:
                if initialization == 'xavier' and (m is not self.W_v or self.W_out is not None):
                    lib.init.xavier_uniform_(m.weight, gain=1 / math.sqrt(2))
                if m.bias is not None:
                    lib.init.zeros_(m.bias)
            if self.W_out is not None:
                lib.init.zeros_(self.W_out.bias)

        def _reshape(self, x):
            batch_size, n_tokens, d = x.shape
            d_head = d // self.n_heads
            return (x.reshape(batch_size, n_tokens, self.n_heads, d_head).transpose(1, 2)
                    .reshape(batch_size * self.n_heads, n_tokens, d_head))

        def forward(self, x_q, x_kv, key_compression, value_compression):
            q, k, v = self.W_q(x_q), self.W_k(x_kv), self.W_v(x_kv)
            for tensor in [q, k, v]:
                assert tensor.shape[-1] % self.n_heads == 0
            batch_size = len(q)
            d_head_key = k.shape[-1] // self.n_heads
            d_head_value = v.shape[-1] // self.n_heads
            n_q_tokens = q.shape[1]

            q = self._reshape(q)
            k = self._reshape(k)
            attention_logits = q @ k.transpose(1, 2) / math.sqrt(d_head_key)
            attention_probs = F_.softmax(attention_logits, dim=-1)
            if self.dropout is not None:
                attention_probs = self.dropout(attention_probs)
            x = attention_probs @ self._reshape(v)
            x = (x.reshape(batch_size, self.n_heads, n_q_tokens, d_head_value).transpose(1, 2)
                 .reshape(batch_size, n_q_tokens, self.n_heads * d_head_value))
            if self.W_out is not None:
                x = self.W_out(x)
            return x, {'attention_logits': attention_logits, 'attention_probs': attention_probs}

    class FFN(lib.Module):
        def __init__(self, *, d_token, d_hidden, bias_first, bias_second, dropout):
            super().__init__()
            self.linear_first = lib.Linear(d_token, d_hidden * 2, bias_first)
            self.activation = ReGLU()
            self.dropout = lib.Dropout(dropout)
            self.linear_second = lib.Linear(d_hidden, d_token, bias_second)

        def forward(self, x):
            x = self.linear_first(x)
            x = self.activation(x)
            x = self.dropout(x)
            x = self.linear_second(x)
            return x

    class Head(lib.Module):
        def __init__(self, *, d_in, bias, d_out):
            super().__init__()
            self.normalization = lib.LayerNorm(d_in)
            self.activation = lib.ReLU()
            self.linear = lib.Linear(d_in, d_out, bias)

        def forward(self, x):
            x = x[:, -1]
            x = self.normalization(x)
            x = self.activation(x)
            x = self.linear(x)
            return x

    class Transformer(lib.Module):
        def __init__(self, *, d_token, n_blocks, attention_n_heads, ffn_d_hidden, prenormalization=True,
                     first_prenormalization=False, last_layer_query_idx=(-1,), d_out):
            super().__init__()
            self.prenormalization = prenormalization
            self.last_layer_query_idx = list(last_layer_query_idx)
            self.shared_kv_compression = None
            self.blocks = lib.ModuleList([])
            for layer_idx in range(n_blocks):
                layer = lib.ModuleDict({
                    'attention': MultiheadAttention(d_token=d_token, n_heads=attention_n_heads, dropout=0.0,
                                                    bias=True, initialization='kaiming'),
                    'ffn': FFN(d_token=d_token, d_hidden=ffn_d_hidden, bias_first=True, bias_second=True,
                               dropout=0.0),
                    'attention_residual_dropout': lib.Dropout(0.0),
                    'ffn_residual_dropout': lib.Dropout(0.0),
                    'output': lib.Identity(),  # for hooks-based introspection
                })
                if layer_idx or not prenormalization or first_prenormalization:
                    layer['attention_normalization'] = lib.LayerNorm(d_token)
                layer['ffn_normalization'] = lib.LayerNorm(d_token)
                self.blocks.append(layer)
            self.head = Head(d_in=d_token, d_out=d_out, bias=True)

        def _get_kv_compressions(self, layer):
            return ((self.shared_kv_compression, self.shared_kv_compression)
                    if self.shared_kv_compression is not None
                    else (layer['key_compression'], layer['value_compression'])
                    if 'key_compression' in layer and 'value_compression' in layer
                    else (layer['key_compression'], layer['key_compression'])
                    if 'key_compression' in layer else (None, None))

        def _start_residual(self, layer, stage, x):
            x_residual = x
            if self.prenormalization:
                norm_key = f'{stage}_normalization'
                if norm_key in layer:
                    x_residual = layer[norm_key](x_residual)
            return x_residual

        def _end_residual(self, layer, stage, x, x_residual):
            x_residual = layer[f'{stage}_residual_dropout'](x_residual)
            x = x + x_residual
            if not self.prenormalization:
                x = layer[f'{stage}_normalization'](x)
            return x

        def forward(self, x):
            assert x.ndim == 3, 'The input must have 3 dimensions: (n_objects, n_tokens, d_token)'
            for layer_idx, layer in enumerate(self.blocks):
                query_idx = self.last_layer_query_idx if layer_idx + 1 == len(self.blocks) else None
                x_residual = self._start_residual(layer, 'attention', x)
                x_residual, _ = layer['attention'](
                    x_residual if query_idx is None else x_residual[:, query_idx],
                    x_residual,
                    *self._get_kv_compressions(layer),
                )
                if query_idx is not None:
                    x = x[:, query_idx]
                x = self._end_residual(layer, 'attention', x, x_residual)

                x_residual = self._start_residual(layer, 'ffn', x)
                x_residual = layer['ffn'](x_residual)
                x = self._end_residual(layer, 'ffn', x, x_residual)
                x = layer['output'](x)

            x = self.head(x)
            return x

    class FTTransformer(lib.Module):
        def __init__(self, feature_tokenizer, transformer):
            super().__init__()
            self.feature_tokenizer = feature_tokenizer
            self.cls_token = CLSToken(feature_tokenizer.d_token)
            self.transformer = transformer

        def optimization_param_groups(self):
            no_wd_names = ['feature_tokenizer', 'normalization', '.bias']
            assert isinstance(getattr(self, no_wd_names[0], None), FeatureTokenizer)
            assert (sum(1 for name, _ in self.named_modules() if name.endswith('_normalization'))
                    == len(self.transformer.blocks) * 2 - int('attention_normalization' not in self.transformer.blocks[0]))

            def needs_wd(name):
                return all(x not in name for x in no_wd_names)

            return [
                {'params': [v for k, v in self.named_parameters() if needs_wd(k)]},
                {'params': [v for k, v in self.named_parameters() if not needs_wd(k)], 'weight_decay': 0.0},
            ]

        def forward(self, x_num, x_cat):
            x = self.feature_tokenizer(x_num, x_cat)
            x = self.cls_token(x)
            x = self.transformer(x)
            return x

    return FTTransformer(FeatureTokenizer(n_num_features, list(cat_cardinalities), d_token),
                         Transformer(d_token=d_token, n_blocks=n_blocks, attention_n_heads=n_heads,
                                     ffn_d_hidden=ffn_d_hidden, d_out=d_out))


def ft_objective(F_, th):
    def loss(model, x_num, x_cat, y):
        return F_.mse_loss(model(x_num, x_cat).squeeze(1), y)
    return loss


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_ft_transformer_tokenizers_cls_token_reglu_and_adamw_param_groups(mode):
    ours, theirs = pair(ft_transformer)
    kw = dict(lr=1e-2, weight_decay=0.1)
    opt, topt = optim.AdamW(ours.optimization_param_groups(), **kw), torch.optim.AdamW(theirs.optimization_param_groups(), **kw)
    assert [len(g["params"]) for g in opt.param_groups] == [len(g["params"]) for g in topt.param_groups]
    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((6, 3)), np.stack([rng.integers(0, 3, 6), rng.integers(0, 4, 6)], 1),
                rng.standard_normal(6)) for _ in range(3)]
    # the keys' bias adds q . b_k to all of a query's logits alike: softmax removes it, its gradient is zero
    train(ours, theirs, opt, topt, ft_objective, batches, mode, roundoff="W_k.bias")



# -- 4. DCN-V2 (DeepCTR-Torch's layers/interaction.py CrossNet in both parameterizations and CrossNetMix) ----------

def dcn(lib, F_, th, kind="matrix", field_dims=FIELD_DIMS, embed_dim=2, n_dense=2, layer_num=2, low_rank=2,
        num_experts=3):
    class CrossNet(lib.Module):
        def __init__(self, in_features, layer_num=2, parameterization='vector', device='cpu'):
            super().__init__()
            self.layer_num = layer_num
            self.parameterization = parameterization
            if self.parameterization == 'vector':
                # weight in DCN.  (in_features, 1)
                self.kernels = lib.Parameter(th.Tensor(self.layer_num, in_features, 1))
            elif self.parameterization == 'matrix':
                # weight matrix in DCN-M.  (in_features, in_features)
                self.kernels = lib.Parameter(th.Tensor(self.layer_num, in_features, in_features))
            else:  # error
                raise ValueError("parameterization should be 'vector' or 'matrix'")

            self.bias = lib.Parameter(th.Tensor(self.layer_num, in_features, 1))

            for i in range(self.kernels.shape[0]):
                lib.init.xavier_normal_(self.kernels[i])
            for i in range(self.bias.shape[0]):
                lib.init.zeros_(self.bias[i])

            self.to(device)

        def forward(self, inputs):
            x_0 = inputs.unsqueeze(2)
            x_l = x_0
            for i in range(self.layer_num):
                if self.parameterization == 'vector':
                    xl_w = th.tensordot(x_l, self.kernels[i], dims=([1], [0]))
                    dot_ = th.matmul(x_0, xl_w)
                    x_l = dot_ + self.bias[i] + x_l
                elif self.parameterization == 'matrix':
                    xl_w = th.matmul(self.kernels[i], x_l)  # W * xi  (bs, in_features, 1)
                    dot_ = xl_w + self.bias[i]  # W * xi + b
                    x_l = x_0 * dot_ + x_l  # x0 · (W * xi + b) +xl  Hadamard-product
                else:  # error
                    raise ValueError("parameterization should be 'vector' or 'matrix'")
            x_l = th.squeeze(x_l, dim=2)
            return x_l

    class CrossNetMix(lib.Module):
        def __init__(self, in_features, low_rank=32, num_experts=4, layer_num=2, device='cpu'):
            super().__init__()
            self.layer_num = layer_num
            self.num_experts = num_experts

            # U: (in_features, low_rank)
            self.U_list = lib.Parameter(th.Tensor(self.layer_num, num_experts, in_features, low_rank))
            # V: (in_features, low_rank)
            self.V_list = lib.Parameter(th.Tensor(self.layer_num, num_experts, in_features, low_rank))
            # C: (low_rank, low_rank)
            self.C_list = lib.Parameter(th.Tensor(self.layer_num, num_experts, low_rank, low_rank))
            self.gating = lib.ModuleList([lib.Linear(in_features, 1, bias=False) for i in range(self.num_experts)])

            self.bias = lib.Parameter(th.Tensor(self.layer_num, in_features, 1))

            init_para_list = [self.U_list, self.V_list, self.C_list]
            for para in init_para_list:
                for i in range(self.layer_num):
                    lib.init.xavier_normal_(para[i])

            for i in range(len(self.bias)):
                lib.init.zeros_(self.bias[i])

            self.to(device)

        def forward(self, inputs):
            x_0 = inputs.unsqueeze(2)  # (bs, in_features, 1)
            x_l = x_0
            for i in range(self.layer_num):
                output_of_experts = []
                gating_score_of_experts = []
                for expert_id in range(self.num_experts):
                    # (1) G(x_l)
                    gating_score_of_experts.append(self.gating[expert_id](x_l.squeeze(2)))

                    # (2) E(x_l): project the input x_l to R^r
                    v_x = th.matmul(self.V_list[i][expert_id].t(), x_l)  # (bs, low_rank, 1)

                    # nonlinear activation in low rank space
                    v_x = th.tanh(v_x)
                    v_x = th.matmul(self.C_list[i][expert_id], v_x)
                    v_x = th.tanh(v_x)

                    # project back to R^d
                    uv_x = th.matmul(self.U_list[i][expert_id], v_x)  # (bs, in_features, 1)

                    dot_ = uv_x + self.bias[i]
                    dot_ = x_0 * dot_  # Hadamard-product

                    output_of_experts.append(dot_.squeeze(2))

                # (3) mixture of low-rank experts
                output_of_experts = th.stack(output_of_experts, 2)  # (bs, in_features, num_experts)
                gating_score_of_experts = th.stack(gating_score_of_experts, 1)  # (bs, num_experts, 1)
                moe_out = th.matmul(output_of_experts, gating_score_of_experts.softmax(1))
                x_l = moe_out + x_l  # (bs, in_features, 1)

            x_l = x_l.squeeze()  # (bs, in_features)
            return x_l

    class DCN(lib.Module):
        """DeepCTR-Torch's DCN / DCNMix: sparse embeddings and dense values concatenated, a cross network beside
        a DNN (stacked), one logit."""
        def __init__(self):
            super().__init__()
            self.embedding = lib.Embedding(sum(field_dims), embed_dim)
            self.register_buffer("offsets", th.tensor(np.array((0, *np.cumsum(field_dims)[:-1]))), persistent=False)
            d = len(field_dims) * embed_dim + n_dense
            self.crossnet = (CrossNetMix(d, low_rank, num_experts, layer_num) if kind == "mix"
                             else CrossNet(d, layer_num, kind))
            self.dnn = lib.Sequential(lib.Linear(d, 6), lib.ReLU(), lib.Linear(6, 4), lib.ReLU())
            self.dnn_linear = lib.Linear(d + 4, 1, bias=False)

        def forward(self, x_sparse, x_dense):
            emb = self.embedding(x_sparse + self.offsets.unsqueeze(0))
            dnn_input = th.cat([th.flatten(emb, start_dim=1), x_dense], dim=-1)
            deep_out = self.dnn(dnn_input)
            cross_out = self.crossnet(dnn_input)
            stack_out = th.cat((cross_out, deep_out), dim=-1)
            return self.dnn_linear(stack_out)
    return DCN()


def dcn_objective(F_, th):
    def loss(model, x_sparse, x_dense, y):
        return F_.binary_cross_entropy_with_logits(model(x_sparse, x_dense).squeeze(-1), y)
    return loss


@pytest.mark.parametrize("kind,mode", [("vector", "numpy"), ("matrix", "cpu"), ("mix", "numpy")])
def test_dcn_v2_cross_layers_and_low_rank_mixture_of_experts(kind, mode):
    ours, theirs = pair(lambda lib, F_, th: dcn(lib, F_, th, kind))
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    rng = np.random.default_rng(4)
    batches = [(xs, rng.standard_normal((8, 2)), y[:, 0]) for xs, y in ctr_batches(rng)]
    train(ours, theirs, opt, topt, dcn_objective, batches, mode)


# -- regressions: what the programs above found -------------------------------------------------------------------

def test_python_branching_on_the_elements_of_a_model_s_mask_buffer_while_tracing():
    """pytorch-tabnet's EmbeddingGenerator branches on each element of a boolean mask it holds (`for i,
    is_continuous in enumerate(self.continuous_idx): if is_continuous:`): `self.mask.tolist()` was read while
    tracing, but `bool(self.mask[i])` raised (the element is a traced value). A value computed from a model's
    tensors alone is now read as they are, baked in and guarded: changing the mask traces again."""
    class Picker(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mask", av.tensor([True, False, True]))
            self.register_buffer("scale", av.tensor([2.0, 3.0, 4.0]))

        def forward(self, x):
            cols = [x[:, i] * self.scale[i] if keep else -x[:, i] for i, keep in enumerate(self.mask)]
            return av.stack(cols, 1) if float(self.scale[0] + 1) > 2 else x

    m = Picker()
    x = np.arange(6.0).reshape(2, 3)
    run = av.compile(lambda m, x: m(x), backend="numpy")
    with strict():
        assert rel(run(m, av.tensor(x)), x * [2, -1, 4]) == 0
        assert rel(av.grad(lambda m, x: m(x).sum(), argnums=1)(m, av.tensor(x)), np.tile([2.0, -1.0, 4.0], (2, 1))) == 0
        m.mask[1] = True
        m.scale.fill_(-1.0)
        assert rel(run(m, av.tensor(x)), x) == 0
        m.scale.fill_(5.0)
        assert rel(run(m, av.tensor(x)), 5 * x) == 0
    with pytest.raises(av.TracerError, match="control flow"):  # an argument's values stay unreadable
        av.compile(lambda x: x if bool(x[0, 0] > 0) else -x)(av.tensor(x))


def test_autograd_function_writing_its_input_in_place_writes_the_caller_s_tensor():
    """pytorch-tabnet's SparsemaxFunction.forward shifts its input in place (`input -= max_val`), which in torch
    writes the caller's tensor; Avalon refused the Function inside a trace ("forward ... updates state"). The
    write now reaches the caller's tensor after the op, which keeps the gradient path of the value it held, as
    torch's does without mark_dirty."""
    def shifted(th):
        class Shift(th.autograd.Function):
            @staticmethod
            def forward(ctx, input):
                input -= input.max(dim=-1, keepdim=True)[0]
                return input.exp()

            @staticmethod
            def backward(ctx, grad_output):
                return grad_output * 2

        def f(x):
            y = x * 3
            z = Shift.apply(y)
            return z.sum() + (y ** 2).sum()  # y: the shifted values, y's gradient path
        return f
    x = np.random.default_rng(3).standard_normal((2, 4))
    tx = T(x).requires_grad_()
    tl = shifted(torch)(tx)
    tl.backward()
    for run in (av.value_and_grad(shifted(av)), av.compile(av.value_and_grad(shifted(av)), backend="cpu")):
        with strict():
            loss, g = run(av.tensor(x))
        assert rel(loss, tl) < 1e-14 and rel(g, tx.grad) < 1e-14


def test_a_numpy_array_a_model_holds_is_literal_data_of_its_traces():
    """pytorch-fm's FeaturesEmbedding keeps its field offsets as a numpy array attribute and adds
    `x.new_tensor(self.offsets)`: the compile warned that it captured an array and traced again on every
    call. A model's numpy array is now part of the signature by value (as a Python number is): kept as literal
    data, traced once, and traced again when it changes (reassigned or written in place)."""
    class Offsets(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(6, 2)
            self.offsets = np.array((0, *np.cumsum((2, 3))[:-1]), dtype=np.int64)

        def forward(self, x):
            return self.emb(x + x.new_tensor(self.offsets).unsqueeze(0))

    m = Offsets()
    x = np.array([[1, 2], [0, 0]])
    w = m.emb.weight.numpy()
    run = av.compile(lambda m, x: m(x).sum(-1), backend="numpy")
    with strict():
        for _ in range(2):
            assert rel(run(m, av.tensor(x)), w[x + [0, 2]].sum(-1)) == 0
        assert run._misses == 1
        m.offsets[1] = 3
        assert rel(run(m, av.tensor(x)), w[x + [0, 3]].sum(-1)) == 0
        m.offsets = np.array([1, 1])
        assert rel(run(m, av.tensor(x)), w[x + 1].sum(-1)) == 0
        assert run._misses == 3

"""Round 9n of port QA: programs from popular repositories, written once over `lib` (torch.nn or avalon.nn), `F_`
and `th` (torch or avalon), trained a few steps from torch's weights on random float32 data and compared with torch
after every step (losses, gradients, parameters), the first step eagerly and the rest compiled.

Programs: ServiceNow/N-BEATS (the generic model and the interpretable one, whose stacks repeat one block object in a
ModuleList so its weights are shared, TrendBasis/SeasonalityBasis templates held as `nn.Parameter(...,
requires_grad=False)`, `einsum('bp,pt->bt')`, `flip` of the input and mask; its sMAPE, MAPE and MASE losses through
divide_no_nan's masked writes `result[result != result] = .0` over zero-padded, zero-masked windows; Adam,
clip_grad_norm_ and the trainer's lr halving written into param_groups); williamleif/graphsage-simple (MeanAggregator's
Python-side `random.sample` of neighbor sets, the 0/1 mask written by `mask[row_indices, column_indices] = 1`, `mask.div`
and `mask.mm`, the second encoder's features a lambda over the first, `Variable`, `init.xavier_uniform`, a frozen
`nn.Embedding` whose weight is replaced by a Parameter, SGD over `filter(lambda p: p.requires_grad, ...)`) and PyG's
ogbn-products GraphSAGE over NeighborSampler's bipartite `adjs` (sampled in numpy: sources appended after the targets,
`x[:size[1]]`), SAGEConv's mean of `index_select`-ed messages by `scatter_reduce_(..., "mean", include_self=False)` or
by `index_add_` over a count clamped at one, log_softmax and nll_loss with Adam; vsitzmann/siren (SineLayer's uniform_
init under no_grad, `coords.clone().detach().requires_grad_(True)`, `get_mgrid` by meshgrid) fitting an image's
gradient (the Poisson example) or its Laplacian (diff_operators' gradient and divergence: second derivatives in the
loss, third-order ones in the step); juho-lee/set_transformer (MAB's heads by `cat(Q.split(dim_split, 2), 0)`, bmm and
split back, `getattr(self, 'ln0', None)`, ISAB's inducing points and PMA's seeds by `repeat`, SAB; the DeepSet baseline)
trained for amortized clustering by the mixture-of-Gaussians likelihood (softmax, softplus, logsumexp), with run.py's lr
drop by `param_groups[0]['lr'] *= 0.1` and a new trace per set size, and the argmax labels at test time.

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`, clip_grad_norm_ on the
gradients); SIREN's `torch.autograd.grad(y, x, ones_like(y), create_graph=True)` w.r.t. the coords the forward marked
is `av.grad` of a function of the coords (`lambda x: model.net(x).sum()`, one per component for the divergence)
inside the loss. Sizes and learning rates are smaller (or larger) than the originals; PyG's dropout is 0 (the random
streams differ); graphsage-simple runs eagerly, as its sampling is Python that a trace would bake in.

Deliberate differences met: the eager SIREN summary's `av.grad` closes over the network, which is captured data of
that call (it warns, and would trace each call); graphsage-simple's `random.sample` of a set is an error on Python 3.11
on both sides (sorted first, as its forks do). Some gradients are zero in exact arithmetic (the Set Transformer's key
biases and the bias of the mixture weights' logit, which softmax's shift invariance removes): roundoff on both sides,
which Adam turns into steps of ~lr, so those entries are compared at lr's scale.

Bug found (regression at the end): `av.grad` (torch.func.grad) called under `av.no_grad()` traced the function with
gradients off, so every gradient was zero (with a warning that the loss depends on nothing), where torch.func's
transforms do not look past a no_grad around them (SIREN's summary under no_grad). GradProgram.build now traces with
gradients on (avalon/compiler/gradients.py), and a gradient program inlined into an enclosing trace under no_grad has
its results stopped there (avalon/compiler/execute.py), so the enclosing gradient does not flow through them.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

F32 = torch.float32


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def same_grads(grads, model, tol, floor=1e-4):
    """Avalon's gradient dict against torch's `.grad` of each parameter that has one, relative to the largest element
    or `floor`."""
    want = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert sorted(grads) == sorted(want)
    for k, g in want.items():
        a, b = grads[k].numpy().astype(np.float64), g.numpy().astype(np.float64)
        assert np.abs(a - b).max() / max(np.abs(b).max(), floor) < tol, k


# -- 1. N-BEATS (ServiceNow/N-BEATS models/nbeats.py, common/torch/losses.py, experiments/trainer.py) ------------

def nbeats_model(lib, F_, th, kind):
    t = th  # `import torch as t` there

    class NBeatsBlock(lib.Module):
        """
        N-BEATS block which takes a basis function as an argument.
        """
        def __init__(self, input_size, theta_size: int, basis_function, layers: int, layer_size: int):
            super().__init__()
            self.layers = t.nn.ModuleList([t.nn.Linear(in_features=input_size, out_features=layer_size)] +
                                          [t.nn.Linear(in_features=layer_size, out_features=layer_size)
                                           for _ in range(layers - 1)])
            self.basis_parameters = t.nn.Linear(in_features=layer_size, out_features=theta_size)
            self.basis_function = basis_function

        def forward(self, x):
            block_input = x
            for layer in self.layers:
                block_input = t.relu(layer(block_input))
            basis_parameters = self.basis_parameters(block_input)
            return self.basis_function(basis_parameters)

    class NBeats(lib.Module):
        """
        N-Beats Model.
        """
        def __init__(self, blocks):
            super().__init__()
            self.blocks = blocks

        def forward(self, x, input_mask):
            residuals = x.flip(dims=(1,))
            input_mask = input_mask.flip(dims=(1,))
            forecast = x[:, -1:]
            for i, block in enumerate(self.blocks):  # noqa: B007
                backcast, block_forecast = block(residuals)
                residuals = (residuals - backcast) * input_mask
                forecast = forecast + block_forecast
            return forecast

    class GenericBasis(lib.Module):
        """
        Generic basis function.
        """
        def __init__(self, backcast_size: int, forecast_size: int):
            super().__init__()
            self.backcast_size = backcast_size
            self.forecast_size = forecast_size

        def forward(self, theta):
            return theta[:, :self.backcast_size], theta[:, -self.forecast_size:]

    class TrendBasis(lib.Module):
        """
        Polynomial function to model trends.
        """
        def __init__(self, degree_of_polynomial: int, backcast_size: int, forecast_size: int):
            super().__init__()
            self.polynomial_size = degree_of_polynomial + 1  # degree of polynomial with constant term
            self.backcast_time = t.nn.Parameter(
                t.tensor(np.concatenate([np.power(np.arange(backcast_size, dtype=np.float64) / backcast_size, i)[None, :]
                                         for i in range(self.polynomial_size)]), dtype=t.float32),
                requires_grad=False)
            self.forecast_time = t.nn.Parameter(
                t.tensor(np.concatenate([np.power(np.arange(forecast_size, dtype=np.float64) / forecast_size, i)[None, :]
                                         for i in range(self.polynomial_size)]), dtype=t.float32), requires_grad=False)

        def forward(self, theta):
            backcast = t.einsum('bp,pt->bt', theta[:, self.polynomial_size:], self.backcast_time)
            forecast = t.einsum('bp,pt->bt', theta[:, :self.polynomial_size], self.forecast_time)
            return backcast, forecast

    class SeasonalityBasis(lib.Module):
        """
        Harmonic functions to model seasonality.
        """
        def __init__(self, harmonics: int, backcast_size: int, forecast_size: int):
            super().__init__()
            self.frequency = np.append(np.zeros(1, dtype=np.float32),
                                       np.arange(harmonics, harmonics / 2 * forecast_size,
                                                 dtype=np.float32) / harmonics)[None, :]
            backcast_grid = -2 * np.pi * (
                    np.arange(backcast_size, dtype=np.float32)[:, None] / forecast_size) * self.frequency
            forecast_grid = 2 * np.pi * (
                    np.arange(forecast_size, dtype=np.float32)[:, None] / forecast_size) * self.frequency
            self.backcast_cos_template = t.nn.Parameter(t.tensor(np.transpose(np.cos(backcast_grid)), dtype=t.float32),
                                                        requires_grad=False)
            self.backcast_sin_template = t.nn.Parameter(t.tensor(np.transpose(np.sin(backcast_grid)), dtype=t.float32),
                                                        requires_grad=False)
            self.forecast_cos_template = t.nn.Parameter(t.tensor(np.transpose(np.cos(forecast_grid)), dtype=t.float32),
                                                        requires_grad=False)
            self.forecast_sin_template = t.nn.Parameter(t.tensor(np.transpose(np.sin(forecast_grid)), dtype=t.float32),
                                                        requires_grad=False)

        def forward(self, theta):
            params_per_harmonic = theta.shape[1] // 4
            backcast_harmonics_cos = t.einsum('bp,pt->bt', theta[:, 2 * params_per_harmonic:3 * params_per_harmonic],
                                              self.backcast_cos_template)
            backcast_harmonics_sin = t.einsum('bp,pt->bt', theta[:, 3 * params_per_harmonic:],
                                              self.backcast_sin_template)
            backcast = backcast_harmonics_sin + backcast_harmonics_cos
            forecast_harmonics_cos = t.einsum('bp,pt->bt',
                                              theta[:, :params_per_harmonic], self.forecast_cos_template)
            forecast_harmonics_sin = t.einsum('bp,pt->bt', theta[:, params_per_harmonic:2 * params_per_harmonic],
                                              self.forecast_sin_template)
            forecast = forecast_harmonics_sin + forecast_harmonics_cos
            return backcast, forecast

    def generic(input_size: int, output_size: int, stacks: int, layers: int, layer_size: int):
        return NBeats(t.nn.ModuleList([NBeatsBlock(input_size=input_size,
                                                   theta_size=input_size + output_size,
                                                   basis_function=GenericBasis(backcast_size=input_size,
                                                                               forecast_size=output_size),
                                                   layers=layers,
                                                   layer_size=layer_size)
                                       for _ in range(stacks)]))

    def interpretable(input_size: int, output_size: int, trend_blocks: int, trend_layers: int, trend_layer_size: int,
                      degree_of_polynomial: int, seasonality_blocks: int, seasonality_layers: int,
                      seasonality_layer_size: int, num_of_harmonics: int):
        trend_block = NBeatsBlock(input_size=input_size,
                                  theta_size=2 * (degree_of_polynomial + 1),
                                  basis_function=TrendBasis(degree_of_polynomial=degree_of_polynomial,
                                                            backcast_size=input_size,
                                                            forecast_size=output_size),
                                  layers=trend_layers,
                                  layer_size=trend_layer_size)
        seasonality_block = NBeatsBlock(input_size=input_size,
                                        theta_size=4 * int(
                                            np.ceil(num_of_harmonics / 2 * output_size) - (num_of_harmonics - 1)),
                                        basis_function=SeasonalityBasis(harmonics=num_of_harmonics,
                                                                        backcast_size=input_size,
                                                                        forecast_size=output_size),
                                        layers=seasonality_layers,
                                        layer_size=seasonality_layer_size)
        # the same block object repeated: the blocks of a stack share their weights
        return NBeats(t.nn.ModuleList(
            [trend_block for _ in range(trend_blocks)] + [seasonality_block for _ in range(seasonality_blocks)]))

    if kind == "generic":  # 30 stacks, 4 layers of 512 there
        return generic(input_size=NB_INPUT, output_size=NB_HORIZON, stacks=3, layers=2, layer_size=16)
    return interpretable(input_size=NB_INPUT, output_size=NB_HORIZON, trend_blocks=2, trend_layers=2,
                         trend_layer_size=16, degree_of_polynomial=3, seasonality_blocks=2, seasonality_layers=2,
                         seasonality_layer_size=16, num_of_harmonics=1)


NB_HORIZON, NB_INPUT, NB_FREQ = 4, 12, 2  # lookback 3 horizons


def nbeats_losses(t):
    def divide_no_nan(a, b):
        """
        a/b where the resulted NaN or Inf are replaced by 0.
        """
        result = a / b
        result[result != result] = .0
        result[result == np.inf] = .0
        return result

    def mape_loss(forecast, target, mask):
        weights = divide_no_nan(mask, target)
        return t.mean(t.abs((forecast - target) * weights))

    def smape_2_loss(forecast, target, mask):
        return 200 * t.mean(divide_no_nan(t.abs(forecast - target),
                                          t.abs(forecast.data) + t.abs(target.data)) * mask)

    def mase_loss(insample, freq, forecast, target, mask):
        masep = t.mean(t.abs(insample[:, freq:] - insample[:, :-freq]), dim=1)
        masked_masep_inv = divide_no_nan(mask, masep[:, None])
        return t.mean(t.abs(target - forecast) * masked_masep_inv)

    def loss_fn(loss_name):  # trainer.py's __loss_fn
        def loss(x, freq, forecast, target, target_mask):
            if loss_name == 'MAPE':
                return mape_loss(forecast, target, target_mask)
            elif loss_name == 'MASE':
                return mase_loss(x, freq, forecast, target, target_mask)
            elif loss_name == 'SMAPE':
                return smape_2_loss(forecast, target, target_mask)
            else:
                raise Exception(f'Unknown loss function: {loss_name}')
        return loss
    return loss_fn, divide_no_nan


def nbeats_batches(rng, batch_size=8, window_sampling_limit=NB_HORIZON - 1):
    """TimeseriesSampler's batches: a window cut at a random point of each series, the history padded with zeros
    under a zero mask where the series is short, and a target masked past the series' end (zeros there too)."""
    while True:
        insample = np.zeros((batch_size, NB_INPUT), np.float32)
        insample_mask = np.zeros((batch_size, NB_INPUT), np.float32)
        outsample = np.zeros((batch_size, NB_HORIZON), np.float32)
        outsample_mask = np.zeros((batch_size, NB_HORIZON), np.float32)
        for i in range(batch_size):
            ts = (10 + np.cumsum(rng.uniform(0.2, 1.0, int(rng.integers(6, 20))))).astype(np.float32)
            cut_point = int(rng.integers(low=max(1, len(ts) - window_sampling_limit), high=len(ts), size=1)[0])
            insample_window = ts[max(0, cut_point - NB_INPUT):cut_point]
            insample[i, -len(insample_window):] = insample_window
            insample_mask[i, -len(insample_window):] = 1.0
            outsample_window = ts[cut_point:min(len(ts), cut_point + NB_HORIZON)]
            outsample[i, :len(outsample_window)] = outsample_window
            outsample_mask[i, :len(outsample_window)] = 1.0
        yield insample, insample_mask, outsample, outsample_mask


@pytest.mark.parametrize("kind,loss_name", [("generic", "SMAPE"), ("generic", "MAPE"), ("interpretable", "MASE")])
def test_nbeats_shared_stack_blocks_basis_templates_divide_no_nan_losses_clipping_and_lr_decay(kind, loss_name):
    ours, theirs = pair(lambda lib, F_, th: nbeats_model(lib, F_, th, kind), dtype=F32)
    learning_rate, iterations = 0.01, 6  # 0.001 there
    tloss_fn, tdivide = nbeats_losses(torch)
    loss_fn, divide = nbeats_losses(av)
    toptimizer = torch.optim.Adam(theirs.parameters(), lr=learning_rate)
    optimizer = av.optim.Adam(ours.parameters(), lr=learning_rate)
    training_loss_fn, ttraining_loss_fn = loss_fn(loss_name), tloss_fn(loss_name)
    lr_decay_step = iterations // 3

    def objective(model, x, x_mask, y, y_mask):
        forecast = model(x, x_mask)
        return training_loss_fn(x, NB_FREQ, forecast, y, y_mask)

    def train_step(model, optimizer, x, x_mask, y, y_mask):
        model.train()
        training_loss, grads = av.value_and_grad(objective)(model, x, x_mask, y, y_mask)
        av.nn.utils.clip_grad_norm_(grads, 1.0)
        optimizer.step(grads)
        return training_loss, grads
    run = compiled(train_step, "numpy")

    training_set = nbeats_batches(np.random.default_rng(0))
    for i in range(iterations):
        x, x_mask, y, y_mask = next(training_set)
        assert (x_mask == 0).any() and (y_mask == 0).any()
        theirs.train()
        toptimizer.zero_grad()
        forecast = theirs(T(x), T(x_mask))
        training_loss = ttraining_loss_fn(T(x), NB_FREQ, forecast, T(y), T(y_mask))
        assert not np.isnan(float(training_loss.detach()))
        training_loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        toptimizer.step()
        for param_group in toptimizer.param_groups:
            param_group["lr"] = learning_rate * 0.5 ** (i // lr_decay_step)
        with strict():
            loss, grads = (run if i else train_step)(ours, optimizer, *map(av.tensor, (x, x_mask, y, y_mask)))
        for param_group in optimizer.param_groups:
            param_group["lr"] = learning_rate * 0.5 ** (i // lr_decay_step)
        assert rel(loss, training_loss) < 1e-5, i
        same_grads(grads, theirs, 1e-4)
        same_weights(ours, theirs, 1e-4)
    assert run.cache_info().misses == 1
    # the shared blocks: one set of weights per stack, listed twice in the state dict as in torch
    assert len(list(ours.parameters())) == len(list(theirs.parameters()))
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    # divide_no_nan's masked writes of nan and inf, eagerly and compiled
    a, b = np.array([0.0, 1.0, 2.0, -1.0], np.float32), np.array([0.0, 0.0, 4.0, 0.5], np.float32)
    want = tdivide(T(a), T(b)).numpy()
    assert np.array_equal(divide(av.tensor(a), av.tensor(b)).numpy(), want)
    assert np.array_equal(av.compile(divide, backend="numpy")(av.tensor(a), av.tensor(b)).numpy(), want)


# -- 2. GraphSAGE: williamleif/graphsage-simple's Python-side neighbor sampling, and PyG's ogbn-products example's
#       sampled mini-batches (NeighborSampler's adjs, SAGEConv's mean of index_select-ed messages) --------------------

N_NODES, N_FEAT, N_CLASSES_G = 40, 10, 3  # Cora's 2708, 1433 and 7


def graph_data(seed=0):
    """A random graph (adjacency sets with no isolated node), node features and labels, as load_cora returns."""
    rng = np.random.default_rng(seed)
    feat_data = rng.standard_normal((N_NODES, N_FEAT)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES_G, (N_NODES, 1)).astype(np.int64)
    adj_lists = {i: set() for i in range(N_NODES)}
    for _ in range(8 * N_NODES):  # a mean degree over num_sample=10: the aggregators sample
        a, b = (int(v) for v in rng.integers(0, N_NODES, 2))
        if a != b:
            adj_lists[a].add(b)
            adj_lists[b].add(a)
    for i in range(N_NODES):
        if not adj_lists[i]:
            adj_lists[i].add((i + 1) % N_NODES)
            adj_lists[(i + 1) % N_NODES].add(i)
    return feat_data, labels, adj_lists


def graphsage_simple(lib, F_, th):
    nn = lib  # noqa: F811  (import torch.nn as nn)
    init = lib.init
    Variable = th.autograd.Variable  # noqa: N806
    feat_data, labels, adj_lists = graph_data()

    class MeanAggregator(nn.Module):
        """
        Aggregates a node's embeddings using mean of neighbors' embeddings
        """
        def __init__(self, features, cuda=False, gcn=False):
            super(MeanAggregator, self).__init__()  # noqa: UP008
            self.features = features
            self.cuda = cuda
            self.gcn = gcn

        def forward(self, nodes, to_neighs, num_sample=10):
            # Local pointers to functions (speed hack)
            _set = set
            if num_sample is not None:
                _sample = random.sample
                # random.sample of a set is an error since Python 3.11: the maintained forks sort it first
                samp_neighs = [_set(_sample(sorted(to_neigh), num_sample,)) if len(to_neigh) >= num_sample
                               else to_neigh for to_neigh in to_neighs]
            else:
                samp_neighs = to_neighs

            if self.gcn:
                samp_neighs = [samp_neigh | set([nodes[i]]) for i, samp_neigh in enumerate(samp_neighs)]
            unique_nodes_list = list(set.union(*samp_neighs))
            unique_nodes = {n: i for i, n in enumerate(unique_nodes_list)}
            mask = Variable(th.zeros(len(samp_neighs), len(unique_nodes)))
            column_indices = [unique_nodes[n] for samp_neigh in samp_neighs for n in samp_neigh]
            row_indices = [i for i in range(len(samp_neighs)) for j in range(len(samp_neighs[i]))]
            mask[row_indices, column_indices] = 1
            if self.cuda:
                mask = mask.cuda()
            num_neigh = mask.sum(1, keepdim=True)
            mask = mask.div(num_neigh)
            if self.cuda:
                embed_matrix = self.features(th.LongTensor(unique_nodes_list).cuda())
            else:
                embed_matrix = self.features(th.LongTensor(unique_nodes_list))
            to_feats = mask.mm(embed_matrix)
            return to_feats

    class Encoder(nn.Module):
        """
        Encodes a node's using 'convolutional' GraphSage approach
        """
        def __init__(self, features, feature_dim, embed_dim, adj_lists, aggregator, num_sample=10,
                     base_model=None, gcn=False, cuda=False, feature_transform=False):
            super(Encoder, self).__init__()  # noqa: UP008
            self.features = features
            self.feat_dim = feature_dim
            self.adj_lists = adj_lists
            self.aggregator = aggregator
            self.num_sample = num_sample
            if base_model is not None:
                self.base_model = base_model
            self.gcn = gcn
            self.embed_dim = embed_dim
            self.cuda = cuda
            self.aggregator.cuda = cuda
            self.weight = nn.Parameter(
                th.FloatTensor(embed_dim, self.feat_dim if self.gcn else 2 * self.feat_dim))
            init.xavier_uniform(self.weight)

        def forward(self, nodes):
            """
            Generates embeddings for a batch of nodes.
            nodes     -- list of nodes
            """
            neigh_feats = self.aggregator.forward(nodes, [self.adj_lists[int(node)] for node in nodes],
                                                  self.num_sample)
            if not self.gcn:
                if self.cuda:
                    self_feats = self.features(th.LongTensor(nodes).cuda())
                else:
                    self_feats = self.features(th.LongTensor(nodes))
                combined = th.cat([self_feats, neigh_feats], dim=1)
            else:
                combined = neigh_feats
            combined = F_.relu(self.weight.mm(combined.t()))
            return combined

    class SupervisedGraphSage(nn.Module):
        def __init__(self, num_classes, enc):
            super(SupervisedGraphSage, self).__init__()  # noqa: UP008
            self.enc = enc
            self.xent = nn.CrossEntropyLoss()
            self.weight = nn.Parameter(th.FloatTensor(num_classes, enc.embed_dim))
            init.xavier_uniform(self.weight)

        def forward(self, nodes):
            embeds = self.enc(nodes)
            scores = self.weight.mm(embeds)
            return scores.t()

        def loss(self, nodes, labels):
            scores = self.forward(nodes)
            return self.xent(scores, labels.squeeze())

    # run_cora()
    features = nn.Embedding(N_NODES, N_FEAT)
    features.weight = nn.Parameter(th.FloatTensor(feat_data), requires_grad=False)
    agg1 = MeanAggregator(features, cuda=True)
    enc1 = Encoder(features, N_FEAT, 8, adj_lists, agg1, gcn=True, cuda=False)
    agg2 = MeanAggregator(lambda nodes: enc1(nodes).t(), cuda=False)
    enc2 = Encoder(lambda nodes: enc1(nodes).t(), enc1.embed_dim, 8, adj_lists, agg2,
                   base_model=enc1, gcn=True, cuda=False)
    enc1.num_samples = 5
    enc2.num_samples = 5
    graphsage = SupervisedGraphSage(N_CLASSES_G, enc2)
    return graphsage, labels


def test_graphsage_simple_python_neighbor_sampling_mask_mm_mean_aggregator_and_frozen_features():
    torch.manual_seed(0)
    theirs, labels = graphsage_simple(torch.nn, TF, torch)
    ours, _ = graphsage_simple(nn, F, av)
    av.nn.load_state_dict(ours, theirs.state_dict())
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    toptimizer = torch.optim.SGD(filter(lambda p: p.requires_grad, theirs.parameters()), lr=0.7)
    optimizer = av.optim.SGD(filter(lambda p: p.requires_grad, ours.parameters()), lr=0.7)
    rand_indices = np.random.default_rng(1).permutation(N_NODES)
    train = list(rand_indices[:30])

    def objective(graphsage, batch_nodes, labels):
        return graphsage.loss(batch_nodes, labels)

    shuffler = random.Random(0)
    for batch in range(5):
        batch_nodes = train[:16]
        shuffler.shuffle(train)
        random.seed(batch)
        toptimizer.zero_grad()
        tloss = theirs.loss(batch_nodes, torch.autograd.Variable(torch.LongTensor(labels[np.array(batch_nodes)])))
        tloss.backward()
        toptimizer.step()
        random.seed(batch)  # the same neighbors on both sides
        assert max(len(adj) for adj in theirs.enc.adj_lists.values()) > 10
        loss, grads = av.value_and_grad(objective)(ours, batch_nodes, av.LongTensor(labels[np.array(batch_nodes)]))
        optimizer.step(grads)
        assert rel(loss, tloss) < 1e-5, batch
        same_grads(grads, theirs, 1e-4)
        same_weights(ours, theirs, 1e-4)
    random.seed(7)
    tval = theirs.forward(train[:10])
    random.seed(7)
    assert rel(ours.forward(train[:10]), tval) < 1e-5


SAGE_DROPOUT = 0.0  # 0.5 there: torch's and Avalon's random streams differ


def pyg_sage(lib, F_, th, aggr):
    nn = lib  # noqa: F811

    class SAGEConv(nn.Module):
        """torch_geometric.nn.SAGEConv(in, out) for a bipartite (x_src, x_dst) pair, its mean aggregation written
        as MessagePassing does it: messages gathered by index_select, reduced onto the targets by a scatter."""
        def __init__(self, in_channels, out_channels, normalize=False, root_weight=True, bias=True):
            super().__init__()
            self.in_channels = in_channels
            self.out_channels = out_channels
            self.normalize = normalize
            self.root_weight = root_weight
            self.lin_l = nn.Linear(in_channels, out_channels, bias=bias)
            if self.root_weight:
                self.lin_r = nn.Linear(in_channels, out_channels, bias=False)

        def forward(self, x, edge_index):
            if isinstance(x, th.Tensor):
                x = (x, x)
            x_src, x_dst = x
            x_j = x_src.index_select(0, edge_index[0])  # message: the source of each edge
            index = edge_index[1]
            if aggr == "scatter_reduce":  # torch_geometric.utils.scatter(..., reduce='mean') on torch >= 1.12
                out = x_j.new_zeros(x_dst.size(0), x_j.size(1))
                out = out.scatter_reduce_(0, index.view(-1, 1).expand_as(x_j), x_j, reduce="mean", include_self=False)
            else:  # torch_scatter's scatter_mean: a sum by index_add_ over a count clamped at one
                out = x_j.new_zeros(x_dst.size(0), x_j.size(1)).index_add_(0, index, x_j)
                count = x_j.new_zeros(x_dst.size(0)).index_add_(0, index, th.ones_like(index, dtype=x_j.dtype))
                out = out / count.clamp(min=1).unsqueeze(-1)
            out = self.lin_l(out)
            if self.root_weight:
                out = out + self.lin_r(x_dst)
            if self.normalize:
                out = F_.normalize(out, p=2., dim=-1)
            return out

    class SAGE(nn.Module):  # examples/ogbn_products_sage.py
        def __init__(self, in_channels, hidden_channels, out_channels, num_layers):
            super(SAGE, self).__init__()  # noqa: UP008
            self.num_layers = num_layers
            self.convs = th.nn.ModuleList()
            self.convs.append(SAGEConv(in_channels, hidden_channels))
            for _ in range(num_layers - 2):
                self.convs.append(SAGEConv(hidden_channels, hidden_channels))
            self.convs.append(SAGEConv(hidden_channels, out_channels))

        def forward(self, x, adjs):
            # `train_loader` computes the k-hop neighborhood of a batch of nodes,
            # and returns, for each layer, a bipartite graph object, holding the
            # bipartite edges `edge_index`, the index `e_id` of the original edges,
            # and the size/shape `size` of the bipartite graph.
            # Target nodes are also included in the source nodes so that one can
            # easily apply skip-connections or add self-loops.
            for i, (edge_index, _, size) in enumerate(adjs):
                x_target = x[:size[1]]  # Target nodes are always placed first.
                x = self.convs[i]((x, x_target), edge_index)
                if i != self.num_layers - 1:
                    x = F_.relu(x)
                    x = F_.dropout(x, p=SAGE_DROPOUT, training=self.training)
            return x.log_softmax(dim=-1)

    return SAGE(N_FEAT, 16, N_CLASSES_G, num_layers=2)


def neighbor_sampler(adj_lists, train_idx, sizes, batch_size, rng):
    """torch_geometric's NeighborSampler in numpy: per batch, for each layer (outermost last), up to `size` neighbors
    of every current node drawn without replacement, new nodes appended after the targets, and the bipartite edges
    (local source, local target) with the shape (sources, targets); adjs are returned innermost-first reversed."""
    order = rng.permutation(train_idx)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        n_id = [int(v) for v in order[start:start + batch_size]]
        adjs = []
        for size in sizes:
            local = {n: i for i, n in enumerate(n_id)}
            new_n_id, rows, cols = list(n_id), [], []
            for j, n in enumerate(n_id):
                neigh = sorted(adj_lists[n])
                picked = neigh if len(neigh) <= size else list(rng.choice(neigh, size, replace=False))
                for m in picked:
                    m = int(m)
                    if m not in local:
                        local[m] = len(new_n_id)
                        new_n_id.append(m)
                    rows.append(local[m])
                    cols.append(j)
            edge_index = np.array([rows, cols], np.int64)
            adjs.append((edge_index, None, (len(new_n_id), len(n_id))))
            n_id = new_n_id
        yield batch_size, np.array(n_id, np.int64), adjs[::-1]


@pytest.mark.parametrize("aggr", ["scatter_reduce", "index_add"])
def test_pyg_sage_sampled_bipartite_adjs_index_select_scatter_mean_and_adam(aggr):
    ours, theirs = pair(lambda lib, F_, th: pyg_sage(lib, F_, th, aggr), dtype=F32)
    feat_data, labels, adj_lists = graph_data(1)
    x, y = feat_data, labels[:, 0]
    optimizer = av.optim.Adam(ours.parameters(), lr=0.01)  # 0.003 there
    toptimizer = torch.optim.Adam(theirs.parameters(), lr=0.01)

    def objective(model, x, n_id, adjs, y, batch_size):
        out = model(x[n_id], adjs)
        return F.nll_loss(out, y[n_id[:batch_size]])

    def train_step(model, optimizer, x, n_id, adjs, y, batch_size):
        loss, grads = av.value_and_grad(objective)(model, x, n_id, adjs, y, batch_size)
        optimizer.step(grads)
        return loss, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(2)
    train_idx = np.arange(0, 20)
    signatures, step = set(), 0
    for _epoch in range(2):
        for batch_size, n_id, adjs in neighbor_sampler(adj_lists, train_idx, [5, 3], 10, rng):
            theirs.train()
            toptimizer.zero_grad()
            tadjs = [(T(ei), e_id, size) for ei, e_id, size in adjs]
            tout = theirs(T(x)[T(n_id)], tadjs)
            tloss = TF.nll_loss(tout, T(y)[T(n_id)[:batch_size]])
            tloss.backward()
            toptimizer.step()
            ours.train()
            oadjs = [(av.tensor(ei), e_id, size) for ei, e_id, size in adjs]
            with strict():
                loss, grads = (run if step else train_step)(ours, optimizer, av.tensor(x), av.tensor(n_id), oadjs,
                                                            av.tensor(y), batch_size)
            if step:
                signatures.add((len(n_id),) + tuple(ei.shape[1] for ei, _, _ in adjs)
                               + tuple(size for _, _, size in adjs))
            assert rel(loss, tloss) < 1e-5, step
            same_grads(grads, theirs, 1e-4)
            same_weights(ours, theirs, 1e-4)
            step += 1
    assert step == 4
    # one trace per sampled shape (the node and edge counts and the sizes Python reads)
    assert run.cache_info().misses == len(signatures)


# -- 3. SIREN (vsitzmann/siren explore_siren.ipynb, diff_operators.py, loss_functions.py): sine layers with their
#       uniform init under no_grad, fitting an image's gradients (Poisson) or its Laplacian through nested gradients

def get_mgrid(th, sidelen, dim=2):
    '''Generates a flattened grid of (x,y,...) coordinates in a range of -1 to 1.
    sidelen: int
    dim: int'''
    tensors = tuple(dim * [th.linspace(-1, 1, steps=sidelen)])
    mgrid = th.stack(th.meshgrid(*tensors, indexing="ij"), dim=-1)
    mgrid = mgrid.reshape(-1, dim)
    return mgrid


def siren(lib, F_, th):
    nn = lib  # noqa: F811

    class SineLayer(nn.Module):
        # See paper sec. 3.2, final paragraph, and supplement Sec. 1.5 for discussion of omega_0.
        def __init__(self, in_features, out_features, bias=True,
                     is_first=False, omega_0=30):
            super().__init__()
            self.omega_0 = omega_0
            self.is_first = is_first
            self.in_features = in_features
            self.linear = nn.Linear(in_features, out_features, bias=bias)
            self.init_weights()

        def init_weights(self):
            with th.no_grad():
                if self.is_first:
                    self.linear.weight.uniform_(-1 / self.in_features,
                                                1 / self.in_features)
                else:
                    self.linear.weight.uniform_(-np.sqrt(6 / self.in_features) / self.omega_0,
                                                np.sqrt(6 / self.in_features) / self.omega_0)

        def forward(self, input):
            return th.sin(self.omega_0 * self.linear(input))

    class Siren(nn.Module):
        def __init__(self, in_features, hidden_features, hidden_layers, out_features, outermost_linear=False,
                     first_omega_0=30, hidden_omega_0=30.):
            super().__init__()
            self.net = []
            self.net.append(SineLayer(in_features, hidden_features,
                                      is_first=True, omega_0=first_omega_0))
            for i in range(hidden_layers):  # noqa: B007
                self.net.append(SineLayer(hidden_features, hidden_features,
                                          is_first=False, omega_0=hidden_omega_0))
            if outermost_linear:
                final_linear = nn.Linear(hidden_features, out_features)
                with th.no_grad():
                    final_linear.weight.uniform_(-np.sqrt(6 / hidden_features) / hidden_omega_0,
                                                 np.sqrt(6 / hidden_features) / hidden_omega_0)
                self.net.append(final_linear)
            else:
                self.net.append(SineLayer(hidden_features, out_features,
                                          is_first=False, omega_0=hidden_omega_0))
            self.net = nn.Sequential(*self.net)

        def forward(self, coords):
            coords = coords.clone().detach().requires_grad_(True)  # allows to take derivative w.r.t. input
            output = self.net(coords)
            return output, coords

    return Siren(in_features=2, out_features=1, hidden_features=16, hidden_layers=2, outermost_linear=True)


def torch_diff_operators():  # diff_operators.py
    def laplace(y, x):
        grad = gradient(y, x)
        return divergence(grad, x)

    def divergence(y, x):
        div = 0.
        for i in range(y.shape[-1]):
            div += torch.autograd.grad(y[..., i], x, torch.ones_like(y[..., i]), create_graph=True)[0][..., i:i+1]
        return div

    def gradient(y, x, grad_outputs=None):
        if grad_outputs is None:
            grad_outputs = torch.ones_like(y)
        grad = torch.autograd.grad(y, [x], grad_outputs=grad_outputs, create_graph=True)[0]
        return grad
    return gradient, laplace


def avalon_diff_operators():
    """The port: torch differentiates the output with respect to the coords the forward marked, Avalon a function
    of the coords (the network), `autograd.grad(y, x, ones)` being the gradient of y's sum."""
    def laplace(f, x):
        return divergence(lambda x: gradient(f, x), x)

    def divergence(f, x):
        div = 0.
        for i in range(x.shape[-1]):
            div += av.grad(lambda x: f(x)[..., i].sum())(x)[..., i:i+1]  # noqa: B023  (called at once)
        return div

    def gradient(f, x):
        return av.grad(lambda x: f(x).sum())(x)
    return gradient, laplace


@pytest.mark.parametrize("target", ["grads", "laplace"])
def test_siren_sine_init_and_poisson_gradient_or_laplacian_losses_by_nested_gradients(target):
    ours, theirs = pair(siren, dtype=F32)
    sidelength = 6  # 128 there
    tmodel_input, model_input = get_mgrid(torch, sidelength, 2)[None], get_mgrid(av, sidelength, 2)[None]
    assert rel(model_input, tmodel_input) == 0
    rng = np.random.default_rng(0)
    img = randn(rng, sidelength, sidelength)
    grads_x, grads_y = np.gradient(img)  # scipy.ndimage.sobel there
    gt = {"grads": np.stack((grads_x, grads_y), axis=-1).reshape(1, -1, 2),
          "laplace": (np.gradient(grads_x, axis=0) + np.gradient(grads_y, axis=1)).reshape(1, -1, 1)}
    tgradient, tlaplace = torch_diff_operators()
    gradient, laplace = avalon_diff_operators()
    optim = av.optim.Adam(lr=1e-3, params=ours.parameters())  # 1e-4 there
    toptim = torch.optim.Adam(lr=1e-3, params=theirs.parameters())

    def objective(model, model_input, gt):
        model_output, coords = model(model_input)
        if target == "grads":  # gradients_mse
            gradients = gradient(model.net, coords)
            return av.mean((gradients - gt).pow(2).sum(-1))
        return ((laplace(model.net, coords) - gt) ** 2).mean()  # loss_functions.image_laplace

    def train_step(model, optim, model_input, gt):
        train_loss, grads = av.value_and_grad(objective)(model, model_input, gt)
        optim.step(grads)
        return train_loss, grads
    run = compiled(train_step, "numpy")

    for step in range(4):
        model_output, coords = theirs(tmodel_input)
        if target == "grads":
            train_loss = torch.mean((tgradient(model_output, coords) - T(gt["grads"])).pow(2).sum(-1))
        else:
            train_loss = ((tlaplace(model_output, coords) - T(gt["laplace"])) ** 2).mean()
        toptim.zero_grad()
        train_loss.backward()
        toptim.step()
        with strict():
            loss, grads = (run if step else train_step)(ours, optim, model_input, av.tensor(gt[target]))
        assert rel(loss, train_loss) < 1e-4, step
        same_grads(grads, theirs, 1e-4)
        same_weights(ours, theirs, 1e-4)
    assert run.cache_info().misses == 1
    # the notebook's summary: the output, its gradient and Laplacian, under no_grad on Avalon's side
    model_output, coords = theirs(tmodel_input)
    tgrad, tlap = tgradient(model_output, coords), tlaplace(model_output, coords)
    # (under no_grad, which torch.func's transforms and av.grad do not look past; the network, closed over rather than
    # passed, is captured data of an eager av.grad: it says so and traces each call)
    with av.no_grad(), pytest.warns(UserWarning, match="not among its arguments"):
        out, c = ours(model_input)
        assert rel(out, model_output) < 1e-5
        assert rel(gradient(ours.net, c), tgrad) < 1e-4
        assert rel(laplace(ours.net, c), tlap) < 1e-4


# -- 4. Set Transformer (juho-lee/set_transformer modules.py, models.py, mixture_of_mvns.py, run.py): amortized
#       clustering of mixtures of Gaussians by ISAB/PMA/SAB blocks, and the DeepSet baseline ---------------------------

def set_models(lib, F_, th, kind, ln):
    nn = lib  # noqa: F811
    torch_ = th  # noqa: F841
    F = F_  # noqa: N806, F811

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
            Q_ = th.cat(Q.split(dim_split, 2), 0)  # noqa: N806
            K_ = th.cat(K.split(dim_split, 2), 0)  # noqa: N806
            V_ = th.cat(V.split(dim_split, 2), 0)  # noqa: N806

            A = th.softmax(Q_.bmm(K_.transpose(1, 2))/math.sqrt(self.dim_V), 2)  # noqa: N806
            O = th.cat((Q_ + A.bmm(V_)).split(Q.size(0), 0), 2)  # noqa: N806, E741
            O = O if getattr(self, 'ln0', None) is None else self.ln0(O)  # noqa: N806, E741
            O = O + F.relu(self.fc_o(O))  # noqa: N806, E741
            O = O if getattr(self, 'ln1', None) is None else self.ln1(O)  # noqa: N806, E741
            return O

    class SAB(nn.Module):
        def __init__(self, dim_in, dim_out, num_heads, ln=False):
            super(SAB, self).__init__()  # noqa: UP008
            self.mab = MAB(dim_in, dim_in, dim_out, num_heads, ln=ln)

        def forward(self, X):  # noqa: N803
            return self.mab(X, X)

    class ISAB(nn.Module):
        def __init__(self, dim_in, dim_out, num_heads, num_inds, ln=False):
            super(ISAB, self).__init__()  # noqa: UP008
            self.I = nn.Parameter(th.Tensor(1, num_inds, dim_out))
            nn.init.xavier_uniform_(self.I)
            self.mab0 = MAB(dim_out, dim_in, dim_out, num_heads, ln=ln)
            self.mab1 = MAB(dim_in, dim_out, dim_out, num_heads, ln=ln)

        def forward(self, X):  # noqa: N803
            H = self.mab0(self.I.repeat(X.size(0), 1, 1), X)  # noqa: N806
            return self.mab1(X, H)

    class PMA(nn.Module):
        def __init__(self, dim, num_heads, num_seeds, ln=False):
            super(PMA, self).__init__()  # noqa: UP008
            self.S = nn.Parameter(th.Tensor(1, num_seeds, dim))
            nn.init.xavier_uniform_(self.S)
            self.mab = MAB(dim, dim, dim, num_heads, ln=ln)

        def forward(self, X):  # noqa: N803
            return self.mab(self.S.repeat(X.size(0), 1, 1), X)

    class DeepSet(nn.Module):
        def __init__(self, dim_input, num_outputs, dim_output, dim_hidden=128):
            super(DeepSet, self).__init__()  # noqa: UP008
            self.num_outputs = num_outputs
            self.dim_output = dim_output
            self.enc = nn.Sequential(
                    nn.Linear(dim_input, dim_hidden),
                    nn.ReLU(),
                    nn.Linear(dim_hidden, dim_hidden),
                    nn.ReLU(),
                    nn.Linear(dim_hidden, dim_hidden))
            self.dec = nn.Sequential(
                    nn.Linear(dim_hidden, dim_hidden),
                    nn.ReLU(),
                    nn.Linear(dim_hidden, num_outputs*dim_output))

        def forward(self, X):  # noqa: N803
            X = self.enc(X).mean(-2)  # noqa: N806
            X = self.dec(X).reshape(-1, self.num_outputs, self.dim_output)  # noqa: N806
            return X

    class SetTransformer(nn.Module):
        def __init__(self, dim_input, num_outputs, dim_output,
                     num_inds=32, dim_hidden=128, num_heads=4, ln=False):
            super(SetTransformer, self).__init__()  # noqa: UP008
            self.enc = nn.Sequential(
                    ISAB(dim_input, dim_hidden, num_heads, num_inds, ln=ln),
                    ISAB(dim_hidden, dim_hidden, num_heads, num_inds, ln=ln))
            self.dec = nn.Sequential(
                    PMA(dim_hidden, num_heads, num_outputs, ln=ln),
                    SAB(dim_hidden, dim_hidden, num_heads, ln=ln),
                    SAB(dim_hidden, dim_hidden, num_heads, ln=ln),
                    nn.Linear(dim_hidden, dim_output))

        def forward(self, X):  # noqa: N803
            return self.dec(self.enc(X))

    D, K = 2, 4  # run.py: dim and the number of clusters
    if kind == "set_transformer":  # num_inds=32, dim_hidden=128 there
        return SetTransformer(D, K, 1 + 2 * D, num_inds=6, dim_hidden=16, num_heads=4, ln=ln)
    return DeepSet(D, K, 1 + 2 * D, dim_hidden=16)


def mixture_of_mvns(th, F_):
    class MultivariateNormalDiag:
        def __init__(self, dim):
            self.dim = dim

        def log_prob(self, X, params):  # noqa: N803
            mu, sigma = params
            X = X.unsqueeze(2)  # noqa: N806
            mu = mu.unsqueeze(1)
            sigma = sigma.unsqueeze(1)
            diff = X - mu
            ll = -0.5*math.log(2*math.pi) - sigma.log() - 0.5*(diff.pow(2)/sigma.pow(2))
            return ll.sum(-1)

        def parse(self, raw):
            pi = th.softmax(raw[..., 0], -1)
            mu = raw[..., 1:1+self.dim]
            sigma = F_.softplus(raw[..., 1+self.dim:])
            return pi, (mu, sigma)

    class MixtureOfMVNs:
        def __init__(self, mvn):
            self.mvn = mvn

        def log_prob(self, X, pi, params, return_labels=False):  # noqa: N803
            ll = self.mvn.log_prob(X, params)
            ll = ll + (pi + 1e-10).log().unsqueeze(-2)
            if return_labels:
                labels = ll.argmax(-1)
                return ll.logsumexp(-1).mean(), labels
            else:
                return ll.logsumexp(-1).mean()
    mvn = MultivariateNormalDiag(2)
    return mvn, MixtureOfMVNs(mvn)


def mog_batch(rng, B, N, K=4, dim=2):  # noqa: N803
    """MixtureOfMVNs.sample in numpy: Dirichlet(1) weights, labels, mu ~ U(-4, 4), sigma 0.3."""
    pi = rng.dirichlet(np.ones(K), B)
    labels = np.stack([rng.choice(K, N, p=p) for p in pi])
    mu = -4 + 8 * rng.random((B, K, dim))
    eps = rng.standard_normal((B, N, dim))
    X = np.take_along_axis(mu, labels[..., None].repeat(dim, -1), 1) + 0.3 * eps  # noqa: N806
    return X.astype(np.float32)


@pytest.mark.parametrize("kind,ln", [("set_transformer", True), ("deep_set", False)])
def test_set_transformer_isab_pma_sab_amortized_clustering_mog_likelihood_and_lr_drop(kind, ln):
    ours, theirs = pair(lambda lib, F_, th: set_models(lib, F_, th, kind, ln), dtype=F32)
    mvn, mog = mixture_of_mvns(av, F)
    tmvn, tmog = mixture_of_mvns(torch, TF)
    num_steps, lr = 6, 1e-3
    optimizer = av.optim.Adam(ours.parameters(), lr=lr)
    toptimizer = torch.optim.Adam(theirs.parameters(), lr=lr)

    def objective(net, X):  # noqa: N803
        ll = mog.log_prob(X, *mvn.parse(net(X)))
        return -ll

    def train_step(net, optimizer, X):  # noqa: N803
        loss, grads = av.value_and_grad(objective)(net, X)
        optimizer.step(grads)
        return loss, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(0)
    Ns, noise = [], {}  # noqa: N806
    for t in range(1, num_steps + 1):
        if t == int(0.5 * num_steps):
            toptimizer.param_groups[0]['lr'] *= 0.1
            optimizer.param_groups[0]['lr'] *= 0.1
        theirs.train()
        ours.train()
        toptimizer.zero_grad()
        N = int(rng.integers(6, 8))  # noqa: N806  (N_min=300, N_max=600 there)
        Ns.append(N)
        X = mog_batch(rng, 3, N)  # noqa: N806
        tloss = -tmog.log_prob(T(X), *tmvn.parse(theirs(T(X))))
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, grads = (run if t > 1 else train_step)(ours, optimizer, av.tensor(X))
        assert rel(loss, tloss) < 1e-5, t
        # the keys' bias adds one number to each row of scores, and the bias of the mixture weights' logit column one
        # number to each row of logits, which softmax removes: their gradients are roundoff on both sides (~1e-9 of
        # the others), and Adam turns roundoff into steps of ~lr, so those entries are compared at lr's scale and the
        # rest at roundoff's
        big = max(float(np.abs(g.numpy()).max()) for g in grads.values())
        sd = ours.state_dict()
        for k, p in theirs.named_parameters():
            small = p.grad.abs().numpy() < 1e-6 * big
            noise[k] = noise.get(k, False) | small
            a, b, g, tg = sd[k].numpy(), p.detach().numpy(), grads[k].numpy(), p.grad.numpy()
            assert np.abs(g[small]).max(initial=0) < 1e-6 * big, k
            assert np.abs(g - tg)[~small].max(initial=0) / max(np.abs(tg).max(), 1e-4) < 1e-4, k
            assert np.abs(a - b)[~noise[k]].max(initial=0) / max(np.abs(b).max(), 1e-4) < 1e-4, k
            assert np.abs(a - b)[noise[k]].max(initial=0) < 2 * lr * t, k
        if kind == "set_transformer":
            assert all(noise[k].all() for k in noise if k.endswith("fc_k.bias"))
            assert noise["dec.3.bias"][0] and not noise["dec.3.bias"][1:].any()
    assert run.cache_info().misses == len(set(Ns[1:]))  # one trace per set size
    # the test-time clustering: labels by argmax of the per-component likelihoods
    X = mog_batch(rng, 2, 7)  # noqa: N806
    with torch.no_grad():
        tll, tlabels = tmog.log_prob(T(X), *tmvn.parse(theirs(T(X))), return_labels=True)
    with av.no_grad():
        ll, labels = mog.log_prob(av.tensor(X), *mvn.parse(ours(av.tensor(X))), return_labels=True)
    assert rel(ll, tll) < 1e-5 and np.array_equal(labels.numpy(), tlabels.numpy())


# -- regressions ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_av_grad_under_no_grad_is_a_transform_as_torch_func_grad(mode):
    """av.grad (torch.func.grad) called under av.no_grad() differentiates what it is given: the switch outside does
    not reach inside the transform (one inside does), while a trace enclosing the call stops gradients through its
    result. Av.grad under no_grad gave zeros (and a warning that the loss depends on nothing) before."""
    x, w = np.array([0.5, -1.0, 2.0], np.float32), np.array([1.5, 2.0, -0.5], np.float32)

    def f(x, w, th):
        with th.no_grad():
            c = (x * w).sum()  # an inner no_grad is still respected
        return (w * x.sin()).sum() * c.detach() + (w * x.cos()).sum()

    with torch.no_grad():
        want = torch.func.grad(f)(T(x), T(w), torch)
    with av.no_grad():
        got = compiled(av.grad(f), mode)(av.tensor(x), av.tensor(w), av)
    assert rel(got, want) < 1e-6

    def loss(w, x, th, grad):
        with th.no_grad():
            g = grad(f)(x, w, th)  # computed, but not differentiated by the enclosing gradient
        return (g * w).sum() + (w * x).sum()
    tgrad, tvalue = torch.func.grad_and_value(loss)(T(w), T(x), torch, torch.func.grad)
    value, grad = compiled(av.value_and_grad(loss), mode)(av.tensor(w), av.tensor(x), av, av.grad)
    assert rel(value, tvalue) < 1e-6 and rel(grad, tgrad) < 1e-6

"""Round 7a of port QA (after test_port_programs.py, _more and _3 to _10): programs as their popular repositories
write them in PyTorch, written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon), trained a
few steps from torch's weights on random data in float64 and compared with torch after every step (losses,
parameters, buffers), eagerly and compiled (numpy and cpu backends), with warnings as errors while tracing: a Graph
Attention Network as Diego999/pyGAT writes it (the dense-adjacency layer in both of the repository's forms, the
`Wh1 + Wh2.T` broadcast and the older `cat([Wh.repeat(1, N)..., Wh.repeat(N, 1)])` pairs, `torch.where(adj > 0, e,
-9e15 * ones_like(e))`, multi-head concat, ELU, log_softmax, NLL and its accuracy on the train indices, heads in a
plain list registered by `add_module`) and the edge-list form of gordicaleksa/pytorch-GAT (scores lifted by
index_select, a neighbourhood softmax stabilized by `scatter_reduce(..., "amax", include_self=False)` or the
global max, denominators by `index_add_` or `scatter_add_`, aggregation by `index_add_`), both with Adam and weight
decay; Tacotron 2's decoder as NVIDIA/tacotron2 writes it (the always-on prenet dropout, the location layer's
Conv1d over the stacked attention weights, location-sensitive attention with `alignment.data.masked_fill_(mask,
-inf)` from `get_mask_from_lengths`' `torch.arange(0, max_len, out=torch.LongTensor(max_len))`, the attention and
decoder LSTMCells unrolled in the repository's while loop over states kept on the module, `+=` on the cumulative
weights, the MSE + gate BCEWithLogits loss, Adam and clip_grad_norm_); and lucidrains/performer-pytorch's FAVOR+
(softmax_kernel's normalizer, ratio, detached amax stabilizer and eps over a projection buffer that is redrawn
between steps, the generalized ReLU kernel, linear attention by ellipsis einsums, the chunked causal form by
cumsum) beside idiap/fast-transformers' elu+1 linear attention (key-length masking, its causal cumsum form), in a
small pre-norm transformer LM with a GLU feed-forward, trained with AdamW.

The ports change what the README says differs: gradients are values; randomness is Avalon's own, so the prenet's
dropout masks and the projection matrices are drawn beforehand and given (the prenet as written, dropout on in
eval too, is checked on Avalon's stream); `max(lengths).item()` is a value a trace cannot read back, so under
av.grad and av.compile the mask's length is given; and the decoder keeps its states on itself
(`self.attention_hidden = ...` inside forward), so the model is called once before it is traced, as the README
asks of a module that stores tensors on itself. The regressions at the end are what the programs found: creation
functions refusing torch's `size=` keyword (`torch.empty(size=(n, m))`, `full(size=, fill_value=)`, `new_zeros(size=)`),
a module in a plain list that `add_module` also registers named by the list (and listed twice in the state
dict) instead of torch's registered name, `arange(..., out=)` refused, and `Tensor.unsqueeze(dim=...)` refused."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict, train_step

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

MODES = ("eager", "numpy", "cpu")


# -- 1. GAT: pyGAT's dense-adjacency layer (both of its attention-input forms) and an edge-list layer --------

N_NODES, N_FEAT, N_HID, N_CLASS, N_HEADS = 7, 5, 4, 3, 2


def gat(lib, F_, th, form="broadcast"):
    class GraphAttentionLayer(lib.Module):
        """Simple GAT layer, similar to https://arxiv.org/abs/1710.10903 (Diego999/pyGAT's layers.py)."""
        def __init__(self, in_features, out_features, dropout, alpha, concat=True):
            super().__init__()
            self.dropout = dropout
            self.in_features = in_features
            self.out_features = out_features
            self.alpha = alpha
            self.concat = concat

            self.W = lib.Parameter(th.empty(size=(in_features, out_features)))
            lib.init.xavier_uniform_(self.W.data, gain=1.414)
            self.a = lib.Parameter(th.empty(size=(2 * out_features, 1)))
            lib.init.xavier_uniform_(self.a.data, gain=1.414)

            self.leakyrelu = lib.LeakyReLU(self.alpha)

        def forward(self, h, adj):
            Wh = th.mm(h, self.W)  # h.shape: (N, in_features), Wh.shape: (N, out_features)
            if form == "broadcast":
                e = self._prepare_attentional_mechanism_input(Wh)
            else:  # the repository's first version: every (i, j) pair concatenated
                N = Wh.size()[0]
                a_input = th.cat([Wh.repeat(1, N).view(N * N, -1), Wh.repeat(N, 1)], dim=1).view(N, -1, 2 * self.out_features)
                e = self.leakyrelu(th.matmul(a_input, self.a).squeeze(2))

            zero_vec = -9e15 * th.ones_like(e)
            attention = th.where(adj > 0, e, zero_vec)
            attention = F_.softmax(attention, dim=1)
            attention = F_.dropout(attention, self.dropout, training=self.training)
            h_prime = th.matmul(attention, Wh)

            if self.concat:
                return F_.elu(h_prime)
            else:
                return h_prime

        def _prepare_attentional_mechanism_input(self, Wh):
            # Wh.shape (N, out_feature); self.a.shape (2 * out_feature, 1); Wh1&2.shape (N, 1); e.shape (N, N)
            Wh1 = th.matmul(Wh, self.a[:self.out_features, :])
            Wh2 = th.matmul(Wh, self.a[self.out_features:, :])
            # broadcast add
            e = Wh1 + Wh2.T
            return self.leakyrelu(e)

    class GAT(lib.Module):
        def __init__(self, nfeat, nhid, nclass, dropout, alpha, nheads):
            """Dense version of GAT."""
            super().__init__()
            self.dropout = dropout

            self.attentions = [GraphAttentionLayer(nfeat, nhid, dropout=dropout, alpha=alpha, concat=True)
                               for _ in range(nheads)]
            for i, attention in enumerate(self.attentions):
                self.add_module('attention_{}'.format(i), attention)  # noqa: UP032

            self.out_att = GraphAttentionLayer(nhid * nheads, nclass, dropout=dropout, alpha=alpha, concat=False)

        def forward(self, x, adj):
            x = F_.dropout(x, self.dropout, training=self.training)
            x = th.cat([att(x, adj) for att in self.attentions], dim=1)
            x = F_.dropout(x, self.dropout, training=self.training)
            x = F_.elu(self.out_att(x, adj))
            return F_.log_softmax(x, dim=1)

    return GAT(N_FEAT, N_HID, N_CLASS, dropout=0.0, alpha=0.2, nheads=N_HEADS)


def edge_gat(lib, F_, th, softmax="amax"):
    """The edge-list form PyG-free GATs write (gordicaleksa/pytorch-GAT's implementation 3 and the scatter
    softmax of torch_geometric.utils.softmax written with torch's own scatter): scores lifted to edges by
    index_select, a per-target softmax stabilized by `scatter_reduce(..., "amax", include_self=False)`
    (or by the global max), its denominators by `index_add_` (or `scatter_add_`), aggregation by `index_add_`."""
    class GATLayer(lib.Module):
        src_nodes_dim = 0  # position of source nodes in edge index
        trg_nodes_dim = 1  # position of target nodes in edge index
        nodes_dim = 0      # node dimension/axis
        head_dim = 1       # attention head dimension/axis

        def __init__(self, num_in_features, num_out_features, num_of_heads, concat=True, activation=lib.ELU(),  # noqa: B008
                     dropout_prob=0.0, add_skip_connection=True, bias=True):
            super().__init__()
            self.num_of_heads = num_of_heads
            self.num_out_features = num_out_features
            self.concat = concat
            self.add_skip_connection = add_skip_connection
            self.linear_proj = lib.Linear(num_in_features, num_of_heads * num_out_features, bias=False)
            self.scoring_fn_target = lib.Parameter(th.Tensor(1, num_of_heads, num_out_features))
            self.scoring_fn_source = lib.Parameter(th.Tensor(1, num_of_heads, num_out_features))
            if bias and concat:
                self.bias = lib.Parameter(th.Tensor(num_of_heads * num_out_features))
            elif bias and not concat:
                self.bias = lib.Parameter(th.Tensor(num_out_features))
            else:
                self.register_parameter('bias', None)
            if add_skip_connection:
                self.skip_proj = lib.Linear(num_in_features, num_of_heads * num_out_features, bias=False)
            else:
                self.register_parameter('skip_proj', None)
            self.leakyReLU = lib.LeakyReLU(0.2)  # using 0.2 as in the paper, no need to expose every setting
            self.activation = activation
            self.dropout = lib.Dropout(p=dropout_prob)
            self.init_params()

        def init_params(self):
            lib.init.xavier_uniform_(self.linear_proj.weight)
            lib.init.xavier_uniform_(self.scoring_fn_target)
            lib.init.xavier_uniform_(self.scoring_fn_source)
            if self.bias is not None:
                th.nn.init.zeros_(self.bias)

        def forward(self, data):
            in_nodes_features, edge_index = data  # unpack data
            num_of_nodes = in_nodes_features.shape[self.nodes_dim]
            assert edge_index.shape[0] == 2, f'Expected edge index with shape=(2,E) got {edge_index.shape}'
            in_nodes_features = self.dropout(in_nodes_features)
            nodes_features_proj = self.linear_proj(in_nodes_features).view(-1, self.num_of_heads, self.num_out_features)
            nodes_features_proj = self.dropout(nodes_features_proj)

            scores_source = (nodes_features_proj * self.scoring_fn_source).sum(dim=-1)
            scores_target = (nodes_features_proj * self.scoring_fn_target).sum(dim=-1)
            scores_source_lifted, scores_target_lifted, nodes_features_proj_lifted = self.lift(
                scores_source, scores_target, nodes_features_proj, edge_index)
            scores_per_edge = self.leakyReLU(scores_source_lifted + scores_target_lifted)

            attentions_per_edge = self.neighborhood_aware_softmax(scores_per_edge, edge_index[self.trg_nodes_dim],
                                                                  num_of_nodes)
            attentions_per_edge = self.dropout(attentions_per_edge)

            nodes_features_proj_lifted_weighted = nodes_features_proj_lifted * attentions_per_edge
            out_nodes_features = self.aggregate_neighbors(nodes_features_proj_lifted_weighted, edge_index,
                                                          in_nodes_features, num_of_nodes)
            out_nodes_features = self.skip_concat_bias(in_nodes_features, out_nodes_features)
            return (out_nodes_features, edge_index)

        def neighborhood_aware_softmax(self, scores_per_edge, trg_index, num_of_nodes):
            if softmax == "amax":  # the per-neighbourhood max, as torch_geometric.utils.softmax
                size = (num_of_nodes, scores_per_edge.shape[1])
                trg_b = self.explicit_broadcast(trg_index, scores_per_edge)
                node_max = scores_per_edge.new_zeros(size).scatter_reduce(
                    0, trg_b, scores_per_edge, "amax", include_self=False)
                scores_per_edge = scores_per_edge - node_max.index_select(0, trg_index).detach()
            else:  # the repository's global max
                scores_per_edge = scores_per_edge - scores_per_edge.max()
            exp_scores_per_edge = scores_per_edge.exp()  # softmax
            neigborhood_aware_denominator = self.sum_edge_scores_neighborhood_aware(exp_scores_per_edge, trg_index,
                                                                                    num_of_nodes)
            attentions_per_edge = exp_scores_per_edge / (neigborhood_aware_denominator + 1e-16)
            return attentions_per_edge.unsqueeze(-1)

        def sum_edge_scores_neighborhood_aware(self, exp_scores_per_edge, trg_index, num_of_nodes):
            size = list(exp_scores_per_edge.shape)
            size[self.nodes_dim] = num_of_nodes
            neighborhood_sums = th.zeros(size, dtype=exp_scores_per_edge.dtype, device=exp_scores_per_edge.device)
            if softmax == "amax":
                neighborhood_sums.index_add_(self.nodes_dim, trg_index, exp_scores_per_edge)
            else:
                trg_index_broadcasted = self.explicit_broadcast(trg_index, exp_scores_per_edge)
                neighborhood_sums.scatter_add_(self.nodes_dim, trg_index_broadcasted, exp_scores_per_edge)
            return neighborhood_sums.index_select(self.nodes_dim, trg_index)

        def aggregate_neighbors(self, nodes_features_proj_lifted_weighted, edge_index, in_nodes_features, num_of_nodes):
            size = list(nodes_features_proj_lifted_weighted.shape)  # convert to list otherwise assignment is not possible
            size[self.nodes_dim] = num_of_nodes  # shape = (N, NH, FOUT)
            out_nodes_features = th.zeros(size, dtype=in_nodes_features.dtype, device=in_nodes_features.device)
            out_nodes_features.index_add_(self.nodes_dim, edge_index[self.trg_nodes_dim],
                                          nodes_features_proj_lifted_weighted)
            return out_nodes_features

        def lift(self, scores_source, scores_target, nodes_features_matrix_proj, edge_index):
            src_nodes_index = edge_index[self.src_nodes_dim]
            trg_nodes_index = edge_index[self.trg_nodes_dim]
            scores_source = scores_source.index_select(self.nodes_dim, src_nodes_index)
            scores_target = scores_target.index_select(self.nodes_dim, trg_nodes_index)
            nodes_features_matrix_proj_lifted = nodes_features_matrix_proj.index_select(self.nodes_dim, src_nodes_index)
            return scores_source, scores_target, nodes_features_matrix_proj_lifted

        def explicit_broadcast(self, this, other):
            for _ in range(this.dim(), other.dim()):
                this = this.unsqueeze(-1)
            return this.expand_as(other)

        def skip_concat_bias(self, in_nodes_features, out_nodes_features):
            if not out_nodes_features.is_contiguous():
                out_nodes_features = out_nodes_features.contiguous()
            if self.add_skip_connection:
                if out_nodes_features.shape[-1] == in_nodes_features.shape[-1]:
                    out_nodes_features += in_nodes_features.unsqueeze(1)
                else:
                    out_nodes_features += self.skip_proj(in_nodes_features).view(-1, self.num_of_heads,
                                                                                 self.num_out_features)
            if self.concat:
                out_nodes_features = out_nodes_features.view(-1, self.num_of_heads * self.num_out_features)
            else:
                out_nodes_features = out_nodes_features.mean(dim=self.head_dim)
            if self.bias is not None:
                out_nodes_features += self.bias
            return out_nodes_features if self.activation is None else self.activation(out_nodes_features)

    class GAT(lib.Module):
        def __init__(self, num_of_layers, num_heads_per_layer, num_features_per_layer, add_skip_connection=True,
                     bias=True, dropout=0.0):
            super().__init__()
            num_heads_per_layer = [1] + num_heads_per_layer  # trick - so that I can nicely create GAT layers below
            gat_layers = []  # collect GAT layers
            for i in range(num_of_layers):
                layer = GATLayer(
                    num_in_features=num_features_per_layer[i] * num_heads_per_layer[i],  # consequence of concatenation
                    num_out_features=num_features_per_layer[i + 1],
                    num_of_heads=num_heads_per_layer[i + 1],
                    concat=True if i < num_of_layers - 1 else False,  # last GAT layer does mean avg, the others do concat
                    activation=lib.ELU() if i < num_of_layers - 1 else None,  # last layer just outputs raw scores
                    dropout_prob=dropout,
                    add_skip_connection=add_skip_connection,
                    bias=bias,
                )
                gat_layers.append(layer)
            self.gat_net = lib.Sequential(*gat_layers)

        def forward(self, data):
            return self.gat_net(data)

    return GAT(2, [N_HEADS, 1], [N_FEAT, N_HID, N_CLASS])


def graph_data(seed):
    """Node features, a symmetric adjacency with self loops (pyGAT's) and its edge list (source, target)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_NODES, N_FEAT))
    adj = (rng.random((N_NODES, N_NODES)) < 0.35).astype(np.float64)
    adj = np.maximum(adj, adj.T)
    np.fill_diagonal(adj, 1.0)
    src, trg = np.nonzero(adj.T)  # edge (j -> i) for adj[i, j]: grouped by target as a sorted edge list is not
    edge_index = np.stack([trg, src]).astype(np.int64)
    labels = rng.integers(0, N_CLASS, N_NODES)
    return x, adj, edge_index, labels


IDX_TRAIN = np.array([0, 2, 3, 5])


def accuracy(output, labels):
    """pyGAT's utils.accuracy."""
    preds = output.max(1)[1].type_as(labels)
    correct = preds.eq(labels).double()
    correct = correct.sum()
    return correct / len(labels)


def gat_loss(F_):
    def loss(model, features, adj, labels, idx_train):
        output = model(features, adj)
        return F_.nll_loss(output[idx_train], labels[idx_train]), accuracy(output[idx_train], labels[idx_train])
    return loss


def gat_step(model, opt, features, adj, labels, idx_train):
    (loss_train, acc_train), grads = av.value_and_grad(gat_loss(F), has_aux=True)(model, features, adj, labels,
                                                                                 idx_train)
    opt.step(grads)
    return loss_train, acc_train


def edge_gat_loss(F_):
    def loss(model, features, edge_index, labels, idx_train):
        nodes_unnormalized_scores = model((features, edge_index))[0].index_select(0, idx_train)
        return F_.cross_entropy(nodes_unnormalized_scores, labels.index_select(0, idx_train))
    return loss


@pytest.mark.parametrize("form", ["broadcast", "concat"])
def test_pygat_dense_adjacency_multi_head_attention_masked_nll_with_adam_weight_decay(form):
    ours, theirs = pair(lambda lib, F_, th: gat(lib, F_, th, form))
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    opt = optim.Adam(ours.parameters(), lr=0.005, weight_decay=5e-4)
    topt = torch.optim.Adam(theirs.parameters(), lr=0.005, weight_decay=5e-4)
    for it, mode in enumerate(MODES):
        x, adj, _, labels = graph_data(it)
        topt.zero_grad()
        tl, tacc = gat_loss(TF)(theirs, T(x), T(adj), T(labels), T(IDX_TRAIN))
        tl.backward()
        topt.step()
        with strict():
            loss, acc = compiled(gat_step, mode)(ours, opt, av.tensor(x), av.tensor(adj), av.tensor(labels),
                                                 av.tensor(IDX_TRAIN))
        assert rel(loss, tl) < 1e-12 and acc.item() == tacc.item() and acc.dtype == av.float64, (it, mode)
        same_weights(ours, theirs, 1e-10)
    ours.eval()
    theirs.eval()
    x, adj, _, labels = graph_data(5)
    with av.no_grad(), torch.no_grad():  # pyGAT's compute_test
        assert rel(ours(av.tensor(x), av.tensor(adj)), theirs(T(x), T(adj))) < 1e-12


@pytest.mark.parametrize("softmax", ["amax", "global"])
def test_edge_list_gat_scatter_softmax_index_add_aggregation_with_adam_weight_decay(softmax):
    ours, theirs = pair(lambda lib, F_, th: edge_gat(lib, F_, th, softmax))
    opt = optim.Adam(ours.parameters(), lr=0.005, weight_decay=5e-4)
    topt = torch.optim.Adam(theirs.parameters(), lr=0.005, weight_decay=5e-4)
    step = train_step(edge_gat_loss(F))
    for it, mode in enumerate(MODES):
        x, _, edge_index, labels = graph_data(it)
        topt.zero_grad()
        tl = edge_gat_loss(TF)(theirs, T(x), T(edge_index), T(labels), T(IDX_TRAIN))
        tl.backward()
        topt.step()
        with strict():
            loss = compiled(step, mode)(ours, opt, av.tensor(x), av.tensor(edge_index), av.tensor(labels),
                                        av.tensor(IDX_TRAIN))
        assert rel(loss, tl) < 1e-12, (it, mode)
        same_weights(ours, theirs, 1e-10)


# -- 2. Tacotron 2's decoder (NVIDIA/tacotron2): prenet, location-sensitive attention, two LSTMCells ----------

class HParams:
    n_mel_channels = 3
    n_frames_per_step = 1
    n_symbols = 6
    symbols_embedding_dim = 4
    encoder_embedding_dim = 4
    attention_rnn_dim = 5
    decoder_rnn_dim = 5
    prenet_dim = 4
    attention_dim = 3
    attention_location_n_filters = 2
    attention_location_kernel_size = 3
    max_decoder_steps = 1000
    gate_threshold = 0.5
    p_attention_dropout = 0.0  # the repository's 0.1 draws from torch's stream: here the prenet's masks are given
    p_decoder_dropout = 0.0


def get_mask_from_lengths(th, lengths, max_len=None):
    """utils.py's (`torch.cuda.LongTensor` on the CPU); `max_len` given under av.grad and av.compile, where the
    longest length is a value the trace cannot read back (the README's data-dependent values)."""
    if max_len is None:
        max_len = th.max(lengths).item()
    ids = th.arange(0, max_len, out=th.LongTensor(max_len))
    mask = (ids < lengths.unsqueeze(1)).bool()
    return mask


def tacotron2(lib, F_, th, hparams=HParams):
    class LinearNorm(lib.Module):
        def __init__(self, in_dim, out_dim, bias=True, w_init_gain='linear'):
            super().__init__()
            self.linear_layer = lib.Linear(in_dim, out_dim, bias=bias)
            lib.init.xavier_uniform_(self.linear_layer.weight, gain=lib.init.calculate_gain(w_init_gain))

        def forward(self, x):
            return self.linear_layer(x)

    class ConvNorm(lib.Module):
        def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=None, dilation=1, bias=True,
                     w_init_gain='linear'):
            super().__init__()
            if padding is None:
                assert (kernel_size % 2 == 1)
                padding = int(dilation * (kernel_size - 1) / 2)
            self.conv = lib.Conv1d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                   padding=padding, dilation=dilation, bias=bias)
            lib.init.xavier_uniform_(self.conv.weight, gain=lib.init.calculate_gain(w_init_gain))

        def forward(self, signal):
            conv_signal = self.conv(signal)
            return conv_signal

    class LocationLayer(lib.Module):
        def __init__(self, attention_n_filters, attention_kernel_size, attention_dim):
            super().__init__()
            padding = int((attention_kernel_size - 1) / 2)
            self.location_conv = ConvNorm(2, attention_n_filters, kernel_size=attention_kernel_size, padding=padding,
                                          bias=False, stride=1, dilation=1)
            self.location_dense = LinearNorm(attention_n_filters, attention_dim, bias=False, w_init_gain='tanh')

        def forward(self, attention_weights_cat):
            processed_attention = self.location_conv(attention_weights_cat)
            processed_attention = processed_attention.transpose(1, 2)
            processed_attention = self.location_dense(processed_attention)
            return processed_attention

    class Attention(lib.Module):
        def __init__(self, attention_rnn_dim, embedding_dim, attention_dim, attention_location_n_filters,
                     attention_location_kernel_size):
            super().__init__()
            self.query_layer = LinearNorm(attention_rnn_dim, attention_dim, bias=False, w_init_gain='tanh')
            self.memory_layer = LinearNorm(embedding_dim, attention_dim, bias=False, w_init_gain='tanh')
            self.v = LinearNorm(attention_dim, 1, bias=False)
            self.location_layer = LocationLayer(attention_location_n_filters, attention_location_kernel_size,
                                                attention_dim)
            self.score_mask_value = -float("inf")

        def get_alignment_energies(self, query, processed_memory, attention_weights_cat):
            processed_query = self.query_layer(query.unsqueeze(1))
            processed_attention_weights = self.location_layer(attention_weights_cat)
            energies = self.v(th.tanh(processed_query + processed_attention_weights + processed_memory))
            energies = energies.squeeze(-1)
            return energies

        def forward(self, attention_hidden_state, memory, processed_memory, attention_weights_cat, mask):
            alignment = self.get_alignment_energies(attention_hidden_state, processed_memory, attention_weights_cat)
            if mask is not None:
                alignment.data.masked_fill_(mask, self.score_mask_value)
            attention_weights = F_.softmax(alignment, dim=1)
            attention_context = th.bmm(attention_weights.unsqueeze(1), memory)
            attention_context = attention_context.squeeze(1)
            return attention_context, attention_weights

    class Prenet(lib.Module):
        def __init__(self, in_dim, sizes):
            super().__init__()
            in_sizes = [in_dim] + sizes[:-1]
            self.layers = lib.ModuleList([LinearNorm(in_size, out_size, bias=False)
                                          for (in_size, out_size) in zip(in_sizes, sizes)])

        def forward(self, x, masks=None):
            """`masks`: torch's dropout draws, given (its `F.dropout(..., p=0.5, training=True)` otherwise)."""
            for i, linear in enumerate(self.layers):
                if masks is None:
                    x = F_.dropout(F_.relu(linear(x)), p=0.5, training=True)
                else:
                    x = F_.relu(linear(x)) * masks[i] / (1 - 0.5)
            return x

    class Decoder(lib.Module):
        def __init__(self, hparams):
            super().__init__()
            self.n_mel_channels = hparams.n_mel_channels
            self.n_frames_per_step = hparams.n_frames_per_step
            self.encoder_embedding_dim = hparams.encoder_embedding_dim
            self.attention_rnn_dim = hparams.attention_rnn_dim
            self.decoder_rnn_dim = hparams.decoder_rnn_dim
            self.prenet_dim = hparams.prenet_dim
            self.max_decoder_steps = hparams.max_decoder_steps
            self.gate_threshold = hparams.gate_threshold
            self.p_attention_dropout = hparams.p_attention_dropout
            self.p_decoder_dropout = hparams.p_decoder_dropout

            self.prenet = Prenet(hparams.n_mel_channels * hparams.n_frames_per_step,
                                 [hparams.prenet_dim, hparams.prenet_dim])
            self.attention_rnn = lib.LSTMCell(hparams.prenet_dim + hparams.encoder_embedding_dim,
                                              hparams.attention_rnn_dim)
            self.attention_layer = Attention(hparams.attention_rnn_dim, hparams.encoder_embedding_dim,
                                             hparams.attention_dim, hparams.attention_location_n_filters,
                                             hparams.attention_location_kernel_size)
            self.decoder_rnn = lib.LSTMCell(hparams.attention_rnn_dim + hparams.encoder_embedding_dim,
                                            hparams.decoder_rnn_dim, 1)
            self.linear_projection = LinearNorm(hparams.decoder_rnn_dim + hparams.encoder_embedding_dim,
                                                hparams.n_mel_channels * hparams.n_frames_per_step)
            self.gate_layer = LinearNorm(hparams.decoder_rnn_dim + hparams.encoder_embedding_dim, 1, bias=True,
                                         w_init_gain='sigmoid')

        def get_go_frame(self, memory):
            B = memory.size(0)
            decoder_input = th.autograd.Variable(memory.data.new(B, self.n_mel_channels * self.n_frames_per_step).zero_())
            return decoder_input

        def initialize_decoder_states(self, memory, mask):
            B = memory.size(0)
            MAX_TIME = memory.size(1)
            Variable = th.autograd.Variable
            self.attention_hidden = Variable(memory.data.new(B, self.attention_rnn_dim).zero_())
            self.attention_cell = Variable(memory.data.new(B, self.attention_rnn_dim).zero_())
            self.decoder_hidden = Variable(memory.data.new(B, self.decoder_rnn_dim).zero_())
            self.decoder_cell = Variable(memory.data.new(B, self.decoder_rnn_dim).zero_())
            self.attention_weights = Variable(memory.data.new(B, MAX_TIME).zero_())
            self.attention_weights_cum = Variable(memory.data.new(B, MAX_TIME).zero_())
            self.attention_context = Variable(memory.data.new(B, self.encoder_embedding_dim).zero_())
            self.memory = memory
            self.processed_memory = self.attention_layer.memory_layer(memory)
            self.mask = mask

        def parse_decoder_inputs(self, decoder_inputs):
            # (B, n_mel_channels, T_out) -> (B, T_out, n_mel_channels)
            decoder_inputs = decoder_inputs.transpose(1, 2)
            decoder_inputs = decoder_inputs.view(decoder_inputs.size(0),
                                                 int(decoder_inputs.size(1) / self.n_frames_per_step), -1)
            # (B, T_out, n_mel_channels) -> (T_out, B, n_mel_channels)
            decoder_inputs = decoder_inputs.transpose(0, 1)
            return decoder_inputs

        def parse_decoder_outputs(self, mel_outputs, gate_outputs, alignments):
            # (T_out, B) -> (B, T_out)
            alignments = th.stack(alignments).transpose(0, 1)
            # (T_out, B) -> (B, T_out)
            gate_outputs = th.stack(gate_outputs).transpose(0, 1)
            gate_outputs = gate_outputs.contiguous()
            # (T_out, B, n_mel_channels) -> (B, T_out, n_mel_channels)
            mel_outputs = th.stack(mel_outputs).transpose(0, 1).contiguous()
            # decouple frames per step
            mel_outputs = mel_outputs.view(mel_outputs.size(0), -1, self.n_mel_channels)
            # (B, T_out, n_mel_channels) -> (B, n_mel_channels, T_out)
            mel_outputs = mel_outputs.transpose(1, 2)
            return mel_outputs, gate_outputs, alignments

        def decode(self, decoder_input):
            cell_input = th.cat((decoder_input, self.attention_context), -1)
            self.attention_hidden, self.attention_cell = self.attention_rnn(
                cell_input, (self.attention_hidden, self.attention_cell))
            self.attention_hidden = F_.dropout(self.attention_hidden, self.p_attention_dropout, self.training)

            attention_weights_cat = th.cat((self.attention_weights.unsqueeze(1),
                                            self.attention_weights_cum.unsqueeze(1)), dim=1)
            self.attention_context, self.attention_weights = self.attention_layer(
                self.attention_hidden, self.memory, self.processed_memory, attention_weights_cat, self.mask)

            self.attention_weights_cum += self.attention_weights
            decoder_input = th.cat((self.attention_hidden, self.attention_context), -1)
            self.decoder_hidden, self.decoder_cell = self.decoder_rnn(
                decoder_input, (self.decoder_hidden, self.decoder_cell))
            self.decoder_hidden = F_.dropout(self.decoder_hidden, self.p_decoder_dropout, self.training)

            decoder_hidden_attention_context = th.cat((self.decoder_hidden, self.attention_context), dim=1)
            decoder_output = self.linear_projection(decoder_hidden_attention_context)

            gate_prediction = self.gate_layer(decoder_hidden_attention_context)
            return decoder_output, gate_prediction, self.attention_weights

        def forward(self, memory, decoder_inputs, memory_lengths, prenet_masks=None, max_len=None):
            decoder_input = self.get_go_frame(memory).unsqueeze(0)
            decoder_inputs = self.parse_decoder_inputs(decoder_inputs)
            decoder_inputs = th.cat((decoder_input, decoder_inputs), dim=0)
            decoder_inputs = self.prenet(decoder_inputs, prenet_masks)

            self.initialize_decoder_states(memory, mask=~get_mask_from_lengths(th, memory_lengths, max_len))

            mel_outputs, gate_outputs, alignments = [], [], []
            while len(mel_outputs) < decoder_inputs.size(0) - 1:
                decoder_input = decoder_inputs[len(mel_outputs)]
                mel_output, gate_output, attention_weights = self.decode(decoder_input)
                mel_outputs += [mel_output.squeeze(1)]
                gate_outputs += [gate_output.squeeze(1)]
                alignments += [attention_weights]

            mel_outputs, gate_outputs, alignments = self.parse_decoder_outputs(mel_outputs, gate_outputs, alignments)
            return mel_outputs, gate_outputs, alignments

    class Tacotron2(lib.Module):
        """The embedding and decoder (the encoder's convolutions and BiLSTM and the postnet are other rounds')."""
        def __init__(self, hparams):
            super().__init__()
            self.n_mel_channels = hparams.n_mel_channels
            self.embedding = lib.Embedding(hparams.n_symbols, hparams.symbols_embedding_dim)
            std = math.sqrt(2.0 / (hparams.n_symbols + hparams.symbols_embedding_dim))
            val = math.sqrt(3.0) * std  # uniform bounds for std
            self.embedding.weight.data.uniform_(-val, val)
            self.decoder = Decoder(hparams)

        def forward(self, inputs, prenet_masks=None, max_len=None):
            text_inputs, text_lengths, mels, max_len_, output_lengths = inputs
            text_lengths, output_lengths = text_lengths.data, output_lengths.data
            encoder_outputs = self.embedding(text_inputs)
            mel_outputs, gate_outputs, alignments = self.decoder(encoder_outputs, mels, memory_lengths=text_lengths,
                                                                 prenet_masks=prenet_masks, max_len=max_len)
            mel_outputs_postnet = mel_outputs  # (no postnet here)
            return [mel_outputs, mel_outputs_postnet, gate_outputs, alignments]

    return Tacotron2(hparams)


def tacotron2_loss(lib):
    class Tacotron2Loss(lib.Module):
        def __init__(self):
            super().__init__()

        def forward(self, model_output, targets):
            mel_target, gate_target = targets[0], targets[1]
            mel_target.requires_grad = False
            gate_target.requires_grad = False
            gate_target = gate_target.view(-1, 1)

            mel_out, mel_out_postnet, gate_out, _ = model_output
            gate_out = gate_out.view(-1, 1)
            mel_loss = lib.MSELoss()(mel_out, mel_target) + lib.MSELoss()(mel_out_postnet, mel_target)
            gate_loss = lib.BCEWithLogitsLoss()(gate_out, gate_target)
            return mel_loss + gate_loss

    return Tacotron2Loss()


TT_B, TT_TEXT, TT_FRAMES = 2, 5, 3


def tacotron_batch(seed, th):
    """TextMelCollate's batch: texts padded (lengths sorted, longest first), mels, gate targets (1 from the
    last frame on), and the prenet's dropout draws (torch's `F.dropout(p=0.5, training=True)`, given)."""
    rng = np.random.default_rng(seed)
    text_lengths = np.array([TT_TEXT, 3])
    text = rng.integers(1, HParams.n_symbols, (TT_B, TT_TEXT)) * (np.arange(TT_TEXT) < text_lengths[:, None])
    mels = rng.standard_normal((TT_B, HParams.n_mel_channels, TT_FRAMES))
    output_lengths = np.array([TT_FRAMES, 2])
    gate = (np.arange(TT_FRAMES)[None] >= output_lengths[:, None] - 1).astype(np.float64)
    masks = (rng.random((2, TT_FRAMES + 1, TT_B, HParams.prenet_dim)) >= 0.5).astype(np.float64)
    t = T if th is torch else av.tensor
    return (t(text), t(text_lengths), t(mels), TT_TEXT, t(output_lengths)), (t(mels), t(gate)), t(masks)


def tt_loss(lib, max_len=None):
    criterion = tacotron2_loss(lib)

    def loss(model, x, y, masks):
        return criterion(model(x, masks, max_len), y)
    return loss


def tt_step(max_len):
    def step(model, opt, x, y, masks):
        loss, grads = av.value_and_grad(tt_loss(nn, max_len))(model, x, y, masks)
        grad_norm = nn.utils.clip_grad_norm_(grads, 1.0)
        opt.step(grads)
        return loss, grad_norm
    return step


def test_tacotron2_decoder_location_sensitive_attention_lstm_cells_gate_bce_adam_clip_grad_norm():
    ours, theirs = pair(tacotron2)
    opt = optim.Adam(ours.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=1e-6)
    topt = torch.optim.Adam(theirs.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=1e-6)
    with av.no_grad():  # the decoder keeps its states on itself (`self.attention_hidden = ...`): as the README
        ours(tacotron_batch(0, av)[0], None, TT_TEXT)  # says, a traced call updates tensors it finds there
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())  # (non-persistent buffers, as in torch)
    for it, mode in enumerate(MODES):
        x, y, masks = tacotron_batch(it, torch)
        topt.zero_grad()
        tl = tt_loss(torch.nn)(theirs, x, y, masks)
        tl.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        topt.step()
        x, y, masks = tacotron_batch(it, av)
        with strict():
            loss, norm = compiled(tt_step(TT_TEXT), mode)(ours, opt, x, y, masks)
        assert rel(loss, tl) < 1e-12 and rel(norm, tnorm) < 1e-12, (it, mode)
        same_weights(ours, theirs, 1e-10)
    x, y, masks = tacotron_batch(3, torch)
    with torch.no_grad():
        want = theirs(x, masks)
    x, y, masks = tacotron_batch(3, av)
    got = ours(x, masks)  # outside av.grad and av.compile, `.item()` reads the longest length back as written
    assert all(rel(g, w) < 1e-12 for g, w in zip(got, want))


# -- 3. Performer's FAVOR+ (lucidrains/performer-pytorch) and the elu+1 linear attention (idiap/fast-transformers) --

P_VOCAB, P_DIM, P_HEADS, P_DIM_HEAD, P_LEN, P_BATCH = 7, 8, 2, 4, 5, 2
P_FEATURES = int(P_DIM_HEAD * math.log(P_DIM_HEAD))  # FastAttention's default nb_features


def gaussian_orthogonal_random_matrix(rng, nb_rows, nb_columns, scaling=0):
    """performer-pytorch's, with numpy's draws (QR of Gaussian blocks, rows rescaled by chi norms)."""
    nb_full_blocks = int(nb_rows / nb_columns)
    block_list = []
    for _ in range(nb_full_blocks):
        q, _ = np.linalg.qr(rng.standard_normal((nb_columns, nb_columns)))
        block_list.append(q.T)
    remaining_rows = nb_rows - nb_full_blocks * nb_columns
    if remaining_rows > 0:
        q, _ = np.linalg.qr(rng.standard_normal((nb_columns, nb_columns)))
        block_list.append(q.T[:remaining_rows])
    final_matrix = np.concatenate(block_list)
    if scaling == 0:
        multiplier = np.linalg.norm(rng.standard_normal((nb_rows, nb_columns)), axis=1)
    else:
        multiplier = math.sqrt(float(nb_columns)) * np.ones((nb_rows,))
    return np.diag(multiplier) @ final_matrix


def performer_functions(th, F_):
    from einops import rearrange, repeat

    def softmax_kernel(data, *, projection_matrix, is_query, normalize_data=True, eps=1e-4, device=None):
        b, h, *_ = data.shape
        data_normalizer = (data.shape[-1] ** -0.25) if normalize_data else 1.
        ratio = (projection_matrix.shape[0] ** -0.5)
        projection = repeat(projection_matrix, 'j d -> b h j d', b=b, h=h)
        projection = projection.type_as(data)
        data_dash = th.einsum('...id,...jd->...ij', (data_normalizer * data), projection)
        diag_data = data ** 2
        diag_data = th.sum(diag_data, dim=-1)
        diag_data = (diag_data / 2.0) * (data_normalizer ** 2)
        diag_data = diag_data.unsqueeze(dim=-1)
        if is_query:
            data_dash = ratio * (
                th.exp(data_dash - diag_data - th.amax(data_dash, dim=-1, keepdim=True).detach()) + eps)
        else:
            data_dash = ratio * (
                th.exp(data_dash - diag_data - th.amax(data_dash, dim=(-1, -2), keepdim=True).detach()) + eps)
        return data_dash.type_as(data)

    def generalized_kernel(data, *, projection_matrix, kernel_fn, kernel_epsilon=0.001, normalize_data=True,
                           device=None):
        b, h, *_ = data.shape
        data_normalizer = (data.shape[-1] ** -0.25) if normalize_data else 1.
        if projection_matrix is None:
            return kernel_fn(data_normalizer * data) + kernel_epsilon
        projection = repeat(projection_matrix, 'j d -> b h j d', b=b, h=h)
        projection = projection.type_as(data)
        data_dash = th.einsum('...id,...jd->...ij', (data_normalizer * data), projection)
        data_prime = kernel_fn(data_dash) + kernel_epsilon
        return data_prime.type_as(data)

    # non-causal linear attention
    def linear_attention(q, k, v):
        k_cumsum = k.sum(dim=-2)
        D_inv = 1. / th.einsum('...nd,...d->...n', q, k_cumsum.type_as(q))
        context = th.einsum('...nd,...ne->...de', k, v)
        out = th.einsum('...de,...nd,...n->...ne', context, q, D_inv)
        return out

    # inefficient causal linear attention, without cuda code, for reader's reference
    def causal_linear_attention_noncuda(q, k, v, chunk_size=2, eps=1e-6):
        last_k_cumsum = 0
        last_ctx_cumsum = 0
        outs = []
        for q, k, v in zip(*map(lambda t: t.chunk(chunk_size, dim=-2), (q, k, v))):  # noqa: B020
            k_cumsum = last_k_cumsum + k.cumsum(dim=-2)
            D_inv = 1. / th.einsum('...nd,...nd->...n', q, k_cumsum.type_as(q) + eps)
            context = th.einsum('...nd,...ne->...nde', k, v)
            context_cumsum = last_ctx_cumsum + context.cumsum(dim=-3)
            out = th.einsum('...nde,...nd,...n->...ne', context_cumsum, q, D_inv)
            last_k_cumsum = k_cumsum[:, :, -1:]
            last_ctx_cumsum = context_cumsum[:, :, -1:]
            outs.append(out)
        return th.cat(outs, dim=-2)

    # idiap/fast-transformers' LinearAttention and its causal form, with the elu feature map
    def elu_feature_map(x):
        return F_.elu(x) + 1

    def elu_linear_attention(queries, keys, values, key_lengths_float_matrix, eps=1e-6):
        Q = elu_feature_map(queries)
        K = elu_feature_map(keys)
        K = K * key_lengths_float_matrix[:, :, None, None]
        KV = th.einsum("nshd,nshm->nhmd", K, values)
        Z = 1 / (th.einsum("nlhd,nhd->nlh", Q, K.sum(dim=1)) + eps)
        V = th.einsum("nlhd,nhmd,nlh->nlhm", Q, KV, Z)
        return V.contiguous()

    def elu_causal_linear_attention(queries, keys, values, eps=1e-6):
        Q = elu_feature_map(queries)
        K = elu_feature_map(keys)
        KV = th.einsum("nlhd,nlhm->nlhmd", K, values).cumsum(1)
        Z = 1 / (th.einsum("nlhi,nlhi->nlh", Q, K.cumsum(1)) + eps)
        V = th.einsum("nlhd,nlhmd,nlh->nlhm", Q, KV, Z)
        return V.contiguous()

    return (softmax_kernel, generalized_kernel, linear_attention, causal_linear_attention_noncuda,
            elu_linear_attention, elu_causal_linear_attention, rearrange)


def performer(lib, F_, th, kind="favor", projection=None):
    (softmax_kernel, generalized_kernel, linear_attention, causal_linear_attention_noncuda, elu_linear_attention,
     elu_causal_linear_attention, rearrange) = performer_functions(th, F_)

    def exists(val):
        return val is not None

    def empty(tensor):
        return tensor.numel() == 0

    class FastAttention(lib.Module):
        def __init__(self, dim_heads, nb_features=None, ortho_scaling=0, causal=False, generalized_attention=False,
                     kernel_fn=lib.ReLU(), no_projection=False):  # noqa: B008
            super().__init__()
            self.dim_heads = dim_heads
            self.nb_features = nb_features
            self.ortho_scaling = ortho_scaling
            self.register_buffer('projection_matrix', th.tensor(projection))  # the draws, given
            self.generalized_attention = generalized_attention
            self.kernel_fn = kernel_fn
            self.no_projection = no_projection
            self.causal = causal
            if causal:
                self.causal_linear_fn = causal_linear_attention_noncuda

        def forward(self, q, k, v):
            device = q.device
            if self.no_projection:
                q = q.softmax(dim=-1)
                k = th.exp(k) if self.causal else k.softmax(dim=-2)
            elif self.generalized_attention:
                q, k = (generalized_kernel(t, kernel_fn=self.kernel_fn, projection_matrix=self.projection_matrix,
                                           device=device) for t in (q, k))
            else:
                q = softmax_kernel(q, projection_matrix=self.projection_matrix, device=device, is_query=True)
                k = softmax_kernel(k, projection_matrix=self.projection_matrix, device=device, is_query=False)
            attn_fn = linear_attention if not self.causal else self.causal_linear_fn
            out = attn_fn(q, k, v)
            return out

    class Attention(lib.Module):
        def __init__(self, dim, causal=False, heads=8, dim_head=64, nb_features=None, generalized_attention=False,
                     kernel_fn=lib.ReLU(), dropout=0., no_projection=False, qkv_bias=False, attn_out_bias=True):  # noqa: B008
            super().__init__()
            assert dim % heads == 0, 'dimension must be divisible by number of heads'
            inner_dim = dim_head * heads
            self.fast_attention = FastAttention(dim_head, nb_features, causal=causal,
                                                generalized_attention=generalized_attention, kernel_fn=kernel_fn,
                                                no_projection=no_projection)
            self.heads = heads
            self.global_heads = heads
            self.to_q = lib.Linear(dim, inner_dim, bias=qkv_bias)
            self.to_k = lib.Linear(dim, inner_dim, bias=qkv_bias)
            self.to_v = lib.Linear(dim, inner_dim, bias=qkv_bias)
            self.to_out = lib.Linear(inner_dim, dim, bias=attn_out_bias)
            self.dropout = lib.Dropout(dropout)

        def forward(self, x, mask=None):
            b, n, _, h, gh = *x.shape, self.heads, self.global_heads  # noqa: F841
            q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
            q, k, v = map(lambda t: rearrange(t, 'b n (h d) -> b h n d', h=h), (q, k, v))
            (q, lq), (k, lk), (v, lv) = map(lambda t: (t[:, :gh], t[:, gh:]), (q, k, v))
            attn_outs = []
            if not empty(q):
                if exists(mask):
                    global_mask = mask[:, None, :, None]
                    v.masked_fill_(~global_mask, 0.)
                out = self.fast_attention(q, k, v)
                attn_outs.append(out)
            out = th.cat(attn_outs, dim=1)
            out = rearrange(out, 'b h n d -> b n (h d)')
            out = self.to_out(out)
            return self.dropout(out)

    class LinearAttentionLayer(lib.Module):
        """fast-transformers' AttentionLayer around (Causal)LinearAttention: (N, L, H, D) projections."""
        def __init__(self, d_model, n_heads, causal=False):
            super().__init__()
            d_keys = d_model // n_heads
            self.query_projection = lib.Linear(d_model, d_keys * n_heads)
            self.key_projection = lib.Linear(d_model, d_keys * n_heads)
            self.value_projection = lib.Linear(d_model, d_keys * n_heads)
            self.out_projection = lib.Linear(d_keys * n_heads, d_model)
            self.n_heads = n_heads
            self.causal = causal

        def forward(self, x, mask=None):
            N, L, _ = x.shape
            H = self.n_heads
            queries = self.query_projection(x).view(N, L, H, -1)
            keys = self.key_projection(x).view(N, L, H, -1)
            values = self.value_projection(x).view(N, L, H, -1)
            if self.causal:
                new_values = elu_causal_linear_attention(queries, keys, values).view(N, L, -1)
            else:
                new_values = elu_linear_attention(queries, keys, values, mask.float()).view(N, L, -1)
            return self.out_projection(new_values)

    class PreLayerNorm(lib.Module):
        def __init__(self, dim, fn):
            super().__init__()
            self.norm = lib.LayerNorm(dim)
            self.fn = fn

        def forward(self, x, **kwargs):
            return self.fn(self.norm(x), **kwargs)

    class FeedForward(lib.Module):
        def __init__(self, dim, mult=4, dropout=0., activation=None, glu=False):
            super().__init__()
            activation = activation if activation is not None else lib.GELU
            self.glu = glu
            self.w1 = lib.Linear(dim, dim * mult * (2 if glu else 1))
            self.act = activation()
            self.dropout = lib.Dropout(dropout)
            self.w2 = lib.Linear(dim * mult, dim)

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

    class PerformerLM(lib.Module):
        def __init__(self, depth=2):
            super().__init__()
            causal = kind == "favor_causal"
            self.token_emb = lib.Embedding(P_VOCAB, P_DIM)
            self.pos_emb = lib.Embedding(P_LEN, P_DIM)
            layers = []
            for i in range(depth):
                if kind == "elu":  # the second layer causal
                    attn = LinearAttentionLayer(P_DIM, P_HEADS, causal=i == 1)
                else:  # "favor": the second layer's kernel the generalized ReLU one
                    attn = Attention(P_DIM, causal=causal, heads=P_HEADS, dim_head=P_DIM_HEAD, nb_features=P_FEATURES,
                                     generalized_attention=kind == "favor" and i == 1)
                layers.append(lib.ModuleList([PreLayerNorm(P_DIM, attn),
                                              PreLayerNorm(P_DIM, FeedForward(P_DIM, mult=2, glu=i == 1))]))
            self.layers = lib.ModuleList(layers)
            self.norm = lib.LayerNorm(P_DIM)
            self.to_out = lib.Linear(P_DIM, P_VOCAB)

        def forward(self, x, mask=None):
            b, n = x.shape
            x = self.token_emb(x) + self.pos_emb(th.arange(n, device=x.device))
            for attn, ff in self.layers:
                x = x + attn(x, mask=mask)
                x = x + ff(x)
            return self.to_out(self.norm(x))

    return PerformerLM()


def performer_loss(F_):
    def loss(model, x, mask):
        logits = model(x[:, :-1], mask=mask[:, :-1])
        return F_.cross_entropy(logits.transpose(1, 2), x[:, 1:], ignore_index=0)
    return loss


@pytest.mark.parametrize("kind", ["favor", "favor_causal", "elu"])
def test_performer_favor_plus_and_elu_linear_attention_lm_with_adamw_and_a_redrawn_projection(kind):
    rng = np.random.default_rng(7)
    proj = gaussian_orthogonal_random_matrix(rng, P_FEATURES, P_DIM_HEAD)
    ours, theirs = pair(lambda lib, F_, th: performer(lib, F_, th, kind, proj))
    opt = optim.AdamW(ours.parameters(), lr=1e-2, weight_decay=0.1)
    topt = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.1)
    step = train_step(performer_loss(F))
    for it, mode in enumerate(MODES):
        x = rng.integers(1, P_VOCAB, (P_BATCH, P_LEN + 1))
        x[1, 4:] = 0  # padding: masked keys (`v.masked_fill_(~mask, 0.)`, fast-transformers' key lengths)
        mask = x != 0
        if it == 2 and kind.startswith("favor"):  # FastAttention.redraw_projection_matrix, its draws given
            new = gaussian_orthogonal_random_matrix(rng, P_FEATURES, P_DIM_HEAD)
            with torch.no_grad(), av.no_grad():
                for m in (ours, theirs):
                    for i in range(2):
                        m.layers[i][0].fn.fast_attention.projection_matrix.copy_(
                            (torch if m is theirs else av).tensor(new))
        topt.zero_grad()
        tl = performer_loss(TF)(theirs, T(x), T(mask))
        tl.backward()
        topt.step()
        with strict():
            loss = compiled(step, mode)(ours, opt, av.tensor(x), av.tensor(mask))
        assert rel(loss, tl) < 1e-12, (it, mode)
        same_weights(ours, theirs, 1e-10)


def test_tacotron2_prenet_dropout_always_on_draws_from_avalons_stream_eagerly_and_compiled():
    """The prenet as written (`F.dropout(..., p=0.5, training=True)` in eval too): Avalon's own stream, fresh
    draws on every compiled call, reproducible under av.manual_seed, each unit kept and doubled or dropped."""
    model = tacotron2(nn, F, av).to(av.float64)
    model.eval()
    prenet = model.decoder.prenet
    x = av.tensor(np.random.default_rng(9).standard_normal((3, 2, HParams.n_mel_channels)))
    h = F.relu(prenet.layers[0](x))
    for mode in MODES:
        f = compiled(lambda p, x: p(x), mode)
        with strict():
            av.manual_seed(3)
            a, b = f(prenet, x), f(prenet, x)
            av.manual_seed(3)
            assert (f(prenet, x).numpy() == a.numpy()).all(), mode
        assert (a.numpy() != b.numpy()).any() and a.shape == (3, 2, HParams.prenet_dim)
    first = F.dropout(h, p=0.5, training=True).numpy()
    kept = first != 0
    assert 0 < kept.mean() < 1 and np.allclose(first[kept], 2 * h.numpy()[kept])


# -- regressions: what the programs above found --------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_creation_functions_take_size_by_keyword(mode):
    """pyGAT's `nn.Parameter(torch.empty(size=(in_features, out_features)))`: torch's creation functions take
    `size` by keyword too (and `full` its `fill_value`); Avalon's took only `*size`."""
    def f(th, x):
        return (th.empty(size=(2, 3)).shape, th.zeros(size=(2,), dtype=th.float64) + x, th.ones(size=[1, 2]) * 2,
                th.rand(size=(4, 1)).shape, th.randn(size=(3,)).shape, th.full(size=(2,), fill_value=1.5),
                th.full((2,), fill_value=3), x.new_zeros(size=(1, 2)), x.new_ones(size=(2,)), x.new_empty(size=(2,)).shape)
    x = np.array([1.0, 2.0])
    with strict():
        got = compiled(lambda x: f(av, x), mode)(av.tensor(x))
    for g, w in zip(got, f(torch, T(x))):
        if isinstance(w, torch.Size):
            assert tuple(g) == tuple(w)
        else:
            assert g.dtype == getattr(av, str(w.dtype).split(".")[1]) and rel(g, w) == 0
    assert av.full(size=(2,), fill_value=1 + 2j).dtype == av.complex64
    with pytest.raises(TypeError, match="multiple values for argument 'size'"):
        av.zeros(2, size=(2, 3))


def test_modules_in_a_plain_list_that_add_module_registers_take_torchs_names():
    """pyGAT keeps its heads in a plain list and registers each with `add_module('attention_{}'.format(i), ...)`:
    torch names them `attention_0.W` only. Avalon walks plain lists too (the README), and the list came first, so
    named_parameters said `attentions.0.W` and state_dict listed both names. Now a plain list (tuple, dict) every
    item of which the model also holds under an attribute adds no names; any other plain list still does."""
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(av.ones(2, 2))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(2, 2)
            self.attentions = [Head() for _ in range(2)]
            for i, attention in enumerate(self.attentions):
                self.add_module('attention_{}'.format(i), attention)  # noqa: UP032
            self.extra = {"a": self.first}  # an alias dict: also no names of its own
            self.blocks = [nn.Linear(2, 1)]  # held nowhere else: part of the model, as the README says
            self.out_att = Head()

    net = Net()
    names = ['first.weight', 'first.bias', 'attention_0.W', 'attention_1.W', 'blocks.0.weight', 'blocks.0.bias',
             'out_att.W']
    assert [k for k, _ in net.named_parameters()] == names
    assert list(net.state_dict()) == names
    assert [k for k, _ in nn.named_modules(net)][:4] == ['', 'first', 'attention_0', 'attention_1']
    net.attentions[1].W.data.fill_(3.0)
    sd = net.state_dict()
    nn.load_state_dict(net, {k: v * 2 for k, v in sd.items()})
    assert (net.attention_1.W.numpy() == 6).all() and net.attentions[1] is net.attention_1
    grads = av.grad(lambda m, x: (m.attentions[1].W * x).sum())(net, av.ones(2, 2))
    assert list(grads) == ['attention_1.W']
    opt = optim.SGD(net.parameters(), lr=0.5)
    step = av.compile(train_step(lambda m, x: (m.attentions[1].W * x).sum() + m.blocks[0](x).sum()), backend="numpy")
    with strict():
        step(net, opt, av.ones(2, 2))
    assert (net.attention_1.W.numpy() == 5.5).all() and (net.attention_0.W.numpy() == 2).all()


@pytest.mark.parametrize("mode", MODES)
def test_arange_writes_into_out_as_tacotron2s_get_mask_from_lengths(mode):
    """NVIDIA's Tacotron 2 (and WaveGlow, Mellotron, Flowtron) build the memory mask by `torch.arange(0, max_len,
    out=torch.cuda.LongTensor(max_len))`: Avalon refused `out=`; now it writes a tensor of the result's shape (in
    its dtype, as torch's) and returns it; a tensor of another shape is an error, as Avalon tensors do not resize."""
    lengths = np.array([4, 2, 3])

    def mask(th, lengths):
        out = th.LongTensor(4)
        ids = th.arange(0, 4, out=out)
        floats = th.arange(0, 4, out=th.FloatTensor(4))
        return (ids < lengths.unsqueeze(1)).bool(), ids is out, floats

    with strict():
        got = compiled(lambda n: mask(av, n), mode)(av.tensor(lengths))
    want = mask(torch, T(lengths))
    assert (got[0].numpy() == want[0].numpy()).all() and got[1] and want[1]
    assert got[2].dtype == av.float32 and (got[2].numpy() == want[2].numpy()).all()
    with pytest.raises(RuntimeError, match="cannot be resized"):
        av.arange(0, 5, out=av.LongTensor(3))


@pytest.mark.parametrize("mode", MODES)
def test_tensor_unsqueeze_takes_dim_by_keyword(mode):
    """performer-pytorch's softmax_kernel: `diag_data.unsqueeze(dim=-1)`; Tensor.unsqueeze was expand_dims,
    whose argument is `axis`."""
    x = np.random.default_rng(10).standard_normal((2, 3))
    with strict():
        got = compiled(lambda x: (x.unsqueeze(dim=-1), x.unsqueeze(0), av.unsqueeze(x, dim=1)), mode)(av.tensor(x))
    for g, w in zip(got, (T(x).unsqueeze(dim=-1), T(x).unsqueeze(0), torch.unsqueeze(T(x), dim=1))):
        assert rel(g, w) == 0 and g.shape == tuple(w.shape)

"""Round 12 of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
outputs, gradients, parameters and buffers): the first step eager, then two compiled on the numpy backend and two on
the cpu backend (one trace each), by test_port_programs_44's `train_like_torch`.

Programs: MuggleWang/CosFace_pytorch (layer.py's `cosine_sim` by `torch.mm`/`torch.norm`/`torch.ger(...).clamp`,
MarginCosineProduct's `one_hot.scatter_(1, label.view(-1, 1), 1.0)` and `self.s * (cosine - one_hot * self.m)`;
net.py's sphere with PReLU blocks and its init loop over `self.modules()`; main.py's SGD over two param groups with
`adjust_learning_rate` writing `param_group['lr']` between steps); DeepCTR-Torch's MMOE (models/multitask/mmoe.py:
expert/gate/tower DNNs in ModuleLists with the `named_parameters` normal init loop, `torch.stack`
of the experts, `torch.matmul(gate.softmax(1).unsqueeze(1), expert_outs)`, `.squeeze()`, PredictionLayer's in-place
`output += self.bias`, the per-task `F.binary_cross_entropy(..., reduction='sum')` sum); DeepCTR-Torch's DIN
(models/din.py, layers/sequence.py's AttentionSequencePoolingLayer: the `torch.arange(...).repeat(B, 1) <
keys_length.view(-1, 1)` mask, `torch.where(keys_masks, outputs, paddings)`; layers/core.py's LocalActivationUnit
over `[q, k, q - k, q * k]`; layers/activation.py's Dice on transposed (B, H, T) through BatchNorm1d; the embedding
lookups `X[:, a:b].long()` with the history sharing the item's table); galsang/BiDAF-pytorch (model/model.py's char
CNN with `F.max_pool1d(x, x.size(2)).squeeze()`, the `setattr`/`getattr` highway, the attention flow's per-question-
word `q.select(1, i)` similarity loop, `torch.max(s, dim=2)[0]`, the output LSTM; utils/nn.py's LSTM wrapper: sort
by length, `index_select`, `pack_padded_sequence`/`pad_packed_sequence`, unsort, its orthogonal/kaiming init with
`chunk(4)[1].fill_(1)` forget-gate biases; run.py's two cross-entropies, Adadelta and the EMA of the parameters);
facebookresearch/demucs v2 (model.py's Demucs with GLU rewrites, the BLSTM over `permute(2, 0, 1)`, the U-Net skips
by utils.py's `center_trim`, `rescale_module`'s `conv.weight.data /= scale` over `module.modules()`, the
normalised input `(x - mean) / (1e-5 + std)`; augment.py's Shift by `wav.gather(3, indexes + offsets)` and FlipSign;
train.py's L1 on the center-trimmed sources and the `p.grad.data.norm()**2` gradient norm).

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`); random draws (Demucs'
augmentation offsets and signs) are drawn on the numpy side and passed in. Dropouts are off.

Found: `pad_packed_sequence` of traced lengths (BiDAF's LSTM wrapper, under value_and_grad or compile) returned the
packed input's padded length where torch returns the longest length: silently more steps when the batch was padded
past its longest sequence; now checked when the graph runs (the last test).
"""
# the authors' idioms as written: super(Class, self), '{}'.format(...)
# ruff: noqa: UP008, UP032, UP039, B007
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import rel
from test_port_programs_44 import MODES, train_like_torch
from test_port_programs_more import pair

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache", "torch_on_one_thread")

F32 = torch.float32


def libs(x):
    """(lib, F_, th) of the side `x` is on."""
    return (torch.nn, TF, torch) if isinstance(x, torch.Tensor) else (nn, F, av)


# -- 1. CosFace (MuggleWang/CosFace_pytorch layer.py, net.py, main.py) ------------------------------------------------

def cosface(lib, F_, th, classnum=5, filters=(3, 4, 8), layers=(1, 1), feat_dim=8):
    torch, nn, F = th, lib, F_  # noqa: F841
    Parameter = nn.Parameter

    def cosine_sim(x1, x2, dim=1, eps=1e-8):
        ip = torch.mm(x1, x2.t())
        w1 = torch.norm(x1, 2, dim)
        w2 = torch.norm(x2, 2, dim)
        return ip / torch.ger(w1, w2).clamp(min=eps)

    class MarginCosineProduct(nn.Module):
        def __init__(self, in_features, out_features, s=30.0, m=0.40):
            super(MarginCosineProduct, self).__init__()
            self.in_features = in_features
            self.out_features = out_features
            self.s = s
            self.m = m
            self.weight = Parameter(torch.Tensor(out_features, in_features))
            nn.init.xavier_uniform_(self.weight)

        def forward(self, input, label):
            cosine = cosine_sim(input, self.weight)
            one_hot = torch.zeros_like(cosine)
            one_hot.scatter_(1, label.view(-1, 1), 1.0)
            output = self.s * (cosine - one_hot * self.m)
            return output

    class Block(nn.Module):
        def __init__(self, planes):
            super(Block, self).__init__()
            self.conv1 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
            self.prelu1 = nn.PReLU(planes)
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
            self.prelu2 = nn.PReLU(planes)

        def forward(self, x):
            return x + self.prelu2(self.conv2(self.prelu1(self.conv1(x))))

    class sphere(nn.Module):
        def __init__(self):
            super(sphere, self).__init__()
            block = Block
            filter_list = list(filters)
            self.layer1 = self._make_layer(block, filter_list[0], filter_list[1], layers[0], stride=2)
            self.layer2 = self._make_layer(block, filter_list[1], filter_list[2], layers[1], stride=2)
            self.fc = nn.Linear(filter_list[2] * 2 * 2, feat_dim)
            # Weight initialization
            for m in self.modules():
                if isinstance(m, nn.Conv2d) or isinstance(m, nn.Linear):
                    if m.bias is not None:
                        nn.init.xavier_uniform_(m.weight)
                        nn.init.constant_(m.bias, 0.0)
                    else:
                        nn.init.normal_(m.weight, 0, 0.01)

        def _make_layer(self, block, inplanes, planes, blocks, stride):
            layers = []
            layers.append(nn.Conv2d(inplanes, planes, 3, stride, 1))
            layers.append(nn.PReLU(planes))
            for i in range(blocks):
                layers.append(block(planes))
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.layer1(x)
            x = self.layer2(x)
            x = x.view(x.size(0), -1)
            x = self.fc(x)
            return x

    class FaceModel(nn.Module):  # main.py's `model` and `MCP`, trained together
        def __init__(self):
            super(FaceModel, self).__init__()
            self.model = sphere()
            self.MCP = MarginCosineProduct(feat_dim, classnum)

    return FaceModel()


def test_cosface_margin_cosine_scatter_one_hot_sphere_prelu_sgd_param_groups_with_lr_steps():
    model, tmodel = pair(cosface, dtype=F32)
    base_lr, step_size = 0.1, [2, 4]

    def make(lib_optim, m):
        return lib_optim.SGD([{'params': m.model.parameters()}, {'params': m.MCP.parameters()}],
                             lr=base_lr, momentum=0.9, weight_decay=5e-4)
    optimizer, toptimizer = make(av.optim, model), make(torch.optim, tmodel)

    def adjust_learning_rate(optimizer, iteration, step_size):
        """Sets the learning rate to the initial LR decayed by 10 each step size"""
        if iteration in step_size:
            lr = base_lr * (0.1 ** (step_size.index(iteration) + 1))
            print('Adjust learning rate to {}'.format(lr))
            for param_group in optimizer.param_groups:
                param_group['lr'] = lr

    def before(it):
        adjust_learning_rate(optimizer, it, step_size)
        adjust_learning_rate(toptimizer, it, step_size)

    def loss_fn(face, img, label):
        _, F_, _ = libs(img)
        output = face.model(img)
        output = face.MCP(output, label)
        loss = F_.cross_entropy(output, label)  # criterion = torch.nn.CrossEntropyLoss()
        return loss, output

    rng = np.random.default_rng(0)
    train_like_torch(model, tmodel, optimizer, toptimizer, loss_fn,
                     [(rng.standard_normal((6, 3, 8, 8)).astype(np.float32), rng.integers(0, 5, 6))
                      for _ in MODES], before=before, tol=2e-4)
    assert optimizer.param_groups[1]['lr'] == pytest.approx(base_lr * 0.01)


# -- 2. MMOE (shenweichen/DeepCTR-Torch models/multitask/mmoe.py, layers/core.py's DNN and PredictionLayer) ----------

def mmoe(lib, F_, th, n_sparse=2, vocab=6, embedding_dim=3, n_dense=2, num_experts=3, expert_dnn_hidden_units=(8, 6),
         gate_dnn_hidden_units=(5,), tower_dnn_hidden_units=(4,), init_std=0.1, dnn_use_bn=False,
         task_types=('binary', 'binary')):
    torch, nn, F = th, lib, F_  # noqa: F841

    class DNN(nn.Module):
        def __init__(self, inputs_dim, hidden_units, activation='relu', l2_reg=0, dropout_rate=0, use_bn=False,
                     init_std=0.0001, dice_dim=3, seed=1024, device='cpu'):
            super(DNN, self).__init__()
            self.dropout_rate = dropout_rate
            self.dropout = nn.Dropout(dropout_rate)
            self.seed = seed
            self.l2_reg = l2_reg
            self.use_bn = use_bn
            if len(hidden_units) == 0:
                raise ValueError("hidden_units is empty!!")
            hidden_units = [inputs_dim] + list(hidden_units)
            self.linears = nn.ModuleList(
                [nn.Linear(hidden_units[i], hidden_units[i + 1]) for i in range(len(hidden_units) - 1)])
            if self.use_bn:
                self.bn = nn.ModuleList(
                    [nn.BatchNorm1d(hidden_units[i + 1]) for i in range(len(hidden_units) - 1)])
            self.activation_layers = nn.ModuleList(
                [nn.ReLU(inplace=True) for i in range(len(hidden_units) - 1)])
            for name, tensor in self.linears.named_parameters():
                if 'weight' in name:
                    nn.init.normal_(tensor, mean=0, std=init_std)
            self.to(device)

        def forward(self, inputs):
            deep_input = inputs
            for i in range(len(self.linears)):
                fc = self.linears[i](deep_input)
                if self.use_bn:
                    fc = self.bn[i](fc)
                fc = self.activation_layers[i](fc)
                fc = self.dropout(fc)
                deep_input = fc
            return deep_input

    class PredictionLayer(nn.Module):
        def __init__(self, task='binary', use_bias=True, **kwargs):
            if task not in ["binary", "multiclass", "regression"]:
                raise ValueError("task must be binary,multiclass or regression")
            super(PredictionLayer, self).__init__()
            self.use_bias = use_bias
            self.task = task
            if self.use_bias:
                self.bias = nn.Parameter(torch.zeros((1,)))

        def forward(self, X):
            output = X
            if self.use_bias:
                output += self.bias
            if self.task == "binary":
                output = torch.sigmoid(output)
            return output

    class MMOE(nn.Module):
        def __init__(self):
            super(MMOE, self).__init__()
            self.num_tasks = len(task_types)
            self.num_experts = num_experts
            self.gate_dnn_hidden_units = gate_dnn_hidden_units
            self.tower_dnn_hidden_units = tower_dnn_hidden_units
            # BaseModel's create_embedding_matrix
            self.embedding_dict = nn.ModuleDict(
                {'C{}'.format(i): nn.Embedding(vocab, embedding_dim, sparse=False) for i in range(n_sparse)})
            for tensor in self.embedding_dict.values():
                nn.init.normal_(tensor.weight, mean=0, std=init_std)
            self.input_dim = n_sparse * embedding_dim + n_dense
            self.expert_dnn = nn.ModuleList([DNN(self.input_dim, expert_dnn_hidden_units, use_bn=dnn_use_bn,
                                                 init_std=init_std) for _ in range(self.num_experts)])
            if len(gate_dnn_hidden_units) > 0:
                self.gate_dnn = nn.ModuleList([DNN(self.input_dim, gate_dnn_hidden_units, use_bn=dnn_use_bn,
                                                   init_std=init_std) for _ in range(self.num_tasks)])
            self.gate_dnn_final_layer = nn.ModuleList(
                [nn.Linear(gate_dnn_hidden_units[-1] if len(gate_dnn_hidden_units) > 0 else self.input_dim,
                           self.num_experts, bias=False) for _ in range(self.num_tasks)])
            if len(tower_dnn_hidden_units) > 0:
                self.tower_dnn = nn.ModuleList([DNN(expert_dnn_hidden_units[-1], tower_dnn_hidden_units,
                                                    use_bn=dnn_use_bn, init_std=init_std)
                                                for _ in range(self.num_tasks)])
            self.tower_dnn_final_layer = nn.ModuleList([nn.Linear(
                tower_dnn_hidden_units[-1] if len(tower_dnn_hidden_units) > 0 else expert_dnn_hidden_units[-1], 1,
                bias=False) for _ in range(self.num_tasks)])
            self.out = nn.ModuleList([PredictionLayer(task) for task in task_types])

        def forward(self, X):
            # input_from_feature_columns + combined_dnn_input
            sparse_embedding_list = [self.embedding_dict['C{}'.format(i)](X[:, i:i + 1].long())
                                     for i in range(n_sparse)]
            dense_value_list = [X[:, n_sparse + j:n_sparse + j + 1] for j in range(n_dense)]
            sparse_dnn_input = torch.flatten(torch.cat(sparse_embedding_list, dim=-1), start_dim=1)
            dense_dnn_input = torch.flatten(torch.cat(dense_value_list, dim=-1), start_dim=1)
            dnn_input = torch.cat([sparse_dnn_input, dense_dnn_input], dim=-1)

            # expert dnn
            expert_outs = []
            for i in range(self.num_experts):
                expert_out = self.expert_dnn[i](dnn_input)
                expert_outs.append(expert_out)
            expert_outs = torch.stack(expert_outs, 1)  # (bs, num_experts, dim)

            # gate dnn
            mmoe_outs = []
            for i in range(self.num_tasks):
                if len(self.gate_dnn_hidden_units) > 0:
                    gate_dnn_out = self.gate_dnn[i](dnn_input)
                    gate_dnn_out = self.gate_dnn_final_layer[i](gate_dnn_out)
                else:
                    gate_dnn_out = self.gate_dnn_final_layer[i](dnn_input)
                gate_mul_expert = torch.matmul(gate_dnn_out.softmax(1).unsqueeze(1), expert_outs)  # (bs, 1, dim)
                mmoe_outs.append(gate_mul_expert.squeeze())

            # tower dnn (task-specific)
            task_outs = []
            for i in range(self.num_tasks):
                if len(self.tower_dnn_hidden_units) > 0:
                    tower_dnn_out = self.tower_dnn[i](mmoe_outs[i])
                    tower_dnn_logit = self.tower_dnn_final_layer[i](tower_dnn_out)
                else:
                    tower_dnn_logit = self.tower_dnn_final_layer[i](mmoe_outs[i])
                output = self.out[i](tower_dnn_logit)
                task_outs.append(output)
            task_outs = torch.cat(task_outs, -1)
            return task_outs

    return MMOE()


def test_mmoe_experts_softmax_gates_towers_in_place_bias_and_summed_task_bce_with_adam():
    model, tmodel = pair(mmoe, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)

    def loss_fn(model, x, y):
        _, F_, _ = libs(x)
        y_pred = model(x)
        # BaseModel.fit, multi-task: the per-task losses summed
        loss = sum([F_.binary_cross_entropy(y_pred[:, i], y[:, i], reduction='sum') for i in range(2)])
        return loss, y_pred

    rng = np.random.default_rng(1)

    def batch():
        x = np.concatenate([rng.integers(0, 6, (8, 2)), rng.standard_normal((8, 2))], 1).astype(np.float32)
        return x, rng.integers(0, 2, (8, 2)).astype(np.float32)
    train_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, [batch() for _ in MODES], tol=2e-4)


# -- 3. DIN (shenweichen/DeepCTR-Torch models/din.py, layers/sequence.py, layers/core.py, layers/activation.py) ------

def din(lib, F_, th, vocab=(5, 7, 4), embedding_dim=3, T=4, att_hidden_size=(6, 4), dnn_hidden_units=(8, 5),
        init_std=0.1):
    torch, nn, F = th, lib, F_  # noqa: F841

    class Dice(nn.Module):
        def __init__(self, emb_size, dim=2, epsilon=1e-8, device='cpu'):
            super(Dice, self).__init__()
            assert dim == 2 or dim == 3
            self.bn = nn.BatchNorm1d(emb_size, eps=epsilon)
            self.sigmoid = nn.Sigmoid()
            self.dim = dim
            # wrap alpha in nn.Parameter to make it trainable
            if self.dim == 2:
                self.alpha = nn.Parameter(torch.zeros((emb_size,)).to(device))
            else:
                self.alpha = nn.Parameter(torch.zeros((emb_size, 1)).to(device))

        def forward(self, x):
            assert x.dim() == self.dim
            if self.dim == 2:
                x_p = self.sigmoid(self.bn(x))
                out = self.alpha * (1 - x_p) * x + x_p * x
            else:
                x = torch.transpose(x, 1, 2)
                x_p = self.sigmoid(self.bn(x))
                out = self.alpha * (1 - x_p) * x + x_p * x
                out = torch.transpose(out, 1, 2)
            return out

    def activation_layer(act_name, hidden_size=None, dice_dim=2):
        if act_name.lower() == 'sigmoid':
            return nn.Sigmoid()
        elif act_name.lower() == 'relu':
            return nn.ReLU(inplace=True)
        elif act_name.lower() == 'dice':
            assert dice_dim
            return Dice(hidden_size, dice_dim)
        raise NotImplementedError

    class DNN(nn.Module):
        def __init__(self, inputs_dim, hidden_units, activation='relu', dice_dim=3, init_std=0.0001):
            super(DNN, self).__init__()
            hidden_units = [inputs_dim] + list(hidden_units)
            self.linears = nn.ModuleList(
                [nn.Linear(hidden_units[i], hidden_units[i + 1]) for i in range(len(hidden_units) - 1)])
            self.activation_layers = nn.ModuleList(
                [activation_layer(activation, hidden_units[i + 1], dice_dim) for i in range(len(hidden_units) - 1)])
            for name, tensor in self.linears.named_parameters():
                if 'weight' in name:
                    nn.init.normal_(tensor, mean=0, std=init_std)

        def forward(self, inputs):
            deep_input = inputs
            for i in range(len(self.linears)):
                fc = self.linears[i](deep_input)
                fc = self.activation_layers[i](fc)
                deep_input = fc
            return deep_input

    class LocalActivationUnit(nn.Module):
        def __init__(self, hidden_units=(64, 32), embedding_dim=4, activation='sigmoid', dice_dim=3):
            super(LocalActivationUnit, self).__init__()
            self.dnn = DNN(inputs_dim=4 * embedding_dim, hidden_units=hidden_units, activation=activation,
                           dice_dim=dice_dim, init_std=init_std)
            self.dense = nn.Linear(hidden_units[-1], 1)

        def forward(self, query, user_behavior):
            # query ad            : size -> batch_size * 1 * embedding_size
            # user behavior       : size -> batch_size * time_seq_len * embedding_size
            user_behavior_len = user_behavior.size(1)
            queries = query.expand(-1, user_behavior_len, -1)
            attention_input = torch.cat([queries, user_behavior, queries - user_behavior, queries * user_behavior],
                                        dim=-1)  # as the source code, subtraction simulates verctors' difference
            attention_output = self.dnn(attention_input)
            attention_score = self.dense(attention_output)  # [B, T, 1]
            return attention_score

    class AttentionSequencePoolingLayer(nn.Module):
        def __init__(self, att_hidden_units=(80, 40), att_activation='sigmoid', weight_normalization=False,
                     return_score=False, supports_masking=False, embedding_dim=4, **kwargs):
            super(AttentionSequencePoolingLayer, self).__init__()
            self.return_score = return_score
            self.weight_normalization = weight_normalization
            self.supports_masking = supports_masking
            self.local_att = LocalActivationUnit(hidden_units=att_hidden_units, embedding_dim=embedding_dim,
                                                 activation=att_activation)

        def forward(self, query, keys, keys_length, mask=None):
            batch_size, max_length, _ = keys.size()
            # Mask
            if self.supports_masking:
                if mask is None:
                    raise ValueError("When supports_masking=True,input must support masking")
                keys_masks = mask.unsqueeze(1)
            else:
                keys_masks = torch.arange(max_length, device=keys_length.device,
                                          dtype=keys_length.dtype).repeat(batch_size, 1)  # [B, T]
                keys_masks = keys_masks < keys_length.view(-1, 1)  # 0, 1 mask
                keys_masks = keys_masks.unsqueeze(1)  # [B, 1, T]

            attention_score = self.local_att(query, keys)  # [B, T, 1]
            outputs = torch.transpose(attention_score, 1, 2)  # [B, 1, T]
            if self.weight_normalization:
                paddings = torch.ones_like(outputs) * (-2 ** 32 + 1)
            else:
                paddings = torch.zeros_like(outputs)
            outputs = torch.where(keys_masks, outputs, paddings)  # [B, 1, T]
            if self.weight_normalization:
                outputs = F.softmax(outputs, dim=-1)  # [B, 1, T]
            if not self.return_score:
                # Weighted sum
                outputs = torch.matmul(outputs, keys)  # [B, 1, E]
            return outputs

    class DIN(nn.Module):
        """Features: user, item_id, cate_id (sparse); hist_item_id, hist_cate_id (T each, sharing the item's and the
        category's tables); seq_length; one dense score: X's columns in that order."""
        def __init__(self, weight_normalization=False):
            super(DIN, self).__init__()
            names = ['user', 'item_id', 'cate_id']
            self.embedding_dict = nn.ModuleDict({name: nn.Embedding(v, embedding_dim, sparse=False)
                                                 for name, v in zip(names, vocab)})
            for tensor in self.embedding_dict.values():
                nn.init.normal_(tensor.weight, mean=0, std=init_std)
            self.feature_index = {'user': (0, 1), 'item_id': (1, 2), 'cate_id': (2, 3), 'hist_item_id': (3, 3 + T),
                                  'hist_cate_id': (3 + T, 3 + 2 * T), 'seq_length': (3 + 2 * T, 4 + 2 * T),
                                  'score': (4 + 2 * T, 5 + 2 * T)}
            self.history_feature_list = ['item_id', 'cate_id']
            att_emb_dim = 2 * embedding_dim
            self.attention = AttentionSequencePoolingLayer(att_hidden_units=att_hidden_size, embedding_dim=att_emb_dim,
                                                           att_activation='Dice', return_score=False,
                                                           supports_masking=False,
                                                           weight_normalization=weight_normalization)
            self.dnn = DNN(inputs_dim=5 * embedding_dim + 1, hidden_units=dnn_hidden_units, activation='relu',
                           init_std=init_std)
            self.dnn_linear = nn.Linear(dnn_hidden_units[-1], 1, bias=False)

        def lookup(self, X, feat, table):
            lookup_idx = np.array(self.feature_index[feat])
            input_tensor = X[:, lookup_idx[0]:lookup_idx[1]].long()
            return self.embedding_dict[table](input_tensor)

        def forward(self, X):
            dense_value_list = [X[:, self.feature_index['score'][0]:self.feature_index['score'][1]]]
            query_emb_list = [self.lookup(X, f, f) for f in self.history_feature_list]
            keys_emb_list = [self.lookup(X, 'hist_' + f, f) for f in self.history_feature_list]
            dnn_input_emb_list = [self.lookup(X, f, f) for f in ['user', 'item_id', 'cate_id']]
            deep_input_emb = torch.cat(dnn_input_emb_list, dim=-1)
            query_emb = torch.cat(query_emb_list, dim=-1)  # [B, 1, E]
            keys_emb = torch.cat(keys_emb_list, dim=-1)  # [B, T, E]
            lo, hi = self.feature_index['seq_length']
            keys_length = torch.squeeze(X[:, lo:hi].long(), 1)  # maxlen_lookup
            hist = self.attention(query_emb, keys_emb, keys_length)  # [B, 1, E]
            # deep part
            deep_input_emb = torch.cat((deep_input_emb, hist), dim=-1)
            deep_input_emb = deep_input_emb.view(deep_input_emb.size(0), -1)
            dnn_input = torch.cat([torch.flatten(deep_input_emb, start_dim=1),
                                   torch.flatten(torch.cat(dense_value_list, dim=-1), start_dim=1)], dim=-1)
            dnn_output = self.dnn(dnn_input)
            dnn_logit = self.dnn_linear(dnn_output)
            y_pred = torch.sigmoid(dnn_logit)
            return y_pred

    return DIN()


def test_din_dice_attention_pooling_arange_length_mask_where_and_shared_history_embeddings():
    model, tmodel = pair(din, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)

    def loss_fn(model, x, y):
        _, F_, _ = libs(x)
        y_pred = model(x)
        loss = F_.binary_cross_entropy(y_pred.squeeze(), y.squeeze(), reduction='sum')
        return loss, y_pred

    rng = np.random.default_rng(2)

    def batch(B=6, T=4):
        lengths = rng.integers(1, T + 1, B)
        hist_item = rng.integers(1, 7, (B, T)) * (np.arange(T) < lengths[:, None])  # padded with 0
        hist_cate = rng.integers(1, 4, (B, T)) * (np.arange(T) < lengths[:, None])
        x = np.concatenate([rng.integers(0, 5, (B, 1)), rng.integers(1, 7, (B, 1)), rng.integers(1, 4, (B, 1)),
                            hist_item, hist_cate, lengths[:, None], rng.standard_normal((B, 1))], 1)
        return x.astype(np.float32), rng.integers(0, 2, (B, 1)).astype(np.float32)
    # the attention unit's biases feed Dice's batch norm, whose path gives them nothing: what is left is a difference
    # of near-equal terms, ~1e-3 of the largest gradient, that torch's float32 gets to 1.5e-4 of itself (against
    # float64) and Avalon to 3e-6; so errors are measured against 1e-2, not 1e-4, for every gradient
    train_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, [batch() for _ in MODES], tol=2e-4, floor=1e-2)


# -- 4. BiDAF (galsang/BiDAF-pytorch model/model.py, utils/nn.py, run.py's train and EMA) ----------------------------

class Args:
    char_vocab_size, char_dim, char_channel_width, char_channel_size = 9, 4, 2, 3
    word_vocab_size, word_dim, hidden_size, dropout = 11, 5, 4, 0.0


def bidaf(lib, F_, th, args=Args, pretrained_seed=5):
    torch, nn, F = th, lib, F_  # noqa: F841
    pretrained = torch.tensor(np.random.default_rng(pretrained_seed).standard_normal(
        (args.word_vocab_size, args.word_dim)).astype(np.float32))  # GloVe

    class LSTM(nn.Module):
        def __init__(self, input_size, hidden_size, batch_first=False, num_layers=1, bidirectional=False, dropout=0.2):
            super(LSTM, self).__init__()
            self.rnn = nn.LSTM(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                               bidirectional=bidirectional, batch_first=batch_first)
            self.reset_params()
            self.dropout = nn.Dropout(p=dropout)

        def reset_params(self):
            for i in range(self.rnn.num_layers):
                nn.init.orthogonal_(getattr(self.rnn, f'weight_hh_l{i}'))
                nn.init.kaiming_normal_(getattr(self.rnn, f'weight_ih_l{i}'))
                nn.init.constant_(getattr(self.rnn, f'bias_hh_l{i}'), val=0)
                nn.init.constant_(getattr(self.rnn, f'bias_ih_l{i}'), val=0)
                with torch.no_grad():  # (the repository's torch 0.4 allowed the fill_ outside no_grad)
                    getattr(self.rnn, f'bias_hh_l{i}').chunk(4)[1].fill_(1)

                if self.rnn.bidirectional:
                    nn.init.orthogonal_(getattr(self.rnn, f'weight_hh_l{i}_reverse'))
                    nn.init.kaiming_normal_(getattr(self.rnn, f'weight_ih_l{i}_reverse'))
                    nn.init.constant_(getattr(self.rnn, f'bias_hh_l{i}_reverse'), val=0)
                    nn.init.constant_(getattr(self.rnn, f'bias_ih_l{i}_reverse'), val=0)
                    with torch.no_grad():
                        getattr(self.rnn, f'bias_hh_l{i}_reverse').chunk(4)[1].fill_(1)

        def forward(self, x):
            x, x_len = x
            x = self.dropout(x)

            x_len_sorted, x_idx = torch.sort(x_len, descending=True)
            x_sorted = x.index_select(dim=0, index=x_idx)
            _, x_ori_idx = torch.sort(x_idx)

            x_packed = nn.utils.rnn.pack_padded_sequence(x_sorted, x_len_sorted, batch_first=True)
            x_packed, (h, c) = self.rnn(x_packed)

            x = nn.utils.rnn.pad_packed_sequence(x_packed, batch_first=True)[0]
            x = x.index_select(dim=0, index=x_ori_idx)
            h = h.permute(1, 0, 2).contiguous().view(-1, h.size(0) * h.size(2)).squeeze()
            h = h.index_select(dim=0, index=x_ori_idx)

            return x, h

    class Linear(nn.Module):
        def __init__(self, in_features, out_features, dropout=0.0):
            super(Linear, self).__init__()
            self.linear = nn.Linear(in_features=in_features, out_features=out_features)
            if dropout > 0:
                self.dropout = nn.Dropout(p=dropout)
            self.reset_params()

        def reset_params(self):
            nn.init.kaiming_normal_(self.linear.weight)
            nn.init.constant_(self.linear.bias, 0)

        def forward(self, x):
            if hasattr(self, 'dropout'):
                x = self.dropout(x)
            x = self.linear(x)
            return x

    class BiDAF(nn.Module):
        def __init__(self, args, pretrained):
            super(BiDAF, self).__init__()
            self.args = args
            # 1. Character Embedding Layer
            self.char_emb = nn.Embedding(args.char_vocab_size, args.char_dim, padding_idx=1)
            nn.init.uniform_(self.char_emb.weight, -0.001, 0.001)
            self.char_conv = nn.Sequential(
                nn.Conv2d(1, args.char_channel_size, (args.char_dim, args.char_channel_width)),
                nn.ReLU()
            )
            # 2. Word Embedding Layer
            # initialize word embedding with GloVe
            self.word_emb = nn.Embedding.from_pretrained(pretrained, freeze=True)
            # highway network
            assert self.args.hidden_size * 2 == (self.args.char_channel_size + self.args.word_dim)
            for i in range(2):
                setattr(self, 'highway_linear{}'.format(i),
                        nn.Sequential(Linear(args.hidden_size * 2, args.hidden_size * 2), nn.ReLU()))
                setattr(self, 'highway_gate{}'.format(i),
                        nn.Sequential(Linear(args.hidden_size * 2, args.hidden_size * 2), nn.Sigmoid()))
            # 3. Contextual Embedding Layer
            self.context_LSTM = LSTM(input_size=args.hidden_size * 2, hidden_size=args.hidden_size,
                                     bidirectional=True, batch_first=True, dropout=args.dropout)
            # 4. Attention Flow Layer
            self.att_weight_c = Linear(args.hidden_size * 2, 1)
            self.att_weight_q = Linear(args.hidden_size * 2, 1)
            self.att_weight_cq = Linear(args.hidden_size * 2, 1)
            # 5. Modeling Layer
            self.modeling_LSTM1 = LSTM(input_size=args.hidden_size * 8, hidden_size=args.hidden_size,
                                       bidirectional=True, batch_first=True, dropout=args.dropout)
            self.modeling_LSTM2 = LSTM(input_size=args.hidden_size * 2, hidden_size=args.hidden_size,
                                       bidirectional=True, batch_first=True, dropout=args.dropout)
            # 6. Output Layer
            self.p1_weight_g = Linear(args.hidden_size * 8, 1, dropout=args.dropout)
            self.p1_weight_m = Linear(args.hidden_size * 2, 1, dropout=args.dropout)
            self.p2_weight_g = Linear(args.hidden_size * 8, 1, dropout=args.dropout)
            self.p2_weight_m = Linear(args.hidden_size * 2, 1, dropout=args.dropout)
            self.output_LSTM = LSTM(input_size=args.hidden_size * 2, hidden_size=args.hidden_size,
                                    bidirectional=True, batch_first=True, dropout=args.dropout)
            self.dropout = nn.Dropout(p=args.dropout)

        def forward(self, c_char, q_char, c_word, c_lens, q_word, q_lens):
            def char_emb_layer(x):
                batch_size = x.size(0)
                # (batch, seq_len, word_len, char_dim)
                x = self.dropout(self.char_emb(x))
                # (batch, seq_len, char_dim, word_len)
                x = x.transpose(2, 3)
                # (batch * seq_len, 1, char_dim, word_len)
                x = x.view(-1, self.args.char_dim, x.size(3)).unsqueeze(1)
                # (batch * seq_len, char_channel_size, 1, conv_len) -> (batch * seq_len, char_channel_size, conv_len)
                x = self.char_conv(x).squeeze()
                # (batch * seq_len, char_channel_size, 1) -> (batch * seq_len, char_channel_size)
                x = F.max_pool1d(x, x.size(2)).squeeze()
                # (batch, seq_len, char_channel_size)
                x = x.view(batch_size, -1, self.args.char_channel_size)
                return x

            def highway_network(x1, x2):
                # (batch, seq_len, char_channel_size + word_dim)
                x = torch.cat([x1, x2], dim=-1)
                for i in range(2):
                    h = getattr(self, 'highway_linear{}'.format(i))(x)
                    g = getattr(self, 'highway_gate{}'.format(i))(x)
                    x = g * h + (1 - g) * x
                # (batch, seq_len, hidden_size * 2)
                return x

            def att_flow_layer(c, q):
                c_len = c.size(1)
                q_len = q.size(1)
                cq = []
                for i in range(q_len):
                    # (batch, 1, hidden_size * 2)
                    qi = q.select(1, i).unsqueeze(1)
                    # (batch, c_len, 1)
                    ci = self.att_weight_cq(c * qi).squeeze()
                    cq.append(ci)
                # (batch, c_len, q_len)
                cq = torch.stack(cq, dim=-1)
                # (batch, c_len, q_len)
                s = self.att_weight_c(c).expand(-1, -1, q_len) + \
                    self.att_weight_q(q).permute(0, 2, 1).expand(-1, c_len, -1) + \
                    cq
                # (batch, c_len, q_len)
                a = F.softmax(s, dim=2)
                # (batch, c_len, q_len) * (batch, q_len, hidden_size * 2) -> (batch, c_len, hidden_size * 2)
                c2q_att = torch.bmm(a, q)
                # (batch, 1, c_len)
                b = F.softmax(torch.max(s, dim=2)[0], dim=1).unsqueeze(1)
                # (batch, 1, c_len) * (batch, c_len, hidden_size * 2) -> (batch, hidden_size * 2)
                q2c_att = torch.bmm(b, c).squeeze()
                # (batch, c_len, hidden_size * 2) (tiled)
                q2c_att = q2c_att.unsqueeze(1).expand(-1, c_len, -1)
                # (batch, c_len, hidden_size * 8)
                x = torch.cat([c, c2q_att, c * c2q_att, c * q2c_att], dim=-1)
                return x

            def output_layer(g, m, l):
                # (batch, c_len)
                p1 = (self.p1_weight_g(g) + self.p1_weight_m(m)).squeeze()
                # (batch, c_len, hidden_size * 2)
                m2 = self.output_LSTM((m, l))[0]
                # (batch, c_len)
                p2 = (self.p2_weight_g(g) + self.p2_weight_m(m2)).squeeze()
                return p1, p2

            # 1. Character Embedding Layer
            c_char = char_emb_layer(c_char)
            q_char = char_emb_layer(q_char)
            # 2. Word Embedding Layer
            c_word = self.word_emb(c_word)
            q_word = self.word_emb(q_word)
            # Highway network
            c = highway_network(c_char, c_word)
            q = highway_network(q_char, q_word)
            # 3. Contextual Embedding Layer
            c = self.context_LSTM((c, c_lens))[0]
            q = self.context_LSTM((q, q_lens))[0]
            # 4. Attention Flow Layer
            g = att_flow_layer(c, q)
            # 5. Modeling Layer
            m = self.modeling_LSTM2((self.modeling_LSTM1((g, c_lens))[0], c_lens))[0]
            # 6. Output Layer
            p1, p2 = output_layer(g, m, c_lens)
            # (batch, c_len), (batch, c_len)
            return p1, p2

    return BiDAF(args, pretrained)


class EMA():
    def __init__(self, mu):
        self.mu = mu
        self.shadow = {}

    def register(self, name, val):
        self.shadow[name] = val.clone()

    def get(self, name):
        return self.shadow[name]

    def update(self, name, x):
        assert name in self.shadow
        new_average = (1.0 - self.mu) * x + self.mu * self.shadow[name]
        self.shadow[name] = new_average.clone()


def test_bidaf_char_cnn_highway_packed_bilstm_attention_flow_span_loss_adadelta_and_ema():
    model, tmodel = pair(bidaf, dtype=F32)
    assert not tmodel.word_emb.weight.requires_grad
    with torch.no_grad():  # the output biases: zero-initialised and (see below) moved by roundoff only; from 0.3
        for name in ('p1_weight_g', 'p1_weight_m', 'p2_weight_g', 'p2_weight_m'):
            getattr(tmodel, name).linear.bias.fill_(0.3)
    nn.load_state_dict(model, tmodel.state_dict())
    optimizer = av.optim.Adadelta(model.parameters(), lr=0.5)
    toptimizer = torch.optim.Adadelta(tmodel.parameters(), lr=0.5)
    emas = []
    for m in (model, tmodel):
        ema = EMA(0.999)
        for name, param in m.named_parameters():
            if param.requires_grad:
                ema.register(name, param.data)
        emas.append(ema)

    def before(it):  # run.py: `ema.update(name, param.data)` after every step (here: before the next one)
        if it:
            for ema, m in zip(emas, (model, tmodel)):
                for name, param in m.named_parameters():
                    if param.requires_grad:
                        ema.update(name, param.data)

    def loss_fn(model, c_char, q_char, c_word, c_lens, q_word, q_lens, s_idx, e_idx):
        _, F_, _ = libs(c_char)
        p1, p2 = model(c_char, q_char, c_word, c_lens, q_word, q_lens)
        batch_loss = F_.cross_entropy(p1, s_idx) + F_.cross_entropy(p2, e_idx)
        return batch_loss, (p1, p2)

    rng = np.random.default_rng(4)

    def batch(B=2, C=3, Q=2, W=3):  # torchtext pads each batch to its longest context and question
        c_lens, q_lens = rng.permutation([C, rng.integers(1, C + 1)]), rng.permutation([Q, rng.integers(1, Q + 1)])
        c_word = rng.integers(2, 11, (B, C)) * (np.arange(C) < c_lens[:, None]) + (np.arange(C) >= c_lens[:, None])
        q_word = rng.integers(2, 11, (B, Q)) * (np.arange(Q) < q_lens[:, None]) + (np.arange(Q) >= q_lens[:, None])
        s = rng.integers(0, 2, B)
        return (rng.integers(0, 9, (B, C, W)), rng.integers(0, 9, (B, Q, W)), c_word, c_lens, q_word, q_lens,
                s, s + rng.integers(0, 2, B))
    # the p1/p2 biases shift every logit of a softmax alike: their gradients are zero but for roundoff (~5e-8),
    # measured against 1e-3
    train_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, [batch() for _ in MODES], before=before,
                     tol=2e-4, floor=1e-3)
    before(1)
    ours, theirs = emas
    assert sorted(ours.shadow) == sorted(theirs.shadow) and 'word_emb.weight' not in ours.shadow
    for name, v in theirs.shadow.items():  # (att_weight_c/q's biases, softmax shifts too, hold roundoff)
        a, b = ours.get(name).numpy().astype(np.float64), v.numpy().astype(np.float64)
        assert np.abs(a - b).max() / max(np.abs(b).max(), 1e-3) < 1e-5, name


# -- 5. Demucs v2 (facebookresearch/demucs demucs/model.py, utils.py's center_trim, augment.py, train.py) ------------

def center_trim(tensor, reference):
    """
    Center trim `tensor` with respect to `reference`, along the last dimension.
    `reference` can also be a number, representing the length to trim to.
    If the size difference != 0 mod 2, the extra sample is removed on the right side.
    """
    if hasattr(reference, "size"):
        reference = reference.size(-1)
    delta = tensor.size(-1) - reference
    if delta < 0:
        raise ValueError("tensor must be larger than reference. " f"Delta is {delta}.")
    if delta:
        tensor = tensor[..., delta // 2:-(delta - delta // 2)]
    return tensor


def demucs(lib, F_, th, sources=("drums", "bass"), audio_channels=2, channels=4, depth=2, rewrite=True, glu=True,
           rescale=0.1, kernel_size=8, stride=4, growth=2., lstm_layers=1, context=3, normalize=True):
    nn = lib

    class BLSTM(nn.Module):
        def __init__(self, dim, layers=1):
            super().__init__()
            self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
            self.linear = nn.Linear(2 * dim, dim)

        def forward(self, x):
            x = x.permute(2, 0, 1)
            x = self.lstm(x)[0]
            x = self.linear(x)
            x = x.permute(1, 2, 0)
            return x

    def rescale_conv(conv, reference):
        std = conv.weight.std().detach()
        scale = (std / reference)**0.5
        conv.weight.data /= scale
        if conv.bias is not None:
            conv.bias.data /= scale

    def rescale_module(module, reference):
        for sub in module.modules():
            if isinstance(sub, (nn.Conv1d, nn.ConvTranspose1d)):
                rescale_conv(sub, reference)

    class Demucs(nn.Module):
        def __init__(self, sources, audio_channels=2, channels=64, depth=6, rewrite=True, glu=True, rescale=0.1,
                     resample=False, kernel_size=8, stride=4, growth=2., lstm_layers=2, context=3, normalize=False,
                     samplerate=44100, segment_length=4 * 10 * 44100):
            super().__init__()
            self.audio_channels = audio_channels
            self.sources = sources
            self.kernel_size = kernel_size
            self.context = context
            self.stride = stride
            self.depth = depth
            self.resample = resample
            self.channels = channels
            self.normalize = normalize
            self.samplerate = samplerate
            self.segment_length = segment_length

            self.encoder = nn.ModuleList()
            self.decoder = nn.ModuleList()

            if glu:
                activation = nn.GLU(dim=1)
                ch_scale = 2
            else:
                activation = nn.ReLU()
                ch_scale = 1
            in_channels = audio_channels
            for index in range(depth):
                encode = []
                encode += [nn.Conv1d(in_channels, channels, kernel_size, stride), nn.ReLU()]
                if rewrite:
                    encode += [nn.Conv1d(channels, ch_scale * channels, 1), activation]
                self.encoder.append(nn.Sequential(*encode))

                decode = []
                if index > 0:
                    out_channels = in_channels
                else:
                    out_channels = len(self.sources) * audio_channels
                if rewrite:
                    decode += [nn.Conv1d(channels, ch_scale * channels, context), activation]
                decode += [nn.ConvTranspose1d(channels, out_channels, kernel_size, stride)]
                if index > 0:
                    decode.append(nn.ReLU())
                self.decoder.insert(0, nn.Sequential(*decode))
                in_channels = channels
                channels = int(growth * channels)

            channels = in_channels

            if lstm_layers:
                self.lstm = BLSTM(channels, lstm_layers)
            else:
                self.lstm = None

            if rescale:
                rescale_module(self, reference=rescale)

        def valid_length(self, length):
            if self.resample:
                length *= 2
            for _ in range(self.depth):
                length = math.ceil((length - self.kernel_size) / self.stride) + 1
                length = max(1, length)
                length += self.context - 1
            for _ in range(self.depth):
                length = (length - 1) * self.stride + self.kernel_size

            if self.resample:
                length = math.ceil(length / 2)
            return int(length)

        def forward(self, mix):
            x = mix

            if self.normalize:
                mono = mix.mean(dim=1, keepdim=True)
                mean = mono.mean(dim=-1, keepdim=True)
                std = mono.std(dim=-1, keepdim=True)
            else:
                mean = 0
                std = 1

            x = (x - mean) / (1e-5 + std)

            saved = []
            for encode in self.encoder:
                x = encode(x)
                saved.append(x)
            if self.lstm:
                x = self.lstm(x)
            for decode in self.decoder:
                skip = center_trim(saved.pop(-1), x)
                x = x + skip
                x = decode(x)

            x = x * std + mean
            x = x.view(x.size(0), len(self.sources), self.audio_channels, x.size(-1))
            return x

    return Demucs(list(sources), audio_channels=audio_channels, channels=channels, depth=depth, rewrite=rewrite,
                  glu=glu, rescale=rescale, kernel_size=kernel_size, stride=stride, growth=growth,
                  lstm_layers=lstm_layers, context=context, normalize=normalize)


def shift_and_flip(th, wav, shift, offsets, signs):
    """augment.py's Shift and FlipSign in training mode, their `th.randint` draws passed in."""
    batch, sources, channels, time = wav.size()
    length = time - shift
    offsets = offsets.expand(-1, -1, channels, -1)
    indexes = th.arange(length, device=wav.device)
    wav = wav.gather(3, indexes + offsets)
    wav = wav * (2 * signs - 1)
    return wav


def test_demucs_glu_unet_blstm_center_trim_rescaled_convs_shift_gather_and_l1():
    model, tmodel = pair(demucs, dtype=F32)
    # rescale_module: each conv's weight and bias divided by sqrt(std(weight) / 0.1) through `.data /=`, both sides
    for lib_, F__, th_ in ((torch.nn, TF, torch), (nn, F, av)):
        th_.manual_seed(0)
        raw = demucs(lib_, F__, th_, rescale=0)
        th_.manual_seed(0)
        scaled = demucs(lib_, F__, th_)
        raw_p = dict(raw.named_parameters())
        for name, p in scaled.named_parameters():
            want = raw_p[name].detach()
            if name.startswith(('encoder', 'decoder')):
                want = want / (raw_p[name.rsplit('.', 1)[0] + '.weight'].detach().std() / 0.1) ** 0.5
            assert rel(p.detach(), want) < 1e-6, name
    optimizer = av.optim.Adam(model.parameters(), lr=3e-4)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=3e-4)
    L = model.valid_length(40)
    assert L == tmodel.valid_length(40)
    shift = 4

    def loss_fn(model, sources, offsets, signs):
        _, F_, th = libs(sources)
        sources = shift_and_flip(th, sources, shift, offsets, signs)
        mix = sources.sum(dim=1)
        estimates = model(mix)
        sources = center_trim(sources, estimates)
        loss = F_.l1_loss(estimates, sources)  # criterion = nn.L1Loss()
        return loss, estimates

    rng = np.random.default_rng(5)
    batches = [(rng.standard_normal((2, 2, 2, L + shift)).astype(np.float32), rng.integers(0, shift, (2, 2, 1, 1)),
                rng.integers(0, 2, (2, 2, 1, 1)).astype(np.float32)) for _ in MODES]
    train_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=2e-4)

    # train.py's gradient norm, `grad_norm += p.grad.data.norm()**2` over the parameters
    grads = av.grad(lambda m, *b: loss_fn(m, *b)[0])(model, *map(av.tensor, batches[0]))
    grad_norm = 0
    for p in grads.values():
        grad_norm += p.data.norm()**2
    grad_norm = grad_norm**0.5
    toptimizer.zero_grad()
    loss_fn(tmodel, *map(torch.tensor, batches[0]))[0].backward()
    tgrad_norm = 0
    for p in tmodel.parameters():
        if p.grad is not None:
            tgrad_norm += p.grad.data.norm()**2
    tgrad_norm = tgrad_norm**0.5
    assert rel(grad_norm, tgrad_norm) < 1e-5


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_pad_packed_sequence_of_traced_lengths_all_shorter_than_the_padding_is_refused_not_longer_than_torch(backend):
    # BiDAF's LSTM wrapper on a batch padded past its longest sequence: torch pads back to the longest length
    # (2 steps here); a trace cannot know that shape, and used to return all 3 steps silently
    torch.manual_seed(0)
    tlstm = torch.nn.LSTM(2, 3, batch_first=True, bidirectional=True)
    lstm = nn.LSTM(2, 3, batch_first=True, bidirectional=True)
    nn.load_state_dict(lstm, tlstm.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32)

    def run(lib, m, x, lens, **kw):
        out = m(lib.utils.rnn.pack_padded_sequence(x, lens, batch_first=True))[0]
        return lib.utils.rnn.pad_packed_sequence(out, batch_first=True, **kw)[0]
    want = run(torch.nn, tlstm, torch.tensor(x), torch.tensor([2, 1]))
    assert want.shape == (2, 2, 6)
    assert rel(run(nn, lstm, av.tensor(x), av.tensor([2, 1])), want) < 1e-6  # eager: the lengths are known
    f = av.compile(lambda m, x, n: run(nn, m, x, n), backend=backend)
    with pytest.raises(RuntimeError, match=r"pad_packed_sequence: no sequence is as long as the 3 padded steps.*"
                                           r"total_length=3"):
        f(lstm, av.tensor(x), av.tensor([2, 1]))
    assert rel(f(lstm, av.tensor(x), av.tensor([3, 1])), run(torch.nn, tlstm, torch.tensor(x), torch.tensor([3, 1]))) < 1e-6
    g = av.compile(lambda m, x, n: run(nn, m, x, n, total_length=3), backend=backend)
    got = g(lstm, av.tensor(x), av.tensor([2, 1]))
    assert got.shape == (2, 3, 6)
    assert rel(got, run(torch.nn, tlstm, torch.tensor(x), torch.tensor([2, 1]), total_length=3)) < 1e-6

"""Round 9f of port QA: classic NLP code as popular repositories write it, written once over `lib` (torch.nn or
avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights on random float64 data
and compared with torch after every step (losses, parameters, buffers), the first step eagerly and the rest
compiled (numpy and cpu backends), with warnings as errors while tracing: a BiLSTM-CRF tagger over
kmkurn/pytorch-crf's CRF as written (start, end and transition scores; _compute_score's gathers of the gold
tags by advanced indexing with `score +=` on the copies, the mask as float and `tags[seq_ends, arange]` for the
last tags; _compute_normalizer's forward algorithm, a Python loop over time of logsumexp and torch.where on the
mask; every reduction; _viterbi_decode's max/argmax history and the Python backtracking over `.item()`s) on
embeddings and a bidirectional LSTM over pack_padded_sequence(enforce_sorted=False), trained with SGD with
momentum or Adam, batch-first and time-first, and decoded eagerly tag for tag as torch decodes; fairseq's
label_smoothed_nll_loss (gather, masked_fill_ of ignore_index, eps / (V - 1)) as
LabelSmoothedCrossEntropyCriterion calls it, over a small pre-norm transformer as fairseq builds one (its
SinusoidalPositionalEmbedding with the padding row zeroed and make_positions' cumsum, left-padded sources,
EOS-started prev_output_tokens, the -inf future mask by triu, all embeddings shared with the output
projection), trained with Adam, an inverse-square-root warm-up by LambdaLR and clipping, the nll beside the
loss by `has_aux`, then a beam search as common implementations write it (log_softmax added to the beams'
scores, topk over beam * vocab, // and % for the beam and the token, index_select reordering the hypotheses
and the decoder's encoder states, finished beams masked_fill'ed with -inf but for PAD at no cost, GNMT's
length penalty), compared token for token and score for score with torch's; atulkum/pointer_summarizer's
pointer-generator with coverage (its init_lstm_wt over `lstm._all_weights`, a packed bidirectional encoder,
ReduceState, the attention's coverage feature, padding-masked and renormalized softmax, bmm for the context,
p_gen's sigmoid, `scatter_add` of the copy distribution into the vocabulary extended by extra_zeros for the
in-article OOVs, the gold probabilities by gather, the coverage loss by torch.min of attention and coverage,
the loss masked by step and averaged by length, one clip_grad_norm_ each for the encoder, the decoder and
ReduceState, Adagrad with its initial accumulator); Kim's TextCNN as Shawn1993/cnn-text-classification-pytorch
writes it (Conv2d over (K, D) windows, or the Conv1d form over permuted embeddings, max_pool1d over time, cat;
a static embedding frozen by requires_grad = False) with Adam; and word2vec's skip-gram with negative sampling
as Andras7/word2vec-pytorch writes it (clamped dot products, logsigmoid, bmm with the negatives), with sparse
embeddings and SparseAdam or dense ones and Adam, under CosineAnnealingLR.

Dropout is 0 (TextCNN's) or absent. What the ports change: gradients are values (`av.value_and_grad`,
`opt.step(grads)`; clipping takes them: pointer_summarizer's three clip_grad_norm_ calls take the gradients
of each module's parameters, looked up by identity, since the gradient dict has one entry for the embedding
the encoder and decoder share). pytorch-crf's _validate and its asserts branch in Python on the mask's values
(`mask[0].all()`), which a traced function cannot, so the compiled step passes `validate=False` (a flag the
port adds) and the checks run in the eager calls. pointer_summarizer's optimizer gets
`list(encoder.parameters()) + list(decoder.parameters()) + ...`, in which the shared embedding appears twice:
torch warns that this will be an error and steps that parameter twice per step, Avalon refuses it (the test
checks the message), so both sides list each parameter once (`dict.fromkeys`); its `Model` is a plain object
holding the three modules, a Module here (so that `pair` loads it), its max_grad_norm is 0.1 (2.0 there) so
that clipping acts, and its batch tensors (extra_zeros, c_t_1, coverage), torch.zeros (float32) there, are
given in float64. fairseq's log_softmax of `x.float()` and its float sinusoids are float64 here, so that the
comparison is at float64 roundoff; attention's key bias, whose gradient is zero in exact arithmetic (softmax
removes the shift it adds), holds roundoff that Adam turns into ~1e-11 steps on both sides and is only checked
to stay that small. Andras7's v_embeddings start at 0 (here uniform, so that the first step has a gradient for
the u side too), and Kim's CNN's dropout is 0. The regressions at the end are what the programs found:
`lstm._all_weights` (torch's list of parameter names per layer and direction, walked by pointer_summarizer's
init) did not exist, and the duplicated parameter in one group was reported as appearing "in more than one
parameter group".
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


# -- 1. A BiLSTM-CRF tagger (kmkurn/pytorch-crf's torchcrf/__init__.py) ----------------------------------------

def crf_module(lib, th):
    class CRF(lib.Module):
        """pytorch-crf's CRF, as written (its _validate's Python checks of the mask's values run eagerly only:
        see the module docstring)."""

        def __init__(self, num_tags: int, batch_first: bool = False) -> None:
            if num_tags <= 0:
                raise ValueError(f'invalid number of tags: {num_tags}')
            super().__init__()
            self.num_tags = num_tags
            self.batch_first = batch_first
            self.start_transitions = lib.Parameter(th.empty(num_tags))
            self.end_transitions = lib.Parameter(th.empty(num_tags))
            self.transitions = lib.Parameter(th.empty(num_tags, num_tags))

            self.reset_parameters()

        def reset_parameters(self) -> None:
            lib.init.uniform_(self.start_transitions, -0.1, 0.1)
            lib.init.uniform_(self.end_transitions, -0.1, 0.1)
            lib.init.uniform_(self.transitions, -0.1, 0.1)

        def __repr__(self) -> str:
            return f'{self.__class__.__name__}(num_tags={self.num_tags})'

        def forward(self, emissions, tags, mask=None, reduction='sum', validate=True):
            if validate:
                self._validate(emissions, tags=tags, mask=mask)
            if reduction not in ('none', 'sum', 'mean', 'token_mean'):
                raise ValueError(f'invalid reduction: {reduction}')
            if mask is None:
                mask = th.ones_like(tags, dtype=th.bool)

            if self.batch_first:
                emissions = emissions.transpose(0, 1)
                tags = tags.transpose(0, 1)
                mask = mask.transpose(0, 1)

            # shape: (batch_size,)
            numerator = self._compute_score(emissions, tags, mask, validate)
            # shape: (batch_size,)
            denominator = self._compute_normalizer(emissions, mask, validate)
            # shape: (batch_size,)
            llh = numerator - denominator

            if reduction == 'none':
                return llh
            if reduction == 'sum':
                return llh.sum()
            if reduction == 'mean':
                return llh.mean()
            assert reduction == 'token_mean'
            return llh.sum() / mask.float().sum()

        def decode(self, emissions, mask=None):
            self._validate(emissions, mask=mask)
            if mask is None:
                mask = emissions.new_ones(emissions.shape[:2], dtype=th.bool)

            if self.batch_first:
                emissions = emissions.transpose(0, 1)
                mask = mask.transpose(0, 1)

            return self._viterbi_decode(emissions, mask)

        def _validate(self, emissions, tags=None, mask=None) -> None:
            if emissions.dim() != 3:
                raise ValueError(f'emissions must have dimension of 3, got {emissions.dim()}')
            if emissions.size(2) != self.num_tags:
                raise ValueError(
                    f'expected last dimension of emissions is {self.num_tags}, '
                    f'got {emissions.size(2)}')

            if tags is not None:
                if emissions.shape[:2] != tags.shape:
                    raise ValueError(
                        'the first two dimensions of emissions and tags must match, '
                        f'got {tuple(emissions.shape[:2])} and {tuple(tags.shape)}')

            if mask is not None:
                if emissions.shape[:2] != mask.shape:
                    raise ValueError(
                        'the first two dimensions of emissions and mask must match, '
                        f'got {tuple(emissions.shape[:2])} and {tuple(mask.shape)}')
                no_empty_seq = not self.batch_first and mask[0].all()
                no_empty_seq_bf = self.batch_first and mask[:, 0].all()
                if not no_empty_seq and not no_empty_seq_bf:
                    raise ValueError('mask of the first timestep must all be on')

        def _compute_score(self, emissions, tags, mask, validate=True):
            # emissions: (seq_length, batch_size, num_tags)
            # tags: (seq_length, batch_size)
            # mask: (seq_length, batch_size)
            assert emissions.dim() == 3 and tags.dim() == 2
            assert emissions.shape[:2] == tags.shape
            assert emissions.size(2) == self.num_tags
            assert mask.shape == tags.shape
            assert not validate or mask[0].all()

            seq_length, batch_size = tags.shape
            mask = mask.float()

            # Start transition score and first emission
            # shape: (batch_size,)
            score = self.start_transitions[tags[0]]
            score += emissions[0, th.arange(batch_size), tags[0]]

            for i in range(1, seq_length):
                # Transition score to next tag, only added if next timestep is valid (mask == 1)
                # shape: (batch_size,)
                score += self.transitions[tags[i - 1], tags[i]] * mask[i]

                # Emission score for next tag, only added if next timestep is valid (mask == 1)
                # shape: (batch_size,)
                score += emissions[i, th.arange(batch_size), tags[i]] * mask[i]

            # End transition score
            # shape: (batch_size,)
            seq_ends = mask.long().sum(dim=0) - 1
            # shape: (batch_size,)
            last_tags = tags[seq_ends, th.arange(batch_size)]
            # shape: (batch_size,)
            score += self.end_transitions[last_tags]

            return score

        def _compute_normalizer(self, emissions, mask, validate=True):
            # emissions: (seq_length, batch_size, num_tags)
            # mask: (seq_length, batch_size)
            assert emissions.dim() == 3 and mask.dim() == 2
            assert emissions.shape[:2] == mask.shape
            assert emissions.size(2) == self.num_tags
            assert not validate or mask[0].all()

            seq_length = emissions.size(0)

            # Start transition score and first emission; score has size of
            # (batch_size, num_tags) where for each batch, the j-th column stores
            # the score that the first timestep has tag j
            # shape: (batch_size, num_tags)
            score = self.start_transitions + emissions[0]

            for i in range(1, seq_length):
                # Broadcast score for every possible next tag
                # shape: (batch_size, num_tags, 1)
                broadcast_score = score.unsqueeze(2)

                # Broadcast emission score for every possible current tag
                # shape: (batch_size, 1, num_tags)
                broadcast_emissions = emissions[i].unsqueeze(1)

                # Compute the score tensor of size (batch_size, num_tags, num_tags) where
                # for each sample, entry at row i and column j stores the sum of scores of all
                # possible tag sequences so far that end with transitioning from tag i to tag j
                # and emitting
                # shape: (batch_size, num_tags, num_tags)
                next_score = broadcast_score + self.transitions + broadcast_emissions

                # Sum over all possible current tags, but we're in score space, so a sum
                # becomes a log-sum-exp: for each sample, entry i stores the sum of scores of
                # all possible tag sequences so far, that end in tag i
                # shape: (batch_size, num_tags)
                next_score = th.logsumexp(next_score, dim=1)

                # Set score to the next score if this timestep is valid (mask == 1)
                # shape: (batch_size, num_tags)
                score = th.where(mask[i].unsqueeze(1), next_score, score)

            # End transition score
            # shape: (batch_size, num_tags)
            score += self.end_transitions

            # Sum (log-sum-exp) over all possible tags
            # shape: (batch_size,)
            return th.logsumexp(score, dim=1)

        def _viterbi_decode(self, emissions, mask):
            # emissions: (seq_length, batch_size, num_tags)
            # mask: (seq_length, batch_size)
            assert emissions.dim() == 3 and mask.dim() == 2
            assert emissions.shape[:2] == mask.shape
            assert emissions.size(2) == self.num_tags
            assert mask[0].all()

            seq_length, batch_size = mask.shape

            # Start transition and first emission
            # shape: (batch_size, num_tags)
            score = self.start_transitions + emissions[0]
            history = []

            # score is a tensor of size (batch_size, num_tags) where for every batch,
            # value at column j stores the score of the best tag sequence so far that ends
            # with tag j
            # history saves where the best tags candidate transitioned from; this is used
            # when we trace back the best tag sequence

            # Viterbi algorithm recursive case: we compute the score of the best tag sequence
            # for every possible next tag
            for i in range(1, seq_length):
                # Broadcast viterbi score for every possible next tag
                # shape: (batch_size, num_tags, 1)
                broadcast_score = score.unsqueeze(2)

                # Broadcast emission score for every possible current tag
                # shape: (batch_size, 1, num_tags)
                broadcast_emission = emissions[i].unsqueeze(1)

                # Compute the score tensor of size (batch_size, num_tags, num_tags) where
                # for each sample, entry at row i and column j stores the score of the best
                # tag sequence so far that ends with transitioning from tag i to tag j and emitting
                # shape: (batch_size, num_tags, num_tags)
                next_score = broadcast_score + self.transitions + broadcast_emission

                # Find the maximum score over all possible current tag
                # shape: (batch_size, num_tags)
                next_score, indices = next_score.max(dim=1)

                # Set score to the next score if this timestep is valid (mask == 1)
                # and save the index that produces the next score
                # shape: (batch_size, num_tags)
                score = th.where(mask[i].unsqueeze(1), next_score, score)
                history.append(indices)

            # End transition score
            # shape: (batch_size, num_tags)
            score += self.end_transitions

            # Now, compute the best path for each sample

            # shape: (batch_size,)
            seq_ends = mask.long().sum(dim=0) - 1
            best_tags_list = []

            for idx in range(batch_size):
                # Find the tag which maximizes the score at the last timestep; this is our best tag
                # for the last timestep
                _, best_last_tag = score[idx].max(dim=0)
                best_tags = [best_last_tag.item()]

                # We trace back where the best last tag comes from, append that to our best tag
                # sequence, and trace it back again, and so on
                for hist in reversed(history[:seq_ends[idx]]):
                    best_last_tag = hist[idx][best_tags[-1]]
                    best_tags.append(best_last_tag.item())

                # Reverse the order because we start from the last timestep
                best_tags.reverse()
                best_tags_list.append(best_tags)

            return best_tags_list
    return CRF


def bilstm_crf(lib, F_, th, vocab=12, emb=5, hidden=4, num_tags=4, batch_first=True):
    """The usual BiLSTM-CRF tagger over pytorch-crf (embeddings, a packed bidirectional LSTM, a linear layer
    to the emission scores)."""
    CRF = crf_module(lib, th)
    rnn = th.nn.utils.rnn

    class BiLSTMCRF(lib.Module):
        def __init__(self):
            super().__init__()
            self.embedding = lib.Embedding(vocab, emb, padding_idx=0)
            self.lstm = lib.LSTM(emb, hidden // 2, num_layers=1, bidirectional=True, batch_first=True)
            self.hidden2tag = lib.Linear(hidden, num_tags)
            self.crf = CRF(num_tags, batch_first=batch_first)

        def _get_lstm_features(self, sentences, lengths):
            embeds = self.embedding(sentences)
            packed = rnn.pack_padded_sequence(embeds, lengths, batch_first=True, enforce_sorted=False)
            lstm_out, _ = self.lstm(packed)
            lstm_out, _ = rnn.pad_packed_sequence(lstm_out, batch_first=True, total_length=sentences.size(1))
            emissions = self.hidden2tag(lstm_out)
            return emissions if batch_first else emissions.transpose(0, 1)

        def neg_log_likelihood(self, sentences, lengths, tags, mask, reduction='mean', validate=True):
            emissions = self._get_lstm_features(sentences, lengths)
            if not batch_first:
                tags, mask = tags.t(), mask.t()
            return -self.crf(emissions, tags, mask=mask, reduction=reduction, validate=validate)

        def forward(self, sentences, lengths, mask):
            emissions = self._get_lstm_features(sentences, lengths)
            return self.crf.decode(emissions, mask=mask if batch_first else mask.t())
    return BiLSTMCRF()


def tagging_batch(rng, n=4, length=6, vocab=12, num_tags=4):
    lengths = rng.integers(2, length + 1, n)
    lengths[rng.integers(n)] = length  # the longest fills the padded batch (see pad_packed_sequence)
    mask = np.arange(length)[None, :] < lengths[:, None]
    words = np.where(mask, rng.integers(1, vocab, (n, length)), 0)
    tags = np.where(mask, rng.integers(0, num_tags, (n, length)), 0)
    return words, lengths, tags, mask


def crf_step(reduction):
    def step(model, opt, words, lengths, tags, mask):
        def loss_fn(model, *xs):
            return model.neg_log_likelihood(*xs, reduction=reduction, validate=False)
        loss, grads = av.value_and_grad(loss_fn)(model, words, lengths, tags, mask)
        opt.step(grads)
        return loss
    return step


@pytest.mark.parametrize("batch_first,reduction,optimizer,mode", [
    (True, "mean", "sgd", "numpy"), (False, "token_mean", "adam", "cpu"), (True, "sum", "adam", "cpu")])
def test_bilstm_crf_forward_algorithm_gold_score_and_viterbi_decode(batch_first, reduction, optimizer, mode):
    ours, theirs = pair(lambda lib, F_, th: bilstm_crf(lib, F_, th, batch_first=batch_first))
    if optimizer == "sgd":
        opt, topt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(theirs.parameters(), lr=0.1,
                                                                                          momentum=0.9)
    else:
        opt, topt = optim.Adam(ours.parameters(), lr=0.05), torch.optim.Adam(theirs.parameters(), lr=0.05)
    rng = np.random.default_rng(0)
    step = crf_step(reduction)
    run = compiled(step, mode)
    for it in range(4):
        batch = tagging_batch(rng)
        topt.zero_grad()
        tl = theirs.neg_log_likelihood(*map(T, batch), reduction=reduction)
        tl.backward()
        topt.step()
        if it == 0:  # eagerly, with pytorch-crf's checks of the mask
            loss = ours.neg_log_likelihood(*map(av.tensor, batch), reduction=reduction)
            assert rel(loss, tl) < 1e-12
        with strict():
            loss = (run if it else step)(ours, opt, *map(av.tensor, batch))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    words, lengths, _, mask = tagging_batch(rng, n=5)
    with torch.no_grad():
        want = theirs(T(words), T(lengths), T(mask))
    with av.no_grad():
        got = ours(av.tensor(words), av.tensor(lengths), av.tensor(mask))
    assert got == want and [len(t) for t in got] == list(lengths)
    with pytest.raises(ValueError, match="first timestep"):
        ours.crf.decode(av.zeros(2, 3, 4, dtype=av.float64), mask=av.tensor(np.zeros((2, 3), bool)))


# -- 2. fairseq's label-smoothed cross entropy (fairseq/criterions/label_smoothed_cross_entropy.py) in a small
#       pre-norm transformer (fairseq's sinusoidal positions, make_positions, shared embeddings, left-padded
#       sources) and a beam search as common implementations write it ------------------------------------------

PAD, EOS, VOCAB = 1, 2, 11


def label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index=None, reduce=True):
    if target.dim() == lprobs.dim() - 1:
        target = target.unsqueeze(-1)
    nll_loss = -lprobs.gather(dim=-1, index=target)
    smooth_loss = -lprobs.sum(dim=-1, keepdim=True)
    if ignore_index is not None:
        pad_mask = target.eq(ignore_index)
        nll_loss.masked_fill_(pad_mask, 0.0)
        smooth_loss.masked_fill_(pad_mask, 0.0)
    else:
        nll_loss = nll_loss.squeeze(-1)
        smooth_loss = smooth_loss.squeeze(-1)
    if reduce:
        nll_loss = nll_loss.sum()
        smooth_loss = smooth_loss.sum()
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
    return loss, nll_loss


def th_of(tensor):
    """torch or avalon, whichever `tensor` is from (fairseq's utils call `torch.` directly)."""
    return torch if isinstance(tensor, torch.Tensor) else av


def make_positions(tensor, padding_idx: int, onnx_trace: bool = False):
    mask = tensor.ne(padding_idx).int()
    return (th_of(tensor).cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


def fairseq_transformer(lib, F_, th, d=8, heads=2, ffn=16, layers=1, max_positions=16):
    class SinusoidalPositionalEmbedding(lib.Module):
        def __init__(self, embedding_dim, padding_idx, init_size=1024):
            super().__init__()
            self.embedding_dim = embedding_dim
            self.padding_idx = padding_idx
            self.register_buffer("weights", SinusoidalPositionalEmbedding.get_embedding(
                init_size, embedding_dim, padding_idx), persistent=False)

        @staticmethod
        def get_embedding(num_embeddings: int, embedding_dim: int, padding_idx=None):
            half_dim = embedding_dim // 2
            emb = math.log(10000) / (half_dim - 1)
            emb = th.exp(th.arange(half_dim, dtype=th.float64) * -emb)  # float in fairseq: see the docstring
            emb = th.arange(num_embeddings, dtype=th.float64).unsqueeze(1) * emb.unsqueeze(0)
            emb = th.cat([th.sin(emb), th.cos(emb)], dim=1).view(num_embeddings, -1)
            if embedding_dim % 2 == 1:
                emb = th.cat([emb, th.zeros(num_embeddings, 1)], dim=1)
            if padding_idx is not None:
                emb[padding_idx, :] = 0
            return emb

        def forward(self, input):
            bsz, seq_len = input.shape
            positions = make_positions(input, self.padding_idx)
            return self.weights.index_select(0, positions.view(-1)).view(bsz, seq_len, -1).detach()

    class TransformerModel(lib.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = lib.Embedding(VOCAB, d, padding_idx=PAD)  # --share-all-embeddings
            lib.init.normal_(self.embed_tokens.weight, mean=0, std=d ** -0.5)
            lib.init.constant_(self.embed_tokens.weight[PAD], 0)
            self.embed_scale = math.sqrt(d)
            self.embed_positions = SinusoidalPositionalEmbedding(d, PAD, init_size=max_positions + PAD + 1)
            self.encoder = lib.TransformerEncoder(
                lib.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, batch_first=True, norm_first=True), layers,
                norm=lib.LayerNorm(d), enable_nested_tensor=False)
            self.decoder = lib.TransformerDecoder(
                lib.TransformerDecoderLayer(d, heads, ffn, dropout=0.0, batch_first=True, norm_first=True), layers,
                norm=lib.LayerNorm(d))
            self.output_projection = lib.Linear(d, VOCAB, bias=False)
            self.output_projection.weight = self.embed_tokens.weight  # --share-decoder-input-output-embed

        def embed(self, tokens):
            return self.embed_scale * self.embed_tokens(tokens) + self.embed_positions(tokens)

        def encode(self, src_tokens):
            encoder_padding_mask = src_tokens.eq(PAD)
            return self.encoder(self.embed(src_tokens), src_key_padding_mask=encoder_padding_mask), \
                encoder_padding_mask

        def buffered_future_mask(self, tensor):
            dim = tensor.size(1)
            return th.triu(th.zeros([dim, dim]).fill_(float("-inf")), 1).to(tensor)

        def decode(self, prev_output_tokens, encoder_out, encoder_padding_mask):
            x = self.embed(prev_output_tokens)
            x = self.decoder(x, encoder_out, tgt_mask=self.buffered_future_mask(x),
                             tgt_key_padding_mask=prev_output_tokens.eq(PAD),
                             memory_key_padding_mask=encoder_padding_mask)
            return self.output_projection(x)

        def forward(self, src_tokens, prev_output_tokens):
            encoder_out, encoder_padding_mask = self.encode(src_tokens)
            return self.decode(prev_output_tokens, encoder_out, encoder_padding_mask)

        def get_normalized_probs(self, net_output, log_probs):
            if log_probs:
                return F_.log_softmax(net_output, dim=-1)  # utils.log_softmax(x.float()): float64 here
            return F_.softmax(net_output, dim=-1)
    return TransformerModel()


def fairseq_criterion(eps=0.1, ignore_index=PAD):
    """LabelSmoothedCrossEntropyCriterion's compute_loss, over the loss the trainer divides by sample_size."""
    def criterion(model, src_tokens, prev_output_tokens, target):
        net_output = model(src_tokens, prev_output_tokens)
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        lprobs, target = lprobs.view(-1, lprobs.size(-1)), target.view(-1)
        loss, nll_loss = label_smoothed_nll_loss(lprobs, target, eps, ignore_index=ignore_index, reduce=True)
        sample_size = target.ne(PAD).sum()
        return loss / sample_size, nll_loss / sample_size
    return criterion


def translation_batch(rng, n=3, src_len=5, tgt_len=5):
    """fairseq's collate: sources left-padded, targets right-padded and ending in EOS, prev_output_tokens
    the targets rotated to start with EOS."""
    src = np.full((n, src_len), PAD)
    tgt = np.full((n, tgt_len), PAD)
    prev = np.full((n, tgt_len), PAD)
    for i in range(n):
        ls, lt = (src_len, tgt_len) if i == 0 else (rng.integers(2, src_len + 1), rng.integers(2, tgt_len + 1))
        src[i, src_len - ls:] = np.r_[rng.integers(3, VOCAB, ls - 1), EOS]
        tgt[i, :lt] = np.r_[rng.integers(3, VOCAB, lt - 1), EOS]
        prev[i, :lt] = np.r_[EOS, tgt[i, :lt - 1]]
    return src, prev, tgt


def beam_search(th, F_, model, src_tokens, beam_size=3, min_len=1, max_len=6, alpha=0.6):
    """Beam search for one sentence as common implementations write it: log_softmax scores added to the beams',
    topk over beam * vocab, // and % for the beam and the token, index_select to reorder the hypotheses and
    the decoder's inputs, no EOS before min_len, finished beams masked with -inf except PAD at no cost, GNMT's
    length penalty."""
    encoder_out, encoder_padding_mask = model.encode(src_tokens)
    order = th.zeros(beam_size, dtype=th.long)
    encoder_out, encoder_padding_mask = encoder_out.index_select(0, order), encoder_padding_mask.index_select(0, order)
    ys = th.full((beam_size, 1), EOS, dtype=th.long)
    beam_scores = th.zeros(beam_size, dtype=encoder_out.dtype)
    beam_scores[1:] = float("-inf")  # the beams start as one hypothesis
    finished = th.zeros(beam_size, dtype=th.bool)
    for step in range(max_len):
        logits = model.decode(ys, encoder_out, encoder_padding_mask)[:, -1, :]
        log_probs = F_.log_softmax(logits, dim=-1)
        log_probs[:, PAD] = float("-inf")
        if step < min_len:
            log_probs[:, EOS] = float("-inf")
        log_probs = log_probs.masked_fill(finished.unsqueeze(1), float("-inf"))
        log_probs[finished, PAD] = 0.0
        vocab_size = log_probs.size(-1)
        scores = (beam_scores.unsqueeze(1) + log_probs).view(-1)
        top_scores, top_ids = scores.topk(beam_size, dim=0)
        beam_ids = top_ids // vocab_size
        token_ids = top_ids % vocab_size
        ys = th.cat([ys.index_select(0, beam_ids), token_ids.unsqueeze(1)], dim=-1)
        encoder_out = encoder_out.index_select(0, beam_ids)
        encoder_padding_mask = encoder_padding_mask.index_select(0, beam_ids)
        finished = finished.index_select(0, beam_ids) | token_ids.eq(EOS)
        beam_scores = top_scores
        if finished.all():
            break
    lengths = ys[:, 1:].ne(PAD).sum(dim=1)
    penalty = ((5.0 + lengths.to(beam_scores.dtype)) / 6.0).pow(alpha)
    normalized = beam_scores / penalty
    best = normalized.argmax()
    return ys[best, 1:].tolist(), ys, normalized


def same_weights_but_key_bias(ours, theirs, tol):
    """same_weights, except attention's key bias (the middle third of in_proj_bias): its gradient is zero in
    exact arithmetic (softmax removes the shift it adds), so it holds roundoff that Adam turns into ~1e-11
    steps on both sides; it is only checked to stay that small."""
    sd = theirs.state_dict()
    assert sorted(ours.state_dict()) == sorted(sd)
    for k, v in ours.state_dict().items():
        a, b = v.numpy(), sd[k].detach().numpy()
        if k.endswith("in_proj_bias"):
            third = len(b) // 3
            assert max(np.abs(a[third:2 * third]).max(), np.abs(b[third:2 * third]).max()) < 1e-9, k
            a, b = np.r_[a[:third], a[2 * third:]], np.r_[b[:third], b[2 * third:]]
        assert np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-4) < tol, k


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch's, for fairseq's masks
@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_fairseq_label_smoothed_loss_transformer_and_beam_search(mode):
    ours, theirs = pair(fairseq_transformer)
    assert ours.output_projection.weight is ours.embed_tokens.weight
    kw = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-8)
    opt, topt = optim.Adam(ours.parameters(), **kw), torch.optim.Adam(theirs.parameters(), **kw)
    warmup = 3

    def inverse_sqrt(step):
        return min((step + 1) ** -0.5, (step + 1) * warmup ** -1.5) * warmup ** 0.5
    sched, tsched = optim.lr_scheduler.LambdaLR(opt, inverse_sqrt), torch.optim.lr_scheduler.LambdaLR(topt, inverse_sqrt)
    criterion = fairseq_criterion()

    def step(model, opt, *batch):
        (loss, nll_loss), grads = av.value_and_grad(criterion, has_aux=True)(model, *batch)
        nn.utils.clip_grad_norm_(grads, 1.0)
        opt.step(grads)
        return loss, nll_loss
    run = compiled(step, mode)
    rng = np.random.default_rng(1)
    fixed = translation_batch(rng)  # one batch to fit, so that the beams end
    for it in range(5):
        batch = fixed if it % 2 else translation_batch(rng)
        topt.zero_grad()
        tl, tnll = criterion(theirs, *map(T, batch))
        tl.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        topt.step()
        tsched.step()
        with strict():
            loss, nll_loss = (run if it else step)(ours, opt, *map(av.tensor, batch))
        sched.step()
        assert rel(loss, tl) < 1e-12 and rel(nll_loss, tnll) < 1e-12, it
        same_weights_but_key_bias(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    for src in fixed[0]:
        src = src[None]
        with torch.no_grad():
            want, want_ys, want_scores = beam_search(torch, TF, theirs, T(src))
        with av.no_grad():
            got, ys, scores = beam_search(av, F, ours, av.tensor(src))
        assert got == want and ys.tolist() == want_ys.tolist(), (got, want)
        assert rel(scores, want_scores) < 1e-10


def test_fairseq_label_smoothed_nll_loss_reductions_and_no_ignore_index():
    rng = np.random.default_rng(2)
    lprobs = TF.log_softmax(T(rng.standard_normal((2, 4, VOCAB))), dim=-1)
    target = T(rng.integers(0, VOCAB, (2, 4)))
    target[1, 2:] = PAD
    for kw in (dict(ignore_index=PAD, reduce=False), dict(ignore_index=None, reduce=True),
               dict(ignore_index=None, reduce=False)):
        want = label_smoothed_nll_loss(lprobs, target, 0.2, **kw)
        fn = compiled(lambda lp, t: label_smoothed_nll_loss(lp, t, 0.2, **kw), "numpy")  # noqa: B023
        with strict():
            got = fn(av.tensor(lprobs.numpy()), av.tensor(target.numpy()))
        assert all(rel(g, w) < 1e-14 for g, w in zip(got, want)), kw


# -- 3. A pointer-generator network with coverage (atulkum/pointer_summarizer: training_ptr_gen/model.py,
#       train.py, train_util.py) --------------------------------------------------------------------------------

class PGConfig:
    vocab_size, emb_dim, hidden_dim = 10, 4, 3
    pointer_gen, is_coverage = True, True
    cov_loss_wt, eps, max_grad_norm = 1.0, 1e-12, 0.1  # 2.0 in the repository: smaller, so that clipping acts
    rand_unif_init_mag, trunc_norm_init_std = 0.02, 1e-4
    max_dec_steps = 4
    lr, adagrad_init_acc = 0.15, 0.1


def pointer_generator(lib, F_, th, config=PGConfig):
    rnn = th.nn.utils.rnn

    def init_lstm_wt(lstm):
        for names in lstm._all_weights:
            for name in names:
                if name.startswith('weight_'):
                    wt = getattr(lstm, name)
                    wt.data.uniform_(-config.rand_unif_init_mag, config.rand_unif_init_mag)
                elif name.startswith('bias_'):
                    # set forget bias to 1
                    bias = getattr(lstm, name)
                    n = bias.size(0)
                    start, end = n // 4, n // 2
                    bias.data.fill_(0.)
                    bias.data[start:end].fill_(1.)

    def init_linear_wt(linear):
        linear.weight.data.normal_(std=config.trunc_norm_init_std)
        if linear.bias is not None:
            linear.bias.data.normal_(std=config.trunc_norm_init_std)

    def init_wt_normal(wt):
        wt.data.normal_(std=config.trunc_norm_init_std)

    class Encoder(lib.Module):
        def __init__(self):
            super(Encoder, self).__init__()  # noqa: UP008
            self.embedding = lib.Embedding(config.vocab_size, config.emb_dim)
            init_wt_normal(self.embedding.weight)

            self.lstm = lib.LSTM(config.emb_dim, config.hidden_dim, num_layers=1, batch_first=True, bidirectional=True)
            init_lstm_wt(self.lstm)

            self.W_h = lib.Linear(config.hidden_dim * 2, config.hidden_dim * 2, bias=False)

        # seq_lens should be in descending order
        def forward(self, input, seq_lens):
            embedded = self.embedding(input)

            packed = rnn.pack_padded_sequence(embedded, seq_lens, batch_first=True)
            output, hidden = self.lstm(packed)

            encoder_outputs, _ = rnn.pad_packed_sequence(output, batch_first=True)  # h dim = B x t_k x n
            encoder_outputs = encoder_outputs.contiguous()

            encoder_feature = encoder_outputs.view(-1, 2 * config.hidden_dim)  # B * t_k x 2*hidden_dim
            encoder_feature = self.W_h(encoder_feature)

            return encoder_outputs, encoder_feature, hidden

    class ReduceState(lib.Module):
        def __init__(self):
            super(ReduceState, self).__init__()  # noqa: UP008

            self.reduce_h = lib.Linear(config.hidden_dim * 2, config.hidden_dim)
            init_linear_wt(self.reduce_h)
            self.reduce_c = lib.Linear(config.hidden_dim * 2, config.hidden_dim)
            init_linear_wt(self.reduce_c)

        def forward(self, hidden):
            h, c = hidden  # h, c dim = 2 x b x hidden_dim
            h_in = h.transpose(0, 1).contiguous().view(-1, config.hidden_dim * 2)
            hidden_reduced_h = F_.relu(self.reduce_h(h_in))
            c_in = c.transpose(0, 1).contiguous().view(-1, config.hidden_dim * 2)
            hidden_reduced_c = F_.relu(self.reduce_c(c_in))

            return (hidden_reduced_h.unsqueeze(0), hidden_reduced_c.unsqueeze(0))  # h, c dim = 1 x b x hidden_dim

    class Attention(lib.Module):
        def __init__(self):
            super(Attention, self).__init__()  # noqa: UP008
            # attention
            if config.is_coverage:
                self.W_c = lib.Linear(1, config.hidden_dim * 2, bias=False)
            self.decode_proj = lib.Linear(config.hidden_dim * 2, config.hidden_dim * 2)
            self.v = lib.Linear(config.hidden_dim * 2, 1, bias=False)

        def forward(self, s_t_hat, encoder_outputs, encoder_feature, enc_padding_mask, coverage):
            b, t_k, n = list(encoder_outputs.size())

            dec_fea = self.decode_proj(s_t_hat)  # B x 2*hidden_dim
            dec_fea_expanded = dec_fea.unsqueeze(1).expand(b, t_k, n).contiguous()  # B x t_k x 2*hidden_dim
            dec_fea_expanded = dec_fea_expanded.view(-1, n)  # B * t_k x 2*hidden_dim

            att_features = encoder_feature + dec_fea_expanded  # B * t_k x 2*hidden_dim
            if config.is_coverage:
                coverage_input = coverage.view(-1, 1)  # B * t_k x 1
                coverage_feature = self.W_c(coverage_input)  # B * t_k x 2*hidden_dim
                att_features = att_features + coverage_feature

            e = th.tanh(att_features)  # B * t_k x 2*hidden_dim  (F.tanh in the repository, deprecated)
            scores = self.v(e)  # B * t_k x 1
            scores = scores.view(-1, t_k)  # B x t_k

            attn_dist_ = F_.softmax(scores, dim=1) * enc_padding_mask  # B x t_k
            normalization_factor = attn_dist_.sum(1, keepdim=True)
            attn_dist = attn_dist_ / normalization_factor

            attn_dist = attn_dist.unsqueeze(1)  # B x 1 x t_k
            c_t = th.bmm(attn_dist, encoder_outputs)  # B x 1 x n
            c_t = c_t.view(-1, config.hidden_dim * 2)  # B x 2*hidden_dim

            attn_dist = attn_dist.view(-1, t_k)  # B x t_k

            if config.is_coverage:
                coverage = coverage.view(-1, t_k)
                coverage = coverage + attn_dist

            return c_t, attn_dist, coverage

    class Decoder(lib.Module):
        def __init__(self):
            super(Decoder, self).__init__()  # noqa: UP008
            self.attention_network = Attention()
            # decoder
            self.embedding = lib.Embedding(config.vocab_size, config.emb_dim)
            init_wt_normal(self.embedding.weight)

            self.x_context = lib.Linear(config.hidden_dim * 2 + config.emb_dim, config.emb_dim)

            self.lstm = lib.LSTM(config.emb_dim, config.hidden_dim, num_layers=1, batch_first=True,
                                 bidirectional=False)
            init_lstm_wt(self.lstm)

            if config.pointer_gen:
                self.p_gen_linear = lib.Linear(config.hidden_dim * 4 + config.emb_dim, 1)

            # p_vocab
            self.out1 = lib.Linear(config.hidden_dim * 3, config.hidden_dim)
            self.out2 = lib.Linear(config.hidden_dim, config.vocab_size)
            init_linear_wt(self.out2)

        def forward(self, y_t_1, s_t_1, encoder_outputs, encoder_feature, enc_padding_mask,
                    c_t_1, extra_zeros, enc_batch_extend_vocab, coverage, step):

            if not self.training and step == 0:
                h_decoder, c_decoder = s_t_1
                s_t_hat = th.cat((h_decoder.view(-1, config.hidden_dim),
                                  c_decoder.view(-1, config.hidden_dim)), 1)  # B x 2*hidden_dim
                c_t, _, coverage_next = self.attention_network(s_t_hat, encoder_outputs, encoder_feature,
                                                               enc_padding_mask, coverage)
                coverage = coverage_next

            y_t_1_embd = self.embedding(y_t_1)
            x = self.x_context(th.cat((c_t_1, y_t_1_embd), 1))
            lstm_out, s_t = self.lstm(x.unsqueeze(1), s_t_1)

            h_decoder, c_decoder = s_t
            s_t_hat = th.cat((h_decoder.view(-1, config.hidden_dim),
                              c_decoder.view(-1, config.hidden_dim)), 1)  # B x 2*hidden_dim
            c_t, attn_dist, coverage_next = self.attention_network(s_t_hat, encoder_outputs, encoder_feature,
                                                                   enc_padding_mask, coverage)

            if self.training or step > 0:
                coverage = coverage_next

            p_gen = None
            if config.pointer_gen:
                p_gen_input = th.cat((c_t, s_t_hat, x), 1)  # B x (2*2*hidden_dim + emb_dim)
                p_gen = self.p_gen_linear(p_gen_input)
                p_gen = th.sigmoid(p_gen)  # F.sigmoid in the repository, deprecated

            output = th.cat((lstm_out.view(-1, config.hidden_dim), c_t), 1)  # B x hidden_dim * 3
            output = self.out1(output)  # B x hidden_dim

            # output = F.relu(output)

            output = self.out2(output)  # B x vocab_size
            vocab_dist = F_.softmax(output, dim=1)

            if config.pointer_gen:
                vocab_dist_ = p_gen * vocab_dist
                attn_dist_ = (1 - p_gen) * attn_dist

                if extra_zeros is not None:
                    vocab_dist_ = th.cat([vocab_dist_, extra_zeros], 1)

                final_dist = vocab_dist_.scatter_add(1, enc_batch_extend_vocab, attn_dist_)
            else:
                final_dist = vocab_dist

            return final_dist, s_t, c_t, attn_dist, p_gen, coverage

    class Model(lib.Module):  # an `object` holding the three in the repository: see the module docstring
        def __init__(self):
            super().__init__()
            encoder = Encoder()
            decoder = Decoder()
            reduce_state = ReduceState()

            # shared the embedding between encoder and decoder
            decoder.embedding.weight = encoder.embedding.weight

            self.encoder = encoder
            self.decoder = decoder
            self.reduce_state = reduce_state
    return Model()


def pg_train_one_batch(th, model, enc_batch, enc_padding_mask, enc_lens, enc_batch_extend_vocab, extra_zeros, c_t_1,
                       coverage, dec_batch, dec_padding_mask, dec_lens_var, target_batch, config=PGConfig):
    """Trainer.train_one_batch's loss (get_input_from_batch's and get_output_from_batch's tensors given)."""
    max_dec_len = dec_batch.shape[1]
    encoder_outputs, encoder_feature, encoder_hidden = model.encoder(enc_batch, enc_lens)
    s_t_1 = model.reduce_state(encoder_hidden)

    step_losses = []
    for di in range(min(max_dec_len, config.max_dec_steps)):
        y_t_1 = dec_batch[:, di]  # Teacher forcing
        final_dist, s_t_1, c_t_1, attn_dist, p_gen, next_coverage = model.decoder(
            y_t_1, s_t_1, encoder_outputs, encoder_feature, enc_padding_mask, c_t_1, extra_zeros,
            enc_batch_extend_vocab, coverage, di)
        target = target_batch[:, di]
        gold_probs = th.gather(final_dist, 1, target.unsqueeze(1)).squeeze()
        step_loss = -th.log(gold_probs + config.eps)
        if config.is_coverage:
            step_coverage_loss = th.sum(th.min(attn_dist, coverage), 1)
            step_loss = step_loss + config.cov_loss_wt * step_coverage_loss
            coverage = next_coverage

        step_mask = dec_padding_mask[:, di]
        step_loss = step_loss * step_mask
        step_losses.append(step_loss)

    sum_losses = th.sum(th.stack(step_losses, 1), 1)
    batch_avg_loss = sum_losses / dec_lens_var
    loss = th.mean(batch_avg_loss)
    return loss


def summarization_batch(rng, n=3, enc_len=5, dec_len=4, max_art_oovs=2, config=PGConfig):
    """Batcher's arrays: articles sorted by length (descending), their in-article OOVs numbered after the
    vocabulary in enc_batch_extend_vocab (UNK, id 0, in enc_batch), decoder inputs and targets padded with
    PAD (id 1), the targets pointing at the OOVs."""
    V = config.vocab_size
    enc_lens = np.sort(rng.integers(2, enc_len + 1, n))[::-1].copy()
    enc_lens[0] = enc_len
    enc_padding_mask = (np.arange(enc_len)[None] < enc_lens[:, None]).astype(np.float64)
    ext = rng.integers(2, V + max_art_oovs, (n, enc_len))
    ext = np.where(enc_padding_mask > 0, ext, 1)
    enc_batch = np.where(ext >= V, 0, ext)
    dec_lens = rng.integers(2, dec_len + 1, n)
    dec_padding_mask = (np.arange(dec_len)[None] < dec_lens[:, None]).astype(np.float64)
    target = np.where(dec_padding_mask > 0, np.take_along_axis(ext, rng.integers(0, 2, (n, dec_len)), 1), 1)
    dec_batch = np.where(dec_padding_mask > 0, np.c_[np.full(n, 3), np.where(target >= V, 0, target)[:, :-1]], 1)
    extra_zeros = np.zeros((n, max_art_oovs))
    c_t_1 = np.zeros((n, 2 * config.hidden_dim))
    coverage = np.zeros(enc_batch.shape)
    return (enc_batch, enc_padding_mask, enc_lens, ext, extra_zeros, c_t_1, coverage, dec_batch, dec_padding_mask,
            dec_lens.astype(np.float64), target)


def grads_of(model, module, grads):
    """The gradients of `module.parameters()`: `grads` is keyed by the model's names, and a weight tied between
    two modules (the shared embedding) has one entry, under the first one's name."""
    name = {id(p): k for k, p in model.named_parameters()}
    return {name[id(p)]: grads[name[id(p)]] for p in module.parameters()}


def pg_step(model, optimizer, *batch, config=PGConfig):
    loss, grads = av.value_and_grad(lambda m, *b: pg_train_one_batch(av, m, *b))(model, *batch)
    nn.utils.clip_grad_norm_(grads_of(model, model.encoder, grads), config.max_grad_norm)
    nn.utils.clip_grad_norm_(grads_of(model, model.decoder, grads), config.max_grad_norm)
    nn.utils.clip_grad_norm_(grads_of(model, model.reduce_state, grads), config.max_grad_norm)
    optimizer.step(grads)
    return loss


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_pointer_generator_attention_p_gen_scatter_add_and_coverage_loss(mode):
    ours, theirs = pair(pointer_generator)
    config = PGConfig
    assert ours.decoder.embedding.weight is ours.encoder.embedding.weight
    params = list(ours.encoder.parameters()) + list(ours.decoder.parameters()) + \
        list(ours.reduce_state.parameters())
    tparams = list(theirs.encoder.parameters()) + list(theirs.decoder.parameters()) + \
        list(theirs.reduce_state.parameters())
    with pytest.raises(ValueError, match="appears twice in one parameter group"):  # the shared embedding
        optim.Adagrad(params, lr=config.lr)
    params, tparams = list(dict.fromkeys(params)), list(dict.fromkeys(tparams))  # see the module docstring
    optimizer = optim.Adagrad(params, lr=config.lr, initial_accumulator_value=config.adagrad_init_acc)
    toptimizer = torch.optim.Adagrad(tparams, lr=config.lr, initial_accumulator_value=config.adagrad_init_acc)
    rng = np.random.default_rng(3)
    run = compiled(pg_step, mode)
    for it in range(4):
        batch = summarization_batch(rng)
        toptimizer.zero_grad()
        tl = pg_train_one_batch(torch, theirs, *map(T, batch))
        tl.backward()
        torch.nn.utils.clip_grad_norm_(theirs.encoder.parameters(), config.max_grad_norm)
        torch.nn.utils.clip_grad_norm_(theirs.decoder.parameters(), config.max_grad_norm)
        torch.nn.utils.clip_grad_norm_(theirs.reduce_state.parameters(), config.max_grad_norm)
        toptimizer.step()
        with strict():
            loss = (run if it else pg_step)(ours, optimizer, *map(av.tensor, batch))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1


# -- 4. Kim's TextCNN (Shawn1993/cnn-text-classification-pytorch's CNN_Text, and the Conv1d form) and word2vec
#       skip-gram with negative sampling (Andras7/word2vec-pytorch's SkipGramModel) ------------------------------

class TextCNNArgs:
    embed_num, embed_dim, class_num, kernel_num, kernel_sizes, dropout, static = 15, 6, 3, 4, [2, 3, 4], 0.0, False


def text_cnn(lib, F_, th, conv1d=False, static=False):
    class CNN_Text(lib.Module):
        def __init__(self, args):
            super(CNN_Text, self).__init__()  # noqa: UP008
            self.args = args

            V = args.embed_num
            D = args.embed_dim
            C = args.class_num
            Ci = 1
            Co = args.kernel_num
            Ks = args.kernel_sizes

            self.embed = lib.Embedding(V, D)
            if conv1d:  # the Conv1d form: channels are the embedding's dimensions
                self.convs = lib.ModuleList([lib.Conv1d(D, Co, K) for K in Ks])
            else:
                self.convs = lib.ModuleList([lib.Conv2d(Ci, Co, (K, D)) for K in Ks])
            self.dropout = lib.Dropout(args.dropout)
            self.fc1 = lib.Linear(len(Ks) * Co, C)

            if static:
                self.embed.weight.requires_grad = False

        def forward(self, x):
            x = self.embed(x)  # (N, W, D)
            if conv1d:
                x = x.permute(0, 2, 1)  # (N, D, W)
                x = [F_.relu(conv(x)) for conv in self.convs]  # [(N, Co, W), ...]*len(Ks)
            else:
                x = x.unsqueeze(1)  # (N, Ci, W, D)
                x = [F_.relu(conv(x)).squeeze(3) for conv in self.convs]  # [(N, Co, W), ...]*len(Ks)
            x = [F_.max_pool1d(i, i.size(2)).squeeze(2) for i in x]  # [(N, Co), ...]*len(Ks)
            x = th.cat(x, 1)
            x = self.dropout(x)  # (N, len(Ks)*Co)
            logit = self.fc1(x)  # (N, C)
            return logit
    return CNN_Text(TextCNNArgs)


def text_cnn_loss(F_, th):
    def loss(model, feature, target):
        logit = model(feature)
        return F_.cross_entropy(logit, target)
    return loss


@pytest.mark.parametrize("conv1d,static,mode", [(False, False, "numpy"), (True, True, "cpu")])
def test_text_cnn_kernel_sizes_max_pool_over_time_and_a_static_embedding(conv1d, static, mode):
    ours, theirs = pair(lambda lib, F_, th: text_cnn(lib, F_, th, conv1d, static))
    assert ours.embed.weight.requires_grad is not static
    opt = optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    topt = torch.optim.Adam([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)

    def step(model, opt, feature, target):
        loss, grads = av.value_and_grad(text_cnn_loss(F, av))(model, feature, target)
        assert ("embed.weight" in grads) is not static
        opt.step(grads)
        return loss
    run = compiled(step, mode)
    rng = np.random.default_rng(4)
    for it in range(3):
        feature, target = rng.integers(0, TextCNNArgs.embed_num, (5, 7)), rng.integers(0, TextCNNArgs.class_num, 5)
        topt.zero_grad()
        tl = text_cnn_loss(TF, torch)(theirs, T(feature), T(target))
        tl.backward()
        topt.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(feature), av.tensor(target))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1


def skip_gram(lib, F_, th, emb_size=12, emb_dimension=5, sparse=True):
    class SkipGramModel(lib.Module):
        def __init__(self, emb_size, emb_dimension):
            super(SkipGramModel, self).__init__()  # noqa: UP008
            self.emb_size = emb_size
            self.emb_dimension = emb_dimension
            self.u_embeddings = lib.Embedding(emb_size, emb_dimension, sparse=sparse)
            self.v_embeddings = lib.Embedding(emb_size, emb_dimension, sparse=sparse)

            initrange = 1.0 / self.emb_dimension
            lib.init.uniform_(self.u_embeddings.weight.data, -initrange, initrange)
            lib.init.uniform_(self.v_embeddings.weight.data, -initrange, initrange)  # constant_(..., 0) there

        def forward(self, pos_u, pos_v, neg_v):
            emb_u = self.u_embeddings(pos_u)
            emb_v = self.v_embeddings(pos_v)
            emb_neg_v = self.v_embeddings(neg_v)

            score = th.sum(th.mul(emb_u, emb_v), dim=1)
            score = th.clamp(score, max=10, min=-10)
            score = -F_.logsigmoid(score)

            neg_score = th.bmm(emb_neg_v, emb_u.unsqueeze(2)).squeeze()
            neg_score = th.clamp(neg_score, max=10, min=-10)
            neg_score = -th.sum(F_.logsigmoid(-neg_score), dim=1)

            return th.mean(score + neg_score)
    return SkipGramModel(emb_size, emb_dimension)


@pytest.mark.parametrize("sparse,mode", [(True, "numpy"), (False, "cpu")])
def test_word2vec_skip_gram_negative_sampling(sparse, mode):
    ours, theirs = pair(lambda lib, F_, th: skip_gram(lib, F_, th, sparse=sparse))
    if sparse:  # Word2VecTrainer's optimizer for sparse embeddings
        opt, topt = optim.SparseAdam(ours.parameters(), lr=0.05), torch.optim.SparseAdam(theirs.parameters(), lr=0.05)
    else:
        opt, topt = optim.Adam(ours.parameters(), lr=0.05), torch.optim.Adam(theirs.parameters(), lr=0.05)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, 4)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, 4)

    def step(model, opt, pos_u, pos_v, neg_v):
        loss, grads = av.value_and_grad(lambda m, *xs: m(*xs))(model, pos_u, pos_v, neg_v)
        opt.step(grads)
        return loss
    run = compiled(step, mode)
    rng = np.random.default_rng(5)
    for it in range(4):
        pos_u, pos_v, neg_v = rng.integers(0, 8, 6), rng.integers(0, 8, 6), rng.integers(0, 12, (6, 3))
        topt.zero_grad()
        tl = theirs(T(pos_u), T(pos_v), T(neg_v))
        tl.backward()
        topt.step()
        tsched.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(pos_u), av.tensor(pos_v), av.tensor(neg_v))
        sched.step()
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    assert np.abs(ours.u_embeddings.weight.numpy()[8:] - theirs.u_embeddings.weight.detach().numpy()[8:]).max() == 0


# -- regressions: what the programs above found -------------------------------------------------------------------

def test_recurrent_layers_list_their_weights_as_torch_s_all_weights():
    """pointer_summarizer's init_lstm_wt walks `lstm._all_weights` (the names per layer and direction) and sets
    each by getattr: Avalon's RNN, LSTM and GRU had no `_all_weights` (AttributeError). They now have it,
    `_flat_weights_names` and `all_weights` (the parameters themselves), as torch's."""
    for kw in (dict(num_layers=2, bidirectional=True), dict(bias=False)):
        for lib_cls, torch_cls in ((nn.LSTM, torch.nn.LSTM), (nn.GRU, torch.nn.GRU), (nn.RNN, torch.nn.RNN)):
            ours, theirs = lib_cls(3, 4, **kw), torch_cls(3, 4, **kw)
            assert ours._all_weights == theirs._all_weights
            assert ours._flat_weights_names == theirs._flat_weights_names
            assert [[tuple(p.shape) for p in ps] for ps in ours.all_weights] == \
                [[tuple(p.shape) for p in ps] for ps in theirs.all_weights]
            assert ours.all_weights[-1][1] is getattr(ours, ours._all_weights[-1][1])


def test_a_tied_weight_listed_twice_in_one_group_names_the_duplicate():
    """pointer_summarizer hands Adagrad `list(encoder.parameters()) + list(decoder.parameters()) + ...` with the
    embedding the two share listed twice (torch warns, and steps it twice). Avalon refuses it, but said the
    parameter appeared "in more than one parameter group" of a single group; it now says it appears twice in
    one group and how to list it once."""
    emb = nn.Embedding(4, 2)
    with pytest.raises(ValueError, match=r"'2' appears twice in one parameter group.*dict.fromkeys"):
        optim.Adagrad([emb.weight, nn.Linear(2, 2).weight, emb.weight], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.Adagrad([{"params": [emb.weight]}, {"params": [emb.weight]}], lr=0.1)

"""Round 9l of port QA: three of the official PyTorch NLP tutorials, written once over `lib` (torch.nn or
avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights on random float64 data
and compared with torch after every step (losses, parameters), the first step eagerly and the rest compiled
(numpy and cpu backends), with warnings as errors while tracing.

Programs: "NLP From Scratch: classifying names with a character-level RNN" (CharRNN's nn.RNN over one-hot
letters that lineToTensor builds with zeros and index assignment `tensor[li][0][letterToIndex(letter)] = 1`,
h2o on the last hidden state, nn.LogSoftmax(dim=1) and nn.NLLLoss, trained by the tutorial's hand-written SGD
`for p in rnn.parameters(): p.data.add_(p.grad.data, alpha=-learning_rate)`), and "Text classification with
the torchtext library" (TextClassificationModel's nn.EmbeddingBag in its default mean mode over a flat batch of
token ids with offsets, its init_weights' uniform_/zero_ on `.data`, a Linear, CrossEntropyLoss, SGD at lr 5 with
StepLR(1.0, gamma=0.1) stepped per epoch, clip_grad_norm_(0.1), the accuracy by argmax and evaluate under
no_grad), with the vocabulary and collate_batch's offsets built in numpy (torchtext is not a dependency); and
"Sequence models and LSTM networks"' LSTMTagger (Embedding, nn.LSTM over `embeds.view(len(sentence), 1, -1)`,
hidden2tag, log_softmax(dim=1), NLLLoss and SGD at lr 0.1 over the tutorial's two sentences, one trace per
sentence length, the scores compared under no_grad before and after).

What the ports change: gradients are values (`av.value_and_grad`); the hand-written SGD reads them by name,
`p.data.add_(grads[name].data, alpha=-lr)` over `named_parameters()`, inside the compiled step;
`clip_grad_norm_` takes the gradients before `opt.step(grads)`. torch.zeros' default float32 is float64 here,
where the tests train.

No bug was found: the three programs, and what was tried beside them (empty bags and include_last_offset,
padding_idx, per_sample_weights and max mode compiled; the hand-written per-letter RNN of the tutorial's first
version; the one-hot index assignment inside a compiled function), agree with torch to roundoff, so the file has
no regression tests.
"""
from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn, optim

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


# -- 1. classifying names with a character-level RNN (intermediate/char_rnn_classification_tutorial.py) -------

all_letters = string.ascii_letters + " .,;'"
n_letters = len(all_letters)
n_categories, n_hidden = 5, 8  # 18 and 128 there


def letterToIndex(letter):  # noqa: N802
    return all_letters.find(letter)


def lineToTensor(th, line):  # noqa: N802
    tensor = th.zeros(len(line), 1, n_letters, dtype=th.float64)
    for li, letter in enumerate(line):
        tensor[li][0][letterToIndex(letter)] = 1
    return tensor


def char_rnn(lib, F_, th):
    nn_ = lib

    class CharRNN(nn_.Module):
        def __init__(self, input_size, hidden_size, output_size):
            super(CharRNN, self).__init__()  # noqa: UP008
            self.rnn = nn_.RNN(input_size, hidden_size)
            self.h2o = nn_.Linear(hidden_size, output_size)
            self.softmax = nn_.LogSoftmax(dim=1)

        def forward(self, line_tensor):
            rnn_out, hidden = self.rnn(line_tensor)
            output = self.h2o(hidden[0])
            output = self.softmax(output)
            return output
    return CharRNN(n_letters, n_hidden, n_categories)


def random_name(rng, length):
    return "".join(rng.choice(list(all_letters), length))


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_char_rnn_name_classifier_one_hot_lines_nll_and_hand_written_sgd(mode):
    ours, theirs = pair(char_rnn)
    learning_rate = 0.1  # 0.005 there
    criterion, tcriterion = nn.NLLLoss(), torch.nn.NLLLoss()

    def loss_fn(rnn, category_tensor, line_tensor):
        output = rnn(line_tensor)
        return criterion(output, category_tensor), output

    def train(rnn, category_tensor, line_tensor):
        (loss, output), grads = av.value_and_grad(loss_fn, has_aux=True)(rnn, category_tensor, line_tensor)
        for name, p in rnn.named_parameters():
            p.data.add_(grads[name].data, alpha=-learning_rate)
        return output, loss
    run = compiled(train, mode)
    rng = np.random.default_rng(0)
    for it in range(4):
        line = random_name(rng, 6)
        category = int(rng.integers(0, n_categories))
        line_tensor, tline_tensor = lineToTensor(av, line), lineToTensor(torch, line)
        assert np.array_equal(line_tensor.numpy(), tline_tensor.numpy())
        theirs.zero_grad()
        toutput = theirs(tline_tensor)
        tloss = tcriterion(toutput, torch.tensor([category], dtype=torch.long))
        tloss.backward()
        for p in theirs.parameters():
            p.data.add_(p.grad.data, alpha=-learning_rate)
        with strict():
            output, loss = (run if it else train)(ours, av.tensor([category], dtype=av.long), line_tensor)
        assert rel(loss, tloss) < 1e-12, it
        assert rel(output, toutput) < 1e-12, it
        same_weights(ours, theirs, 1e-12)
    assert run.cache_info().misses == 1

    def evaluate(rnn, th, line):  # the tutorial's evaluate/predict: topk of the output
        with th.no_grad():
            output = rnn(lineToTensor(th, line))
            top_n, top_i = output.topk(1)
            return top_i[0].item(), output
    line = random_name(rng, 9)
    (i, out), (ti, tout) = evaluate(ours, av, line), evaluate(theirs, torch, line)
    assert i == ti and rel(out, tout) < 1e-12


# -- 2. text classification with the torchtext library (beginner/text_sentiment_ngrams_tutorial.py) -----------

WORDS = ("the", "a", "market", "team", "wins", "falls", "stocks", "game", "new", "chip", "score", "rise", "of", "in")
NUM_CLASS, EMSIZE = 4, 6  # 4 and 64 there


def build_vocab(rng, n=40):
    """build_vocab_from_iterator(yield_tokens(train_iter), specials=["<unk>"]) and set_default_index, in numpy."""
    sentences = [" ".join(rng.choice(WORDS, rng.integers(2, 8))) for _ in range(n)]
    tokens = [w for s in sentences for w in s.split()]
    words, counts = np.unique(tokens, return_counts=True)
    order = sorted(range(len(words)), key=lambda i: (-counts[i], words[i]))  # by frequency, then alphabetically
    itos = ["<unk>"] + [str(words[i]) for i in order]
    stoi = {w: i for i, w in enumerate(itos)}
    return lambda x: [stoi.get(w, 0) for w in x.lower().split()], len(itos)


def collate_batch(text_pipeline, batch):
    """collate_batch in numpy: labels, the flat token ids and the offsets of each text's first token."""
    label_list, text_list, offsets = [], [], [0]
    for _label, _text in batch:
        label_list.append(int(_label) - 1)  # label_pipeline
        processed_text = np.array(text_pipeline(_text), dtype=np.int64)
        text_list.append(processed_text)
        offsets.append(processed_text.shape[0])
    return np.array(label_list), np.concatenate(text_list), np.cumsum(offsets[:-1])


def text_batch(rng, batch_size=4, total=20):
    """batch_size texts of `total` tokens in all (one shape, new offsets each batch), some words unknown."""
    cuts = np.sort(rng.choice(np.arange(1, total), batch_size - 1, replace=False))
    lengths = np.diff(np.concatenate([[0], cuts, [total]]))
    words = WORDS + ("unseen",)
    return [(int(rng.integers(1, NUM_CLASS + 1)), " ".join(rng.choice(words, n))) for n in lengths]


def text_classifier(lib, F_, th, vocab_size=None):
    nn_ = lib

    class TextClassificationModel(nn_.Module):
        def __init__(self, vocab_size, embed_dim, num_class):
            super(TextClassificationModel, self).__init__()  # noqa: UP008
            self.embedding = nn_.EmbeddingBag(vocab_size, embed_dim, sparse=False)
            self.fc = nn_.Linear(embed_dim, num_class)
            self.init_weights()

        def init_weights(self):
            initrange = 0.5
            self.embedding.weight.data.uniform_(-initrange, initrange)
            self.fc.weight.data.uniform_(-initrange, initrange)
            self.fc.bias.data.zero_()

        def forward(self, text, offsets):
            embedded = self.embedding(text, offsets)
            return self.fc(embedded)
    return TextClassificationModel(vocab_size, EMSIZE, NUM_CLASS)


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_text_classification_embedding_bag_offsets_clipping_and_step_lr(mode):
    rng = np.random.default_rng(1)
    text_pipeline, vocab_size = build_vocab(rng)
    ours, theirs = pair(lambda lib, F_, th: text_classifier(lib, F_, th, vocab_size))
    LR = 5  # noqa: N806
    optimizer, toptimizer = optim.SGD(ours.parameters(), lr=LR), torch.optim.SGD(theirs.parameters(), lr=LR)
    scheduler = optim.lr_scheduler.StepLR(optimizer, 1.0, gamma=0.1)
    tscheduler = torch.optim.lr_scheduler.StepLR(toptimizer, 1.0, gamma=0.1)
    criterion, tcriterion = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()

    def loss_fn(model, label, text, offsets):
        predicted_label = model(text, offsets)
        return criterion(predicted_label, label), predicted_label

    def train_step(model, optimizer, label, text, offsets):
        (loss, predicted_label), grads = av.value_and_grad(loss_fn, has_aux=True)(model, label, text, offsets)
        norm = nn.utils.clip_grad_norm_(grads, 0.1)
        optimizer.step(grads)
        return loss, predicted_label, norm
    run = compiled(train_step, mode)
    it = 0
    for _epoch in range(2):
        total_acc, ttotal_acc, total_count = 0, 0, 0
        for _ in range(2):  # the dataloader's batches
            label, text, offsets = collate_batch(text_pipeline, text_batch(rng))
            toptimizer.zero_grad()
            tpredicted_label = theirs(T(text), T(offsets))
            tloss = tcriterion(tpredicted_label, T(label))
            tloss.backward()
            tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.1)
            toptimizer.step()
            with strict():
                loss, predicted_label, norm = (run if it else train_step)(
                    ours, optimizer, av.tensor(label), av.tensor(text), av.tensor(offsets))
            assert rel(loss, tloss) < 1e-12, it
            assert rel(norm, tnorm) < 1e-12, it
            same_weights(ours, theirs, 1e-12)
            total_acc += (predicted_label.argmax(1) == av.tensor(label)).sum().item()
            ttotal_acc += (tpredicted_label.argmax(1) == T(label)).sum().item()
            total_count += label.shape[0]
            it += 1
        assert total_acc == ttotal_acc
        scheduler.step()
        tscheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(toptimizer.param_groups[0]["lr"], rel=1e-15)
    assert run.cache_info().misses == 1

    def evaluate(model, th, batch):
        model.eval()
        with th.no_grad():
            label, text, offsets = (th.tensor(a) for a in collate_batch(text_pipeline, batch))
            predicted_label = model(text, offsets)
            return (predicted_label.argmax(1) == label).sum().item(), predicted_label
    batch = text_batch(rng, batch_size=3, total=11)
    (acc, out), (tacc, tout) = evaluate(ours, av, batch), evaluate(theirs, torch, batch)
    assert acc == tacc and rel(out, tout) < 1e-12


# -- 3. the LSTM part-of-speech tagger (beginner/nlp/sequence_models_tutorial.py) -------------------------------

training_data = [
    # Tags are: DET - determiner; NN - noun; V - verb
    # For example, the word "The" is a determiner
    ("The dog ate the apple".split(), ["DET", "NN", "V", "DET", "NN"]),
    ("Everybody read that book".split(), ["NN", "V", "DET", "NN"])
]
word_to_ix = {}
# For each words-list (sentence) and tags-list in each tuple of training_data
for sent, tags in training_data:  # noqa: B007
    for word in sent:
        if word not in word_to_ix:  # word has not been assigned an index yet
            word_to_ix[word] = len(word_to_ix)  # Assign each word with a unique index
tag_to_ix = {"DET": 0, "NN": 1, "V": 2}  # Assign each tag with a unique index
EMBEDDING_DIM = 6
HIDDEN_DIM = 6


def prepare_sequence(th, seq, to_ix):
    idxs = [to_ix[w] for w in seq]
    return th.tensor(idxs, dtype=th.long)


def lstm_tagger(lib, F_, th):
    nn_ = lib

    class LSTMTagger(nn_.Module):

        def __init__(self, embedding_dim, hidden_dim, vocab_size, tagset_size):
            super(LSTMTagger, self).__init__()  # noqa: UP008
            self.hidden_dim = hidden_dim

            self.word_embeddings = nn_.Embedding(vocab_size, embedding_dim)

            # The LSTM takes word embeddings as inputs, and outputs hidden states
            # with dimensionality hidden_dim.
            self.lstm = nn_.LSTM(embedding_dim, hidden_dim)

            # The linear layer that maps from hidden state space to tag space
            self.hidden2tag = nn_.Linear(hidden_dim, tagset_size)

        def forward(self, sentence):
            embeds = self.word_embeddings(sentence)
            lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
            tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
            tag_scores = F_.log_softmax(tag_space, dim=1)
            return tag_scores
    return LSTMTagger(EMBEDDING_DIM, HIDDEN_DIM, len(word_to_ix), len(tag_to_ix))


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_lstm_pos_tagger_view_len_sentence_log_softmax_nll_sgd(mode):
    ours, theirs = pair(lstm_tagger)
    loss_function, tloss_function = nn.NLLLoss(), torch.nn.NLLLoss()
    optimizer, toptimizer = optim.SGD(ours.parameters(), lr=0.1), torch.optim.SGD(theirs.parameters(), lr=0.1)

    # See what the scores are before training
    with av.no_grad(), torch.no_grad():
        inputs = prepare_sequence(av, training_data[0][0], word_to_ix)
        tinputs = prepare_sequence(torch, training_data[0][0], word_to_ix)
        assert rel(ours(inputs), theirs(tinputs)) < 1e-12

    def loss_fn(model, sentence_in, targets):
        tag_scores = model(sentence_in)
        return loss_function(tag_scores, targets)

    def step(model, optimizer, sentence_in, targets):
        loss, grads = av.value_and_grad(loss_fn)(model, sentence_in, targets)
        optimizer.step(grads)
        return loss
    run = compiled(step, mode)
    it = 0
    for _epoch in range(2):  # 300 there
        for sentence, tags in training_data:
            theirs.zero_grad()
            tsentence_in = prepare_sequence(torch, sentence, word_to_ix)
            ttargets = prepare_sequence(torch, tags, tag_to_ix)
            ttag_scores = theirs(tsentence_in)
            tloss = tloss_function(ttag_scores, ttargets)
            tloss.backward()
            toptimizer.step()
            with strict():
                loss = (run if it else step)(ours, optimizer, prepare_sequence(av, sentence, word_to_ix),
                                             prepare_sequence(av, tags, tag_to_ix))
            assert rel(loss, tloss) < 1e-12, it
            same_weights(ours, theirs, 1e-12)
            it += 1
    assert run.cache_info().misses == 2  # one trace per sentence length

    with av.no_grad(), torch.no_grad():
        tag_scores, ttag_scores = ours(inputs), theirs(tinputs)
        assert rel(tag_scores, ttag_scores) < 1e-12
        assert np.array_equal(tag_scores.argmax(1).numpy(), ttag_scores.argmax(1).numpy())

"""Text generation with Hugging Face decoders imported through `av.from_torch(..., dynamic_shapes=)`.

GPT-2, Llama (grouped-query attention) and Qwen2, tiny and perturbed, imported once with batch and
sequence length symbolic: logits as torch's at several lengths (eager and `av.compile`d), then a
greedy loop in Avalon over a left-padded batch (position ids from the attention mask, as HF's
`generate` makes them; a finished row continues with the pad token) that re-runs the whole prefix
each step, giving exactly the tokens of HF's `generate(do_sample=False)`."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from test_hf_more import SMALL, _perturbed, _rel, _transformers

import avalon as av

ARCHS = ["gpt2", "llama", "qwen2"]
NEW = 8


@functools.cache
def _lm(arch: str) -> torch.nn.Module:
    """A tiny random decoder (pad 0, eos 2: a row that emits 2 finishes), perturbed, in eval mode."""
    T = _transformers()
    torch.manual_seed(0)
    ids = dict(vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "gpt2":
        m = T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, **ids))
    elif arch == "llama":
        m = T.LlamaForCausalLM(T.LlamaConfig(num_key_value_heads=2, max_position_embeddings=64, **SMALL, **ids))
    else:
        m = T.Qwen2ForCausalLM(T.Qwen2Config(num_key_value_heads=2, max_position_embeddings=64, **SMALL, **ids))
    return _perturbed(m).eval()


def _positions(mask: np.ndarray) -> np.ndarray:
    """HF's position ids for a left-padded batch: count of real tokens so far, minus one; 0 on pads."""
    return np.where(mask == 0, 0, np.cumsum(mask, -1) - 1)


def _batch(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prompts of these lengths, left-padded with 0 to the longest."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids, mask = np.zeros((len(lengths), t), np.int64), np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        ids[i, t - n:], mask[i, t - n:] = rng.integers(3, 128, n), 1
    return ids, mask


_IMPORTS: dict = {}


def _import_dynamic(lm: torch.nn.Module) -> av.interop.ImportedModel:
    """The model's own forward, by keyword, batch and sequence length symbolic (imported once per model)."""
    if id(lm) in _IMPORTS:
        return _IMPORTS[id(lm)]
    b, t = torch.export.Dim("b", min=1, max=8), torch.export.Dim("t", min=2, max=32)
    ids, mask = _batch([7, 4])
    ex = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
              position_ids=torch.from_numpy(_positions(mask)), use_cache=False)
    dyn = {k: {0: b, 1: t} for k in ("input_ids", "attention_mask", "position_ids")}
    _IMPORTS[id(lm)] = av.from_torch(lm, kwargs=ex, dynamic_shapes={**dyn, "use_cache": None})
    return _IMPORTS[id(lm)]


def _logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_dynamic_import_gives_torchs_logits_at_every_length(arch):
    lm = _lm(arch)
    model = _import_dynamic(lm)
    step = av.compile(lambda m, i, a, p: m(input_ids=i, attention_mask=a, position_ids=p, use_cache=False).logits)
    for lengths in [[7, 4], [2], [13, 9, 5], [32, 20]]:
        ids, mask = _batch(lengths, seed=len(lengths))
        pos = _positions(mask)
        with torch.no_grad():
            want = lm(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      position_ids=torch.from_numpy(pos), use_cache=False).logits.numpy()
        got = _logits(model, ids, mask)
        assert got.shape == want.shape
        real = mask.astype(bool)  # pad rows attend to nothing; only real positions are compared
        assert _rel(got.numpy()[real], want[real]) < 1e-5
        if len(lengths) != 3:  # compiled: traced once per shape
            assert _rel(step(model, ids, mask, pos).numpy()[real], want[real]) < 1e-5


def greedy(model, ids: np.ndarray, mask: np.ndarray, new: int, pad: int, eos: int, step=None) -> np.ndarray:
    """Greedy decoding without a KV cache, in Avalon: the whole prefix each step (HF's semantics:
    left padding masked, positions from the mask, a row that emitted `eos` continues with `pad`,
    the loop stops when every row has finished)."""
    ids, mask = av.tensor(ids), av.tensor(mask)
    done = av.zeros((ids.shape[0],), dtype=av.bool)
    for _ in range(new):
        pos = av.where(mask == 0, 0, mask.cumsum(-1) - 1)
        logits = (step or (lambda m, i, a, p: m(input_ids=i, attention_mask=a, position_ids=p,
                                                use_cache=False).logits))(model, ids, mask, pos)
        nxt = av.where(done, pad, logits[:, -1].argmax(-1))
        ids = av.cat([ids, nxt[:, None]], 1)
        mask = av.cat([mask, av.ones_like(nxt)[:, None]], 1)
        done = done | (nxt == eos)
        if bool(done.all()):
            break
    return ids.numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_of_a_left_padded_batch_is_hfs_generate(arch):
    lm = _lm(arch)
    model = _import_dynamic(lm)
    ids, mask = _batch([6, 3], seed=1)
    want = lm.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                       max_new_tokens=NEW, pad_token_id=0, eos_token_id=2).numpy()
    assert greedy(model, ids, mask, NEW, pad=0, eos=2).tolist() == want.tolist()
    eos = int(want[1, ids.shape[1] + 2])  # a token the second row emits third: it finishes there, padded after
    want = lm.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                       max_new_tokens=NEW, pad_token_id=0, eos_token_id=eos).numpy()
    assert (want[1, ids.shape[1] + 3:] == 0).all()
    assert greedy(model, ids, mask, NEW, pad=0, eos=eos).tolist() == want.tolist()
    if arch == "llama":  # each step compiled (traced once per length)
        step = av.compile(lambda m, i, a, p: m(input_ids=i, attention_mask=a, position_ids=p, use_cache=False).logits)
        assert greedy(model, ids, mask, NEW, pad=0, eos=eos, step=step).tolist() == want.tolist()


# -- with a KV cache: past keys and values as explicit tensors ------------------------------------------

class WithPast(torch.nn.Module):
    """The decoder with its past keys and values as plain tensors in and out (per layer: keys, values of
    shape (batch, kv heads, past length, head dim)), wrapped in HF's DynamicCache inside, so that
    torch.export sees tensors only. No past: the prefill; a past: a decode step."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache
        cache = DynamicCache(config=self.lm.config)
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=cache, use_cache=True)
        return (out.logits,) + tuple(t for layer in cache.layers for t in (layer.keys, layer.values))


def _import_with_past(lm: torch.nn.Module) -> tuple:
    """(prefill, decode step): the prefill with batch and prompt length symbolic, the decode step (one
    token) with batch and past length symbolic. The past length is Dim.DYNAMIC: a named Dim fails in
    torch.export (a guard min(16 + 16*p, 32 + 32*p) == 16 + 16*p it cannot prove over the Dim's range)."""
    w = WithPast(lm).eval()
    b, t, D = torch.export.Dim("b", min=1, max=8), torch.export.Dim("t", min=2, max=32), torch.export.Dim.DYNAMIC
    ids, mask = map(torch.from_numpy, _batch([6, 3]))
    pos = torch.from_numpy(_positions(mask.numpy()))
    prefill = av.from_torch(w, ids, mask, pos, dynamic_shapes=({0: b, 1: t},) * 3)
    with torch.no_grad():
        kv = w(ids, mask, pos)[1:]
    mask1 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    decode = av.from_torch(w, ids[:, :1], mask1, pos[:, -1:] + 1, *kv,
                           dynamic_shapes=({0: b}, {0: b, 1: D}, {0: b}, tuple({0: b, 2: D} for _ in kv)))
    return w, prefill, decode


def greedy_with_cache(prefill, decode, ids: np.ndarray, mask: np.ndarray, new: int, pad: int, eos: int,
                      step=None) -> np.ndarray:
    """Greedy decoding with a KV cache, in Avalon: the prompt once, then one token a step against the
    cache (the mask grows by a column of ones, the position by one), HF's padding and eos as `greedy`."""
    ids, mask = av.tensor(ids), av.tensor(mask)
    pos = av.where(mask == 0, 0, mask.cumsum(-1) - 1)
    logits, *kv = prefill(ids, mask, pos)
    done = av.zeros((ids.shape[0],), dtype=av.bool)
    pos = pos[:, -1:]
    for i in range(new):
        nxt = av.where(done, pad, logits[:, -1].argmax(-1))
        ids = av.cat([ids, nxt[:, None]], 1)
        mask = av.cat([mask, av.ones_like(nxt)[:, None]], 1)
        done = done | (nxt == eos)
        if bool(done.all()) or i == new - 1:
            break
        pos = pos + 1
        logits, *kv = (step or (lambda m, *a: m(*a)))(decode, nxt[:, None], mask, pos, *kv)
    return ids.numpy()


def test_greedy_generation_with_a_kv_cache_is_hfs_generate():
    """Llama (grouped-query attention; GPT-2 and Qwen2 pass the same, left out for time: two exports each)."""
    lm = _lm("llama")
    w, prefill, decode = _import_with_past(lm)
    ids, mask = _batch([6, 3], seed=1)
    want = lm.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                       max_new_tokens=NEW, pad_token_id=0, eos_token_id=2).numpy()
    assert greedy_with_cache(prefill, decode, ids, mask, NEW, pad=0, eos=2).tolist() == want.tolist()
    step = av.compile(lambda m, *a: m(*a))  # traced once per past length
    assert greedy_with_cache(prefill, decode, ids, mask, NEW, pad=0, eos=2, step=step).tolist() == want.tolist()
    # the decode step's logits and cache against torch's at another batch and past length
    ids, mask = _batch([9, 5, 2], seed=3)
    pos = _positions(mask)
    with torch.no_grad():
        ref = w(*map(torch.from_numpy, (ids, mask, pos)))
        nid, mask1 = torch.tensor([[4], [5], [6]]), torch.from_numpy(np.pad(mask, ((0, 0), (0, 1)), constant_values=1))
        ref1 = w(nid, mask1, torch.from_numpy(pos[:, -1:] + 1), *ref[1:])
    got = prefill(ids, mask, pos)
    got1 = decode(nid.numpy(), mask1.numpy(), pos[:, -1:] + 1, *got[1:])
    for g, r in zip(got1, ref1):
        assert g.shape == tuple(r.shape) and _rel(g.numpy(), r.numpy()) < 1e-5
    # Dim.DYNAMIC has no upper end (torch's int_oo, which once broke the range check): a past of length 1
    # (a mask of 2) is below the range torch.export assumed, and is refused naming it
    with pytest.raises(TypeError, match=r"'attention_mask' dimension 1 is 2, outside its dynamic range \[3, inf\]"):
        decode(nid.numpy(), mask1.numpy()[:, -2:], pos[:, -1:] + 1, *[k[:, :, :1] for k in got[1:]])

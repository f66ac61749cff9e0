"""Importing more Hugging Face architectures: the ATen and ONNX ops they brought that Avalon lacked,
each checked on a small torch module against torch (forward, and gradients against autograd), then
tiny random-weight RoBERTa, DeBERTa-v2, Swin, GPT-J, Mixtral and Qwen2-MoE through `av.from_torch`, and greedy
generation with a KV cache threaded through an imported decode step.

- ATen: cumsum of an int mask in int64 (RoBERTa's position ids), ceil (DeBERTa's log buckets), repeat
  and gather (Whisper's and GPT-J's positions, DeBERTa's relative attention), fmod (torch.roll: Swin's
  shifted windows), copy / slice_scatter / select_scatter (slice assignment: Swin's window mask,
  GPT-Neo/J's and Falcon's causal masks), as_strided (adaptive_avg_pool1d: Swin's pooler), scatter,
  scatter_add, scatter_reduce and index_put (a dense top-k expert mixture; a static KV cache's
  index_copy_).
- ONNX: ScatterND (the TorchScript exporter's slice assignment: BART, Marian, Swin, GPT-Neo/J,
  Falcon), ScatterElements (torch.scatter), Cast to bfloat16 (Falcon's ALiBi).

Also the models the README names (GPT-2, BERT, Llama, ViT, T5). The `test` extra installs transformers (4.57 to
5.25 checked: transformers 5 moved the experts' loop into an experts module and writes a static cache at its
own count), so CI runs these; they skip only where transformers is not installed."""
from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn as tnn

import avalon as av
from avalon.interop import UnsupportedOp


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _check(model: av.interop.ImportedModel, module: tnn.Module, args: tuple, fwd: float = 1e-5,
           grad: float = 1e-4) -> None:
    """Avalon's forward and parameter gradients of sum(out * w) against torch's. Parameters whose
    torch gradient is zero in exact arithmetic (rounding noise: attention key biases) are skipped."""
    ref = module(*args)
    xs = [av.tensor(a.numpy()) for a in args]
    out = model(*xs)
    assert out.shape == tuple(ref.shape)
    assert _rel(out.numpy(), ref.detach().numpy()) < fwd
    w = np.random.default_rng(0).standard_normal(tuple(ref.shape)).astype(np.float32)
    module.zero_grad()
    (ref * torch.from_numpy(w)).sum().backward()
    _, g = av.value_and_grad(lambda m, w, *x: (m(*x) * w).sum())(model, av.tensor(w), *xs)
    tg = {n: p.grad.numpy() for n, p in module.named_parameters() if p.grad is not None}
    assert tg, "no parameter received a gradient: the check would be empty"
    top = max(np.abs(t).max() for t in tg.values())
    for n, t in tg.items():
        if np.abs(t).max() > 1e-5 * top:
            assert _rel(g[n].numpy(), t) < grad, n


def _import(module: tnn.Module, *args: torch.Tensor, **kw) -> None:
    module.eval()
    _check(av.from_torch(module, *args), module, args, **kw)


# -- ATen ops, on small modules -----------------------------------------------------------------

class IntOps(tnn.Module):
    """RoBERTa's position ids (cumsum of an int32 mask), DeBERTa's buckets (ceil, fmod, remainder),
    Tensor.repeat and torch.gather."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tnn.Parameter(torch.randn(4, 6))

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        mask = ids.ne(1).int()
        cum = torch.cumsum(mask, dim=1).type_as(mask) * mask  # int64 in torch, then back to int32
        buckets = torch.ceil(pos * 0.7) + torch.fmod(pos, 3.0) + torch.remainder(pos - 2.5, 2.0)
        idx = (cum.long() % 6).repeat(2, 1)  # (4, 12) of column indices
        picked = torch.gather(self.w * 2, 1, idx[:, :6])
        return picked * buckets[:1, :6] + torch.fmod(ids[:1, :6], 4).float()


def test_int_cumsum_ceil_fmod_repeat_gather():
    torch.manual_seed(0)
    ids = torch.tensor([[5, 1, 7, 7, 2, 1, 9, 3, 4, 1, 2, 8], [1, 1, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5]])
    _import(IntOps(), ids, torch.randn(2, 12) * 4)


class SliceAssign(tnn.Module):
    """Swin's shifted-window mask (in-place slice writes on a fresh tensor, strided too), torch.roll
    and the adaptive_avg_pool1d pooler (as_strided after torch's decomposition)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = tnn.Linear(6, 6)
        self.pool = tnn.AdaptiveAvgPool1d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(1, 6, 6)
        m[:, 0:2, :] = 1.0
        m[:, ::2, 1] = 3.0
        m[:, 3] = x[0, 0]  # select_scatter of a computed row
        h = self.lin(x)
        h[:, 1:5:3] = h[:, 1:5:3] * 2  # strided slice_scatter of parameters' values: gradients pass
        h = torch.roll(h + m, shifts=(-2, 1), dims=(1, 2))
        return self.pool(h.transpose(1, 2)).squeeze(-1) + h.sum(1)


def test_slice_assignment_roll_and_adaptive_pool1d():
    torch.manual_seed(0)
    _import(SliceAssign(), torch.randn(2, 6, 6))


class Scatters(tnn.Module):
    """A dense top-k routing table (scatter), scatter_add / scatter_reduce, and index_copy (a static
    KV cache's write), index_add and `x[:, i] = v`, which torch.export makes index_puts."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tnn.Parameter(torch.randn(5, 4))

    def forward(self, idx: torch.Tensor, pos: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.w, -1)
        table = torch.zeros_like(probs).scatter(1, idx, probs.gather(1, idx))
        table = table.scatter(1, idx[:, :1], 0.5) + torch.zeros_like(probs).scatter_add(1, idx, v)
        table = table + probs.scatter_reduce(1, idx, v * probs[:, :2], "amax", include_self=False)
        cache = torch.zeros(3, 6, 4).index_copy(1, pos, self.w[:2].expand(3, 2, 4) * v[:1, :1])
        cache = cache.index_add(0, torch.tensor([2, 0]), self.w[:2, None, :].expand(2, 6, 4))
        cache[:, pos] = v[:3, :2, None] * 3.0
        return table.sum(0) + cache.sum((0, 1))


def test_scatter_index_copy_index_add_index_put():
    torch.manual_seed(0)
    # distinct indices per row: with repeats torch's scatter gradient reaches overwritten entries too
    _import(Scatters(), torch.tensor([[0, 2], [1, 3], [3, 0], [2, 1], [1, 0]]), torch.tensor([4, 1]),
            torch.randn(5, 2))


class Strided(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = tnn.Parameter(torch.randn(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_strided(x * self.w, (3, 4), (2, 1), 1)  # overlapping windows of a fresh tensor


def test_as_strided_reads_a_contiguous_input_and_refuses_another_layout():
    x = torch.randn(10)
    _import(Strided(), x)
    from avalon.interop.torch_import import _check_layout
    node = SimpleNamespace(args=[SimpleNamespace(meta={"val": torch.randn(3, 4).t()})])
    with pytest.raises(UnsupportedOp, match="not contiguous in torch"):
        _check_layout(node, "aten.as_strided.default")


# -- ONNX ops ---------------------------------------------------------------------------------------

def _onnx(module: tnn.Module, *args: torch.Tensor) -> av.interop.ImportedModel:
    """The TorchScript exporter (needs no onnxscript), names of parameters kept."""
    onnx = pytest.importorskip("onnx")
    import avalon.onnx
    module.eval()
    f = io.BytesIO()
    torch.onnx.export(module, args, f, dynamo=False, opset_version=17, do_constant_folding=False)
    return avalon.onnx.load(onnx.load_from_string(f.getvalue()))


class Window(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = tnn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h[:, 1:4] = h[:, 1:4] * 3 + 1  # ScatterND with computed indices and updates
        # distinct along dim 1: with repeats torch's gradient reaches overwritten entries too
        idx = (torch.arange(6)[None, None] + torch.arange(2)[None, :, None] + 3 * torch.arange(2)[:, None, None]) % 5
        return torch.zeros(2, 5, 6).scatter(1, idx, h[:, :2]) + h


def test_onnx_scatter_nd_and_scatter_elements_from_torchs_exporter():
    torch.manual_seed(0)
    module, x = Window(), torch.randn(2, 5, 6)
    model = _onnx(module, x)
    _check(model, module, (x,))


def test_onnx_scatter_nd_add_and_constant_folding_and_bf16_cast():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    import avalon.onnx
    idx = np.array([[1], [3], [1]], np.int64)  # repeated row: 'add' sums both
    cvals = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.FLOAT, [4, 3],
                                                                            cvals.ravel())),
             helper.make_node("Constant", [], ["cu"], value=helper.make_tensor("cuv", TensorProto.FLOAT, [1, 3],
                                                                             [1.01, 3.33, -0.7])),
             helper.make_node("ScatterND", ["x", "idx", "u"], ["s"], reduction="add"),
             helper.make_node("ScatterND", ["c", "idx1", "cu"], ["cs"]),  # all constants: folded
             helper.make_node("Cast", ["s"], ["b"], to=TensorProto.BFLOAT16),
             helper.make_node("Cast", ["cs"], ["cb"], to=TensorProto.BFLOAT16),  # a bf16 constant
             helper.make_node("Mul", ["cb", "cb"], ["cc"]),  # constants only, still in bf16
             helper.make_node("Mul", ["b", "cc"], ["p"]),
             helper.make_node("Cast", ["p"], ["y"], to=TensorProto.FLOAT)]
    inits = [helper.make_tensor("idx", TensorProto.INT64, [3, 1], idx.ravel()),
             helper.make_tensor("idx1", TensorProto.INT64, [1, 1], [2])]  # float initializers would be parameters
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3]),
                                       helper.make_tensor_value_info("u", TensorProto.FLOAT, [3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])], initializer=inits)
    model = avalon.onnx.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    rng = np.random.default_rng(0)
    x, u = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((3, 3)).astype(np.float32)
    s = torch.from_numpy(x).index_put((torch.from_numpy(idx[:, 0]),), torch.from_numpy(u), accumulate=True)
    c = torch.from_numpy(cvals.reshape(4, 3)).clone()
    c[2] = torch.tensor([1.01, 3.33, -0.7])
    cb = c.bfloat16()
    want = (s.bfloat16() * (cb * cb)).float().numpy()  # every factor and product rounds to bf16
    got = model(x, u).numpy()
    assert np.array_equal(got, want), np.abs(got - want).max()
    assert not np.array_equal(got, (s * c * c).numpy())  # the bf16 rounding is really there


# -- Hugging Face models ----------------------------------------------------------------------------

def _transformers():
    """transformers, importable beside a torchvision whose C++ ops this CPU torch lacks (declared
    here, as test_from_torch does; the models use none of them)."""
    T = pytest.importorskip("transformers", reason="transformers is not installed")
    if "torchvision" not in sys.modules:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                       "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"):
            try:
                lib.define(schema)
            except RuntimeError:
                pass
        _transformers.lib = lib
    return T


class _Out(tnn.Module):
    """A Hugging Face model's first output, its inputs by keyword."""

    def __init__(self, m: tnn.Module, names: list[str], **kw) -> None:
        super().__init__()
        self.m, self.names, self.kw = m, names, kw

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.m(**dict(zip(self.names, xs)), return_dict=False, **self.kw)[0]


def _perturbed(m: tnn.Module) -> tnn.Module:
    """No two parameters alike (HF initializes norms to 1 and biases to 0, which hides mistakes)."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _ids_mask() -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, -3:] = 0
    return torch.randint(0, 128, (2, 12)), mask


SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


@pytest.mark.parametrize("arch", ["roberta", "deberta_v2", "gptj", "swin", "mixtral", "qwen2_moe"])
def test_hugging_face_models_forward_and_gradients(arch):
    T = _transformers()
    torch.manual_seed(0)
    text = ["input_ids", "attention_mask"]
    if arch == "roberta":
        m = T.RobertaForMaskedLM(T.RobertaConfig(vocab_size=128, max_position_embeddings=64, pad_token_id=1, **SMALL))
        module, args = _Out(m, text), _ids_mask()
    elif arch == "deberta_v2":
        m = T.DebertaV2ForMaskedLM(T.DebertaV2Config(vocab_size=128, max_position_embeddings=64, relative_attention=True,
                                                     position_buckets=8, pos_att_type=["p2c", "c2p"],
                                                     max_relative_positions=16, **SMALL))
        module, args = _Out(m, text), _ids_mask()
    elif arch == "gptj":
        m = T.GPTJForCausalLM(T.GPTJConfig(vocab_size=128, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                           n_positions=64))
        module, args = _Out(m, text, use_cache=False), _ids_mask()
    elif arch in ("mixtral", "qwen2_moe"):  # data-dependent expert loops: exported densely (interop/rewrites.py)
        kw = dict(vocab_size=128, num_key_value_heads=2, max_position_embeddings=64, num_experts_per_tok=2, **SMALL)
        m = (T.MixtralForCausalLM(T.MixtralConfig(num_local_experts=4, **kw)) if arch == "mixtral" else
             T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(num_experts=4, moe_intermediate_size=32,
                                                    shared_expert_intermediate_size=48, **kw)))
        module, args = _Out(m, text, use_cache=False), _ids_mask()
        blocks = [b for b in m.modules() if type(b).__name__.endswith("SparseMoeBlock")]
        assert len(blocks) == 2
        _import(_perturbed(module), *args)
        assert all("forward" not in vars(b) for b in blocks)  # the torch model is left as it was
        return
    else:
        m = T.SwinForImageClassification(T.SwinConfig(image_size=16, patch_size=2, embed_dim=16, depths=[2, 2],
                                                      num_heads=[2, 4], window_size=4, num_labels=10))
        module, args = _Out(m, ["pixel_values"]), (torch.randn(2, 3, 16, 16),)
    _import(_perturbed(module), *args)


def test_greedy_generation_with_a_kv_cache_threaded_through_an_imported_decode_step():
    """One decode step (a token, a static cache of L positions per layer in and out; HF writes the
    cache with index_copy_, which torch.export makes an index_put) imported once, then a greedy loop
    in Avalon: the same tokens as HF's own `generate` and logits as torch's step."""
    T = _transformers()
    from transformers.cache_utils import StaticCache
    torch.manual_seed(0)
    lm = _perturbed(T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=128, num_key_value_heads=2, max_position_embeddings=64,
                                                     **SMALL))).eval()
    L, kv_heads, head_dim = 12, 2, 16

    class Step(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, ids: torch.Tensor, pos: torch.Tensor, *kv: torch.Tensor) -> tuple:
            cache = StaticCache(config=self.lm.config, max_cache_len=L)
            cache.early_initialization(1, kv_heads, head_dim, torch.float32, "cpu")
            for i, layer in enumerate(cache.layers):
                layer.keys, layer.values = kv[2 * i].clone(), kv[2 * i + 1].clone()
                if hasattr(layer, "cumulative_length"):  # transformers >= 5 writes at this count, not cache_position
                    layer.cumulative_length = pos.reshape(()).clone()
            out = self.lm(input_ids=ids, cache_position=pos, past_key_values=cache, use_cache=True)
            return (out.logits,) + tuple(t for layer in cache.layers for t in (layer.keys, layer.values))

    step = Step().eval()
    empty = [torch.zeros(1, kv_heads, L, head_dim) for _ in range(4)]
    model = av.from_torch(step, torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]), *empty)
    prompt, new = torch.randint(0, 128, (1, 4)), 5
    want = lm.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)[0].tolist()

    toks, kv_a, kv_t = prompt[0].tolist(), [av.tensor(e.numpy()) for e in empty], empty
    for t in range(len(want) - 1):
        ids, pos = np.array([[toks[t]]]), np.array([t])
        logits, *kv_a = model(av.tensor(ids), av.tensor(pos), *kv_a)
        with torch.no_grad():
            ref, *kv_t = step(torch.from_numpy(ids), torch.from_numpy(pos), *kv_t)
        assert _rel(logits.numpy(), ref.numpy()) < 1e-5
        if t + 1 >= len(toks):
            toks.append(int(np.argmax(logits.numpy()[0, -1])))
    assert toks == want


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama", "vit", "t5"])
def test_the_readmes_hugging_face_models_import_with_torchs_forward_and_gradients(arch):
    """The models the README names (GPT-2, BERT, Llama, ViT, T5), tiny and perturbed, through av.from_torch."""
    T = _transformers()
    torch.manual_seed(0)
    ids, mask = _ids_mask()
    if arch == "gpt2":
        m = T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64))
        module, args = _Out(m, ["input_ids", "attention_mask"], use_cache=False), (ids, mask)
    elif arch == "bert":
        m = T.BertForMaskedLM(T.BertConfig(vocab_size=128, max_position_embeddings=64, **SMALL))
        module, args = _Out(m, ["input_ids", "attention_mask"]), (ids, mask)
    elif arch == "llama":
        m = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=128, num_key_value_heads=2, max_position_embeddings=64,
                                             **SMALL))
        module, args = _Out(m, ["input_ids", "attention_mask"], use_cache=False), (ids, mask)
    elif arch == "vit":
        m = T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=8, num_labels=10, **SMALL))
        module, args = _Out(m, ["pixel_values"]), (torch.randn(2, 3, 32, 32),)
    else:
        m = T.T5ForConditionalGeneration(T.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                                    num_heads=4, decoder_start_token_id=0))
        module, args = _Out(m, ["input_ids", "attention_mask", "decoder_input_ids"], use_cache=False), \
            (ids, mask, ids[:, :5])
    _import(_perturbed(module), *args)

"""Round 8a of port QA: speech models as their popular repositories write them in PyTorch, written once
over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's
weights on random float64 data and compared with torch after every step (losses, parameters, buffers),
the first step eagerly and the rest compiled (numpy and cpu backends), with warnings as errors while
tracing: a torchaudio-style log-mel front end (torch.stft with a hann window buffer, center, power 2,
an HTK mel filterbank built in numpy as torchaudio.functional.melscale_fbanks builds it, log(x + 1e-6),
SpecAugment time and frequency masks given as inputs) feeding sooftware/conformer's Conformer block
(macaron half-step feed-forward modules, self-attention, the GLU / depthwise conv / batch norm module,
final LayerNorm) under a CTC loss, trained with Adam and a Noam warmup by LambdaLR; and wav2vec 2.0's
pre-training pieces as transformers writes them (the GroupNorm conv feature encoder, feature projection,
weight-normed positional conv embedding, a post-norm encoder layer, the Gumbel vector quantizer with its
perplexity diversity loss, time-step masking by `x[mask] = self.masked_spec_embed`, the contrastive loss
over given negatives with -inf where a negative equals the positive) trained with AdamW.

What the ports change is what the README says differs on purpose: gradients are values
(`av.value_and_grad`, `opt.step(grads)`), randomness is drawn beforehand with numpy and passed in (the
Gumbel noise goes into torch's own gumbel_softmax straight-through form, `y_hard - y_soft.detach() +
y_soft`), wav2vec 2.0's `if neg_is_pos.any():` guard around the -inf write is control flow on a tensor
value, so the (no-op when nothing matches) masked write runs unguarded, and its `.float()` casts are
left out to keep float64. The Conformer's relative attention key bias has a zero gradient in exact
arithmetic, so it is compared relative to 1. The regressions at the end are what these programs and
probes found: rfft's zero and Nyquist bins had -0.0 imaginary parts (angle -pi where torch's is pi),
and av.backends.cudnn had no `flags` (Hugging Face's CTC heads compute their loss inside it)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict, train_step

import avalon as av
from avalon import optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


# -- 1. log-mel front end (torchaudio) + Conformer block (sooftware/conformer) + CTC ---------------------------

def melscale_fbanks(n_freqs, f_min, f_max, n_mels, sample_rate):
    """torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk"), in numpy: (n_freqs, n_mels)."""
    def hz_to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    all_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    f_pts = mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down_slopes, up_slopes))


N_FFT, HOP, N_MELS, SR = 32, 8, 8, 16000


def conformer_ctc(lib, F_, th, attention="mha", dim=8, heads=2, kernel=5, classes=5):
    """`attention="relative"`: the repository's RelativeMultiHeadAttention (Transformer-XL's u/v biases and
    the zero-pad-and-view relative shift) over its sinusoidal PositionalEncoding; "mha": nn.MultiheadAttention."""
    class MelSpectrogram(lib.Module):  # torchaudio.transforms.Spectrogram + MelScale, power 2
        def __init__(self):
            super().__init__()
            self.register_buffer("window", th.hann_window(N_FFT))
            self.register_buffer("fb", th.tensor(melscale_fbanks(N_FFT // 2 + 1, 0.0, SR / 2, N_MELS, SR)))

        def forward(self, waveform):
            spec_f = th.stft(waveform, N_FFT, HOP, N_FFT, self.window, center=True, pad_mode="reflect",
                             normalized=False, onesided=True, return_complex=True)
            specgram = spec_f.abs().pow(2.0)
            return th.matmul(specgram.transpose(-1, -2), self.fb).transpose(-1, -2)

    class Swish(lib.Module):
        def forward(self, inputs):
            return inputs * inputs.sigmoid()

    class GLU(lib.Module):
        def __init__(self, dim):
            super().__init__()
            self.dim = dim

        def forward(self, inputs):
            outputs, gate = inputs.chunk(2, dim=self.dim)
            return outputs * gate.sigmoid()

    class Transpose(lib.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = shape

        def forward(self, x):
            return x.transpose(*self.shape)

    class ResidualConnectionModule(lib.Module):
        def __init__(self, module, module_factor=1.0, input_factor=1.0):
            super().__init__()
            self.module = module
            self.module_factor = module_factor
            self.input_factor = input_factor

        def forward(self, inputs):
            return (self.module(inputs) * self.module_factor) + (inputs * self.input_factor)

    class FeedForwardModule(lib.Module):
        def __init__(self, encoder_dim=512, expansion_factor=4, dropout_p=0.0):
            super().__init__()
            self.sequential = lib.Sequential(
                lib.LayerNorm(encoder_dim),
                lib.Linear(encoder_dim, encoder_dim * expansion_factor, bias=True),
                Swish(),
                lib.Dropout(p=dropout_p),
                lib.Linear(encoder_dim * expansion_factor, encoder_dim, bias=True),
                lib.Dropout(p=dropout_p),
            )

        def forward(self, inputs):
            return self.sequential(inputs)

    class PositionalEncoding(lib.Module):
        def __init__(self, d_model=512, max_len=10000):
            super().__init__()
            pe = th.zeros(max_len, d_model, requires_grad=False)
            position = th.arange(0, max_len, dtype=th.float).unsqueeze(1)
            div_term = th.exp(th.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))
            pe[:, 0::2] = th.sin(position * div_term)
            pe[:, 1::2] = th.cos(position * div_term)
            pe = pe.unsqueeze(0)
            self.register_buffer('pe', pe)

        def forward(self, length):
            return self.pe[:, :length]

    class RelativeMultiHeadAttention(lib.Module):
        def __init__(self, d_model=512, num_heads=16, dropout_p=0.0):
            super().__init__()
            assert d_model % num_heads == 0, "d_model % num_heads should be zero."
            self.d_model = d_model
            self.d_head = int(d_model / num_heads)
            self.num_heads = num_heads
            self.sqrt_dim = math.sqrt(d_model)
            self.query_proj = lib.Linear(d_model, d_model)
            self.key_proj = lib.Linear(d_model, d_model)
            self.value_proj = lib.Linear(d_model, d_model)
            self.pos_proj = lib.Linear(d_model, d_model, bias=False)
            self.dropout = lib.Dropout(p=dropout_p)
            self.u_bias = lib.Parameter(th.Tensor(self.num_heads, self.d_head))
            self.v_bias = lib.Parameter(th.Tensor(self.num_heads, self.d_head))
            lib.init.xavier_uniform_(self.u_bias)
            lib.init.xavier_uniform_(self.v_bias)
            self.out_proj = lib.Linear(d_model, d_model)

        def forward(self, query, key, value, pos_embedding, mask=None):
            batch_size = value.size(0)
            query = self.query_proj(query).view(batch_size, -1, self.num_heads, self.d_head)
            key = self.key_proj(key).view(batch_size, -1, self.num_heads, self.d_head).permute(0, 2, 1, 3)
            value = self.value_proj(value).view(batch_size, -1, self.num_heads, self.d_head).permute(0, 2, 1, 3)
            pos_embedding = self.pos_proj(pos_embedding).view(batch_size, -1, self.num_heads, self.d_head)
            content_score = th.matmul((query + self.u_bias).transpose(1, 2), key.transpose(2, 3))
            pos_score = th.matmul((query + self.v_bias).transpose(1, 2), pos_embedding.permute(0, 2, 3, 1))
            pos_score = self._relative_shift(pos_score)
            score = (content_score + pos_score) / self.sqrt_dim
            if mask is not None:
                mask = mask.unsqueeze(1)
                score.masked_fill_(mask, -1e9)
            attn = F_.softmax(score, -1)
            attn = self.dropout(attn)
            context = th.matmul(attn, value).transpose(1, 2)
            context = context.contiguous().view(batch_size, -1, self.d_model)
            return self.out_proj(context)

        def _relative_shift(self, pos_score):
            batch_size, num_heads, seq_length1, seq_length2 = pos_score.size()
            zeros = pos_score.new_zeros(batch_size, num_heads, seq_length1, 1)
            padded_pos_score = th.cat([zeros, pos_score], dim=-1)
            padded_pos_score = padded_pos_score.view(batch_size, num_heads, seq_length2 + 1, seq_length1)
            pos_score = padded_pos_score[:, :, 1:].view_as(pos_score)
            return pos_score

    class MultiHeadedSelfAttentionModule(lib.Module):
        def __init__(self, d_model, num_heads, dropout_p=0.0):
            super().__init__()
            self.layer_norm = lib.LayerNorm(d_model)
            if attention == "relative":
                self.positional_encoding = PositionalEncoding(d_model, max_len=64)
                self.attention = RelativeMultiHeadAttention(d_model, num_heads, dropout_p)
            else:
                self.attention = lib.MultiheadAttention(d_model, num_heads, batch_first=True)
            self.dropout = lib.Dropout(p=dropout_p)

        def forward(self, inputs, mask=None):
            batch_size, seq_length, _ = inputs.size()
            inputs = self.layer_norm(inputs)
            if attention == "relative":
                pos_embedding = self.positional_encoding(seq_length)
                pos_embedding = pos_embedding.repeat(batch_size, 1, 1)
                outputs = self.attention(inputs, inputs, inputs, pos_embedding=pos_embedding, mask=mask)
            else:
                outputs, _ = self.attention(inputs, inputs, inputs, need_weights=False)
            return self.dropout(outputs)

    class ConformerConvModule(lib.Module):
        def __init__(self, in_channels, kernel_size=31, expansion_factor=2, dropout_p=0.0):
            super().__init__()
            assert (kernel_size - 1) % 2 == 0, "kernel_size should be a odd number for 'SAME' padding"
            self.sequential = lib.Sequential(
                lib.LayerNorm(in_channels),
                Transpose(shape=(1, 2)),
                lib.Conv1d(in_channels, in_channels * expansion_factor, kernel_size=1, stride=1, padding=0, bias=True),
                GLU(dim=1),
                lib.Conv1d(in_channels, in_channels, kernel_size, groups=in_channels, stride=1,
                           padding=(kernel_size - 1) // 2, bias=False),
                lib.BatchNorm1d(in_channels),
                Swish(),
                lib.Conv1d(in_channels, in_channels, kernel_size=1, stride=1, padding=0, bias=True),
                lib.Dropout(p=dropout_p),
            )

        def forward(self, inputs):
            return self.sequential(inputs).transpose(1, 2)

    class ConformerBlock(lib.Module):
        def __init__(self, encoder_dim, num_attention_heads, feed_forward_expansion_factor=2,
                     conv_kernel_size=31, half_step_residual=True):
            super().__init__()
            self.feed_forward_residual_factor = 0.5 if half_step_residual else 1
            self.sequential = lib.Sequential(
                ResidualConnectionModule(FeedForwardModule(encoder_dim, feed_forward_expansion_factor),
                                         module_factor=self.feed_forward_residual_factor),
                ResidualConnectionModule(MultiHeadedSelfAttentionModule(encoder_dim, num_attention_heads)),
                ResidualConnectionModule(ConformerConvModule(encoder_dim, conv_kernel_size)),
                ResidualConnectionModule(FeedForwardModule(encoder_dim, feed_forward_expansion_factor),
                                         module_factor=self.feed_forward_residual_factor),
                lib.LayerNorm(encoder_dim),
            )

        def forward(self, inputs):
            return self.sequential(inputs)

    class Model(lib.Module):
        def __init__(self):
            super().__init__()
            self.melspec = MelSpectrogram()
            self.input_projection = lib.Linear(N_MELS, dim)
            self.block = ConformerBlock(dim, heads, conv_kernel_size=kernel)
            self.fc = lib.Linear(dim, classes, bias=False)

        def forward(self, waveform, time_mask, freq_mask):
            x = th.log(self.melspec(waveform) + 1e-6)  # (B, n_mels, T)
            x = x.masked_fill(freq_mask.unsqueeze(-1), 0.0)  # SpecAugment, masks drawn beforehand
            x = x.masked_fill(time_mask.unsqueeze(1), 0.0)
            x = self.block(self.input_projection(x.transpose(1, 2)))
            return self.fc(x).log_softmax(dim=-1)
    return Model()


def ctc_objective(F_):
    def loss(model, wave, time_mask, freq_mask, targets, input_lengths, target_lengths):
        log_probs = model(wave, time_mask, freq_mask).transpose(0, 1)  # (T, B, C)
        return F_.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, zero_infinity=True)
    return loss


def same_weights_but_key_bias(ours, theirs, tol: float):
    """same_weights, the key projection's bias relative to 1 (the middle third of a packed in_proj_bias): its
    gradient is zero in exact arithmetic (it adds q . b to a whole row of scores, which softmax removes), so
    it holds roundoff that Adam scales up on both sides (how much depends on the machine's BLAS)."""
    sd = theirs.state_dict()
    assert sorted(ours.state_dict()) == sorted(sd)
    for k, v in ours.state_dict().items():
        a, b = v.numpy(), sd[k].detach().numpy()
        if k.endswith("in_proj_bias"):
            e = a.shape[0] // 3
            assert np.abs(a[e:2 * e] - b[e:2 * e]).max(initial=0) < tol, k
            a, b = np.concatenate([a[:e], a[2 * e:]]), np.concatenate([b[:e], b[2 * e:]])
        floor = 1.0 if k.endswith("key_proj.bias") else 1e-4
        assert np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), floor) < tol, k


def noam(d_model=8, warmup=3):
    return lambda step: d_model ** -0.5 * min((step + 1) ** -0.5, (step + 1) * warmup ** -1.5)


def speech_batch(rng, batch=2, samples=96):
    frames = samples // HOP + 1
    wave = rng.standard_normal((batch, samples))
    time_mask = np.zeros((batch, frames), bool)
    freq_mask = np.zeros((batch, N_MELS), bool)
    for b in range(batch):
        t0, f0 = rng.integers(0, frames - 3), rng.integers(0, N_MELS - 2)
        time_mask[b, t0:t0 + rng.integers(1, 4)] = True
        freq_mask[b, f0:f0 + rng.integers(1, 3)] = True
    targets = rng.integers(1, 5, (batch, 4))
    input_lengths = np.array([frames, frames - 2])
    target_lengths = np.array([4, 3])
    return wave, time_mask, freq_mask, targets, input_lengths, target_lengths


@pytest.mark.parametrize("attention,mode", [("mha", "numpy"), ("relative", "cpu")])
def test_log_mel_specaugment_conformer_block_ctc_with_adam_and_noam_warmup(attention, mode):
    ours, theirs = pair(lambda lib, F_, th: conformer_ctc(lib, F_, th, attention))
    assert ours.melspec.window.dtype == av.float64 and ours.melspec.fb.dtype == av.float64
    opt = optim.Adam(ours.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    topt = torch.optim.Adam(theirs.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    sched = optim.lr_scheduler.LambdaLR(opt, noam())
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, noam())
    rng = np.random.default_rng(0)
    step = train_step(ctc_objective(F))
    run = compiled(step, mode)
    for it in range(3):
        batch = speech_batch(rng)
        topt.zero_grad()
        tl = ctc_objective(TF)(theirs, *map(T, batch))
        tl.backward()
        topt.step()
        tsched.step()
        with strict():
            loss = (run if it else step)(ours, opt, *map(av.tensor, batch))
        sched.step()
        assert rel(loss, tl) < 1e-10, it
        assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]
        same_weights_but_key_bias(ours, theirs, 1e-8)
    ours.eval()
    theirs.eval()
    batch = speech_batch(rng)
    with av.no_grad(), torch.no_grad():
        assert rel(ours(*map(av.tensor, batch[:3])), theirs(*map(T, batch[:3]))) < 1e-10


# -- 2. wav2vec 2.0 pre-training (transformers' modeling_wav2vec2, after fairseq) -----------------------------

CONV_DIM, CONV_KERNEL, CONV_STRIDE = (8, 8, 8), (10, 3, 2), (5, 2, 2)
HIDDEN, GROUPS, VARS, CODEVECTOR_DIM, PROJ_DIM, NEGATIVES = 8, 2, 4, 8, 8, 3


def wav2vec2(lib, F_, th):
    class GroupNormConvLayer(lib.Module):
        def __init__(self, layer_id=0):
            super().__init__()
            self.in_conv_dim = CONV_DIM[layer_id - 1] if layer_id > 0 else 1
            self.out_conv_dim = CONV_DIM[layer_id]
            self.conv = lib.Conv1d(self.in_conv_dim, self.out_conv_dim, kernel_size=CONV_KERNEL[layer_id],
                                   stride=CONV_STRIDE[layer_id], bias=False)
            self.activation = F_.gelu
            self.layer_norm = lib.GroupNorm(num_groups=self.out_conv_dim, num_channels=self.out_conv_dim, affine=True)

        def forward(self, hidden_states):
            hidden_states = self.conv(hidden_states)
            hidden_states = self.layer_norm(hidden_states)
            return self.activation(hidden_states)

    class NoLayerNormConvLayer(lib.Module):
        def __init__(self, layer_id=0):
            super().__init__()
            self.conv = lib.Conv1d(CONV_DIM[layer_id - 1], CONV_DIM[layer_id], kernel_size=CONV_KERNEL[layer_id],
                                   stride=CONV_STRIDE[layer_id], bias=False)
            self.activation = F_.gelu

        def forward(self, hidden_states):
            return self.activation(self.conv(hidden_states))

    class FeatureEncoder(lib.Module):
        def __init__(self):
            super().__init__()
            conv_layers = [GroupNormConvLayer(layer_id=0)] + [NoLayerNormConvLayer(layer_id=i + 1)
                                                              for i in range(len(CONV_DIM) - 1)]
            self.conv_layers = lib.ModuleList(conv_layers)

        def forward(self, input_values):
            hidden_states = input_values[:, None]
            for conv_layer in self.conv_layers:
                hidden_states = conv_layer(hidden_states)
            return hidden_states

    class FeatureProjection(lib.Module):
        def __init__(self):
            super().__init__()
            self.layer_norm = lib.LayerNorm(CONV_DIM[-1], eps=1e-5)
            self.projection = lib.Linear(CONV_DIM[-1], HIDDEN)
            self.dropout = lib.Dropout(0.0)

        def forward(self, hidden_states):
            norm_hidden_states = self.layer_norm(hidden_states)
            hidden_states = self.projection(norm_hidden_states)
            return self.dropout(hidden_states), norm_hidden_states

    class SamePadLayer(lib.Module):
        def __init__(self, num_conv_pos_embeddings):
            super().__init__()
            self.num_pad_remove = 1 if num_conv_pos_embeddings % 2 == 0 else 0

        def forward(self, hidden_states):
            if self.num_pad_remove > 0:
                hidden_states = hidden_states[:, :, : -self.num_pad_remove]
            return hidden_states

    class PositionalConvEmbedding(lib.Module):
        def __init__(self, num_conv_pos_embeddings=4, groups=2):
            super().__init__()
            self.conv = lib.Conv1d(HIDDEN, HIDDEN, kernel_size=num_conv_pos_embeddings,
                                   padding=num_conv_pos_embeddings // 2, groups=groups)
            weight_norm = lib.utils.weight_norm
            if hasattr(lib.utils.parametrizations, "weight_norm"):
                weight_norm = lib.utils.parametrizations.weight_norm
            self.conv = weight_norm(self.conv, name="weight", dim=2)
            self.padding = SamePadLayer(num_conv_pos_embeddings)
            self.activation = F_.gelu

        def forward(self, hidden_states):
            hidden_states = hidden_states.transpose(1, 2)
            hidden_states = self.conv(hidden_states)
            hidden_states = self.padding(hidden_states)
            hidden_states = self.activation(hidden_states)
            return hidden_states.transpose(1, 2)

    class Encoder(lib.Module):
        def __init__(self):
            super().__init__()
            self.pos_conv_embed = PositionalConvEmbedding()
            self.layer_norm = lib.LayerNorm(HIDDEN, eps=1e-5)
            self.dropout = lib.Dropout(0.0)
            self.layers = lib.ModuleList([lib.TransformerEncoderLayer(HIDDEN, 2, 16, dropout=0.0, activation="gelu",
                                                                      batch_first=True)])

        def forward(self, hidden_states):
            position_embeddings = self.pos_conv_embed(hidden_states)
            hidden_states = hidden_states + position_embeddings
            hidden_states = self.layer_norm(hidden_states)
            hidden_states = self.dropout(hidden_states)
            for layer in self.layers:
                hidden_states = layer(hidden_states)
            return hidden_states

    class GumbelVectorQuantizer(lib.Module):
        def __init__(self):
            super().__init__()
            self.num_groups = GROUPS
            self.num_vars = VARS
            self.codevectors = lib.Parameter(th.randn(1, self.num_groups * self.num_vars, CODEVECTOR_DIM // self.num_groups))
            self.weight_proj = lib.Linear(CONV_DIM[-1], self.num_groups * self.num_vars)
            self.temperature = 2

        @staticmethod
        def _compute_perplexity(probs, mask=None):
            if mask is not None:
                mask_extended = mask.flatten()[:, None, None].expand(probs.shape)
                probs = th.where(mask_extended, probs, th.zeros_like(probs))
                marginal_probs = probs.sum(dim=0) / mask.sum()
            else:
                marginal_probs = probs.mean(dim=0)
            return th.exp(-th.sum(marginal_probs * th.log(marginal_probs + 1e-7), dim=-1)).sum()

        def forward(self, hidden_states, gumbels, mask_time_indices=None):
            batch_size, sequence_length, hidden_size = hidden_states.shape
            hidden_states = self.weight_proj(hidden_states)
            hidden_states = hidden_states.view(batch_size * sequence_length * self.num_groups, -1)
            # F.gumbel_softmax(hidden_states, tau=self.temperature, hard=True) as torch computes it, its
            # Gumbel noise given
            y_soft = ((hidden_states + gumbels) / self.temperature).softmax(-1)
            index = y_soft.max(-1, keepdim=True)[1]
            y_hard = th.zeros_like(hidden_states).scatter_(-1, index, 1.0)
            codevector_probs = y_hard - y_soft.detach() + y_soft
            codevector_soft_dist = th.softmax(hidden_states.view(batch_size * sequence_length, self.num_groups, -1), dim=-1)
            perplexity = self._compute_perplexity(codevector_soft_dist, mask_time_indices)
            codevector_probs = codevector_probs.view(batch_size * sequence_length, -1)
            codevectors_per_group = codevector_probs.unsqueeze(-1) * self.codevectors
            codevectors = codevectors_per_group.view(batch_size * sequence_length, self.num_groups, self.num_vars, -1)
            codevectors = codevectors.sum(-2).view(batch_size, sequence_length, -1)
            return codevectors, perplexity

    class Wav2Vec2ForPreTraining(lib.Module):
        def __init__(self):
            super().__init__()
            self.feature_extractor = FeatureEncoder()
            self.feature_projection = FeatureProjection()
            self.masked_spec_embed = lib.Parameter(th.Tensor(HIDDEN).uniform_())
            self.encoder = Encoder()
            self.dropout_features = lib.Dropout(0.0)
            self.quantizer = GumbelVectorQuantizer()
            self.project_hid = lib.Linear(HIDDEN, PROJ_DIM)
            self.project_q = lib.Linear(CODEVECTOR_DIM, PROJ_DIM)

        @staticmethod
        def compute_contrastive_logits(target_features, negative_features, predicted_features, temperature=0.1):
            target_features = th.cat([target_features, negative_features], dim=0)
            logits = th.cosine_similarity(predicted_features, target_features, dim=-1).type_as(target_features)
            return logits / temperature

        def forward(self, input_values, mask_time_indices, sampled_negative_indices, gumbels):
            extract_features = self.feature_extractor(input_values)
            extract_features = extract_features.transpose(1, 2)
            hidden_states, extract_features = self.feature_projection(extract_features)
            hidden_states[mask_time_indices] = self.masked_spec_embed.to(hidden_states.dtype)
            transformer_features = self.project_hid(self.encoder(hidden_states))
            extract_features = self.dropout_features(extract_features)
            quantized_features, codevector_perplexity = self.quantizer(extract_features, gumbels,
                                                                       mask_time_indices=mask_time_indices)
            quantized_features = self.project_q(quantized_features)
            batch_size, sequence_length, hidden_size = quantized_features.shape
            negative_quantized_features = quantized_features.view(-1, hidden_size)[sampled_negative_indices.long().view(-1)]
            negative_quantized_features = negative_quantized_features.view(
                batch_size, sequence_length, -1, hidden_size).permute(2, 0, 1, 3)
            logits = self.compute_contrastive_logits(quantized_features[None, :], negative_quantized_features,
                                                     transformer_features, 0.1)
            neg_is_pos = (quantized_features == negative_quantized_features).all(-1)
            logits[1:][neg_is_pos] = float("-inf")  # (the repository guards this by `if neg_is_pos.any():`)
            logits = logits.transpose(0, 2).reshape(-1, logits.size(0))
            target = ((1 - mask_time_indices.long()) * -100).transpose(0, 1).flatten()
            contrastive_loss = F_.cross_entropy(logits, target, reduction="sum")
            num_codevectors = VARS * GROUPS
            diversity_loss = ((num_codevectors - codevector_perplexity) / num_codevectors) * mask_time_indices.sum()
            return contrastive_loss + 0.1 * diversity_loss, neg_is_pos
    return Wav2Vec2ForPreTraining()


def w2v_objective(model, *xs):
    loss, _ = model(*xs)
    return loss


def w2v_batch(rng, batch=2, samples=160):
    frames = 7  # 160 samples -> 31 -> 15 -> 7
    wave = rng.standard_normal((batch, samples))
    mask = np.zeros((batch, frames), bool)
    for b in range(batch):
        t0 = rng.integers(0, frames - 3)
        mask[b, t0:t0 + 3] = True
    negatives = rng.integers(0, batch * frames, (batch, frames, NEGATIVES))
    gumbels = -np.log(rng.exponential(size=(batch * frames * GROUPS, VARS)))
    return wave, mask, negatives, gumbels


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_wav2vec2_feature_encoder_gumbel_quantizer_masking_and_contrastive_loss_with_adamw(mode):
    ours, theirs = pair(wav2vec2)
    opt = optim.AdamW(ours.parameters(), lr=1e-2, weight_decay=0.01)
    topt = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.01)
    rng = np.random.default_rng(1)
    step = train_step(w2v_objective)
    run = compiled(step, mode)
    matched = 0
    for it in range(3):
        batch = w2v_batch(rng)
        topt.zero_grad()
        tl, tneg = theirs(*map(T, batch))
        tl.backward()
        topt.step()
        matched += int(tneg.sum())
        with strict():
            loss = (run if it else step)(ours, opt, *map(av.tensor, batch))
        assert rel(loss, tl) < 1e-10, it
        same_weights(ours, theirs, 1e-8)
    assert matched  # some negative drew its positive's codevectors: the -inf write took part


# -- regressions: what the programs and probes above found ----------------------------------------------------

def test_rfft_zero_and_nyquist_imaginary_parts_are_plus_zero_so_angle_is_torch_s():
    """rfft (and so stft) negated x @ sin for the forward sign, which made the exact zeros at the zero and
    Nyquist frequencies -0.0: torch.angle of a negative DC bin was -pi where torch's is pi (phase
    features, Griffin-Lim's initial phase). The sign now goes into the DFT matrix."""
    x = -np.abs(np.random.default_rng(2).standard_normal((2, 48)))
    want = torch.angle(torch.stft(T(x), 16, 4, window=torch.hann_window(16, dtype=torch.float64),
                                  return_complex=True)).numpy()

    def phase(x):
        return av.angle(av.stft(x, 16, 4, window=av.hann_window(16, dtype=av.float64), return_complex=True))
    for run in (phase, av.compile(phase, backend="numpy"), av.compile(phase, backend="cpu")):
        with strict():
            got = run(av.tensor(x)).numpy()
        # (the zero and Nyquist bins: elsewhere a frame with a symmetric reflection has a roundoff
        # imaginary part, whose sign is the DFT's and pocketfft's own)
        assert np.abs(got[:, [0, 8]] - want[:, [0, 8]]).max() < 1e-12 and (want[:, 0] == math.pi).any()
    for n in (16, 15, 512):
        z = av.fft.rfft(av.tensor(x[:, :1].repeat(n, 1))).numpy()
        assert not np.signbit(z.imag[:, 0]).any() and not (n % 2 == 0 and np.signbit(z.imag[:, -1]).any())


def test_hugging_face_ctc_head_under_cudnn_flags():
    """Wav2Vec2ForCTC (and Hubert's, WavLM's, ...) computes its loss inside
    `torch.backends.cudnn.flags(enabled=False)`: av.backends.cudnn had no `flags`. Padded labels hold
    -100 past each length, as the collator pads them."""
    def head(lib, F_, th):
        class CTCHead(lib.Module):
            def __init__(self):
                super().__init__()
                self.lm_head = lib.Linear(6, 5)

            def forward(self, hidden_states, labels, input_lengths):
                logits = self.lm_head(hidden_states)
                labels_mask = labels >= 0
                target_lengths = labels_mask.sum(-1)
                log_probs = F_.log_softmax(logits, dim=-1, dtype=th.float32).transpose(0, 1)
                with th.backends.cudnn.flags(enabled=False):
                    return F_.ctc_loss(log_probs, labels.clamp(min=0), input_lengths, target_lengths, blank=0,
                                       reduction="mean", zero_infinity=True)
        return CTCHead()
    ours, theirs = pair(head, dtype=torch.float32)
    rng = np.random.default_rng(3)
    h = rng.standard_normal((2, 9, 6)).astype(np.float32)
    labels = np.array([[1, 2, 3, 4], [2, 2, -100, -100]])
    lengths = np.array([9, 7])
    tl = theirs(T(h), T(labels), T(lengths))
    for run in (ours, av.compile(lambda m, *a: m(*a), backend="cpu")):
        with strict():
            got = run(ours, av.tensor(h), av.tensor(labels), av.tensor(lengths)) if run is not ours else \
                ours(av.tensor(h), av.tensor(labels), av.tensor(lengths))
        assert rel(got, tl) < 1e-5
    assert av.backends.cudnn.allow_tf32
    with pytest.raises(AttributeError, match="deterministic"), av.backends.cudnn.flags(deterministic=True):
        pass

"""Hugging Face architectures of test_hf_sweep.py imported with `dynamic_shapes=` (batch and sequence
length; image batch and size; audio length) and checked against torch at several shapes, eager and
`av.compile`d, plus parameter gradients at a shape other than the example's.

All 32 of the sweep's architectures import with dynamic batch and length and match torch (max relative
error about 1e-6). What the run found, and what these tests keep:
- the `/` of two sizes (`operator.truediv`) had no rule: DINOv2 at a symbolic image size (torch's
  decomposition of the bicubic position resize divides by the symbolic grid size);
- a dimension torch.export specialized to a constant (Dim.AUTO on a length the code fixes, as Mamba's
  sequential scan does; BEiT's image size, fixed by its relative position bias although its input shows
  a symbolic size) still holds a SymInt: the importer took it for a free dimension, so a call at another
  size got past the input check and then failed deep in the graph, or silently ran the graph built for
  the example's size. Such dimensions are now checked like static ones;
- torch.export refuses a named Dim for BART's and Marian's decoder length (a guard `td != 12`, the
  example's encoder length); Dim.DYNAMIC exports it and the import is right at every length, 12 too.
  DETR's image size needs min=33 (torch's suggested fix: the backbone's stride 32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import avalon as av

pytest.importorskip("transformers")

from test_hf_more import _check, _perturbed, _rel, _transformers  # noqa: E402
from test_hf_sweep import _build  # noqa: E402

Dim = torch.export.Dim


def _ids_mask(b: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[-1, -max(1, t // 4):] = 0
    return torch.randint(3, 128, (b, t), generator=g), mask


def _spec(arch: str):
    """(dynamic shapes of the sweep's positional inputs, shapes to try, inputs at a shape)."""
    b, t = Dim("b", min=1, max=8), Dim("t", min=2, max=32)
    if arch in ("qwen3_moe", "gemma3"):
        return ({0: b, 1: t}, {0: b, 1: t}), [(3, 7), (1, 20), (4, 12)], lambda s, i: _ids_mask(*s, i)
    if arch == "bart":  # a named Dim for the decoder length: torch.export refuses it (guard td != 12)
        return (({0: b, 1: t}, {0: b, 1: t}, {0: b, 1: Dim.DYNAMIC}), [(3, 12, 12), (1, 20, 9), (2, 7, 25)],
                lambda s, i: (*_ids_mask(s[0], s[1], i), _ids_mask(s[0], s[2], i + 1)[0]))
    if arch == "clip":  # text batch and image batch apart
        n = Dim("n", min=1, max=8)
        return (({0: b, 1: t}, {0: b, 1: t}, {0: n}), [(3, 7, 2), (1, 20, 4)],
                lambda s, i: (*_ids_mask(s[0], s[1], i), torch.randn(s[2], 3, 32, 32)))
    if arch == "dinov2":  # image size a multiple of the patch: positions resized (bicubic) to the grid
        h, w = 8 * Dim("h", min=2, max=8), 8 * Dim("w", min=2, max=8)
        return ({0: b, 2: h, 3: w},), [(1, 32, 48), (2, 56, 24)], lambda s, i: (torch.randn(s[0], 3, s[1], s[2]),)
    if arch == "segformer":  # any image size: convolutions with padding, bilinear decode head
        h, w = Dim("h", min=16, max=128), Dim("w", min=16, max=128)
        return ({0: b, 2: h, 3: w},), [(3, 32, 40), (1, 49, 27)], lambda s, i: (torch.randn(s[0], 3, s[1], s[2]),)
    if arch == "wav2vec2":  # audio length
        return ({0: b, 1: Dim("n", min=400, max=2000)},), [(3, 640), (1, 1000)], lambda s, i: (torch.randn(*s),)
    raise AssertionError(arch)


@pytest.mark.parametrize("arch", ["dinov2", "bart", "qwen3_moe", "gemma3", "clip", "segformer", "wav2vec2"])
def test_dynamic_import_matches_torch_at_several_shapes(arch):
    torch.manual_seed(0)
    module, example = _build(_transformers(), arch)
    module = _perturbed(module).eval()
    dyn, shapes, make = _spec(arch)
    model = av.from_torch(module, *example, dynamic_shapes=(dyn,))  # the sweep's _Out(*xs): one *args entry
    step = av.compile(lambda m, *xs: m(*xs))
    for i, s in enumerate(shapes):
        xs = make(s, i)
        with torch.no_grad():
            want = module(*xs).numpy()
        got = model(*[x.numpy() for x in xs])
        assert got.shape == want.shape and _rel(got.numpy(), want) < 1e-5, s
        if i == 0 and arch in ("qwen3_moe", "dinov2", "wav2vec2"):
            assert _rel(step(model, *[x.numpy() for x in xs]).numpy(), want) < 1e-5
    _check(model, module, make(shapes[-1], 9))  # forward and parameter gradients at a non-example shape


def test_mamba_dim_auto_keeps_the_batch_and_fixes_the_length():
    """Mamba's sequential scan loops over the length in Python: a named Dim or Dim.DYNAMIC for it is
    refused by torch.export; Dim.AUTO specializes it to the example's 12, and a call at another length
    is refused by the importer (it was let through, and failed in a reshape deep in the graph)."""
    torch.manual_seed(0)
    module, example = _build(_transformers(), "mamba")
    module = _perturbed(module).eval()
    with pytest.raises(RuntimeError, match="torch.export could not capture"):
        av.from_torch(module, *example, dynamic_shapes=(({0: Dim("b", max=8), 1: Dim("t", min=2, max=32)},),))
    model = av.from_torch(module, *example, dynamic_shapes=(({0: Dim.AUTO, 1: Dim.AUTO},),))
    ids = torch.randint(0, 128, (3, 12))
    with torch.no_grad():
        want = module(ids).numpy()
    assert _rel(model(ids.numpy()).numpy(), want) < 1e-5
    with pytest.raises(TypeError, match=r"imported for shape \('\?', 12\)"):
        model(ids[:, :7].numpy())


# -- the fixed rules, on small modules ------------------------------------------------------------

class _Branch(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[1] == 12 else x * 3


def test_a_dimension_specialized_to_a_constant_is_checked_as_static():
    """Dim.AUTO on a dimension the code branches on: torch.export fixes it to 12 but leaves a SymInt
    in the input's shape. A call at 8 was taken as in range and silently ran the x * 2 branch."""
    model = av.from_torch(_Branch(), torch.randn(3, 12), dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},))
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    assert np.allclose(model(x).numpy(), x * 2)  # the batch stays free
    with pytest.raises(TypeError, match=r"imported for shape \('\?', 12\)"):
        model(x[:, :8])


class _Div(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x.shape[1] / 4)


def test_true_division_of_symbolic_sizes():
    """`size / 4` on a symbolic size is an `operator.truediv` node (DINOv2's bicubic position resize)."""
    model = av.from_torch(_Div(), torch.randn(2, 12), dynamic_shapes=({1: Dim("t", min=2, max=32)},))
    x = np.random.default_rng(0).standard_normal((2, 7)).astype(np.float32)
    assert np.allclose(model(x).numpy(), x * 7 / 4)
    assert np.allclose(av.compile(lambda m, x: m(x))(model, x[:, :5]).numpy(), x[:, :5] * 5 / 4)

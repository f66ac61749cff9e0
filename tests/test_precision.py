"""`av.set_float32_matmul_precision` and `av.backends.*.allow_tf32`: torch's names and defaults, the
precision each generated kernel bakes in, and `av.compile` compiling anew when it changes."""
import logging
import re

import numpy as np
import pytest
import torch

import avalon as av
import avalon.nn.functional as F
from avalon import precision
from avalon.codegen.triton.blocks import BlockPolicy

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


@pytest.fixture(autouse=True)
def _restore():
    saved = dict(precision._state)
    yield
    precision._state.clear()
    precision._state.update(saved)


def _precisions(compiled, *args) -> set[str]:
    """The `input_precision` of every float32 `tl.dot` in the kernels compiled for `args`."""
    found = set()
    for src in compiled.inspect(*args).kernels.values():
        found.update(re.findall(r'input_precision="(\w+)"', src))
    return found


def test_defaults_and_names_are_torchs():
    assert av.get_float32_matmul_precision() == torch.get_float32_matmul_precision() == "highest"
    assert av.backends.cuda.matmul.allow_tf32 is torch.backends.cuda.matmul.allow_tf32 is False
    assert av.backends.cudnn.allow_tf32 is torch.backends.cudnn.allow_tf32 is True
    for p in ("high", "medium", "highest"):
        av.set_float32_matmul_precision(p)
        assert av.get_float32_matmul_precision() == p
    av.backends.cuda.matmul.allow_tf32 = True
    assert av.get_float32_matmul_precision() == "high"
    av.backends.cuda.matmul.allow_tf32 = False
    assert av.get_float32_matmul_precision() == "highest"


def test_an_unknown_precision_is_refused_and_changes_nothing():
    av.set_float32_matmul_precision("high")
    with pytest.raises(ValueError, match=r"'tf32' is not one of 'highest', 'high', 'medium'"):
        av.set_float32_matmul_precision("tf32")
    assert av.get_float32_matmul_precision() == "high"


def test_matmul_kernels_follow_the_precision_and_compile_anew(rng):
    a = rng.standard_normal((32, 48)).astype(np.float32)
    b = rng.standard_normal((48, 16)).astype(np.float32)
    mm = av.compile(lambda x, y: av.relu(x @ y), backend="triton")
    assert _precisions(mm, a, b) == {"ieee"}  # torch's default: full float32 products
    want = np.maximum(a.astype(np.float64) @ b, 0)
    np.testing.assert_allclose(mm(a, b).numpy(), want, rtol=1e-5, atol=1e-5)
    av.set_float32_matmul_precision("high")
    assert _precisions(mm, a, b) == {"tf32"}
    np.testing.assert_allclose(mm(a, b).numpy(), want, rtol=1e-5, atol=1e-5)  # the interpreter is exact either way
    assert mm.cache_info().entries == 2  # one compiled entry per precision, the first still cached
    av.set_float32_matmul_precision("highest")
    hits = mm.cache_info().hits
    assert _precisions(mm, a, b) == {"ieee"} and mm.cache_info().hits == hits + 1


def test_convolutions_follow_cudnn_allow_tf32_not_the_matmul_precision(rng):
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv = av.compile(lambda x, w: F.conv2d(x, w, padding=1), backend="triton")
    assert _precisions(conv, x, w) == {"tf32"}  # cuDNN's default in torch
    av.backends.cudnn.allow_tf32 = False
    assert _precisions(conv, x, w) == {"ieee"}
    av.set_float32_matmul_precision("high")
    assert _precisions(conv, x, w) == {"ieee"}
    want = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), padding=1)
    np.testing.assert_allclose(conv(x, w).numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_attention_kernels_follow_the_matmul_precision(rng):
    q, k, v = (rng.standard_normal((2, 16, 8)).astype(np.float32) for _ in range(3))
    att = av.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), backend="triton")
    kinds = [src for src in att.inspect(q, k, v).kernels.values() if "# Avalon attention kernel" in src]
    assert kinds, "the attention pattern was not lowered to an attention kernel"
    assert _precisions(att, q, k, v) == {"ieee"}
    av.set_float32_matmul_precision("medium")
    assert _precisions(att, q, k, v) == {"tf32"}


def test_a_gpu_kernel_in_full_float32_says_once_how_to_use_tf32(caplog):
    gpu = BlockPolicy.for_device(False)
    precision._state["hinted"] = False
    with caplog.at_level(logging.WARNING, logger="avalon.triton"):
        assert gpu.precision("conv2d") == "tf32" and not caplog.records  # convolutions: TF32 already
        assert gpu.precision("matmul") == "ieee"
        assert gpu.precision("matmul") == "ieee"
        assert BlockPolicy.for_device(True).precision("matmul") == "ieee"  # the interpreter: nothing to gain
    hints = [r for r in caplog.records if "set_float32_matmul_precision('high')" in r.getMessage()]
    assert len(hints) == 1, caplog.records
    av.set_float32_matmul_precision("high")
    assert BlockPolicy.for_device(False).precision("matmul") == "tf32"


def test_torch_switches_avalon_lacks_are_errors_not_silent():
    with pytest.raises(AttributeError, match=r"av.backends.cudnn has no setting 'benchmark' \(Avalon has allow_tf32\)"):
        av.backends.cudnn.benchmark = True
    with pytest.raises(AttributeError, match="cuda.matmul has no setting"):
        av.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    assert av.backends.cudnn.allow_tf32 and not av.backends.cuda.matmul.allow_tf32  # nothing changed

"""Tensor's repr shows small tensors whole and elides only large ones, at torch's threshold."""
import numpy as np

import avalon as av


def test_small_tensors_show_every_row():
    x = av.tensor(np.arange(32, dtype=np.float32).reshape(8, 4))
    text = repr(x)
    assert "..." not in text
    assert all(f"{float(v):g}" in text for v in (0, 7, 12, 31))
    assert text.count("[") == 9 and text.startswith("tensor([[") and "dtype=f32" in text


def test_large_tensors_are_elided_like_torch():
    big = av.tensor(np.zeros((100, 20), dtype=np.float32))  # 2000 elements > 1000
    assert "..." in repr(big)
    edge = av.tensor(np.zeros((10, 100), dtype=np.float32))  # exactly 1000: shown whole
    assert "..." not in repr(edge)

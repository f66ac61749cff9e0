"""Small data sets that ship offline, for the examples and tests.

scikit-learn bundles the UCI handwritten digits (1797 images of 8x8 pixels, values 0..16) inside its
wheel, so examples train on real images with no download. `digits(size=28)` upsamples them to MNIST's
28x28 with bilinear interpolation (two small matrix products), so MNIST-shaped models such as LeNet
run unchanged.
"""
from __future__ import annotations

import numpy as np

__all__ = ["digits", "digit_sequences", "resize_bilinear"]


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-d linear interpolation with pixel centres aligned (align_corners=False)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (..., H, W) images to (..., size, size) by separable bilinear interpolation."""
    rows = _interp_matrix(images.shape[-2], size)
    cols = _interp_matrix(images.shape[-1], size)
    return np.einsum("ih,...hw,jw->...ij", rows, images, cols)


def digits(size: int = 8, test_fraction: float = 0.2, seed: int = 0, normalize: str = "unit",
           dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as (X_train, y_train, X_test, y_test), images shaped (N, 1, size, size).

    `normalize="unit"` scales pixels to [0, 1] (what a Bernoulli VAE needs); "standard" subtracts the
    training mean and divides by the training std (what a classifier likes). The split is a fixed
    shuffled one (`seed`), the same on every machine.
    """
    from sklearn.datasets import load_digits
    d = load_digits()
    images = d.images.astype(np.float64) / 16.0
    if size != 8:
        images = np.clip(resize_bilinear(images, size), 0.0, 1.0)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(len(images) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    X = images[:, None, :, :]
    if normalize == "standard":
        mean, std = X[train].mean(), X[train].std()
        X = (X - mean) / std
    elif normalize != "unit":
        raise ValueError(f"normalize must be 'unit' or 'standard', got {normalize!r}")
    X = X.astype(dtype)
    y = d.target.astype(np.int64)
    return X[train], y[train], X[test], y[test]


def digit_sequences(test_fraction: float = 0.2, seed: int = 0, dtype: type = np.float32
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as sequences for a recurrent model: each 8x8 image read row by row, a sequence of
    8 steps of 8 features, shaped (N, 8, 8) (batch first), standardized."""
    X_train, y_train, X_test, y_test = digits(8, test_fraction, seed, normalize="standard", dtype=dtype)
    return X_train[:, 0], y_train, X_test[:, 0], y_test

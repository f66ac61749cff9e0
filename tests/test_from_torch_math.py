"""av.from_torch on torch's math functions whose ATen ops map straight to Avalon's (trigonometric and
special functions, scans, order statistics, norms, determinants): each one exported, imported and
compared with torch on random float64 inputs (integers exactly)."""
from __future__ import annotations

import warnings

import numpy as np
import torch

import avalon as av

PAIR = ("xlogy", "hypot", "atan2", "copysign", "fmax", "fmin", "heaviside", "logaddexp", "logaddexp2", "nextafter",
        "float_power", "fmod", "remainder")
CALLS = {
    "gcd": lambda f, x, y: f((x * 10).long(), (y * 10).long()),
    "lcm": lambda f, x, y: f((x * 10).long(), (y * 10).long()),
    "ldexp": lambda f, x, y: f(x, (y * 3).long()),
    "lerp": lambda f, x, y: f(x, y, 0.3),
    "logsumexp": lambda f, x, y: f(x, 1),
    "flip": lambda f, x, y: f(x, (1,)),
    "roll": lambda f, x, y: f(x, 1, 1),
    "kthvalue": lambda f, x, y: f(x, 2, 1),
    "searchsorted": lambda f, x, y: f(torch.sort(x, 1).values, y),
    "bucketize": lambda f, x, y: f(x, torch.tensor([0.3, 0.6], dtype=x.dtype)),
    "histc": lambda f, x, y: f(x, bins=4, min=0.0, max=1.5),
    "renorm": lambda f, x, y: f(x, 2, 0, 1.0),
    "cdist": lambda f, x, y: f(x, y),
    "round": lambda f, x, y: (f(x * 10), f(x, decimals=1)),
    "mvlgamma": lambda f, x, y: f(x + 3, 2),
    "prod": lambda f, x, y: (f(x), f(x, 1, keepdim=True)),
    "median": lambda f, x, y: (f(x), f(x, 1)),
    "frexp": lambda f, x, y: f(x * 100),
    **{n: (lambda f, x, y: f(x, 1)) for n in ("cumprod", "cummax", "cummin", "logcumsumexp", "mode")},
    **{n: (lambda f, x, y: f(x[:3, :3] + 3 * torch.eye(3, dtype=x.dtype)))
       for n in ("det", "logdet", "slogdet", "inverse", "matrix_exp")},
}
NAMES = ["acos", "acosh", "asin", "asinh", "atan", "atanh", "cosh", "sinh", "tan", "digamma", "lgamma", "erfinv",
         "erfc", "expm1", "log1p", "log10", "log2", "exp2", "i0", "trunc", "frac", "sign", "sgn", "signbit", "sinc",
         "deg2rad", "rad2deg", "logit", "nan_to_num", "isnan", "isinf", "isfinite", "square", "diagonal", "trace",
         *PAIR, *CALLS]


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def _call(name, x, y):
    fn = getattr(torch, name)
    if name in CALLS:
        return CALLS[name](fn, x, y)
    return fn(x, y) if name in PAIR else fn(x)


class AllOfThem(torch.nn.Module):
    """Every function in one module: one export (seconds each) for all of them."""

    def forward(self, x, y):
        return {name: _call(name, x + 1.0 if name == "acosh" else x, y) for name in sorted(set(NAMES))}


def test_math_functions_import_with_torchs_values():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.1, 0.9, (4, 4)), rng.uniform(0.1, 0.9, (4, 4))
    tx, ty = torch.tensor(x), torch.tensor(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = av.from_torch(AllOfThem(), tx, ty)
    want = AllOfThem()(tx, ty)
    got = model(av.tensor(x), av.tensor(y))
    assert sorted(got) == sorted(want)
    for name in want:
        gs, ws = _flat(got[name]), _flat(want[name])
        assert len(gs) == len(ws), name
        for g, w in zip(gs, ws):
            g, w = np.asarray(g.numpy()), w.numpy()
            assert g.shape == w.shape, (name, g.shape, w.shape)
            if w.dtype.kind in "biu":
                np.testing.assert_array_equal(g, w, err_msg=name)
            else:
                np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)


def test_integer_bitwise_ops_and_shifts_import():
    class Hash(torch.nn.Module):
        def forward(self, x, y, m):
            h = ((x * 2654435761) ^ (y << 3)) & 1023
            return h | (x >> 2), ~x, (m & (x > 2)) | ~m, torch.bitwise_right_shift(x, 1)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(-100, 100, (4, 5), generator=g), torch.randint(0, 50, (4, 5), generator=g)
    m = torch.rand(4, 5, generator=g) > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = av.from_torch(Hash(), x, y, m)
    for a, b in zip(model(av.tensor(x.numpy()), av.tensor(y.numpy()), av.tensor(m.numpy())), Hash()(x, y, m)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

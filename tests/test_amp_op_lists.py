"""Autocast's op lists, op by op: Avalon follows torch's CUDA lists on every device type (see
avalon/amp.py), so each op's output dtype is checked against a table written from torch's autocast
op reference ("CUDA ops that can autocast to float16 / to float32 / that promote to the widest
input type"), and its values against torch run on inputs cast as that list says (within bfloat16
precision). Where torch's own CPU autocast casts the same way, the same program runs under
torch.autocast("cpu", dtype=torch.bfloat16) and must agree too."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import rel

import avalon as av
from avalon.nn import functional as F

BF16 = 2e-2  # a few bfloat16 ulps of the largest entry
f32, b16 = "f32", "bf16"


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {"a": r.standard_normal((3, 4)), "pos": r.uniform(0.5, 2.0, (3, 4)), "b": r.standard_normal((3, 4)),
            "m": r.standard_normal((4, 3)), "c": r.standard_normal((3, 3)), "img": r.standard_normal((2, 4, 3, 3)),
            "unit": r.uniform(0.05, 0.95, (3, 4)), "sgn": np.sign(r.standard_normal((3, 4))),
            "w2": r.standard_normal((4, 2, 2, 2)), "grid": r.uniform(-1, 1, (2, 2, 2, 2)), "wb": r.standard_normal((2, 4, 4)),
            "pw": r.uniform(0.1, 0.5, (4,))}


# name, the program (m: av or torch, F: its functional, v: inputs, activations `a`/`pos` in bf16 and
# the rest float32, as a model's activations and weights are), CUDA autocast's dtype, its policy
# (which says how the oracle casts the inputs), and whether torch's CPU autocast does the same.
CASES = [
    # float32 list: low-precision activations in, float32 out
    ("exp", lambda m, F, v: m.exp(v["a"]), f32, "fp32", False),
    ("expm1", lambda m, F, v: m.expm1(v["a"]), f32, "fp32", False),
    ("log", lambda m, F, v: m.log(v["pos"]), f32, "fp32", False),
    ("log1p", lambda m, F, v: m.log1p(v["pos"]), f32, "fp32", False),
    ("reciprocal", lambda m, F, v: m.reciprocal(v["pos"]), f32, "fp32", False),
    ("rsqrt", lambda m, F, v: m.rsqrt(v["pos"]), f32, "fp32", False),
    ("pow", lambda m, F, v: m.pow(v["pos"], 1.5), f32, "fp32", False),
    ("__pow__", lambda m, F, v: v["pos"] ** 3, f32, "fp32", False),
    ("__rpow__", lambda m, F, v: 2.0 ** v["a"], f32, "fp32", False),
    ("__rtruediv__", lambda m, F, v: 1.0 / v["pos"], f32, "fp32", False),
    ("sum", lambda m, F, v: v["a"].sum(), f32, "fp32", False),
    ("sum_dim", lambda m, F, v: m.sum(v["a"], 1), f32, "fp32", False),
    ("prod", lambda m, F, v: m.prod(v["pos"], 1), f32, "fp32", True),
    ("cumsum", lambda m, F, v: m.cumsum(v["a"], 1), f32, "fp32", False),
    ("cumprod", lambda m, F, v: m.cumprod(v["pos"], 1), f32, "fp32", False),
    ("softmax", lambda m, F, v: m.softmax(v["a"], 1), f32, "fp32", False),
    ("log_softmax", lambda m, F, v: m.log_softmax(v["a"], 1), f32, "fp32", False),
    ("F.softmax", lambda m, F, v: F.softmax(v["a"], dim=-1), f32, "fp32", False),
    ("F.log_softmax", lambda m, F, v: F.log_softmax(v["a"], dim=-1), f32, "fp32", False),
    ("F.softmin", lambda m, F, v: F.softmin(v["a"], dim=-1), f32, "fp32", False),
    ("logsumexp", lambda m, F, v: m.logsumexp(v["a"], 1), f32, "fp32", False),
    ("norm", lambda m, F, v: m.norm(v["a"]), f32, "fp32", False),
    ("linalg.vector_norm", lambda m, F, v: m.linalg.vector_norm(v["a"], dim=1), f32, "fp32", False),
    ("F.softplus", lambda m, F, v: F.softplus(v["a"]), f32, "fp32", False),
    ("F.layer_norm", lambda m, F, v: F.layer_norm(v["a"], (4,), v["b"][0], v["b"][1]), f32, "fp32", False),
    ("F.group_norm", lambda m, F, v: F.group_norm(v["img16"], 2), f32, "fp32", False),
    ("F.normalize", lambda m, F, v: F.normalize(v["a"], dim=1), f32, "fp32", False),
    ("F.cosine_similarity", lambda m, F, v: F.cosine_similarity(v["a"], v["b"]), f32, "fp32", True),
    ("F.mse_loss", lambda m, F, v: F.mse_loss(v["a"], v["b"]), f32, "fp32", True),
    ("F.l1_loss", lambda m, F, v: F.l1_loss(v["a"], v["b"]), f32, "fp32", True),
    ("F.smooth_l1_loss", lambda m, F, v: F.smooth_l1_loss(v["a"], v["b"]), f32, "fp32", True),
    ("F.huber_loss", lambda m, F, v: F.huber_loss(v["a"], v["b"]), f32, "fp32", True),
    ("F.cross_entropy", lambda m, F, v: F.cross_entropy(v["a"], v["t"]), f32, "fp32", True),
    ("F.nll_loss", lambda m, F, v: F.nll_loss(v["a"], v["t"]), f32, "fp32", True),
    ("F.kl_div", lambda m, F, v: F.kl_div(v["a"], v["unit"], reduction="batchmean"), f32, "fp32", True),
    ("F.binary_cross_entropy_with_logits", lambda m, F, v: F.binary_cross_entropy_with_logits(v["a"], v["unit"]),
     f32, "fp32", True),
    ("F.binary_cross_entropy(cpu)", lambda m, F, v: F.binary_cross_entropy(v["unit16"], v["unit"]), f32, "fp32",
     True),
    ("F.poisson_nll_loss", lambda m, F, v: F.poisson_nll_loss(v["a"], v["pos32"]), f32, "fp32", True),
    ("F.soft_margin_loss", lambda m, F, v: F.soft_margin_loss(v["a"], v["sgn"]), f32, "fp32", True),
    ("F.margin_ranking_loss", lambda m, F, v: F.margin_ranking_loss(v["a"][0], v["pos"][0], v["sgn"][0]), f32,
     "fp32", True),
    ("F.hinge_embedding_loss", lambda m, F, v: F.hinge_embedding_loss(v["a"], v["sgn"]), f32, "fp32", True),
    ("F.interpolate(nearest)", lambda m, F, v: F.interpolate(v["img16"], scale_factor=2), f32, "fp32", False),
    ("F.interpolate(bilinear)", lambda m, F, v: F.interpolate(v["img16"], size=(5, 4), mode="bilinear",
                                                              align_corners=False), f32, "fp32", False),
    ("acos", lambda m, F, v: m.acos(v["unit16"]), f32, "fp32", False),
    ("asin", lambda m, F, v: m.asin(v["unit16"]), f32, "fp32", False),
    ("erfinv", lambda m, F, v: m.erfinv(v["unit16"]), f32, "fp32", False),
    ("cosh", lambda m, F, v: m.cosh(v["a"]), f32, "fp32", False),
    ("sinh", lambda m, F, v: m.sinh(v["a"]), f32, "fp32", False),
    ("tan", lambda m, F, v: m.tan(v["a"]), f32, "fp32", False),
    ("log2", lambda m, F, v: m.log2(v["pos"]), f32, "fp32", False),
    ("log10", lambda m, F, v: m.log10(v["pos"]), f32, "fp32", False),
    ("dist", lambda m, F, v: m.dist(v["a"], v["pos"]), f32, "fp32", False),
    ("cdist", lambda m, F, v: m.cdist(v["a"], v["pos"]), f32, "fp32", True),
    ("renorm", lambda m, F, v: m.renorm(v["a"], 2, 0, 1.0), f32, "fp32", False),
    ("F.pdist", lambda m, F, v: F.pdist(v["a"]), f32, "fp32", False),
    # lower-precision list: float32 in, the autocast dtype out
    ("addmv", lambda m, F, v: m.addmv(v["c"][0], v["b"], v["m"][:, 0]), b16, "lower", False),
    ("addr", lambda m, F, v: m.addr(v["b"], v["c"][0], v["m"][:, 0]), b16, "lower", False),
    ("mv", lambda m, F, v: m.mv(v["b"], v["m"][:, 0]), b16, "lower", False),
    ("chain_matmul", lambda m, F, v: m.chain_matmul(v["b"], v["m"], v["c"]), b16, "lower", True),
    ("linalg.multi_dot", lambda m, F, v: m.linalg.multi_dot([v["b"], v["m"], v["c"]]), b16, "lower", True),
    ("baddbmm", lambda m, F, v: m.baddbmm(v["wb"], v["wb"], v["wb"]), b16, "lower", True),
    ("addbmm", lambda m, F, v: m.addbmm(v["wb"][0], v["wb"], v["wb"]), b16, "lower", True),
    ("addmm", lambda m, F, v: m.addmm(v["c"], v["b"], v["m"]), b16, "lower", True),
    ("F.prelu", lambda m, F, v: F.prelu(v["img"], v["pw"]), b16, "lower", True),
    ("F.conv_transpose2d", lambda m, F, v: F.conv_transpose2d(v["img"], v["w2"], v["b"][0, :2], stride=2),
     b16, "lower", True),
    ("F.linear", lambda m, F, v: F.linear(v["b"], v["m"].T), b16, "lower", True),
    # promote list: float32 if any input is, else the autocast dtype
    ("addcmul", lambda m, F, v: m.addcmul(v["a"], v["b"], v["a"]), f32, "promote", True),
    ("addcmul(all bf16)", lambda m, F, v: m.addcmul(v["a"], v["pos"], v["a"]), b16, "promote", True),
    ("addcdiv", lambda m, F, v: m.addcdiv(v["a"], v["b"], v["pos"]), f32, "promote", True),
    ("index_put", lambda m, F, v: m.index_put(v["a"], (v["rows"],), v["b"][:2]), f32, "promote", False),
    ("scatter_add", lambda m, F, v: m.scatter_add(v["a"], 1, v["idx"], v["b"]), f32, "promote", False),
    ("F.bilinear", lambda m, F, v: F.bilinear(v["a"], v["a"], v["wb"]), f32, "promote", False),
    ("F.grid_sample", lambda m, F, v: F.grid_sample(v["img16"], v["grid"], align_corners=False), f32, "promote",
     True),
    ("atan2", lambda m, F, v: m.atan2(v["a"], v["b"]), f32, "promote", True),
    ("cross", lambda m, F, v: m.cross(v["a"][:, :3], v["c"], dim=1), f32, "promote", False),
    ("dot", lambda m, F, v: m.dot(v["a"][0], v["b"][0]), f32, "promote", False),
    ("tensordot", lambda m, F, v: m.tensordot(v["a"], v["m"], dims=1), f32, "promote", False),
    # on no list: the input's dtype, by ordinary promotion
    ("relu", lambda m, F, v: m.relu(v["a"]), b16, "none", True),
    ("F.gelu", lambda m, F, v: F.gelu(v["a"]), b16, "none", True),
    ("F.elu (exp inside)", lambda m, F, v: F.elu(v["a"]), b16, "none", True),
    ("mean (sum inside)", lambda m, F, v: m.mean(v["a"]), b16, "none", True),
    ("a / 2", lambda m, F, v: v["a"] / 2, b16, "none", True),
    ("sigmoid", lambda m, F, v: m.sigmoid(v["a"]), b16, "none", True),
    ("cat (native promotion)", lambda m, F, v: m.cat([v["a"], v["b"]]), f32, "none", True),
    ("where (native promotion)", lambda m, F, v: m.where(v["b"] > 0, v["a"], v["b"]), f32, "none", True),
    ("sum(dtype=bf16)", lambda m, F, v: m.sum(v["a"], 1, dtype=m.bfloat16), b16, "none", True),
]
_LOW = ("a", "pos", "img16", "unit16")  # held in bfloat16 (activations); everything else float32


def _values(lib: str, cast: str | None) -> dict:
    """The inputs for `lib` ("av" or "torch"), the float ones cast as a policy casts them: None keeps
    them as the program holds them; "f32"/"bf16" casts every float input to that dtype."""
    raw = _inputs()
    raw["img16"], raw["unit16"], raw["pos32"] = raw["img"], raw["unit"], raw["pos"]
    out = {}
    for k, x in raw.items():
        low = k in _LOW
        want = {"f32": "f32", "bf16": "bf16"}.get(cast or "", "bf16" if low else "f32")
        if lib == "torch":
            t = torch.tensor(x, dtype=torch.float32)
            out[k] = t.to(torch.bfloat16) if want == "bf16" else t
        else:
            t = av.tensor(x.astype(np.float32))
            out[k] = t.to(av.bfloat16) if want == "bf16" else t
    ints = {"t": np.array([0, 3, 1]), "rows": np.array([2, 0]), "idx": np.array([[0, 1, 1, 3]] * 3)}
    for k, x in ints.items():
        out[k] = torch.tensor(x) if lib == "torch" else av.tensor(x)
    return out


def _oracle(fn, policy: str, want: str):
    """torch, run as CUDA autocast would: inputs cast per the policy, autocast off."""
    cast = {"fp32": "f32", "lower": "bf16", "promote": want}.get(policy)
    return fn(torch, TF, _values("torch", cast))


@pytest.mark.parametrize("name,fn,want,policy,cpu_agrees", CASES, ids=[c[0] for c in CASES])
def test_output_dtype_follows_the_cuda_lists(name, fn, want, policy, cpu_agrees):
    with av.autocast("cpu"):
        got = fn(av, F, _values("av", None))
    assert got.dtype.name == want, f"{name}: {got.dtype.name}, torch's CUDA autocast gives {want}"
    expect = _oracle(fn, policy, want)
    assert rel(got, expect.float()) < BF16, name
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cpu = fn(torch, TF, _values("torch", None))
    except RuntimeError:  # index_put, scatter_add, bilinear: torch's CPU autocast leaves the dtypes mixed
        assert not cpu_agrees, name
        return
    assert (av.ir.dtype(cpu.dtype).name == want) == cpu_agrees, f"{name}: torch's CPU autocast gives {cpu.dtype}"
    if cpu_agrees:
        assert rel(got, cpu.float()) < BF16, name


def test_table_names_only_functions_that_exist():
    assert av.amp._MISSING == []


def test_composites_and_explicit_dtype_are_not_recast():
    """Only the user's call is cast: F.elu's inner exp and mean's inner sum keep bfloat16; an op's
    explicit dtype= wins; float64 is never cast; nothing changes outside autocast."""
    v = _values("av", None)
    assert av.exp(v["a"]).dtype is av.bfloat16 and v["a"].sum().dtype is av.bfloat16
    with av.autocast("cpu"):
        assert av.softmax(v["a"].double(), 1).dtype is av.float64
        assert av.exp(v["b"].double()).dtype is av.float64
        assert F.softmax(v["a"], dim=1, dtype=av.bfloat16).dtype is av.bfloat16
        with av.autocast("cpu", enabled=False):
            assert av.exp(v["a"]).dtype is av.bfloat16


def test_binary_cross_entropy_is_refused_on_cuda_tensors_only():
    v = _values("av", None)
    with av.autocast("cpu"):
        assert F.binary_cross_entropy(v["unit16"], v["unit"]).dtype is av.float32
    if not torch.cuda.is_available():
        pytest.skip("the refusal needs CUDA tensors")
    with av.autocast("cuda"):
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            F.binary_cross_entropy(v["unit16"].to("cuda"), v["unit"].to("cuda"))


def test_layers_and_compiled_training_step_follow_the_lists(rng):
    """A LayerNorm + Linear + cross-entropy model: bf16 matmul, f32 norm and loss, float32 grads,
    the same dtypes traced and compiled as eagerly."""
    from avalon import nn

    av.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    x, y = av.tensor(rng.standard_normal((4, 6)).astype(np.float32)), av.tensor(rng.integers(0, 3, 4))

    def objective(m, x, y):
        with av.autocast("cpu"):
            h = m[0](x)
            assert h.dtype is av.bfloat16
            n = m[1](h)
            assert n.dtype is av.float32
            out = m[2](n)
            assert out.dtype is av.bfloat16
            return F.cross_entropy(out, y)

    eager = av.value_and_grad(objective)(model, x, y)
    compiled = av.compile(av.value_and_grad(objective), backend="cpu")(model, x, y)
    for loss, grads in (eager, compiled):
        assert loss.dtype is av.float32
        assert all(g.dtype is av.float32 for g in grads.values())
    assert rel(compiled[0], eager[0]) < 1e-3
    tm = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    tm.load_state_dict({k: torch.tensor(p.numpy()) for k, p in nn.state_dict(model).items()})
    h = tm[0](torch.tensor(x.numpy()).bfloat16().float()).bfloat16()  # CUDA autocast's casts, by hand
    want = TF.cross_entropy(tm[2](tm[1](h.float())).bfloat16().float(), torch.tensor(y.numpy()))
    assert rel(eager[0], want) < BF16

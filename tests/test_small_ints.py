"""uint8, int8 and int16 tensors against torch: promotion, wrap-around arithmetic, bitwise ops and
shifts, comparisons, casts, reductions, uint8 mask indexing; eager, traced (printed and parsed),
compiled on every backend, through MLIR, ONNX, torch.export, checkpoints and the DataLoader."""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

import re  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import avalon as av  # noqa: E402
from avalon.ir import dtypes as dt  # noqa: E402

SMALL = [np.uint8, np.int8, np.int16]
NAMES = {np.uint8: "uint8", np.int8: "int8", np.int16: "int16"}


def edges(d, shape=(4, 6), seed=0) -> np.ndarray:
    """Random values of `d` holding its extremes, their neighbours and zero (the wrap-around edges)."""
    info = np.iinfo(d)
    a = np.random.default_rng(seed).integers(info.min, info.max, shape, endpoint=True).astype(d)
    for k, v in enumerate((info.min, info.max, 0, 1, info.max - 1, info.min + 1, -1 if info.min else 2)):
        a.flat[k] = v
    return a


def same(got, want) -> None:
    g = got.numpy() if isinstance(got, av.Tensor) else np.asarray(got)
    w = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert str(g.dtype) == str(w.dtype), (g.dtype, w.dtype)
    assert g.shape == w.shape, (g.shape, w.shape)
    if g.dtype.kind == "f":
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(g, w)


def test_dtypes_coerce_print_and_promote_as_torch():
    for name, d in (("uint8", av.uint8), ("int8", av.int8), ("int16", av.int16)):
        t = getattr(torch, name)
        assert av.ir.dtype(t) is d and av.ir.dtype(name) is d and av.ir.dtype(np.dtype(name)) is d
        assert repr(d) == f"av.{name}" and d.itemsize == np.dtype(name).itemsize
        assert av.tensor(np.zeros(2, name)).dtype is d and av.zeros(2, dtype=t).dtype is d
    assert av.ir.dtype("short") is av.int16 is av.short and av.ir.dtype("ui8") is av.uint8
    assert av.tensor([1, 2], dtype=av.uint8).type() == "torch.ByteTensor" and av.CharTensor([1]).dtype is av.int8
    names = [dt.PY_NAMES[d.name] for d in dt.ALL]
    for a in names:  # the whole table, every pair of Avalon dtypes
        for b in names:
            want = torch.promote_types(getattr(torch, a), getattr(torch, b))
            assert av.promote_types(getattr(torch, a), getattr(torch, b)) is av.ir.dtype(want), (a, b)
            x = torch.ones(2, dtype=getattr(torch, a)) + torch.ones(2, dtype=getattr(torch, b))
            y = av.ones(2, dtype=getattr(av, a)) + av.ones(2, dtype=getattr(av, b))
            assert y.dtype is av.ir.dtype(x.dtype), (a, b)
    av.set_default_dtype(av.float64)  # true division of integers gives the default float dtype
    try:
        assert (av.tensor([3], dtype=av.uint8) / 2).dtype is av.float64
    finally:
        av.set_default_dtype(av.float32)
    assert (av.tensor([3], dtype=av.int8) / av.tensor([2], dtype=av.int16)).dtype is av.float32


CASES = {
    "add": lambda L, a, b: a + b, "sub": lambda L, a, b: a - b, "mul": lambda L, a, b: a * b,
    "floordiv": lambda L, a, b: a // b, "rem": lambda L, a, b: a % b, "fmod": lambda L, a, b: L.fmod(a, b),
    "trunc_div": lambda L, a, b: L.div(a, b, rounding_mode="trunc"), "true_div": lambda L, a, b: a / b,
    "neg": lambda L, a, b: -a, "abs": lambda L, a, b: abs(a), "sign": lambda L, a, b: L.sign(a),
    "square": lambda L, a, b: a ** 2, "add_int": lambda L, a, b: a + 1, "rsub_int": lambda L, a, b: 3 - a,
    "mul_int": lambda L, a, b: a * 300, "add_float": lambda L, a, b: a + 0.5, "add_0d_long": lambda L, a, b: a + L.tensor(7),
    "and": lambda L, a, b: a & b, "or": lambda L, a, b: a | b, "xor": lambda L, a, b: a ^ b, "not": lambda L, a, b: ~a,
    "and_int": lambda L, a, b: a & 0x5A, "lshift": lambda L, a, b: a << 3, "rshift": lambda L, a, b: a >> 2,
    "lshift_t": lambda L, a, b: a << (b & 15), "rshift_t": lambda L, a, b: a >> (b & 15),
    "lt": lambda L, a, b: a < b, "le": lambda L, a, b: a <= b, "eq": lambda L, a, b: a == b, "ne": lambda L, a, b: a != b,
    "gt_int": lambda L, a, b: a > 3, "ge_neg": lambda L, a, b: a >= -1,
    "maximum": lambda L, a, b: L.maximum(a, b), "minimum": lambda L, a, b: L.minimum(a, b),
    "clamp": lambda L, a, b: a.clamp(2, 100), "where": lambda L, a, b: L.where(a > b, a, b),
    "sum": lambda L, a, b: a.sum(), "sum_dim": lambda L, a, b: a.sum(1), "prod": lambda L, a, b: a.prod(1),
    "cumsum": lambda L, a, b: a.cumsum(1), "max": lambda L, a, b: a.max(), "min": lambda L, a, b: a.min(),
    "max_dim": lambda L, a, b: a.max(dim=1).values, "min_idx": lambda L, a, b: a.min(dim=0).indices,
    "argmax": lambda L, a, b: a.argmax(1), "argmin": lambda L, a, b: a.argmin(0), "amin": lambda L, a, b: L.amin(a, 1),
    "sort": lambda L, a, b: a.sort(1).values, "topk": lambda L, a, b: a.topk(2, 1).values,
    "gather": lambda L, a, b: L.gather(a, 1, L.tensor([[0, 5], [1, 1], [2, 3], [4, 0]])),
    "cat": lambda L, a, b: L.cat([a, b], 0), "stack": lambda L, a, b: L.stack([a, b], 2),
    "index_select": lambda L, a, b: L.index_select(a, 1, L.tensor([5, 0])), "t": lambda L, a, b: a.t().contiguous(),
    "masked_fill": lambda L, a, b: a.masked_fill(a > b, 5), "pad": lambda L, a, b: L.nn.functional.pad(a, (1, 2)),
    "to_float": lambda L, a, b: a.float(), "to_half": lambda L, a, b: a.half(), "to_long": lambda L, a, b: a.long(),
    "to_bool": lambda L, a, b: a.bool(), "byte": lambda L, a, b: a.byte(), "char": lambda L, a, b: a.char(),
    "short": lambda L, a, b: a.short(), "int": lambda L, a, b: a.int(), "mixed_u8_i8": lambda L, a, b: a.byte() + b.char(),
    "mixed_i16_bool": lambda L, a, b: a.short() * (b > 0),
}


@pytest.mark.parametrize("d", SMALL, ids=NAMES.get)
def test_eager_ops_match_torch(d):
    a, b = edges(d), edges(d, seed=1)
    b[b == 0] = 3  # (integer division by zero is torch's error)
    for name, fn in CASES.items():
        want = fn(torch, torch.from_numpy(a.copy()), torch.from_numpy(b.copy()))
        got = fn(av, av.tensor(a), av.tensor(b))
        try:
            same(got, want)
        except AssertionError as e:
            raise AssertionError(f"{NAMES[d]} {name}: {e}") from None


def test_casts_both_ways_as_torch():
    f = torch.tensor([-200.7, -128.0, -1.5, -0.4, 0.0, 0.9, 3.7, 127.5, 255.9, 256.0, 300.2, 40000.5, -40000.5])
    for d in ("uint8", "int8", "int16"):
        td, ad = getattr(torch, d), getattr(av, d)
        for src in (torch.float32, torch.float64, torch.float16):  # in range truncates; past it wraps via int64
            x = f.to(src)
            same(av.tensor(x.numpy()).to(ad), x.to(td))
        x = torch.from_numpy(edges(getattr(np, d)))
        for other in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.bool, torch.uint8,
                      torch.int8, torch.int16, torch.int32, torch.int64):
            got, want = av.tensor(x.numpy()).to(getattr(av, str(other)[6:])), x.to(other)
            same(got.float() if other == torch.bfloat16 else got, want.float() if other == torch.bfloat16 else want)
            y = want.to(td)  # and back
            same(av.tensor(want.float().numpy() if other == torch.bfloat16 else want.numpy()).to(ad), y)


def test_uint8_index_is_a_boolean_mask_as_in_torch():
    x, m = np.arange(12.0).reshape(3, 4), np.array([1, 0, 2], np.uint8)
    with pytest.warns(UserWarning, match="indexing with dtype torch.uint8 is now deprecated"):
        got = av.tensor(x)[av.tensor(m)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same(got, torch.from_numpy(x)[torch.from_numpy(m)])
        same(av.tensor(x)[:, av.tensor(np.array([0, 1, 1, 0], np.uint8))],
             torch.from_numpy(x)[:, torch.from_numpy(np.array([0, 1, 1, 0], np.uint8))])
    with pytest.raises(RuntimeError, match="masked_fill_ only supports boolean masks"):
        av.tensor(x)[av.tensor((x > 3).astype(np.uint8))] = 0.0
    with pytest.raises(IndexError, match="must be long, int, byte or bool"):
        av.tensor(x)[av.tensor(np.array([0, 1], np.int8))]


def _program(a, b):
    """A fused mix: wrapping arithmetic, bitwise ops, shifts, comparisons, reductions and casts."""
    s = a + b
    return (s, a * b - a, a // 3, a % 3, -a, abs(a), a < b, a == b, av.maximum(a, b), av.where(a > b, a, b),
            a.float() * 0.5, a.sum(), a.max(), a.min(1).values, a.argmax(), a & b, a | b, a ^ b, ~a, a << 1, a >> 2,
            av.cat([a, b], 1), av.gather(b, 1, a.argmax(1, keepdim=True)), a.short() * 300, a.char(), a.byte())


def _torch_program(a, b):
    return (a + b, a * b - a, a // 3, a % 3, -a, abs(a), a < b, a == b, torch.maximum(a, b), torch.where(a > b, a, b),
            a.float() * 0.5, a.sum(), a.max(), a.min(1).values, a.argmax(), a & b, a | b, a ^ b, ~a, a << 1, a >> 2,
            torch.cat([a, b], 1), torch.gather(b, 1, a.argmax(1, keepdim=True)), a.short() * 300, a.char(), a.byte())


@pytest.mark.parametrize("d", SMALL, ids=NAMES.get)
def test_traced_printed_parsed_and_interpreted(d):
    a, b = edges(d), edges(d, seed=2)
    want = _torch_program(torch.from_numpy(a), torch.from_numpy(b))
    g = av.trace(_program, a, b)
    text = str(g)
    assert f"tensor<4x6x{av.ir.dtype(d).name}>" in text
    g2 = av.ir.parse(text)
    assert str(g2) == text
    av.ir.verify(g2)
    for got, w in zip(av.interpret(g2, a, b), want):
        same(got, w)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "triton"])
@pytest.mark.parametrize("d", SMALL, ids=NAMES.get)
def test_compiled_on_every_backend(d, backend):
    a, b = edges(d, seed=3), edges(d, seed=4)
    want = _torch_program(torch.from_numpy(a), torch.from_numpy(b))
    f = av.compile(_program, backend=backend)
    for got, w in zip(f(av.tensor(a), av.tensor(b)), want):
        same(got, w)


def test_uint8_compiled_through_the_linalg_lowering_on_iree():
    """uint8 is the signless i8 in linalg, with the unsigned ops: IREE's results are torch's."""
    pytest.importorskip("iree.runtime", reason="needs the mlir extra")
    a, b = edges(np.uint8, seed=5), edges(np.uint8, seed=6)
    want = _torch_program(torch.from_numpy(a), torch.from_numpy(b))
    for got, w in zip(av.compile(_program, backend="iree")(av.tensor(a), av.tensor(b)), want):
        same(got, w)


def test_float_casts_compiled_wrap_as_torch():
    x = np.array([-200.7, -1.5, 0.9, 127.5, 255.9, 300.2, -40000.5, 40000.5], np.float32)
    want = [torch.from_numpy(x).to(t) for t in (torch.uint8, torch.int8, torch.int16)]
    for backend in ("numpy", "triton"):
        got = av.compile(lambda v: (v.byte(), v.char(), v.short()), backend=backend)(av.tensor(x))
        for g, w in zip(got, want):
            same(g, w)


def test_gradients_flow_through_a_uint8_image_cast_to_float():
    img = edges(np.uint8, (2, 6))
    w = np.random.default_rng(0).standard_normal(6).astype(np.float32)

    def loss(w, img):
        x = img.float() / 255.0
        return (x * w).tanh().sum() + ((img > 100).float() * w).pow(2).mean()

    tw = torch.tensor(w, requires_grad=True)
    loss(tw, torch.from_numpy(img)).backward()
    for g in (av.grad(loss)(av.tensor(w), av.tensor(img)),
              av.compile(av.grad(loss))(av.tensor(w), av.tensor(img))):
        np.testing.assert_allclose(g.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_mlir_both_dialects_parse_upstream_and_linalg_uses_unsigned_ops():
    ir = pytest.importorskip("iree.compiler.ir", reason="needs the mlir extra")
    from avalon.mlir import to_mlir
    a = edges(np.uint8)
    g = av.trace(lambda a, b: (a // b, a < b, av.maximum(a, b), a.float(), a.short(), a.max()), a, a)
    for dialect in ("avalon", "linalg"):
        text = to_mlir(g, dialect=dialect)
        ctx = ir.Context()
        ctx.allow_unregistered_dialects = dialect == "avalon"
        assert ir.Module.parse(text, ctx).operation.verify()
        assert ("ui8" in text) == (dialect == "avalon")
    for op in ("arith.divui", "cmpi ult", "arith.maxui", "arith.uitofp", "arith.extui"):
        assert op in text, op
    # (the value checks' index ranges are i64 reductions with signed ops; none on the uint8 data)
    assert not re.search(r"arith\.(divsi|maxsi|minsi|sitofp)\b[^\n]*: i8\b", text), text


def test_onnx_round_trip_of_a_uint8_input_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    import avalon.onnx as aon

    def f(img, m):
        return img.float() / 255.0 - 0.5, (img + 10) // 3, img.max(), (img >> 1) & 7, av.where(m > 0, img, 0), m.short()

    img, m = edges(np.uint8, (2, 5)), edges(np.int8, (2, 5))
    want = [t.numpy() for t in f(av.tensor(img), av.tensor(m))]
    path = str(tmp_path / "u8.onnx")
    aon.export(f, path, img, m)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.UINT8, onnx.TensorProto.INT8]
    for got, w in zip(aon.load(path)(av.tensor(img), av.tensor(m)), want):
        same(got, w)
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(path)
    for got, w in zip(sess.run(None, {"img": img, "m": m}), want):
        same(got, w)


def test_from_torch_imports_a_module_reading_uint8():
    class M(torch.nn.Module):
        def forward(self, img, m):
            return img.float() / 255.0, img.sum(), img.to(torch.int16) * 300, torch.where(m.bool(), img, 0), img.char()

    img, m = torch.from_numpy(edges(np.uint8)), torch.from_numpy((edges(np.uint8) > 100).astype(np.uint8))
    model = av.from_torch(M(), img, m)
    for got, w in zip(model(av.tensor(img.numpy()), av.tensor(m.numpy())), M()(img, m)):
        same(got, w)


def test_checkpoints_and_data_loader_keep_small_ints(tmp_path):
    from avalon.utils import data
    state = {name: av.tensor(edges(getattr(np, name))) for name in ("uint8", "int8", "int16")}
    av.save(state, tmp_path / "small.safetensors")
    back = av.load(tmp_path / "small.safetensors")
    for k, v in state.items():
        assert back[k].dtype is v.dtype
        np.testing.assert_array_equal(back[k].numpy(), v.numpy())
    header = (tmp_path / "small.safetensors").read_bytes()[8:400]
    assert b'"U8"' in header and b'"I8"' in header and b'"I16"' in header
    imgs = data.TensorDataset(np.arange(24, dtype=np.uint8).reshape(4, 6), np.arange(4, dtype=np.int16))
    x, y = next(iter(data.DataLoader(imgs, batch_size=4)))
    assert x.dtype is av.uint8 and y.dtype is av.int16

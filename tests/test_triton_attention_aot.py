"""The attention kernels (forward, and the backward of training steps in f32, f16 and with
dropout) and the folded grouped-convolution kernels compile for an H100 (sm_90)
on this GPU-less machine (see test_triton_aot.py for why this runs in a subprocess)."""
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, os, sys
    assert os.environ["TRITON_INTERPRET"] == "0"
    import numpy as np
    import avalon as av
    from avalon.ir import Builder, Graph, TensorType
    from avalon.nn.attention import scaled_dot_product_attention as sdpa
    from avalon.passes import DEFAULT_PIPELINE, PassManager
    from avalon.codegen.triton import compile_graph
    from avalon.codegen.triton.aot import compile_each
    from avalon.codegen.triton.target import TRITON

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 4, 256, 64)).astype(np.float32) for _ in range(3))
    qh, kh, vh = (x.astype(np.float16) for x in (q, k, v))
    mask = rng.random((256, 256)) < 0.5
    cases = {
        "causal": (lambda q, k, v: sdpa(q, k, v, is_causal=True), (q, k, v)),
        "bool_mask": (lambda q, k, v, m: sdpa(q, k, v, attn_mask=m), (q, k, v, mask)),
        "float_mask_f16": (lambda q, k, v, m: sdpa(q, k, v, attn_mask=m), (qh, kh, vh, mask.astype(np.float16))),
        "dropout": (lambda q, k, v: sdpa(q, k, v, dropout_p=0.1, is_causal=True), (q, k, v)),
    }
    w, wh = q[:, :, :128], qh[:, :, :128]  # training steps: (2, 4, 128, 64), grads of q, k, v

    def train(**kw):
        return av.value_and_grad(lambda q, k, v, w: (sdpa(q, k, v, **kw) * w).sum(), argnums=(0, 1, 2))
    cases["train_causal"] = (train(is_causal=True), (q[:, :, :128], k[:, :, :128], v[:, :, :128], w))
    cases["train_none_f16"] = (train(), (qh[:, :, :128], kh[:, :, :128], vh[:, :, :128], wh))
    cases["train_dropout"] = (train(dropout_p=0.1, is_causal=True), (q[:, :, :128], k[:, :, :128], v[:, :, :128], w))
    graphs = {}
    for name, (fn, args) in cases.items():
        g = av.trace(fn, *args)
        PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
        graphs[name] = g
    g = Graph("f")
    b = Builder(g)
    x, w, dy = (g.add_input(TensorType(s, "f32"), f"x{i}") for i, s in
                enumerate([(8, 32, 16, 16), (32, 1, 3, 3), (8, 32, 16, 16)]))
    attrs = dict(stride=[1, 1], padding=[1, 1], groups=32)
    g.set_outputs([b("relu", b("conv2d", x, w, **attrs)),
                   b("conv2d_grad_input", dy, w, input_shape=[8, 32, 16, 16], **attrs),
                   b("conv2d_grad_weight", x, dy, weight_shape=[32, 1, 3, 3], **attrs)])
    graphs["depthwise"] = g
    todo = [(case, kern) for case, g in graphs.items() for ln in compile_graph(g).launches
            for kern in ln.kernel.chain()]
    out = [dict(case=case, kernel=kern.name, kind=kern.kind, ok=".target sm_90" in b.asm.get("ptx", ""),
                error=b.error) for (case, kern), b in zip(todo, compile_each([k for _, k in todo]))]
    print(json.dumps(out))
''')


def test_attention_and_depthwise_kernels_compile_to_ptx_for_h100(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    env.update(AVALON_CACHE_DIR=str(tmp_path / "avalon"), TRITON_CACHE_DIR=str(tmp_path / "triton"),
               PYTHONPATH=os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed
    kinds = {c: [r["kind"] for r in results if r["case"] == c] for c in {r["case"] for r in results}}
    assert all(kinds[c].count("attention") == 1 for c in ("causal", "bool_mask", "float_mask_f16", "dropout")), results
    assert sum(r["case"] == "depthwise" and r["kind"] == "contraction" for r in results) == 3
    for c in ("train_causal", "train_none_f16", "train_dropout"):  # the backward kernel, and the forward storing m and l
        kinds = [r["kind"] for r in results if r["case"] == c]
        assert kinds.count("attention") == 1 and kinds.count("attention_bwd") == 1, (c, kinds)

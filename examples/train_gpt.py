"""Train a small character-level GPT on the help texts that ship with Python, then sample from it.

    python examples/train_gpt.py [--steps 400] [--backend numpy|cpu|triton] [--device cuda]

The text is `pydoc_data.topics` (the topics of Python's interactive `help()`; part of the standard
library, so no download). Each training step (forward, backward, AdamW update) runs as one compiled
graph over a batch of random windows of the text. The script prints the loss every few steps, the
final training and validation loss, and a few lines sampled from the model.
"""
from __future__ import annotations

import argparse
import os
import re
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the reference interpreter's many small matmuls

import numpy as np  # noqa: E402

import avalon as av  # noqa: E402
from avalon import optim, zoo  # noqa: E402


def load_text() -> str:
    """Every help topic in a fixed order, non-ASCII characters dropped (a smaller vocabulary) and runs of
    spaces collapsed (the indentation would otherwise be most of what a small model learns)."""
    from pydoc_data.topics import topics
    text = "\n".join(topics[k] for k in sorted(topics))
    return re.sub(r"[ \t]+", " ", text.encode("ascii", "ignore").decode("ascii"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=2)
    p.add_argument("--n-embd", type=int, default=48)
    p.add_argument("--chars", type=int, default=200_000, help="train on the first this many characters")
    p.add_argument("--samples", type=int, default=3, help="lines to sample at the end")
    p.add_argument("--backend", choices=["numpy", "cpu", "triton"], default=None,
                   help="compiler backend (default: triton on a GPU, numpy otherwise)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the CPU)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def batches(data: np.ndarray, block: int, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`batch` random windows of the text and the same windows shifted by one (the next characters)."""
    starts = rng.integers(0, len(data) - block - 1, batch)
    x = np.stack([data[s:s + block] for s in starts])
    y = np.stack([data[s + 1:s + 1 + block] for s in starts])
    return x, y


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    av.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    text = load_text()[:args.chars]
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], np.int64)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]

    model = zoo.GPT(block_size=args.block_size, vocab_size=len(chars), n_layer=args.n_layer, n_head=args.n_head,
                    n_embd=args.n_embd)
    device = av.device(args.device) if args.device else None
    if device is not None:
        model.to(device=device)
    backend = args.backend or ("triton" if device is not None and device.type == "cuda" else "numpy")
    opt = optim.AdamW(model, lr=args.lr, weight_decay=0.01)

    def train_step(model, opt, x, y):
        loss, grads = av.value_and_grad(zoo.gpt_loss)(model, x, y)
        opt.step(grads)
        return loss

    step = av.compile(train_step, backend=backend)
    evaluate = av.compile(zoo.gpt_loss, backend=backend)
    put = (lambda a: av.tensor(a, device=device)) if device is not None else (lambda a: a)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"GPT: {n_params} parameters, vocabulary of {len(chars)} characters, {len(train)} training characters")

    start = time.perf_counter()
    recent = []
    for i in range(1, args.steps + 1):
        x, y = batches(train, args.block_size, args.batch_size, rng)
        recent.append(float(step(model, opt, put(x), put(y))))
        if i % max(args.steps // 5, 1) == 0:
            print(f"step {i}: loss {np.mean(recent[-20:]):.4f}")
    train_s = time.perf_counter() - start

    model.eval()
    val_rng = np.random.default_rng(1)
    val_loss = float(np.mean([float(evaluate(model, *map(put, batches(val, args.block_size, args.batch_size,
                                                                        val_rng)))) for _ in range(10)]))
    train_loss = float(np.mean(recent[-20:]))
    print(f"GPT: final training loss {train_loss:.4f}, validation loss {val_loss:.4f} "
          f"(uniform guessing: {np.log(len(chars)):.4f}); training {train_s:.1f}s "
          f"({args.steps} steps, the first includes compilation)")
    if args.samples:
        prompt = np.array([[stoi["\n"]]] * args.samples, np.int64)
        out = model.generate(prompt, max_new_tokens=60, temperature=0.8, top_k=10, backend=backend, rng=rng)
        print("samples:")
        for row in out:
            line = "".join(chars[t] for t in row[1:]).replace("\n", " | ")
            print(f"  {line}")
    return val_loss


if __name__ == "__main__":
    main()

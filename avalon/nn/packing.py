"""`torch.nn.utils.rnn`: padded batches of sequences of different lengths through RNN, LSTM and GRU.

torch packs the valid steps of every sequence into one interleaved tensor whose layout depends on the
lengths' values. Avalon keeps the padded (L, N, *) tensor and the lengths instead, so the lengths may
be values a compiled function receives (`src_len` from the batch): the recurrent layers run every
step and keep each sequence's state unchanged past its length (masked with `where`), which gives
torch's results: outputs are `padding_value` past each length, the final hidden state is each
sequence's own last step (its first, for the reverse direction), in the batch's order. `.data` and
`.batch_sizes` (torch's interleaved layout) are computed where the lengths are known while tracing (Python
ints, as Show, Attend and Tell's loss packs its scores); with traced lengths use `pad_packed_sequence`.
`pad_packed_sequence` pads to the longest length when the lengths are known while tracing, else to the
packed input's own length, checked when the graph runs to be the longest length (torch's `total_length=`
makes both agree whatever the lengths).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import TRACING, Tensor, _mark_literal, _python_numbers

__all__ = ["PackedSequence", "invert_permutation", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence",
           "pack_sequence", "unpack_sequence", "unpad_sequence"]


class PackedSequence:
    """A padded time-major batch and each sequence's length (see the module docstring)."""

    def __init__(self, padded: Tensor, lengths: Tensor):
        self.padded, self.lengths = padded, lengths

    def _layout(self, what: str) -> tuple[np.ndarray, np.ndarray]:
        """torch's interleaved layout, for lengths known while tracing: the sequences' order (by decreasing
        length, ties in batch order, as torch's stable sort for enforce_sorted=False; the batch's own order
        when it is sorted) and each step's batch size."""
        known = _concrete(self.lengths)
        if known is None:
            raise NotImplementedError(f"PackedSequence.{what}: torch's interleaved layout depends on the lengths' "
                                      "values, which this function receives traced; pass the lengths as Python "
                                      "ints (or use pad_packed_sequence(...))")
        order = np.argsort(-known, kind="stable")
        steps = int(known.max()) if known.size else 0
        return order, np.array([(known > t).sum() for t in range(steps)], np.int64)

    @property
    def data(self) -> Tensor:
        """torch's packed data: step 0 of every sequence, step 1 of those longer than 1, ... (in the order of
        `_layout`); needs the lengths' values (Python ints or a tensor known while tracing), as the shape does.
        Show, Attend and Tell's `pack_padded_sequence(scores, decode_lengths, batch_first=True).data`."""
        order, sizes = self._layout("data")
        n = self.padded.shape[1]
        flat = ops.reshape(self.padded, (self.padded.shape[0] * n,) + tuple(self.padded.shape[2:]))
        at = np.concatenate([t * n + order[:b] for t, b in enumerate(sizes)]) if sizes.size else np.zeros(0, np.int64)
        index = Tensor(at.astype(np.int64))
        _mark_literal(index)  # (the lengths' values are part of the signature: literal data of the program)
        return ops.take(flat, index, 0)

    @property
    def batch_sizes(self) -> Tensor:
        """How many sequences are longer than each step (an int64 tensor, as torch's)."""
        sizes = Tensor(self._layout("batch_sizes")[1])
        _mark_literal(sizes)
        return sizes

    def to(self, *args: Any, **kwargs: Any) -> PackedSequence:
        return PackedSequence(self.padded.to(*args, **kwargs), self.lengths)

    def __iter__(self):  # torch's PackedSequence is a namedtuple; code unpacks it rarely, but clearly
        raise TypeError("PackedSequence: Avalon's has no (data, batch_sizes, ...) fields to unpack; "
                        "use pad_packed_sequence(...)")


def _lengths(lengths: Any, n: int) -> Tensor:
    if isinstance(lengths, Tensor):
        t = lengths
    else:
        arr = np.asarray(lengths)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"pack_padded_sequence: lengths must be integers, got {arr.dtype}")
        t = Tensor(arr.astype(np.int64))
        if TRACING and arr.ndim and _python_numbers(lengths):  # Python ints: literal data, as torch.tensor's
            _mark_literal(t)
    if t.shape != (n,):
        raise ValueError(f"pack_padded_sequence: expected {n} lengths (one per sequence), got shape {t.shape}")
    return t


def _concrete(t: Tensor) -> np.ndarray | None:
    return None if t.is_traced else t.numpy()


def pack_padded_sequence(input: Any, lengths: Any, batch_first: bool = False,
                         enforce_sorted: bool = True) -> PackedSequence:
    """torch.nn.utils.rnn.pack_padded_sequence for a padded (L, N, *) (or (N, L, *)) batch."""
    x = input if isinstance(input, Tensor) else Tensor(input)
    if batch_first:
        x = ops.transpose(x, 0, 1)
    lens = _lengths(lengths, x.shape[1])
    known = _concrete(lens)
    if known is not None:
        if known.size and (known.min() <= 0 or known.max() > x.shape[0]):
            bad = known.min() if known.min() <= 0 else known.max()
            raise RuntimeError(f"pack_padded_sequence: length {int(bad)} is out of range for a padded input of "
                               f"{x.shape[0]} steps (lengths must be in 1..{x.shape[0]})")
        if enforce_sorted and (np.diff(known) > 0).any():
            raise RuntimeError("`lengths` array must be sorted in decreasing order when `enforce_sorted` is True. "
                               "You can pass `enforce_sorted=False` to pack_padded_sequence and/or pack_sequence "
                               "to sidestep this requirement if you do not need ONNX exportability.")
    elif lens.numel():  # traced lengths: the same checks when the graph runs (steps past the input were read)
        steps = x.shape[0]
        lens = ops.check_values(lens, ops.logical_and(ops.gt(lens, 0), ops.le(lens, steps)),
                                f"pack_padded_sequence: a length is out of range for a padded input of {steps} steps "
                                f"(lengths must be in 1..{steps})")
        if enforce_sorted and lens.shape[0] > 1:
            down = ops.concat([ops.full((1,), True, dt.bool_), ops.le(lens[1:], lens[:-1])])
            lens = ops.check_values(lens, down, "`lengths` array must be sorted in decreasing order when "
                                    "`enforce_sorted` is True. You can pass `enforce_sorted=False` to "
                                    "pack_padded_sequence and/or pack_sequence to sidestep this requirement if you "
                                    "do not need ONNX exportability.")
    return PackedSequence(x, lens)


def pad_packed_sequence(sequence: PackedSequence, batch_first: bool = False, padding_value: float = 0.0,
                        total_length: int | None = None) -> tuple[Tensor, Tensor]:
    """(padded output, lengths), padded past each length with `padding_value`."""
    if not isinstance(sequence, PackedSequence):
        raise TypeError(f"pad_packed_sequence: expected a PackedSequence, got {type(sequence).__name__}")
    x, lens = sequence.padded, sequence.lengths
    known = _concrete(lens)
    steps = x.shape[0]
    if total_length is not None:
        if known is not None and total_length < known.max():
            raise ValueError(f"Expected total_length to be at least the length of the longest sequence in input, "
                             f"but got total_length={total_length} and max sequence length being {int(known.max())}")
        if known is None and lens.numel():  # checked when the graph runs (the longer sequences were cut)
            lens = ops.check_values(lens, ops.le(lens, total_length), f"Expected total_length to be at least the "
                                    f"length of the longest sequence in input, but got total_length={total_length}")
        steps = total_length
    elif known is not None and known.size:
        steps = int(known.max())
    elif lens.numel():  # traced lengths: torch pads to the longest, a shape the trace cannot know; it is the
        # packed input's own length when a length reaches it (a batch padded to its longest), checked when the
        # graph runs instead of silently returning more steps than torch
        lens = ops.check_values(lens, ops.any(ops.eq(lens, steps)),
                                f"pad_packed_sequence: no sequence is as long as the {steps} padded steps, so torch "
                                f"would return fewer (the longest length), a shape a traced function cannot know; "
                                f"pass total_length={steps} (or pad the batch to its longest sequence)")
    if steps < x.shape[0]:
        x = x[:steps]
    elif steps > x.shape[0]:
        x = ops.pad(x, [(0, steps - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    valid = ops.lt(ops.reshape(ops.iota((steps,), 0, dt.int64), (steps, 1)), ops.reshape(lens, (1, -1)))
    valid = ops.reshape(valid, valid.shape + (1,) * (x.ndim - 2))
    x = ops.where(valid, x, ops.cast(padding_value, x.dtype) if isinstance(padding_value, Tensor) else padding_value)
    return (ops.transpose(x, 0, 1) if batch_first else x), lens


def pad_sequence(sequences: Sequence[Any], batch_first: bool = False, padding_value: float = 0.0,
                 padding_side: str = "right") -> Tensor:
    """Stack sequences of shapes (L_i, *) into (max L, N, *) (or (N, max L, *)), padded."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"Expected padding_side to be one of left or right, but got {padding_side}.")
    seqs = [s if isinstance(s, Tensor) else Tensor(s) for s in sequences]
    if not seqs:
        raise RuntimeError("received an empty list of sequences")
    longest = max(s.shape[0] for s in seqs)
    rows = []
    for s in seqs:
        gap = [(0, longest - s.shape[0])] if padding_side == "right" else [(longest - s.shape[0], 0)]
        rows.append(ops.pad(s, gap + [(0, 0)] * (s.ndim - 1), value=padding_value) if longest > s.shape[0] else s)
    return ops.stack(rows, 0 if batch_first else 1)


def pack_sequence(sequences: Sequence[Any], enforce_sorted: bool = True) -> PackedSequence:
    lengths = [int((s if isinstance(s, Tensor) else Tensor(s)).shape[0]) for s in sequences]
    return pack_padded_sequence(pad_sequence(sequences), lengths, enforce_sorted=enforce_sorted)


def unpad_sequence(padded_sequences: Any, lengths: Any, batch_first: bool = False) -> list[Tensor]:
    """The inverse of pad_sequence: each sequence cut to its length (lengths known in Python)."""
    x = padded_sequences if isinstance(padded_sequences, Tensor) else Tensor(padded_sequences)
    if not batch_first:
        x = ops.transpose(x, 0, 1)
    lens = lengths.tolist() if isinstance(lengths, Tensor) else [int(n) for n in lengths]
    return [x[i, :int(n)] for i, n in enumerate(lens)]


def unpack_sequence(packed_sequences: PackedSequence) -> list[Tensor]:
    """The inverse of pack_sequence: the list of sequences, in their original order."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)


def invert_permutation(permutation: Any) -> Tensor | None:
    """The inverse permutation (None for None), as PackedSequence keeps `unsorted_indices`."""
    if permutation is None:
        return None
    p = permutation if isinstance(permutation, Tensor) else Tensor(permutation)
    return ops.scatter(ops.zeros_like(p), 0, p, ops.arange(p.shape[0], dtype=p.dtype))

"""Data order, sharding and sequence packing for the local trainer.

One optimizer step consumes a *global batch* of ``batch_size * grad_accum`` conversations,
the same however many processes share it (as NeMo's global batch size). Which conversations
form step ``s`` is a pure function of ``(seed, s)``, so a run resumed at step ``s`` sees the
very batches an uninterrupted run would. Rank ``r`` of ``w`` trains on ``batch[r::w]``.

Packing lays a rank's share of a step into rows of at most ``max_seq_len`` tokens, several
conversations per row (as few rows as first-fit decreasing finds, their lengths balanced),
instead of padding each conversation to the longest; a micro-batch takes up to
``rows_per_batch`` of those rows. The trainer then lays a micro-batch's conversations end to
end in a single row (``build_batch(..., one_row=True)``): no padding at all, and the
boundaries go to the model as ``cu_seq_lens`` for ``segment_attention.py``, which attends
within each conversation only.
Each conversation keeps its own position ids (0, 1, 2, ... from its first token). That is
also how transformers' own attention recognises packed rows: with no 2-D attention mask and
no KV cache (``use_cache=False``, as in training), ``masking_utils`` builds a block-diagonal
causal mask from the resets, so no token attends across a boundary (Llama, Qwen2, Mistral
and the other models whose masks come from ``masking_utils``; tests/unit/test_packing.py
checks both ways on a Llama and that they agree).
Targets are shifted inside each conversation, so the last token of one conversation is never
asked to predict the first token of the next, and padding carries no target.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

IGNORE_INDEX = -100  # target value that torch's cross entropy skips


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX except on the answer tokens
    truncated: bool = False

    def targets(self) -> list[int]:
        """Next-token targets: position t predicts labels[t + 1]; the last position predicts nothing."""
        return self.labels[1:] + [IGNORE_INDEX]


# ---------------------------------------------------------------------------- data order


@functools.lru_cache(maxsize=8)
def _epoch_order(n_rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n_rows))
    random.Random(f"modelchain-data-order/{seed}/{epoch}").shuffle(order)
    return tuple(order)


def global_batch(step: int, n_rows: int, size: int, seed: int) -> list[int]:
    """Row indices of the global batch of ``step`` (0-based): a fresh permutation every epoch.

    The data is read as one endless stream of epochs; step ``s`` takes the stream's items
    ``s * size`` to ``(s + 1) * size - 1``. Nothing depends on earlier steps having run.
    """
    if n_rows < 1 or size < 1 or step < 0:
        raise ValueError(f"global_batch needs n_rows, size >= 1 and step >= 0, got {n_rows}, {size}, {step}")
    indices = []
    for position in range(step * size, (step + 1) * size):
        epoch, offset = divmod(position, n_rows)
        indices.append(_epoch_order(n_rows, seed, epoch)[offset])
    return indices


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The part of a global batch that ``rank`` trains on: every ``world_size``-th item."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return list(indices[rank::world_size])


# ---------------------------------------------------------------------------- packing


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item positions into as few rows of total length <= capacity as first-fit decreasing finds.

    The items are then spread over that many rows with the longest first, each to the
    least-filled row, because a micro-batch is as wide as its longest row: a full row
    beside a nearly empty one pads the empty one. Deterministic: ties keep the input order.
    """
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"an example of {too_long[0]} tokens does not fit a row of {capacity}")
    by_length = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for item in by_length:
        for r, free in enumerate(room):
            if lengths[item] <= free:
                rows[r].append(item)
                room[r] -= lengths[item]
                break
        else:
            rows.append([item])
            room.append(capacity - lengths[item])
    balanced: list[list[int]] = [[] for _ in rows]
    load = [0] * len(rows)
    for item in by_length:
        r = min(range(len(rows)), key=lambda r: (load[r], r))
        balanced[r].append(item)
        load[r] += lengths[item]
    return balanced if max(load, default=0) <= capacity else rows


def micro_batches(
    examples: Sequence[Example], *, packing: bool, max_seq_len: int, rows_per_batch: int
) -> list[list[list[int]]]:
    """Split one rank's share of a step into micro-batches of rows of example positions.

    With packing a row holds as many examples as fit ``max_seq_len``; without, one each.
    A micro-batch has at most ``rows_per_batch`` rows, so its size never exceeds
    ``rows_per_batch * max_seq_len`` tokens either way.
    """
    if packing:
        rows = pack([len(e.input_ids) for e in examples], max_seq_len)
    else:
        rows = [[i] for i in range(len(examples))]
    return [rows[i : i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]


def build_batch(
    examples: Sequence[Example], rows: Sequence[Sequence[int]], pad_id: int, *, one_row: bool = False
) -> dict:
    """Tensors for one micro-batch: each row the concatenation of its examples, right-padded.

    Returns ``input_ids``, ``position_ids`` (restarting at every example), ``targets``
    (shifted, IGNORE_INDEX at boundaries and on padding), ``real_tokens`` and ``slots``
    (row count x width, padding included). There is no attention mask on purpose: right
    padding never reaches a real token under a causal mask, and leaving it out is what lets
    transformers derive the per-example mask from the position ids.

    With ``one_row`` every example of every row is laid end to end in a single row, which
    needs no padding, and ``cu_seq_lens`` (``[0, l1, l1 + l2, ...]``) marks the boundaries.
    """
    import torch

    if not rows or not all(rows):
        raise ValueError("a micro-batch needs at least one row, and every row an example")
    if one_row:
        rows = [[i for row in rows for i in row]]
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    ids, positions, targets = [], [], []
    real = 0
    for row in rows:
        row_ids: list[int] = []
        row_pos: list[int] = []
        row_targets: list[int] = []
        for i in row:
            e = examples[i]
            row_ids += e.input_ids
            row_pos += range(len(e.input_ids))
            row_targets += e.targets()
        real += len(row_ids)
        pad = width - len(row_ids)
        # Padding continues the last example's positions: it sits after every real token,
        # so the causal mask already hides it, and it adds no boundary of its own.
        last = row_pos[-1] + 1
        ids.append(row_ids + [pad_id] * pad)
        positions.append(row_pos + list(range(last, last + pad)))
        targets.append(row_targets + [IGNORE_INDEX] * pad)
    batch = {
        "input_ids": torch.tensor(ids),
        "position_ids": torch.tensor(positions),
        "targets": torch.tensor(targets),
        "real_tokens": real,
        "slots": len(rows) * width,
    }
    if one_row:
        bounds = [0]
        for i in rows[0]:
            bounds.append(bounds[-1] + len(examples[i].input_ids))
        batch["cu_seq_lens"] = torch.tensor(bounds, dtype=torch.int32)
    return batch

"""Embed: chunk texts -> normalised float32 vectors, in batches, with a progress bar."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Sequence

from modelchain.core.embedder import Embedder

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def embed_chunks(chunks: Sequence[dict], embedder: Embedder) -> "np.ndarray":
    """Vectors for ``chunk["text"]`` of every chunk, row i for chunk i; shape (n, dim).

    Normalised to unit length when the embedder is (its default).

    Logs how many chunks are longer than the model reads: their tails would not count
    towards their vector, so the chunk size should be lowered.
    """
    import numpy as np
    from tqdm.auto import tqdm

    texts = [chunk["text"] for chunk in chunks]
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    limit = embedder.max_seq_length - 2  # the model adds [CLS] and [SEP]
    too_long = sum(1 for text in texts if embedder.count_tokens(text) > limit)
    if too_long:
        log.warning(
            "%d of %d chunks are longer than the %d tokens the model reads; their ends "
            "are ignored when embedding", too_long, len(texts), limit,
        )
    # Batches of similar length waste less work on padding; rows go back in chunk order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)
    # Not a TTY (a pipeline pod's log): a line every 30 s instead of a redrawn bar.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    with tqdm(total=len(texts), desc="Embedding", unit="chunk", mininterval=interval) as bar:
        for start in range(0, len(order), embedder.batch_size):
            rows = order[start : start + embedder.batch_size]
            vectors[rows] = embedder.encode([texts[i] for i in rows])
            bar.update(len(rows))
    return vectors

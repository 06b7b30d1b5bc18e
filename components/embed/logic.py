"""Embed: chunk texts -> normalised float32 vectors, in length-sorted batches, with a progress bar."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from modelchain.components.rag_changes import ChangePlan
from modelchain.core.embedder import BaseEmbedder
from modelchain.core.progress import progress_bar

if TYPE_CHECKING:
    import numpy as np
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Called after each batch with the chunk indices it covered and their vectors.
BatchCallback = Callable[[list[int], "np.ndarray"], None]


def embed_changes(
    rag: "DictConfig",
    chunks: Sequence[dict],
    quarantined: Sequence[dict] = (),
    shard: int = 0,
    shards: int = 1,
    run_id: str = "",
) -> tuple[ChangePlan, "np.ndarray"]:
    """The plan against the collection of a typed ``rag`` config, and the vectors of the
    chunks it says to embed (new and changed documents only; an empty array when none).

    ``quarantined`` (the chunk step's ``{source, reason}`` records) keep their stored rows.
    With ``shards`` > 1, ``chunks`` are those of ``shard`` and the plan covers that shard's
    stored rows only. A shard may hold no document at all, so the plan may delete every row
    of the shard; an empty corpus never gets here (discover refuses it).
    """
    import numpy as np

    from modelchain.components.rag_changes import plan_changes, read_stored, stored_in_shard
    from modelchain.components.rag_settings import ingest_lock, open_embedder, open_store

    with ingest_lock(rag, "rag_ingest embed (plan)"), open_store(rag) as store:
        # A collection that verify could not search in the configured mode: say so before any work.
        if rag.retrieval.mode != "dense" and store.exists():
            store.require_bm25(f"rag.retrieval.mode={rag.retrieval.mode}")
        stored = read_stored(store)
        if shards > 1:
            stored = stored_in_shard(stored, shard, shards)
        plan = plan_changes(store, chunks, allow_delete_all=shards > 1, stored=stored,
                            quarantined=[q["source"] for q in quarantined], run_id=run_id)
    if not plan.chunks_to_embed:
        return plan, np.zeros((0, 0), dtype=np.float32)
    return plan, embed_chunks(plan.chunks_to_embed, open_embedder(rag))


def embed_chunks(
    chunks: Sequence[dict],
    embedder: BaseEmbedder,
    on_batch: Optional[BatchCallback] = None,
    progress: bool = True,
) -> "np.ndarray":
    """Vectors for ``chunk["text"]`` of every chunk, row i for chunk i; shape (n, dim).

    Normalised to unit length when the embedder is (its default). Identical texts are
    embedded once. Texts go to the model longest first in ``embedder.batch_size`` batches,
    so a batch pads little. ``on_batch`` lets a caller write vectors while the rest are
    still being embedded.

    Logs how many chunks are longer than the model reads: their tails would not count
    towards their vector, so the chunk size should be lowered.
    """
    import numpy as np

    texts = [chunk["text"] for chunk in chunks]
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    _warn_if_too_long(texts, embedder)

    # Boilerplate repeated across documents (licence footers, navigation) is embedded once.
    rows_of: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        rows_of.setdefault(text, []).append(i)
    unique = sorted(rows_of, key=len, reverse=True)
    vectors: "np.ndarray | None" = None
    with progress_bar(len(texts), "Embedding", "chunk", progress) as bar:
        for start in range(0, len(unique), embedder.batch_size):
            batch = unique[start : start + embedder.batch_size]
            encoded = embedder.encode(batch)
            if vectors is None:
                vectors = np.empty((len(texts), encoded.shape[1]), dtype=np.float32)
            rows = [row for text in batch for row in rows_of[text]]
            vectors[rows] = np.repeat(encoded, [len(rows_of[text]) for text in batch], axis=0)
            if on_batch is not None:
                on_batch(rows, vectors[rows])
            bar.update(len(rows))
    if len(unique) < len(texts):
        log.info("%d of %d chunks repeat another chunk's text: embedded once", len(texts) - len(unique), len(texts))
    assert vectors is not None
    return vectors


def _warn_if_too_long(texts: Sequence[str], embedder: BaseEmbedder) -> None:
    if embedder.max_seq_length is None:
        return
    limit = embedder.max_seq_length - 2  # the model adds [CLS] and [SEP]
    too_long = sum(1 for text in texts if embedder.count_tokens(text) > limit)
    if too_long:
        log.warning(
            "%d of %d chunks are longer than the %d tokens the model reads; their ends "
            "are ignored when embedding", too_long, len(texts), limit,
        )

"""Upsert: bring the collection in step with the current chunks, incrementally.

The plan (what to delete, what to write, what is unchanged) comes from
components/rag_changes.py; this carries it out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from modelchain.components.rag_changes import (
    ChangePlan,
    change_report,
    check_plan_current,
    chunk_rows,
    plan_changes,
)
from modelchain.core.vectorstore import MilvusStore

if TYPE_CHECKING:
    import numpy as np
    from omegaconf import DictConfig


def write_changes(rag: "DictConfig", plan: ChangePlan, vectors: "np.ndarray") -> dict:
    """Apply ``plan`` to the collection of a typed ``rag`` config; the counts of ``apply_changes``."""
    from modelchain.components.rag_settings import ingest_lock, open_store

    with ingest_lock(rag, "rag_ingest upsert"), open_store(rag) as store:
        # Under the lock: a plan that another run overtook between embed and now is refused.
        check_plan_current(store, plan)
        store.next_write_token = plan.plan_id or None
        return apply_changes(store, plan, vectors)


def apply_changes(store: MilvusStore, plan: ChangePlan, vectors: "np.ndarray") -> dict:
    """Carry out ``plan``; ``vectors`` row i belongs to ``plan.chunks_to_embed[i]``.

    Returns counts: ``inserted`` and ``deleted`` rows, ``written_documents`` (new or
    changed), ``removed_documents``, ``skipped_documents`` (unchanged), ``total_rows``,
    and the documents and chunks added, updated, unchanged, deleted and quarantined
    (``rag_changes.change_report``).
    """
    if len(vectors) != len(plan.chunks_to_embed):
        raise ValueError(
            f"{len(vectors)} vectors for {len(plan.chunks_to_embed)} chunks to write"
        )
    store.ensure_collection()
    deleted = store.delete_sources(plan.sources_to_delete)
    inserted = store.upsert(chunk_rows(plan.chunks_to_embed, vectors))
    written = {chunk["source"] for chunk in plan.chunks_to_embed}
    total_rows = store.count()
    return {
        "inserted": inserted,
        "deleted": deleted,
        "written_documents": len(written),
        "removed_documents": len(set(plan.sources_to_delete) - written),
        "skipped_documents": len(plan.unchanged_sources),
        "total_rows": total_rows,
        **change_report(plan, deleted, total_rows)[0],
    }


def upsert_chunks(store: MilvusStore, chunks: Sequence[dict], vectors: "np.ndarray") -> dict:
    """Plan and apply in one go, when every chunk has been embedded (row i for chunk i).

    To embed only new and changed documents, call ``plan_changes``, embed
    ``plan.chunks_to_embed``, then ``apply_changes``.
    """
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) != len(chunks):
        raise ValueError(f"{len(vectors)} vectors for {len(chunks)} chunks")
    plan = plan_changes(store, chunks)
    row_of = {chunk["id"]: i for i, chunk in enumerate(chunks)}
    selected = vectors[[row_of[chunk["id"]] for chunk in plan.chunks_to_embed]]
    return apply_changes(store, plan, selected)

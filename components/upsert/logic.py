"""Upsert: bring the Milvus collection in step with the current chunks, incrementally.

A document whose rows in the collection already have its ``doc_hash`` and exactly its
chunk ids is left alone (and need not be embedded again). A changed document loses all
its old rows and gets its new ones; a document that is gone loses its rows.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Iterable, NamedTuple, Optional, Sequence

from modelchain.core.vectorstore import MilvusStore

if TYPE_CHECKING:
    import numpy as np

CHUNK_FIELDS = ("id", "text", "source", "heading_path", "position", "content_hash", "doc_hash")


def row_metadata(chunk: dict) -> dict:
    """The JSON ``metadata`` a chunk's row keeps: its URI, format and document metadata."""
    return {
        "uri": chunk.get("uri", chunk["source"]),
        "format": chunk.get("format", ""),
        "document": chunk.get("metadata") or {},
    }


def chunk_rows(chunks: Sequence[dict], vectors: Sequence) -> list[dict]:
    """Milvus rows of ``chunks``, vector i for chunk i."""
    return [
        {**{field: chunk[field] for field in CHUNK_FIELDS}, "metadata": row_metadata(chunk), "vector": vector}
        for chunk, vector in zip(chunks, vectors)
    ]


class ChangePlan(NamedTuple):
    chunks_to_embed: list[dict]  # chunks of new and changed documents, in input order
    sources_to_delete: list[str]  # changed and removed documents: all their rows go first
    unchanged_sources: list[str]


class StoredRows(NamedTuple):
    ids: dict[str, set[str]]  # source -> chunk ids in the collection
    hashes: dict[str, set[str]]  # source -> doc_hash values of its rows (one, unless half-written)


def read_stored(store: MilvusStore) -> StoredRows:
    """The ids and doc hashes of every row, by source, in one pass over the collection."""
    ids: dict[str, set[str]] = defaultdict(set)
    hashes: dict[str, set[str]] = defaultdict(set)
    if store.exists():
        for row in store.iter_rows(("source", "doc_hash")):
            ids[row["source"]].add(row["id"])
            hashes[row["source"]].add(row["doc_hash"])
    return StoredRows(dict(ids), dict(hashes))


def plan_changes(
    store: MilvusStore,
    chunks: Sequence[dict],
    allow_delete_all: bool = False,
    keep_sources: Iterable[str] = (),
    stored: Optional[StoredRows] = None,
) -> ChangePlan:
    """Compare ``chunks`` (the whole current corpus) with the collection.

    Comparing chunk ids as well as ``doc_hash`` means a change of chunk size, or a run
    that stopped half-way through a document, also rewrites that document. An empty
    ``chunks`` would delete the whole collection, which is refused unless
    ``allow_delete_all`` (an empty corpus is more often a wrong source folder).
    ``keep_sources`` are documents known to be unchanged and not chunked again: their
    rows stay. ``stored`` saves reading the collection when the caller already has.
    """
    current_ids: dict[str, set[str]] = defaultdict(set)
    current_hash: dict[str, str] = {}
    for chunk in chunks:
        source = chunk["source"]
        if chunk["id"] in current_ids[source]:
            raise ValueError(f"duplicate chunk id {chunk['id']} in {source!r}")
        current_ids[source].add(chunk["id"])
        if current_hash.setdefault(source, chunk["doc_hash"]) != chunk["doc_hash"]:
            raise ValueError(f"chunks of {source!r} carry different doc_hash values")

    stored_ids, stored_hashes = stored if stored is not None else read_stored(store)
    keep = set(keep_sources) & set(stored_ids)
    if not chunks and not keep and stored_ids and not allow_delete_all:
        raise ValueError(
            f"no chunks to ingest: this would delete all {len(stored_ids)} documents of "
            f"collection {store.collection!r}; check the source folder"
        )

    unchanged = keep | {
        source
        for source, ids in current_ids.items()
        if stored_hashes.get(source) == {current_hash[source]} and stored_ids.get(source) == ids
    }
    changed = {source for source in current_ids if source in stored_ids} - unchanged
    removed = set(stored_ids) - set(current_ids) - keep
    return ChangePlan(
        chunks_to_embed=[c for c in chunks if c["source"] not in unchanged],
        sources_to_delete=sorted(changed | removed),
        unchanged_sources=sorted(unchanged),
    )


def apply_changes(store: MilvusStore, plan: ChangePlan, vectors: "np.ndarray") -> dict:
    """Carry out ``plan``; ``vectors`` row i belongs to ``plan.chunks_to_embed[i]``.

    Returns counts: ``inserted`` and ``deleted`` rows, ``written_documents`` (new or
    changed), ``removed_documents``, ``skipped_documents`` (unchanged), ``total_rows``.
    """
    if len(vectors) != len(plan.chunks_to_embed):
        raise ValueError(
            f"{len(vectors)} vectors for {len(plan.chunks_to_embed)} chunks to write"
        )
    store.ensure_collection()
    deleted = store.delete_sources(plan.sources_to_delete)
    inserted = store.upsert(chunk_rows(plan.chunks_to_embed, vectors))
    written = {chunk["source"] for chunk in plan.chunks_to_embed}
    return {
        "inserted": inserted,
        "deleted": deleted,
        "written_documents": len(written),
        "removed_documents": len(set(plan.sources_to_delete) - written),
        "skipped_documents": len(plan.unchanged_sources),
        "total_rows": store.count(),
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

"""What a change to the collection is: the current chunks against the stored rows, by document.

Shared by the embed step (which embeds only ``plan.chunks_to_embed``), the upsert step
(which applies the plan) and the in-process runner (pipelines/inprocess_ingest.py). A
document whose rows in the collection already have its ``doc_hash`` and exactly its chunk
ids is left alone (and need not be embedded again). A changed document loses all its old
rows and gets its new ones; a document that is gone loses its rows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
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


# The embed step's output folder, which the upsert step reads: the plan and its vectors.
def save_plan(folder: str | Path, plan: ChangePlan, vectors: "np.ndarray") -> None:
    """Write ``plan`` and ``vectors`` (row i for ``plan.chunks_to_embed[i]``) as one folder, atomically."""
    import numpy as np

    from modelchain.core.io import atomic_dir, atomic_write_json, atomic_write_jsonl

    with atomic_dir(folder) as out:
        atomic_write_jsonl(Path(out) / "chunks.jsonl", plan.chunks_to_embed)
        atomic_write_json(Path(out) / "plan.json", {"sources_to_delete": plan.sources_to_delete, "unchanged_sources": plan.unchanged_sources})
        np.save(Path(out) / "vectors.npy", np.asarray(vectors, dtype=np.float32))


def load_plan(folder: str | Path) -> tuple[ChangePlan, "np.ndarray"]:
    """The plan and vectors ``save_plan`` wrote."""
    import numpy as np

    from modelchain.core.io import read_jsonl

    folder = Path(folder)
    plan_file = json.loads((folder / "plan.json").read_text())
    plan = ChangePlan(read_jsonl(folder / "chunks.jsonl"), plan_file["sources_to_delete"], plan_file["unchanged_sources"])
    vectors = np.load(folder / "vectors.npy")
    if not plan.chunks_to_embed:
        vectors = vectors.reshape(0, 0)
    return plan, vectors

"""What a change to the collection is: the current chunks against the stored rows, by document.

Shared by the embed step (which embeds only ``plan.chunks_to_embed``), the upsert step
(which applies the plan) and the in-process runner (pipelines/inprocess_ingest.py). A
document whose rows in the collection already have its ``doc_hash`` and exactly its chunk
ids is left alone (and need not be embedded again). A changed document loses all its old
rows and gets its new ones; a document that is gone loses its rows.

No row is lost to a failed read: a document the chunk step quarantined (unreadable,
unparsable, changed while listed) is passed as ``quarantined``; its rows stay as they are
and the next run tries it again. Only documents absent from discover's listing (which
fails as a whole rather than come back partial) are deleted.

Shards (``rag.shards``): each shard is a stable hash range of document keys (``shard_of``)
and plans, embeds and writes only its documents, against only its documents' stored rows,
so shards write disjoint rows and any number of them end where one run would.
"""

from __future__ import annotations

import hashlib
import json
import uuid
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
    # For the run's report (``change_report``): what happens to each document.
    added_sources: list[str] = []
    updated_sources: list[str] = []
    removed_sources: list[str] = []
    quarantined_sources: list[str] = []  # unreadable this run: their stored rows are kept
    unchanged_chunks: int = 0  # rows of the unchanged and quarantined documents, left as they are
    # The collection's write token when planned: applying refuses a plan that another
    # ingest has overtaken (MilvusStore.write_token).
    store_token: str = ""
    # Written as the collection's token when this plan is applied, so a retried upsert of
    # the same plan is not taken for another run's write.
    plan_id: str = ""


class StoredRows(NamedTuple):
    ids: dict[str, set[str]]  # source -> chunk ids in the collection
    hashes: dict[str, set[str]]  # source -> doc_hash values of its rows (one, unless half-written)


def shard_of(source: str, shards: int) -> int:
    """The shard (0..shards-1) of a document key: its place in the sha256 hash range, so a
    document stays in its shard from run to run and shards are near equal in size."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") * shards >> 64


def in_shard(records: Iterable[dict], shard: int, shards: int) -> list[dict]:
    """The records (discover's, chunk's) whose ``source`` belongs to ``shard`` of ``shards``."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in [0, {shards}), got {shard}")
    return [record for record in records if shard_of(record["source"], shards) == shard]


def stored_in_shard(stored: StoredRows, shard: int, shards: int) -> StoredRows:
    """The rows of ``stored`` whose documents belong to ``shard`` (a shard plans only those)."""
    mine = {source for source in stored.ids if shard_of(source, shards) == shard}
    return StoredRows({s: stored.ids[s] for s in mine}, {s: stored.hashes[s] for s in mine if s in stored.hashes})


def run_write_token(run_id: str, store_token: str) -> str:
    """The token a plan writes: its run and the token the run's shards planned against.

    Every shard of a run that planned against the same collection state writes the same
    token, so a shard whose siblings wrote first still finds its plan current; a write by
    another run in between changes the base, and is caught.
    """
    prefix = f"{run_id}@"
    base = store_token[len(prefix):] if store_token.startswith(prefix) else hashlib.sha256(store_token.encode()).hexdigest()[:16]
    return prefix + base


class PlanOvertaken(RuntimeError):
    """Another ingest wrote the collection after this plan was made."""


def check_plan_current(store: MilvusStore, plan: ChangePlan) -> None:
    """Raise ``PlanOvertaken`` if anyone wrote the collection since ``plan`` was made."""
    token = store.write_token()
    if token != plan.store_token and not (plan.plan_id and token == plan.plan_id):
        raise PlanOvertaken(
            f"Milvus collection {store.collection!r} at {store.uri} was written by another ingest after this "
            f"run planned its changes; nothing written: run again to plan against what it holds now"
        )


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
    quarantined: Iterable[str] = (),
    run_id: str = "",
) -> ChangePlan:
    """Compare ``chunks`` (the whole current corpus) with the collection.

    Comparing chunk ids as well as ``doc_hash`` means a change of chunk size, or a run
    that stopped half-way through a document, also rewrites that document. An empty
    ``chunks`` would delete the whole collection, which is refused unless
    ``allow_delete_all`` (an empty corpus is more often a wrong source folder).
    ``keep_sources`` are documents known to be unchanged and not chunked again: their
    rows stay. ``quarantined`` are documents that could not be read this run: their rows
    stay too, and they count as neither unchanged nor removed. ``stored`` saves reading
    the collection when the caller already has (a shard passes only its own rows).
    ``run_id`` names the run whose shards write together (``run_write_token``); "" is a
    run of its own.
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
    held = set(quarantined) - set(current_ids)
    keep = set(keep_sources) & set(stored_ids)
    if not chunks and not keep and not held and stored_ids and not allow_delete_all:
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
    removed = set(stored_ids) - set(current_ids) - keep - held
    store_token = store.write_token()
    return ChangePlan(
        chunks_to_embed=[c for c in chunks if c["source"] not in unchanged],
        sources_to_delete=sorted(changed | removed),
        unchanged_sources=sorted(unchanged),
        added_sources=sorted(set(current_ids) - set(stored_ids)),
        updated_sources=sorted(changed),
        removed_sources=sorted(removed),
        quarantined_sources=sorted(held),
        unchanged_chunks=sum(len(stored_ids.get(source, ())) for source in unchanged | held),
        store_token=store_token,
        plan_id=run_write_token(run_id or uuid.uuid4().hex, store_token),
    )


def change_report(plan: ChangePlan, deleted_chunks: int, total_rows: int) -> tuple[dict, str]:
    """``(counts, markdown)`` of an applied plan: documents and chunks added, updated,
    unchanged, deleted and quarantined (the shape of LangChain's ``index()`` result).

    ``deleted_chunks`` counts every row removed, the old rows of updated documents included.
    """
    chunks_by_source: dict[str, int] = defaultdict(int)
    for chunk in plan.chunks_to_embed:
        chunks_by_source[chunk["source"]] += 1
    counts = {
        "added_documents": len(plan.added_sources),
        "updated_documents": len(plan.updated_sources),
        "unchanged_documents": len(plan.unchanged_sources),
        "deleted_documents": len(plan.removed_sources),
        "quarantined_documents": len(plan.quarantined_sources),
        "added_chunks": sum(chunks_by_source[s] for s in plan.added_sources),
        "updated_chunks": sum(chunks_by_source[s] for s in plan.updated_sources),
        "unchanged_chunks": plan.unchanged_chunks,
        "deleted_chunks": deleted_chunks,
        "total_chunks": total_rows,
    }
    rows = [
        ("added", plan.added_sources, counts["added_documents"], counts["added_chunks"]),
        ("updated", plan.updated_sources, counts["updated_documents"], counts["updated_chunks"]),
        ("unchanged", [], counts["unchanged_documents"], counts["unchanged_chunks"]),
        ("deleted", plan.removed_sources, counts["deleted_documents"], counts["deleted_chunks"]),
        ("quarantined (rows kept, retried next run)", plan.quarantined_sources,
         counts["quarantined_documents"], "-"),
    ]
    lines = ["# RAG ingest: changes", "", "| documents | count | chunks | which |", "| --- | --- | --- | --- |"]
    for name, sources, n_docs, n_chunks in rows:
        shown = ", ".join(f"`{s}`" for s in sources[:5]) + (f" and {len(sources) - 5} more" if len(sources) > 5 else "")
        lines.append(f"| {name} | {n_docs} | {n_chunks} | {shown} |")
    lines += ["", f"The collection holds {total_rows} chunks."]
    return counts, "\n".join(lines) + "\n"


def change_line(counts: dict) -> str:
    """One log line of ``change_report``'s counts."""
    return (
        "documents: {added_documents} added, {updated_documents} updated, {unchanged_documents} unchanged, "
        "{deleted_documents} deleted, {quarantined_documents} quarantined; chunks: {added_chunks} added, "
        "{updated_chunks} updated, {unchanged_chunks} unchanged, {deleted_chunks} deleted; "
        "{total_chunks} in the collection"
    ).format(**counts)


# The embed step's output folder, which the upsert step reads: the plan and its vectors.
def save_plan(folder: str | Path, plan: ChangePlan, vectors: "np.ndarray") -> None:
    """Write ``plan`` and ``vectors`` (row i for ``plan.chunks_to_embed[i]``) as one folder, atomically."""
    import numpy as np

    from modelchain.core.io import atomic_dir, atomic_write_json, atomic_write_jsonl

    with atomic_dir(folder) as out:
        atomic_write_jsonl(Path(out) / "chunks.jsonl", plan.chunks_to_embed)
        atomic_write_json(Path(out) / "plan.json", {k: v for k, v in plan._asdict().items() if k != "chunks_to_embed"})
        np.save(Path(out) / "vectors.npy", np.asarray(vectors, dtype=np.float32))


def load_plan(folder: str | Path) -> tuple[ChangePlan, "np.ndarray"]:
    """The plan and vectors ``save_plan`` wrote."""
    import numpy as np

    from modelchain.core.io import read_jsonl

    folder = Path(folder)
    plan_file = json.loads((folder / "plan.json").read_text())
    plan = ChangePlan(read_jsonl(folder / "chunks.jsonl"), **plan_file)
    vectors = np.load(folder / "vectors.npy")
    if not plan.chunks_to_embed:
        vectors = vectors.reshape(0, 0)
    return plan, vectors

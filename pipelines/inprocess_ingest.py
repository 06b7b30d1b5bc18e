"""The rag_ingest steps in one process: discover -> chunk -> plan -> embed, writing as it goes.

The same logic the pipeline's components run, without KFP between the steps: for a laptop,
the benchmarks and the interruption test. Vectors are upserted in slices while the rest are
still being embedded, so a run that is killed keeps what it wrote and the next run embeds
only what is missing (a half-written document is rewritten whole).

    python -m modelchain.pipelines.inprocess_ingest SOURCE MILVUS_URI COLLECTION [--runtime onnx-int8] [--backend lite]

It composes the steps' logic like the rag_ingest pipeline composes their components, so it
lives with the pipelines.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Sequence

from modelchain.components.chunk.logic import chunk_documents, chunking_signature
from modelchain.components.discover.logic import DEFAULT_INCLUDE, discover, no_documents_message
from modelchain.components.embed.logic import embed_chunks
from modelchain.components.rag_changes import (
    StoredRows,
    change_line,
    change_report,
    chunk_rows,
    plan_changes,
    read_stored,
)
from modelchain.core.embedder import BaseEmbedder
from modelchain.core.ingest_lock import IngestBusy
from modelchain.core.vectorstore import VECTOR_STORES, MilvusStore

log = logging.getLogger(__name__)


def ingest(
    source_uri: str,
    store: MilvusStore,
    embedder: BaseEmbedder,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = (),
    chunk_tokens: int = 256,
    overlap_tokens: int = 32,
    write_rows: int = 512,
    progress: bool = True,
    lock_wait_s: float = 0.0,
    lock_lease_s: float = 120.0,
) -> dict[str, Any]:
    """Bring ``store`` in step with the documents under ``source_uri``; returns counts and timings.

    Holds the collection's ingest lock throughout: another run into the same collection
    makes this one wait up to ``lock_wait_s``, then stop (``IngestBusy``) with nothing written.
    """
    with store.ingest_lock(f"ingest of {source_uri}", lock_wait_s, lock_lease_s):
        return _ingest(source_uri, store, embedder, include, exclude, chunk_tokens, overlap_tokens, write_rows,
                       progress)


def _ingest(
    source_uri: str,
    store: MilvusStore,
    embedder: BaseEmbedder,
    include: Sequence[str],
    exclude: Sequence[str],
    chunk_tokens: int,
    overlap_tokens: int,
    write_rows: int,
    progress: bool,
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    documents = discover(source_uri, include, exclude, progress=progress)
    if not documents:
        raise ValueError(no_documents_message(source_uri, include, exclude))
    timings["discover_s"] = time.perf_counter() - start

    # A document whose bytes match its rows need not be chunked again, but only if the
    # last run finished (no half-written document) with the same chunking.
    signature = chunking_signature(embedder.model_dir / "tokenizer.json", chunk_tokens, overlap_tokens)
    exists = store.exists()
    stored = read_stored(store) if exists else StoredRows({}, {})
    keep: set[str] = set()
    if exists and store.ingest_state() == signature:
        keep = {d["source"] for d in documents if d.get("sha256") and stored.hashes.get(d["source"]) == {d["sha256"]}}
    mark = time.perf_counter()
    chunks, quarantined = chunk_documents(
        [d for d in documents if d["source"] not in keep], embedder.tokenizer, chunk_tokens, overlap_tokens,
        progress=progress,
    )
    timings["chunk_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    # A quarantined document (unreadable this run) keeps its rows and is tried again next run.
    plan = plan_changes(store, chunks, keep_sources=keep, stored=stored, quarantined=[q["source"] for q in quarantined])
    store.ensure_collection()
    deleted = store.delete_sources(plan.sources_to_delete)
    pending: list[tuple[int, Any]] = []
    written_rows = 0

    def write(rows: list[int], vectors: Any) -> None:
        pending.extend(zip(rows, vectors))
        if len(pending) >= write_rows:
            flush()

    def flush() -> None:
        nonlocal written_rows
        if pending:
            store.upsert(chunk_rows([plan.chunks_to_embed[i] for i, _ in pending], [v for _, v in pending]))
            written_rows += len(pending)
            pending.clear()
            log.info("wrote %d of %d chunks", written_rows, len(plan.chunks_to_embed))

    if plan.chunks_to_embed:
        embed_chunks(plan.chunks_to_embed, embedder, on_batch=write, progress=progress)
        flush()
    store.set_ingest_state(signature)  # last: everything above is written
    changes, _ = change_report(plan, deleted, store.count())
    log.info("%s", change_line(changes))
    timings["embed_write_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - start
    written = {chunk["source"] for chunk in plan.chunks_to_embed}
    return {
        "documents": len(documents),
        "chunks": len(chunks) + sum(len(stored.ids[source]) for source in keep),
        "chunked_documents": len(documents) - len(keep),
        "quarantined": quarantined,
        "inserted": len(plan.chunks_to_embed),
        "deleted": deleted,
        "written_documents": len(written),
        "removed_documents": len(set(plan.sources_to_delete) - written),
        "skipped_documents": len(plan.unchanged_sources),
        "total_rows": changes["total_chunks"],
        "changes": changes,
        **timings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ingest a folder or S3 prefix into a Milvus collection, here.")
    parser.add_argument("source", help="a folder or s3://bucket/prefix/")
    parser.add_argument("milvus_uri", help="a Milvus Lite path (ending .db) or a server URI")
    parser.add_argument("--backend", default="lite", choices=list(VECTOR_STORES),
                        help="the vector store at MILVUS_URI (a server's token from MILVUS_TOKEN)")
    parser.add_argument("collection")
    parser.add_argument("--runtime", default="onnx-int8")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--include", nargs="*", default=list(DEFAULT_INCLUDE))
    parser.add_argument("--write-rows", type=int, default=512)
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="while another ingest writes the collection, wait this long for it (default: stop at once)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from modelchain.core.embedder import make_embedder

    embedder = make_embedder(args.runtime, batch_size=args.batch_size)
    store_class = VECTOR_STORES[args.backend]
    with store_class(args.milvus_uri, args.collection, embedder.dim, token=store_class.token_from_env()) as store:
        try:
            stats = ingest(
                args.source, store, embedder, args.include, (), args.chunk_tokens, args.overlap, args.write_rows,
                lock_wait_s=args.wait,
            )
        except IngestBusy as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

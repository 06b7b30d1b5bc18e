"""Verify: the collection holds exactly the current chunks, and retrieval finds them.

Checks after every ingest, each reported with what it compared:

- counts: the rows and documents in Milvus match the chunks this run produced (plus the
  kept rows of quarantined documents, which a failed read must not delete), no stored
  document has an old version, and no key is stored twice;
- self-retrieval: sampled chunks, searched with their own text, find their document in
  the top k (works for any corpus, with no questions written for it);
- smoke questions, when the config has some: recall@k over the questions whose expected
  document is in this corpus; a question about a document that is not is skipped.

The result is a metrics dict, a Markdown report and, when it fails, one line per failure.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from modelchain.core.retriever import Retriever
from modelchain.core.vectorstore import MilvusStore

if TYPE_CHECKING:
    from omegaconf import DictConfig

_SHOWN_SOURCES = 10  # longer source lists are cut in the report


def verify_ingest(rag: "DictConfig", chunks: Sequence[dict], quarantined: Sequence[dict] = ()) -> dict[str, Any]:
    """``verify`` the collection of a typed ``rag`` config with its ``rag.verify`` settings.

    ``quarantined`` (the chunk step's ``{source, reason}`` records) are documents that could
    not be read this run: their stored rows were kept, so they count as expected.
    """
    from modelchain.components.rag_settings import ingest_lock, open_embedder, open_store

    checks = rag.verify
    questions = [{"question": q.question, "source": q.source} for q in checks.questions]
    with ingest_lock(rag, "rag_ingest verify"), open_store(rag) as store:
        result = verify(
            store, Retriever.from_config(rag, store, open_embedder(rag)), chunks, questions, k=checks.k,
            min_recall=checks.min_recall, kept_sources=[q["source"] for q in quarantined],
            self_check_samples=checks.self_check_samples, min_self_recall=checks.min_self_recall,
        )
        # Only a verified index is put behind the alias that retrievers read.
        if result["passed"]:
            previous = store.publish()
            if previous:
                result["report"] += (f"\n\nAlias {store.alias!r} moved from {previous!r} to {store.collection!r} "
                                     f"(the old index is kept; drop it when no longer needed).\n")
        return result


def verify_step(
    rag_json: str,
    chunk_files: Sequence[str],
    quarantine_files: Sequence[str],
    report: Any,
    checks: Any,
    shard_changes: Sequence[dict] = (),
) -> dict[str, Any]:
    """What the verify components do: ``verify_ingest`` over the chunk step outputs (one file, or
    one per shard), the report written to ``report.path`` and each figure logged with
    ``checks.log_metric``; RuntimeError naming the failed checks.

    ``shard_changes`` are the change counts of each shard's upsert: their totals are printed
    and added to the report, so a sharded run has one change report like an unsharded one.
    """
    from pathlib import Path

    from modelchain.components.rag_changes import change_line
    from modelchain.core.config import load_group
    from modelchain.core.io import read_jsonl

    chunks = [chunk for path in chunk_files for chunk in read_jsonl(path)]
    quarantined = [item for path in quarantine_files for item in read_jsonl(path)]
    result = verify_ingest(load_group("rag", rag_json), chunks, quarantined)
    if shard_changes:
        totals = {key: sum(int(changes.get(key, 0)) for changes in shard_changes) for key in SHARD_CHANGE_KEYS}
        totals["total_chunks"] = result["row_count"]
        line = change_line(totals)
        print(f"{len(shard_changes)} shards: {line}")
        result["report"] += f"\n\n## Changes over {len(shard_changes)} shards\n\n{line}\n"
    Path(report.path).write_text(result["report"])
    for key, value in result.items():
        if isinstance(value, (int, float)):
            checks.log_metric(key, float(value))
    print(result["report"])
    if not result["passed"]:
        raise RuntimeError("verify failed: " + "; ".join(result["failures"]))
    return result


# change_report's counts that add up over shards (the collection's total is verify's own count).
SHARD_CHANGE_KEYS = (
    "added_documents", "updated_documents", "unchanged_documents", "deleted_documents", "quarantined_documents",
    "added_chunks", "updated_chunks", "unchanged_chunks", "deleted_chunks",
)


def verify(
    store: MilvusStore,
    retriever: Retriever,
    chunks: Sequence[dict],
    smoke_questions: Sequence[dict],
    k: int = 5,
    min_recall: float = 0.6,
    kept_sources: Iterable[str] = (),
    self_check_samples: int = 20,
    min_self_recall: float = 0.8,
) -> dict[str, Any]:
    """Check ``store`` against ``chunks`` and run ``smoke_questions`` ({question, source}).

    A question is a hit when any of its top-``k`` chunks comes from its ``source``; a
    question whose ``source`` is not in the corpus is skipped. A sampled chunk passes
    self-retrieval when its own text finds its document (or the same text stored under
    another document) in the top ``k``. ``kept_sources`` are documents whose stored rows
    stay as they are (quarantined this run). ``passed`` needs every check to hold;
    ``failures`` says which did not, one line each. The dict's ``report`` is Markdown.
    """
    kept = set(kept_sources)
    expected_ids = {chunk["id"] for chunk in chunks}  # distinct: a repeated key is its own failure
    expected_hashes = {chunk["source"]: chunk["doc_hash"] for chunk in chunks}
    # A key twice among the chunks means one chunk overwrote another; one the store counts
    # more often than it lists means rows written around its primary key.
    duplicates = sorted(key for key, n in Counter(chunk["id"] for chunk in chunks).items() if n > 1)
    rows = list(store.iter_rows(("source", "doc_hash")))
    counted_rows = store.count()
    stored_hashes: dict[str, str] = {}
    kept_rows = 0
    for row in rows:
        source, doc_hash = row["source"], row["doc_hash"]
        stored_hashes[source] = doc_hash if stored_hashes.get(source, doc_hash) == doc_hash else ""
        kept_rows += source in kept and source not in expected_hashes
    row_count = len(rows)
    uncounted = max(0, counted_rows - len({row["id"] for row in rows}))
    missing = sorted(set(expected_hashes) - set(stored_hashes))
    unexpected = sorted(set(stored_hashes) - set(expected_hashes) - kept)
    stale = sorted(
        source
        for source in set(expected_hashes) & set(stored_hashes)
        if stored_hashes[source] != expected_hashes[source]
    )
    corpus_sources = set(expected_hashes) | kept

    questions = []
    answerable = [q for q in smoke_questions if q["source"] in corpus_sources]
    results = iter(retriever.retrieve_many([q["question"] for q in answerable], k)) if answerable else iter(())
    for q in smoke_questions:
        if q["source"] not in corpus_sources:
            questions.append({"question": q["question"], "source": q["source"], "rank": None,
                              "top_source": None, "known_source": False, "skipped": True})
            continue
        sources = [hit.source for hit in next(results)]
        rank = sources.index(q["source"]) + 1 if q["source"] in sources else None
        questions.append(
            {
                "question": q["question"],
                "source": q["source"],
                "rank": rank,
                "top_source": sources[0] if sources else None,
                "known_source": True,
                "skipped": False,
            }
        )
    asked = [q for q in questions if not q["skipped"]]
    n_hit = sum(1 for q in asked if q["rank"] is not None)
    recall = n_hit / len(asked) if asked else None
    mrr = sum(1 / q["rank"] for q in asked if q["rank"]) / len(asked) if asked else None

    samples = _sample(chunks, self_check_samples)
    self_missed: list[str] = []
    if samples:
        for chunk, hits in zip(samples, retriever.retrieve_many([c["text"] for c in samples], k)):
            if not any(hit.source == chunk["source"] or hit.text == chunk["text"] for hit in hits):
                self_missed.append(chunk["source"])
    self_recall = (len(samples) - len(self_missed)) / len(samples) if samples else None

    expected_rows = len(expected_ids) + kept_rows
    rows_match = row_count == expected_rows and not duplicates and not uncounted
    documents_match = not missing and not unexpected
    recall_ok = recall is None or recall >= min_recall
    self_ok = self_recall is None or self_recall >= min_self_recall
    failures = []
    if row_count != expected_rows:
        failures.append(f"the collection holds {row_count} rows, the corpus {expected_rows} chunks")
    if duplicates:
        failures.append(f"{len(duplicates)} chunk keys occur more than once in the corpus (e.g. {duplicates[0]})")
    if uncounted:
        failures.append(f"the collection counts {counted_rows} rows but lists {row_count} distinct keys")
    if missing:
        failures.append(f"{len(missing)} documents of the corpus are not in the collection (e.g. {missing[0]})")
    if unexpected:
        failures.append(f"{len(unexpected)} documents in the collection are not in the corpus (e.g. {unexpected[0]})")
    if stale:
        failures.append(f"{len(stale)} documents are stored with an old version (e.g. {stale[0]})")
    if not self_ok:
        failures.append(
            f"self-retrieval: {len(self_missed)} of {len(samples)} sampled chunks did not find their "
            f"document in the top {k} (e.g. {self_missed[0]}); needs >= {min_self_recall}"
        )
    if not recall_ok:
        failures.append(
            f"smoke questions: recall@{k} {recall:.3f} over {len(asked)} questions, needs >= {min_recall}"
        )
    result: dict[str, Any] = {
        "passed": not failures,
        "failures": failures,
        "row_count": row_count,
        "expected_rows": expected_rows,
        "rows_match": rows_match,
        "duplicate_keys": len(duplicates) + uncounted,
        "document_count": len(stored_hashes),
        "expected_documents": len(expected_hashes) + len(kept & set(stored_hashes) - set(expected_hashes)),
        "documents_match": documents_match,
        "missing_sources": missing,
        "unexpected_sources": unexpected,
        "stale_sources": stale,
        "kept_sources": sorted(kept),
        "k": k,
        "self_samples": len(samples),
        "self_recall": self_recall,
        "min_self_recall": min_self_recall,
        "n_questions": len(asked),
        "n_skipped_questions": len(questions) - len(asked),
        "recall_at_k": recall,
        "mrr": mrr,
        "min_recall": min_recall,
        "questions": questions,
    }
    result["report"] = render_report(result)
    return result


def _sample(chunks: Sequence[dict], n: int) -> list[dict]:
    """Up to ``n`` chunks spread evenly over the corpus (the same ones for the same chunks)."""
    if n <= 0 or not chunks:
        return []
    ordered = sorted(chunks, key=lambda c: (c["source"], c["position"]))
    if n >= len(ordered):
        return ordered
    return [ordered[i * len(ordered) // n] for i in range(n)]


def render_report(result: dict[str, Any]) -> str:
    """The Markdown report of a ``verify`` result."""

    def mark(ok: bool) -> str:
        return "ok" if ok else "**FAIL**"

    k = result["k"]
    lines = [
        f"# RAG ingest verification: {'passed' if result['passed'] else 'FAILED'}",
        "",
        *[f"- {failure}" for failure in result["failures"]],
        *([""] if result["failures"] else []),
        "| check | value | expected | result |",
        "| --- | --- | --- | --- |",
        f"| rows | {result['row_count']} | {result['expected_rows']} "
        f"| {mark(result['row_count'] == result['expected_rows'])} |",
        f"| duplicate keys | {result['duplicate_keys']} | 0 | {mark(not result['duplicate_keys'])} |",
        f"| documents | {result['document_count']} | {result['expected_documents']} "
        f"| {mark(result['documents_match'])} |",
        f"| stale documents | {len(result['stale_sources'])} | 0 "
        f"| {mark(not result['stale_sources'])} |",
    ]
    if result["self_recall"] is None:
        lines.append(f"| self-retrieval@{k} | no chunks | >= {result['min_self_recall']} | not checked |")
    else:
        ok = result["self_recall"] >= result["min_self_recall"]
        lines.append(
            f"| self-retrieval@{k} ({result['self_samples']} sampled chunks) | {result['self_recall']:.3f} "
            f"| >= {result['min_self_recall']} | {mark(ok)} |"
        )
    if result["recall_at_k"] is None:
        why = "no smoke questions" if not result["n_skipped_questions"] else "no question about this corpus"
        lines.append(f"| recall@{k} | {why} | >= {result['min_recall']} | not checked |")
    else:
        ok = result["recall_at_k"] >= result["min_recall"]
        lines.append(
            f"| recall@{k} ({result['n_questions']} questions) | {result['recall_at_k']:.3f} "
            f"| >= {result['min_recall']} | {mark(ok)} |"
        )
        lines.append(f"| MRR | {result['mrr']:.3f} | | |")
    if result["n_skipped_questions"]:
        lines.append(
            f"| skipped questions | {result['n_skipped_questions']} | | their document is not in this corpus |"
        )
    for key, title in [
        ("missing_sources", "In the corpus but not in the collection"),
        ("unexpected_sources", "In the collection but not in the corpus"),
        ("stale_sources", "Stored with an old version"),
        ("kept_sources", "Quarantined this run, their rows kept"),
    ]:
        if result[key]:
            shown = ", ".join(f"`{s}`" for s in result[key][:_SHOWN_SOURCES])
            more = len(result[key]) - _SHOWN_SOURCES
            lines += ["", f"{title}: {shown}" + (f" and {more} more" if more > 0 else "")]
    if result["questions"]:
        lines += [
            "",
            f"## Smoke questions (top {k})",
            "",
            "| question | expected source | rank | top hit |",
            "| --- | --- | --- | --- |",
        ]
        for q in result["questions"]:
            expected = f"`{q['source']}`" + ("" if q["known_source"] else " (not in the corpus)")
            rank = "skipped" if q["skipped"] else str(q["rank"]) if q["rank"] else "miss"
            top = f"`{q['top_source']}`" if q["top_source"] else "-"
            question = q["question"].replace("|", "\\|")
            lines.append(f"| {question} | {expected} | {rank} | {top} |")
    return "\n".join(lines) + "\n"

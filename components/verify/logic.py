"""Verify: the collection holds exactly the current chunks, and retrieval finds them.

Two checks after every ingest: the rows and documents in Milvus match the chunks this
run produced, and a handful of smoke questions retrieve their expected document in the
top k (recall@k). The result is a metrics dict and a Markdown report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from modelchain.core.retriever import Retriever
from modelchain.core.vectorstore import MilvusStore

if TYPE_CHECKING:
    from omegaconf import DictConfig

_SHOWN_SOURCES = 10  # longer source lists are cut in the report


def verify_ingest(rag: "DictConfig", chunks: Sequence[dict]) -> dict[str, Any]:
    """``verify`` the collection of a typed ``rag`` config with its ``rag.verify`` questions, k and bound."""
    from modelchain.components.rag_settings import open_embedder, open_store

    checks = rag.verify
    questions = [{"question": q.question, "source": q.source} for q in checks.questions]
    with open_store(rag) as store:
        return verify(store, Retriever(store, open_embedder(rag)), chunks, questions, k=checks.k, min_recall=checks.min_recall)


def verify(
    store: MilvusStore,
    retriever: Retriever,
    chunks: Sequence[dict],
    smoke_questions: Sequence[dict],
    k: int = 5,
    min_recall: float = 0.6,
) -> dict[str, Any]:
    """Check ``store`` against ``chunks`` and run ``smoke_questions`` ({question, source}).

    A question is a hit when any of its top-``k`` chunks comes from its ``source``.
    ``passed`` needs equal row and document counts, no stale document and, when there are
    questions, recall@k of at least ``min_recall``. The dict's ``report`` is Markdown.
    """
    expected_ids = {chunk["id"] for chunk in chunks}
    expected_hashes = {chunk["source"]: chunk["doc_hash"] for chunk in chunks}
    row_count = store.count()
    stored_hashes = store.doc_hashes()
    missing = sorted(set(expected_hashes) - set(stored_hashes))
    unexpected = sorted(set(stored_hashes) - set(expected_hashes))
    stale = sorted(
        source
        for source in set(expected_hashes) & set(stored_hashes)
        if stored_hashes[source] != expected_hashes[source]
    )

    questions = []
    if smoke_questions:
        results = retriever.retrieve_many([q["question"] for q in smoke_questions], k)
        for q, hits in zip(smoke_questions, results):
            sources = [hit.source for hit in hits]
            rank = sources.index(q["source"]) + 1 if q["source"] in sources else None
            questions.append(
                {
                    "question": q["question"],
                    "source": q["source"],
                    "rank": rank,
                    "top_source": sources[0] if sources else None,
                    "known_source": q["source"] in expected_hashes,
                }
            )
    n_hit = sum(1 for q in questions if q["rank"] is not None)
    recall = n_hit / len(questions) if questions else None
    mrr = None
    if questions:
        mrr = sum(1 / q["rank"] for q in questions if q["rank"]) / len(questions)

    rows_match = row_count == len(expected_ids)
    documents_match = not missing and not unexpected
    recall_ok = recall is None or recall >= min_recall
    result: dict[str, Any] = {
        "passed": rows_match and documents_match and not stale and recall_ok,
        "row_count": row_count,
        "expected_rows": len(expected_ids),
        "rows_match": rows_match,
        "document_count": len(stored_hashes),
        "expected_documents": len(expected_hashes),
        "documents_match": documents_match,
        "missing_sources": missing,
        "unexpected_sources": unexpected,
        "stale_sources": stale,
        "k": k,
        "n_questions": len(questions),
        "recall_at_k": recall,
        "mrr": mrr,
        "min_recall": min_recall,
        "questions": questions,
    }
    result["report"] = render_report(result)
    return result


def render_report(result: dict[str, Any]) -> str:
    """The Markdown report of a ``verify`` result."""

    def mark(ok: bool) -> str:
        return "ok" if ok else "**FAIL**"

    k = result["k"]
    lines = [
        f"# RAG ingest verification: {'passed' if result['passed'] else 'FAILED'}",
        "",
        "| check | value | expected | result |",
        "| --- | --- | --- | --- |",
        f"| rows | {result['row_count']} | {result['expected_rows']} "
        f"| {mark(result['rows_match'])} |",
        f"| documents | {result['document_count']} | {result['expected_documents']} "
        f"| {mark(result['documents_match'])} |",
        f"| stale documents | {len(result['stale_sources'])} | 0 "
        f"| {mark(not result['stale_sources'])} |",
    ]
    if result["recall_at_k"] is None:
        lines.append(
            f"| recall@{k} | no smoke questions | >= {result['min_recall']} | not checked |"
        )
    else:
        ok = result["recall_at_k"] >= result["min_recall"]
        lines.append(
            f"| recall@{k} | {result['recall_at_k']:.3f} | >= {result['min_recall']} | {mark(ok)} |"
        )
        lines.append(f"| MRR | {result['mrr']:.3f} | | |")
    for key, title in [
        ("missing_sources", "In the corpus but not in the collection"),
        ("unexpected_sources", "In the collection but not in the corpus"),
        ("stale_sources", "Stored with an old version"),
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
            rank = str(q["rank"]) if q["rank"] else "miss"
            top = f"`{q['top_source']}`" if q["top_source"] else "-"
            question = q["question"].replace("|", "\\|")
            lines.append(f"| {question} | {expected} | {rank} | {top} |")
    return "\n".join(lines) + "\n"

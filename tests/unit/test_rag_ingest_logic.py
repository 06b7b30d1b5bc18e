"""The rag_ingest steps end to end on a small corpus: real model, real Milvus Lite."""

import hashlib

import numpy as np
import pytest

from modelchain.components.chunk.logic import chunk_documents
from modelchain.components.discover.logic import discover
from modelchain.components.embed.logic import embed_chunks
from modelchain.components.rag_changes import plan_changes
from modelchain.components.upsert.logic import apply_changes, upsert_chunks
from modelchain.components.verify.logic import verify
from modelchain.core import vectorstore
from modelchain.core.embedder import Embedder
from modelchain.core.retriever import Hit, Retriever
from modelchain.core.vectorstore import MilvusLiteStore

CORPUS = {
    "install.md": """# Installation

## Requirements

You need Python 3.11 and about two gigabytes of disk space for the virtual environment.

## Quick start

Create a virtual environment, then run `pip install modelchain` and `modelchain --help`.
""",
    "gpu/training.md": """# Fine-tuning with LoRA

LoRA trains small low-rank adapter matrices instead of all model weights.

## Hyper-parameters

A LoRA rank of 8 or 16 works for most tasks; use a learning rate of 2e-4 with warmup.
""",
    "serving.md": """# Serving

## Canary rollout

A new adapter first receives 10 percent of the traffic, then 25, 50 and 100 percent while
error rate and latency stay within their limits; otherwise traffic goes back to stable.
""",
    "billing.md": """# Billing

Invoices are sent on the first day of each month by email.

## Refunds

A refund can be requested within 30 days of payment from the billing page.
""",
    "security.md": """# Security

API tokens must be rotated every 90 days and are stored only in Kubernetes secrets.
""",
    "notes/faq.txt": """Frequently asked questions

To reset your password, click "Forgot password" on the sign-in page and follow the
link sent to your email. After five failed sign-ins an account is locked for an hour.
""",
}

QUESTIONS = [
    {"question": "How do I reset my password?", "source": "notes/faq.txt"},
    {"question": "What LoRA rank should I use?", "source": "gpu/training.md"},
    {"question": "How is traffic shifted to a new adapter?", "source": "serving.md"},
    {"question": "Can I get my money back after paying?", "source": "billing.md"},
    {"question": "Which Python version do I need?", "source": "install.md"},
    {"question": "How often must API tokens be rotated?", "source": "security.md"},
]


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "docs"
    for name, text in CORPUS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def store(tmp_path, embedder):
    with MilvusLiteStore(str(tmp_path / "milvus" / "rag.db"), "docs", embedder.dim) as s:
        yield s


def ingest(root, store, embedder, chunk_tokens=64, overlap_tokens=8):
    """discover -> chunk -> plan -> embed (changed documents only) -> apply."""
    chunks, quarantined = chunk_documents(
        discover(str(root)), embedder.tokenizer, chunk_tokens, overlap_tokens
    )
    assert quarantined == []
    plan = plan_changes(store, chunks)
    result = apply_changes(store, plan, embed_chunks(plan.chunks_to_embed, embedder))
    return chunks, plan, result


def snapshot(store):
    rows = store.iter_rows(("source", "ingested_at"))
    return {r["id"]: (r["source"], r["ingested_at"]) for r in rows}


# ------------------------------------------------------------------------------ discover


def test_discover_lists_matching_files_sorted_with_hashes(corpus):
    (corpus / "drafts").mkdir()
    (corpus / "drafts" / "wip.md").write_text("# WIP")
    (corpus / ".git").mkdir()
    (corpus / ".git" / "HEAD.md").write_text("hidden")
    (corpus / "image.png").write_bytes(b"\x89PNG")
    records = discover(str(corpus), exclude=["drafts/**"])
    assert [r["source"] for r in records] == sorted(CORPUS)
    first = records[0]
    data = (corpus / first["source"]).read_bytes()
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    assert first["bytes"] == len(data) and first["path"] == str(corpus / first["source"])
    assert [r["source"] for r in discover(str(corpus), include=["*.md"])] == [
        "billing.md", "install.md", "security.md", "serving.md"
    ]


def test_discover_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        discover(str(tmp_path / "no-such-folder"))


# ------------------------------------------------------------------------------ embed


def test_embed_chunks_keeps_chunk_order_and_normalises(embedder):
    chunks = [{"text": t} for t in ["short", "a much longer sentence about serving models", "x"]]
    vectors = embed_chunks(chunks, embedder)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    single = embedder.encode(["a much longer sentence about serving models"])[0]
    assert float(vectors[1] @ single) == pytest.approx(1.0, abs=1e-4)
    assert embed_chunks([], embedder).shape == (0, 384)


# ------------------------------------------------------------------------------ upsert


def test_incremental_runs_touch_exactly_the_changed_documents(corpus, store, embedder, monkeypatch):
    monkeypatch.setattr(vectorstore, "_now", lambda: 1000)
    chunks, plan, result = ingest(corpus, store, embedder)
    assert result["inserted"] == len(chunks) == result["total_rows"] == store.count()
    assert result["deleted"] == 0 and result["written_documents"] == len(CORPUS)
    first = snapshot(store)

    # Nothing changed: nothing to embed, nothing written or deleted.
    monkeypatch.setattr(vectorstore, "_now", lambda: 2000)
    _, plan, result = ingest(corpus, store, embedder)
    assert plan.chunks_to_embed == [] and plan.sources_to_delete == []
    assert plan.unchanged_sources == sorted(CORPUS)
    assert (result["inserted"], result["deleted"], result["skipped_documents"]) == (0, 0, 6)
    assert snapshot(store) == first

    # One document edited, one deleted, one added.
    monkeypatch.setattr(vectorstore, "_now", lambda: 3000)
    (corpus / "billing.md").write_text(CORPUS["billing.md"] + "\n## Taxes\n\nPrices exclude VAT.\n")
    (corpus / "security.md").unlink()
    (corpus / "new.md").write_text("# New\n\nA brand new page about the release calendar.\n")
    chunks, plan, result = ingest(corpus, store, embedder)
    assert {c["source"] for c in plan.chunks_to_embed} == {"billing.md", "new.md"}
    assert plan.sources_to_delete == ["billing.md", "security.md"]
    old_billing = [i for i, (s, _) in first.items() if s == "billing.md"]
    old_security = [i for i, (s, _) in first.items() if s == "security.md"]
    assert result["deleted"] == len(old_billing) + len(old_security)
    assert result["inserted"] == len(plan.chunks_to_embed)
    assert (result["written_documents"], result["removed_documents"]) == (2, 1)

    after = snapshot(store)
    untouched = {i: v for i, v in first.items() if v[0] not in ("billing.md", "security.md")}
    assert {i: v for i, v in after.items() if v[1] == 1000} == untouched
    assert {i for i, v in after.items() if v[1] == 3000} == {c["id"] for c in plan.chunks_to_embed}
    assert set(after) == {c["id"] for c in chunks} and len(after) == store.count()


def test_a_new_chunk_size_rewrites_documents_with_the_same_bytes(corpus, store, embedder):
    ingest(corpus, store, embedder, chunk_tokens=64)
    chunks, _ = chunk_documents(discover(str(corpus)), embedder.tokenizer, 16, 4)
    plan = plan_changes(store, chunks)
    # Documents that now split differently are rewritten, though their doc_hash is the same.
    assert "install.md" in plan.sources_to_delete
    assert {c["source"] for c in plan.chunks_to_embed} == set(plan.sources_to_delete)


def test_upsert_chunks_in_one_go_and_its_guards(corpus, store, embedder):
    chunks, _ = chunk_documents(discover(str(corpus)), embedder.tokenizer, 64, 8)
    vectors = embed_chunks(chunks, embedder)
    with pytest.raises(ValueError, match="vectors for"):
        upsert_chunks(store, chunks, vectors[:-1])
    assert upsert_chunks(store, chunks, vectors)["inserted"] == len(chunks)
    again = upsert_chunks(store, chunks, vectors)
    assert (again["inserted"], again["deleted"], again["skipped_documents"]) == (0, 0, len(CORPUS))
    with pytest.raises(ValueError, match="would delete all 6 documents"):
        plan_changes(store, [])
    assert plan_changes(store, [], allow_delete_all=True).sources_to_delete == sorted(CORPUS)


# ------------------------------------------------------------------------------ verify + retriever


def test_verify_passes_with_full_recall_on_the_smoke_questions(corpus, store, embedder):
    chunks, _, _ = ingest(corpus, store, embedder)
    result = verify(store, Retriever(store, embedder), chunks, QUESTIONS, k=3, min_recall=1.0)
    assert result["passed"], result["report"]
    assert result["recall_at_k"] == 1.0 and result["n_questions"] == 6
    assert result["rows_match"] and result["documents_match"]
    assert result["report"].startswith("# RAG ingest verification: passed")


def test_verify_fails_on_misses_and_on_a_collection_out_of_step(corpus, store, embedder):
    chunks, _, _ = ingest(corpus, store, embedder)
    retriever = Retriever(store, embedder)
    wrong = [{"question": "How do I reset my password?", "source": "billing.md"}] + QUESTIONS[1:]
    result = verify(store, retriever, chunks, wrong, k=1, min_recall=1.0)
    assert not result["passed"] and result["recall_at_k"] == pytest.approx(5 / 6)
    assert result["questions"][0]["rank"] is None and "| miss |" in result["report"]

    extra = {**chunks[0], "id": "0" * 64, "source": "missing.md"}
    result = verify(store, retriever, chunks + [extra], [], k=3)
    assert not result["passed"] and not result["rows_match"]
    assert result["missing_sources"] == ["missing.md"] and result["recall_at_k"] is None

    stale = [{**c, "doc_hash": "f" * 64} if c["source"] == "serving.md" else c for c in chunks]
    result = verify(store, retriever, stale, [], k=3)
    assert not result["passed"] and result["stale_sources"] == ["serving.md"]


def rag_config(uri, collection):
    """The typed rag group of a local run over ``uri``, with the fp32 torch embedder of these tests."""
    from modelchain.core.config import compose

    return compose("rag_ingest", [f"rag.milvus.uri={uri}", f"rag.milvus.collection={collection}",
                                  "rag.embedding.runtime=torch"]).rag


def test_retriever_opened_from_the_rag_config_reads_an_ingested_collection(corpus, tmp_path, embedder):
    uri = str(tmp_path / "milvus" / "rag.db")
    with MilvusLiteStore(uri, "docs", embedder.dim) as store:
        ingest(corpus, store, embedder)
    with Retriever.open(rag_config(uri, "docs")) as retriever:
        hits = retriever.retrieve("How do I reset my password?", k=4)
        assert len(hits) == 4 and all(isinstance(h, Hit) for h in hits)
        assert hits[0].source == "notes/faq.txt" and "reset your password" in hits[0].text
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert retriever.retrieve_many([], k=2) == []
    with pytest.raises(ValueError, match="'absent' does not exist"):
        with Retriever.open(rag_config(uri, "absent")) as retriever:
            retriever.retrieve("anything")


# ------------------------------------------------------------------------------ the steps over the typed rag group


def test_the_steps_run_from_the_typed_rag_group_as_the_components_call_them(corpus, tmp_path):
    """discover -> chunk -> embed -> (save/load the embed output) -> upsert -> verify, each
    given the rag group rebuilt by load_group, the run-time source_uri only where it is read."""
    import json

    from modelchain.components.chunk.logic import chunk_corpus
    from modelchain.components.discover.logic import discover_corpus
    from modelchain.components.embed.logic import embed_changes
    from modelchain.components.rag_changes import load_plan, save_plan
    from modelchain.components.upsert.logic import write_changes
    from modelchain.components.verify.logic import verify_ingest
    from omegaconf.errors import MissingMandatoryValue

    from modelchain.core.config import compose, group_json, load_group

    cfg = compose("rag_ingest", [
        f"rag.milvus.uri={tmp_path / 'milvus.db'}", "rag.milvus.collection=typed", "rag.embedding.runtime=torch",
        "rag.source.include=[**/*.md,**/*.txt]", "rag.chunk.tokens=64", "rag.chunk.overlap=8",
        "rag.verify.k=3", "rag.verify.min_recall=1.0",
    ])
    baked = json.loads(group_json(cfg, "rag"))
    baked["verify"]["questions"] = QUESTIONS
    baked = json.dumps(baked)
    documents = discover_corpus(load_group("rag", baked, source_uri=str(corpus)).source, progress=False)
    assert [d["source"] for d in documents] == sorted(CORPUS)
    rag = load_group("rag", baked)  # the steps after discover are not given the corpus URI
    with pytest.raises(MissingMandatoryValue, match="source.uri"):
        discover_corpus(rag.source)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no documents under"):
        discover_corpus(load_group("rag", baked, source_uri=str(tmp_path / "empty")).source, progress=False)

    chunks, quarantined = chunk_corpus(rag, documents, progress=False)
    assert quarantined == [] and chunks and all(c["doc_hash"] for c in chunks)
    plan, vectors = embed_changes(rag, chunks)
    assert len(plan.chunks_to_embed) == len(chunks) == len(vectors)
    save_plan(tmp_path / "embeddings", plan, vectors)
    plan, vectors = load_plan(tmp_path / "embeddings")
    counts = write_changes(rag, plan, vectors)
    assert counts["inserted"] == counts["total_rows"] == len(chunks)
    result = verify_ingest(rag, chunks)
    assert result["passed"] and result["recall_at_k"] == 1.0 and result["k"] == 3, result["report"]

    # A second run over the same corpus embeds and writes nothing.
    plan, vectors = embed_changes(rag, chunks)
    assert plan.chunks_to_embed == [] and vectors.shape == (0, 0)
    save_plan(tmp_path / "again", plan, vectors)
    counts = write_changes(rag, *load_plan(tmp_path / "again"))
    assert (counts["inserted"], counts["deleted"], counts["skipped_documents"]) == (0, 0, len(CORPUS))

"""The one-process ingest: incremental runs, and when documents may skip chunking."""

import hashlib

import numpy as np
import pytest

from modelchain.pipelines.inprocess_ingest import ingest
from modelchain.core.embedder import BaseEmbedder
from modelchain.core.vectorstore import MilvusLiteStore

DOCS = {
    f"topic{i}.md": f"# Topic {i}\n\nParagraph about subject number {i}.\n\n## Details\n\nMore words on {i}.\n"
    for i in range(6)
}


class HashEmbedder(BaseEmbedder):
    """Deterministic vectors from a text's hash, with the real tokenizer: fast and model-free."""

    runtime = "hash"

    @property
    def dim(self) -> int:
        return 8

    def encode(self, texts, show_progress_bar=False):
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:32], dtype=np.uint8)[:8] for t in texts]
        return self._normalized(np.array(rows, dtype=np.float32).reshape(len(texts), 8) + 1)


@pytest.fixture
def corpus(tmp_path):
    for name, text in DOCS.items():
        (tmp_path / "docs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "docs" / name).write_text(text)
    return tmp_path / "docs"


@pytest.fixture
def store(tmp_path):
    with MilvusLiteStore(str(tmp_path / "m.db"), "docs", 8) as s:
        yield s


def run(corpus, store, **kwargs):
    return ingest(str(corpus), store, HashEmbedder(), ["*.md"], (), progress=False, write_rows=3, **kwargs)


def test_an_unchanged_corpus_is_neither_chunked_nor_embedded_again(corpus, store):
    first = run(corpus, store)
    assert (first["documents"], first["chunked_documents"], first["written_documents"]) == (6, 6, 6)
    assert first["inserted"] == first["chunks"] == first["total_rows"] == store.count()
    assert store.ingest_state()
    again = run(corpus, store)
    assert (again["chunked_documents"], again["inserted"], again["deleted"]) == (0, 0, 0)
    assert again["chunks"] == first["chunks"] and again["skipped_documents"] == 6


def test_only_changed_documents_are_chunked(corpus, store):
    run(corpus, store)
    (corpus / "topic1.md").write_text(DOCS["topic1.md"] + "\n## New\n\nAdded text.\n")
    (corpus / "topic2.md").unlink()
    result = run(corpus, store)
    assert (result["chunked_documents"], result["written_documents"], result["removed_documents"]) == (1, 1, 1)
    assert set(store.doc_hashes()) == set(DOCS) - {"topic2.md"}


def test_any_other_write_or_new_chunking_makes_the_next_run_compare_every_chunk(corpus, store):
    run(corpus, store)
    # A write from elsewhere (the pipeline's upsert step, a run killed half-way) clears the state.
    victim = next(store.iter_rows(("source",)))
    store.client.delete(store.collection, ids=[victim["id"]])  # a row lost without the state knowing
    store.delete_sources(["not-there.md"])
    assert store.ingest_state() == ""
    result = run(corpus, store)
    assert result["chunked_documents"] == 6 and result["written_documents"] == 1  # the damaged one, rewritten
    assert store.ingest_state()
    # Another chunk size is another signature: everything is chunked again, and rewritten.
    result = run(corpus, store, chunk_tokens=8, overlap_tokens=2)
    assert result["chunked_documents"] == 6 and result["written_documents"] == 6


def test_the_state_is_cleared_by_the_first_write_and_set_by_a_finished_ingest(tmp_path):
    with MilvusLiteStore(str(tmp_path / "s.db"), "c", 8) as store:
        store.ensure_collection()
        assert store.ingest_state() == ""
        assert store.set_ingest_state("abc") and store.ingest_state() == "abc"
        row = {"id": "a", "vector": np.ones(8, np.float32), "text": "t", "source": "s", "heading_path": "",
               "position": 0, "content_hash": "c", "doc_hash": "d"}
        store.upsert([row])
        assert store.ingest_state() == ""
        store.set_ingest_state("abc")
        store.upsert([])  # nothing written: the state stays
        assert store.ingest_state() == "abc"
        store.upsert([row])
        assert store.ingest_state() == ""

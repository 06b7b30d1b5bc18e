"""Reindex without downtime: a change of chunking (or embedding) builds a new index behind the alias
that retrievers read, and the alias moves to it in one step once verify passes. Real model, real
Milvus Lite."""

import pytest

from modelchain.components.chunk.logic import chunk_corpus
from modelchain.components.discover.logic import discover_corpus
from modelchain.components.embed.logic import embed_changes
from modelchain.components.upsert.logic import write_changes
from modelchain.components.verify.logic import verify_ingest
from modelchain.core.config import compose
from modelchain.core.retriever import Retriever
from modelchain.core.vectorstore import MilvusLiteStore, open_index, open_store

from tests.unit.test_rag_ingest_logic import corpus  # noqa: F401 - the fixture


def rag_config(tmp_path, corpus_dir, *overrides):
    return compose("rag_ingest", [
        f"rag.milvus.uri={tmp_path / 'milvus.db'}", "rag.milvus.collection=docs", "rag.embedding.runtime=torch",
        f"rag.source.uri={corpus_dir}", "rag.source.include=[**/*.md,**/*.txt]", "rag.verify.k=3", *overrides,
    ]).rag


def build(rag):
    """discover -> chunk -> embed -> upsert, as the steps do; the chunks."""
    chunks, _ = chunk_corpus(rag, discover_corpus(rag.source, progress=False), progress=False)
    write_changes(rag, *embed_changes(rag, chunks))
    return chunks


def alias_rows(rag):
    with open_store(rag) as store:  # what a retriever reads: the alias
        return store.count()


def test_a_new_chunking_is_built_behind_the_alias_and_served_once_verified(corpus, tmp_path):  # noqa: F811
    old = rag_config(tmp_path, corpus, "rag.chunk.tokens=64", "rag.chunk.overlap=8")
    old_chunks = build(old)
    old_index = open_index(old).collection
    assert old_index.startswith("docs__") and alias_rows(old) == len(old_chunks)  # the first index is served at once
    assert verify_ingest(old, old_chunks)["passed"]

    new = rag_config(tmp_path, corpus, "rag.chunk.tokens=32", "rag.chunk.overlap=4")
    new_chunks = build(new)
    new_index = open_index(new)
    assert new_index.collection != old_index and len(new_chunks) != len(old_chunks)
    # Built, not yet verified: readers still get the old index, whole.
    assert new_index.alias_target() == old_index and alias_rows(new) == len(old_chunks)
    with Retriever.open(new) as retriever:
        assert retriever.retrieve("How do I reset my password?", 1)[0].source == "notes/faq.txt"

    result = verify_ingest(new, new_chunks)
    assert result["passed"], result["report"]
    assert f"Alias 'docs' moved from '{old_index}' to '{new_index.collection}'" in result["report"]
    assert alias_rows(new) == len(new_chunks)
    with MilvusLiteStore(str(tmp_path / "milvus.db"), "docs", 384) as by_alias:  # the name users know
        assert by_alias.count() == len(new_chunks) and set(by_alias.doc_hashes()) == {c["source"] for c in new_chunks}
    with MilvusLiteStore(str(tmp_path / "milvus.db"), old_index, 384) as kept:
        assert kept.count() == len(old_chunks)  # the old index stays until someone drops it
    # A second run of the new settings writes in place and leaves the alias where it is.
    assert build(new) == new_chunks and verify_ingest(new, new_chunks)["passed"]
    assert open_index(new).alias_target() == new_index.collection

    # Querying with another embedding than the one that wrote the index is refused.
    other = rag_config(tmp_path, corpus, "rag.chunk.tokens=32", "rag.chunk.overlap=4", "rag.embedding.runtime=onnx")
    with open_store(other) as store:
        with pytest.raises(ValueError, match=r"holds vectors of embedding .*runtime torch/float32.* but "
                                             r"rag.embedding is .*runtime onnx, .* cannot be compared"):
            Retriever.from_config(other, store, None)


def test_a_collection_written_before_aliases_is_written_in_place(corpus, tmp_path):  # noqa: F811
    rag = rag_config(tmp_path, corpus, "rag.chunk.tokens=64", "rag.chunk.overlap=8")
    with MilvusLiteStore(str(tmp_path / "milvus.db"), "docs", 384) as legacy:
        legacy.ensure_collection()  # a real collection under the configured name
    chunks = build(rag)
    index = open_index(rag)
    assert index.collection == "docs" and index.alias is None
    assert alias_rows(rag) == len(chunks) and verify_ingest(rag, chunks)["passed"]

"""Retrieval modes on a real Milvus Lite: dense, BM25 full text, hybrid (RRF and weighted fusion),
a collection written before the BM25 field, and the rag.retrieval config checks."""

import numpy as np
import pytest

from modelchain.core.config import ConfigError, compose
from modelchain.core.retriever import Retriever, RetrievalSettings
from modelchain.core.vectorstore import FULLTEXT_FIELD, SCALAR_FIELDS, VECTOR_FIELD, MilvusLiteStore, fulltext

DIM = 4


class AxisEmbedder:
    """Maps each known question to a fixed unit vector, so the dense side's ranking is set by the test."""

    dim = DIM

    def __init__(self, vectors):
        self.vectors = vectors

    def encode(self, texts):
        return np.asarray([self.vectors[t] for t in texts], dtype=np.float32)


def row(source, text, vector, heading="", title=None):
    return {
        "id": source, "vector": np.asarray(vector, dtype=np.float32), "text": text, "source": source,
        "heading_path": heading, "position": 0, "content_hash": source, "doc_hash": source,
        "metadata": {"uri": source, "format": "markdown", "document": {"title": title} if title else {}},
    }


ROWS = [
    # The dense side points at a.md for the question; BM25 at b.md (its rare words).
    row("a.md", "General notes about deployments and rollouts.", [1, 0, 0, 0]),
    row("b.md", "Set the kettle thermostat with the zorbulator dial.", [0, 1, 0, 0], heading="Kitchen"),
    row("c.md", "Unrelated text on gardening.", [0, 0, 1, 0]),
    row("d.md", "Nothing to see here either.", [0, 0, 0, 1], title="Lighthouse keeping"),
]
QUESTION = "how do I turn the zorbulator dial"
EMBEDDER = AxisEmbedder({QUESTION: [0.9, 0.1, 0.3, 0.0], "lighthouse": [0.0, 0.0, 1.0, 0.0]})


@pytest.fixture
def store(tmp_path):
    with MilvusLiteStore(str(tmp_path / "r.db"), "chunks", DIM) as s:
        s.ensure_collection()
        s.upsert(ROWS)
        yield s


def sources(retriever, question, k):
    return [h.source for h in retriever.retrieve(question, k)]


def test_each_mode_ranks_by_its_own_signal(store):
    dense = Retriever(store, EMBEDDER)
    assert dense.mode == "dense" and sources(dense, QUESTION, 2) == ["a.md", "c.md"]
    bm25 = Retriever(store, None, settings=RetrievalSettings("bm25"))
    assert sources(bm25, QUESTION, 1) == ["b.md"]
    # The document title and heading path are indexed for BM25 with the text.
    assert sources(bm25, "lighthouse", 1) == ["d.md"] and sources(bm25, "kitchen", 1) == ["b.md"]
    hybrid = Retriever(store, EMBEDDER, settings=RetrievalSettings("hybrid", "rrf"))
    top = sources(hybrid, QUESTION, 2)
    assert set(top) == {"a.md", "b.md"}  # the best of each side, fused
    hits = hybrid.retrieve(QUESTION, 4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_weighted_fusion_follows_its_weights(store):
    only_dense = Retriever(store, EMBEDDER, settings=RetrievalSettings("hybrid", "weighted", dense_weight=1.0,
                                                                       bm25_weight=0.0))
    only_bm25 = Retriever(store, EMBEDDER, settings=RetrievalSettings("hybrid", "weighted", dense_weight=0.0,
                                                                      bm25_weight=1.0))
    assert sources(only_dense, QUESTION, 1) == ["a.md"]
    assert sources(only_bm25, QUESTION, 1) == ["b.md"]


def test_many_questions_in_one_call_keep_their_order(store):
    hybrid = Retriever(store, EMBEDDER, settings=RetrievalSettings("hybrid"))
    alone = [hybrid.retrieve(q, 1)[0].source for q in (QUESTION, "lighthouse")]
    many = hybrid.retrieve_many([QUESTION, "lighthouse"] * 60, 1)  # more than one request's worth
    assert [hits[0].source for hits in many] == alone * 60


def test_fulltext_holds_title_headings_and_text_within_the_field_limit():
    assert fulltext(row("x.md", "body", [0] * 4, heading="A > B", title="T")) == "T A > B\nbody"
    assert fulltext(row("x.md", "body", [0] * 4)) == "body"
    long = fulltext(row("x.md", "é" * 32767, [0] * 4, title="t" * 10))
    assert len(long.encode("utf-8")) <= 65535


def legacy_collection(uri, name):
    """A collection with the schema of the releases before full-text search (no BM25 field)."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    for field, (type_name, max_length) in SCALAR_FIELDS.items():
        kwargs = {"is_primary": True} if field == "id" else {}
        if max_length is not None:
            kwargs["max_length"] = max_length
        schema.add_field(field, getattr(DataType, type_name), **kwargs)
        if field == "id":
            schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=DIM)
    index = MilvusClient.prepare_index_params()
    index.add_index(field_name=VECTOR_FIELD, index_type="AUTOINDEX", metric_type="COSINE")
    client.create_collection(name, schema=schema, consistency_level="Strong")
    client.create_index(name, index, sync=False)
    client.close()


def test_a_collection_written_before_bm25_serves_dense_and_says_to_reindex(tmp_path):
    uri = str(tmp_path / "old.db")
    legacy_collection(uri, "old")
    with MilvusLiteStore(uri, "old", DIM) as store:
        assert store.has_bm25 is False
        store.upsert(ROWS)  # writes keep working, without the full-text field
        assert FULLTEXT_FIELD not in {f["name"] for f in store.client.describe_collection("old")["fields"]}
        assert sources(Retriever(store, EMBEDDER), QUESTION, 1) == ["a.md"]
        for settings in (RetrievalSettings("bm25"), RetrievalSettings("hybrid")):
            with pytest.raises(ValueError, match=r"'old' .* has no BM25 full-text field .* reindex it .* "
                                                 r"rag\.retrieval\.mode=dense"):
                Retriever(store, EMBEDDER, settings=settings).retrieve(QUESTION)


def test_an_ingest_into_a_collection_without_bm25_stops_before_embedding_unless_dense(tmp_path, modelchain_home):
    from modelchain.components.embed.logic import embed_changes

    uri = str(tmp_path / "old.db")
    legacy_collection(uri, "old")
    chunks = [{**r, "metadata": {}} for r in ROWS]
    rag = compose("rag_ingest", [f"rag.milvus.uri={uri}", "rag.milvus.collection=old", f"rag.embedding.dim={DIM}"]).rag
    with pytest.raises(ValueError, match=r"has no BM25 full-text field .* rag\.retrieval\.mode=hybrid cannot search"):
        embed_changes(rag, chunks)
    with MilvusLiteStore(uri, "old", DIM) as store:
        assert store.count() == 0


def test_the_config_picks_the_mode_and_bad_values_name_their_key(modelchain_home, tmp_path, store):
    rag = compose("rag_ingest", ["rag.retrieval.mode=bm25"]).rag
    assert Retriever.from_config(rag, store, None).mode == "bm25"
    assert compose("rag_ingest").rag.retrieval.mode == "hybrid"
    for override, key in [("rag.retrieval.mode=sparse", "rag.retrieval.mode"),
                          ("rag.retrieval.fusion=max", "rag.retrieval.fusion"),
                          ("rag.retrieval.dense_weight=1.5", "rag.retrieval.dense_weight"),
                          ("rag.retrieval.candidates=0", "rag.retrieval.candidates")]:
        with pytest.raises(ConfigError, match=rf"^{key}: "):
            compose("rag_ingest", [override])
    with pytest.raises(ValueError, match="needs an embedder"):
        Retriever(store, None, settings=RetrievalSettings("hybrid"))


def test_the_embedding_that_wrote_a_collection_is_recorded_and_another_is_refused(tmp_path, modelchain_home):
    from modelchain.core.vectorstore import embedding_identity, open_store

    settings = [f"rag.milvus.uri={tmp_path / 'e.db'}", "rag.milvus.collection=docs", f"rag.embedding.dim={DIM}"]
    rag = compose("rag_ingest", settings).rag
    identity = embedding_identity(rag.embedding)
    assert identity == "all-MiniLM-L6-v2 (model packaged, runtime onnx-int8, dim 4, normalized)"
    with open_store(rag) as store:
        store.ensure_collection()
        store.upsert(ROWS)
        assert store.recorded_embedding() == identity
        assert {r["metadata"]["embedding"] for r in store.iter_rows(("metadata",))} == {identity}
        assert Retriever.from_config(rag, store, EMBEDDER).retrieve(QUESTION, 1)  # the same embedding reads it
    other = compose("rag_ingest", [*settings, "rag.embedding.runtime=torch"]).rag
    with open_store(other) as store:
        mismatch = (r"'docs' .* holds vectors of embedding all-MiniLM-L6-v2 \(model packaged, runtime onnx-int8, "
                    r"dim 4, normalized\), but rag.embedding is all-MiniLM-L6-v2 \(model packaged, runtime "
                    r"torch/float32, dim 4, normalized\): its vectors cannot be compared; .* reindex")
        with pytest.raises(ValueError, match=mismatch):
            store.upsert(ROWS)
        with pytest.raises(ValueError, match=mismatch):
            Retriever.from_config(other, store, EMBEDDER)
        assert store.count() == len(ROWS)
    bm25_only = compose("rag_ingest", [*settings, "rag.embedding.runtime=torch", "rag.retrieval.mode=bm25"]).rag
    with open_store(bm25_only) as store:
        assert sources(Retriever.from_config(bm25_only, store, None), QUESTION, 1) == ["b.md"]  # no vectors compared

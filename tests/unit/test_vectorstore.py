"""The vector store: a real Milvus Lite in a temporary folder (random vectors, no model), and
the registry that picks a store by config."""

import numpy as np
import pytest

from modelchain.core import vectorstore
from modelchain.core.config import ConfigError, compose
from modelchain.core.vectorstore import MilvusLiteStore, MilvusServerStore, MilvusStore, is_local_uri

DIM = 8


def make_rows(source, n, doc_hash="h1", seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"{source}-{i}",
            "vector": rng.normal(size=DIM).astype(np.float32),
            "text": f"text {i} of {source}",
            "source": source,
            "heading_path": "A > B",
            "position": i,
            "content_hash": f"c{i}",
            "doc_hash": doc_hash,
        }
        for i in range(n)
    ]


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "nested" / "folder" / "chunks.db")


@pytest.fixture
def store(db_path):
    with MilvusLiteStore(db_path, "chunks", DIM) as s:
        s.ensure_collection()
        yield s


def test_ensure_collection_creates_once_and_makes_parent_folder(db_path):
    with MilvusLiteStore(db_path, "chunks", DIM) as s:
        assert s.ensure_collection() is True
        assert s.ensure_collection() is False
        assert s.count() == 0


def test_upsert_is_idempotent_and_delete_removes_exactly_a_source(store):
    store.upsert(make_rows("a.md", 3) + make_rows("b.md", 2))
    store.upsert(make_rows("a.md", 3))  # same ids again: replaced, not duplicated
    assert store.count() == 5
    assert store.delete_sources(["a.md", "not-there.md"]) == 3
    assert store.count() == 2
    assert store.doc_hashes() == {"b.md": "h1"}


def test_delete_handles_quotes_and_backslashes_in_sources(store):
    odd = 'we"ird\\dir/it\'s ü.md'
    store.upsert(make_rows(odd, 2) + make_rows("plain.md", 1))
    assert store.delete_sources([odd]) == 2
    assert set(store.doc_hashes()) == {"plain.md"}


def test_doc_hashes_pages_through_all_rows_and_flags_mixed_hashes(store):
    store.batch_size = 50
    store.upsert(make_rows("big.md", 120, doc_hash="new"))
    store.upsert(make_rows("half.md", 2, doc_hash="old") + [make_rows("half.md", 3, "new")[2]])
    hashes = {}
    for row in store.iter_rows(("source",), batch_size=25):
        hashes[row["source"]] = hashes.get(row["source"], 0) + 1
    assert hashes == {"big.md": 120, "half.md": 3}
    assert store.doc_hashes() == {"big.md": "new", "half.md": ""}


def test_search_returns_nearest_rows_with_their_fields(store):
    rows = make_rows("a.md", 20, seed=1)
    store.upsert(rows)
    results = store.search(np.stack([rows[7]["vector"], rows[3]["vector"]]), k=3)
    assert [len(hits) for hits in results] == [3, 3]
    best = results[0][0]
    assert best["id"] == "a.md-7" and best["text"] == "text 7 of a.md"
    assert best["heading_path"] == "A > B" and best["position"] == 7
    assert best["score"] == pytest.approx(1.0, abs=1e-5)  # cosine of a vector with itself
    assert results[0][0]["score"] >= results[0][1]["score"] >= results[0][2]["score"]
    assert results[1][0]["id"] == "a.md-3"


def test_rows_survive_close_and_reopen(db_path):
    with MilvusLiteStore(db_path, "chunks", DIM) as s:
        s.ensure_collection()
        s.upsert(make_rows("a.md", 4))
    with MilvusLiteStore(db_path, "chunks", DIM) as s:
        assert s.count() == 4
        assert s.search([make_rows("a.md", 4)[2]["vector"]], k=1)[0][0]["id"] == "a.md-2"


def test_closing_one_store_leaves_another_on_the_same_folder_working(db_path):
    first = MilvusLiteStore(db_path, "chunks", DIM)
    second = MilvusLiteStore(db_path, "chunks", DIM)
    try:
        first.ensure_collection()
        first.upsert(make_rows("a.md", 2))
        assert second.count() == 2
        first.close()
        assert second.count() == 2
    finally:
        first.close()
        second.close()


def test_existing_collection_with_other_dim_is_refused(db_path, store):
    with MilvusLiteStore(db_path, "chunks", DIM * 2) as other:
        with pytest.raises(ValueError, match=r"'chunks'.*vector dim is 8, expected 16"):
            other.ensure_collection()


def test_existing_collection_with_other_metric_is_refused(db_path, store):
    with MilvusLiteStore(db_path, "chunks", DIM, metric="L2") as other:
        with pytest.raises(ValueError, match="index metric is COSINE, expected L2"):
            other.ensure_collection()


def test_existing_collection_with_other_fields_is_refused(db_path):
    with MilvusLiteStore(db_path, "chunks", DIM) as s:
        s.client.create_collection("foreign", dimension=DIM, id_type="string", max_length=64)
    with MilvusLiteStore(db_path, "foreign", DIM) as s:
        with pytest.raises(ValueError, match=r"'foreign'.*missing fields \['content_hash'"):
            s.ensure_collection()


def test_missing_collection_is_an_error_for_reads(db_path):
    with MilvusLiteStore(db_path, "nothing_here", DIM) as s:
        with pytest.raises(ValueError, match="'nothing_here' does not exist"):
            s.count()


def test_bad_rows_are_refused_with_the_chunk_named(store):
    row = make_rows("a.md", 1)[0]
    with pytest.raises(ValueError, match=r"'a.md-0' of 'a.md': vector has 3 values"):
        store.upsert([{**row, "vector": [0.1, 0.2, 0.3]}])
    with pytest.raises(ValueError, match="missing fields \\['doc_hash'\\]"):
        store.upsert([{k: v for k, v in row.items() if k != "doc_hash"}])
    with pytest.raises(ValueError, match="heading_path is longer than 2048 bytes"):
        store.upsert([{**row, "heading_path": "é" * 1025}])
    assert store.count() == 0


def test_uri_and_parameter_checks():
    assert is_local_uri("./x.db") and is_local_uri("/tmp/a/x.db")
    assert not is_local_uri("http://milvus:19530") and not is_local_uri("https://h")
    with pytest.raises(ValueError, match="must end with .db"):
        MilvusLiteStore("/tmp/x", "c", DIM)
    with pytest.raises(ValueError, match="metric"):
        MilvusLiteStore("/tmp/x.db", "c", DIM, metric="HAMMING")
    with pytest.raises(ValueError, match="a Milvus server URI starts with http"):
        MilvusServerStore("/tmp/x.db", "c", DIM)
    with pytest.raises(TypeError):
        MilvusStore("/tmp/x.db", "c", DIM)  # the interface; a store is one of VECTOR_STORES


def test_the_config_picks_the_store_by_name(modelchain_home, monkeypatch):
    monkeypatch.setenv("MILVUS_TOKEN", "t0ken")
    local = compose("rag_ingest")
    assert local.rag.milvus.backend == "lite"
    with vectorstore.open_store(local.rag) as store:
        assert type(store) is MilvusLiteStore and store.uri == str(modelchain_home / "milvus.db")
        assert store.token is None  # Milvus Lite takes no token
    eks = compose("rag_ingest", ["cluster=eks"])
    assert eks.rag.milvus.backend == "server"
    store = vectorstore.open_store(eks.rag)  # connects on first use only
    assert type(store) is MilvusServerStore and store.uri == eks.cluster.milvus_uri and store.token == "t0ken"
    assert set(vectorstore.VECTOR_STORES) == {"lite", "server"}


def test_an_unknown_or_mismatched_store_is_a_config_error_naming_the_key(modelchain_home):
    with pytest.raises(ConfigError, match=r"rag.milvus.backend: unknown vector store 'qdrant'; registered: lite, server"):
        compose("rag_ingest", ["rag.milvus.backend=qdrant"])
    with pytest.raises(ConfigError, match=r"rag.milvus.uri: a Milvus server URI starts with http.*rag.milvus.backend is server"):
        compose("rag_ingest", ["cluster.milvus_backend=server"])
    with pytest.raises(ConfigError, match=r"rag.milvus.uri: a Milvus Lite path must end with .db"):
        compose("rag_ingest", ["cluster=eks", "cluster.milvus_backend=lite"])
    rag = compose("rag_ingest").rag
    from omegaconf import OmegaConf

    unknown = OmegaConf.merge(rag, {"milvus": {"backend": "qdrant"}})
    with pytest.raises(ConfigError, match="rag.milvus.backend: unknown vector store 'qdrant'; registered: lite, server"):
        vectorstore.open_store(unknown)


@pytest.mark.parametrize(
    "index_type, metric", [("FLAT", "COSINE"), ("HNSW", "IP"), ("AUTOINDEX", "L2")]
)
def test_index_types_and_metrics_find_the_nearest_row(db_path, index_type, metric):
    rows = make_rows("a.md", 30, seed=2)
    for row in rows:  # unit vectors, so a row is its own best match under IP as well
        row["vector"] = row["vector"] / np.linalg.norm(row["vector"])
    with MilvusLiteStore(db_path, "chunks", DIM, index_type=index_type, metric=metric) as s:
        s.ensure_collection()
        s.upsert(rows)
        hits = s.search([rows[11]["vector"]], k=4)[0]
    assert hits[0]["id"] == "a.md-11"
    scores = [h["score"] for h in hits]
    # L2 is a distance (smaller is nearer); COSINE and IP are similarities.
    assert scores == sorted(scores, reverse=metric != "L2")
    if metric == "L2":
        assert scores[0] == pytest.approx(0.0, abs=1e-4)

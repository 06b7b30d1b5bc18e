"""RAG sources on a real S3 server (SeaweedFS): listing a prefix, globs, reading every format,
quarantine, credentials and endpoint from the standard chain, and an ingest from S3."""

import pytest

from modelchain.components.chunk.logic import chunk_documents
from modelchain.components.discover.logic import discover
from modelchain.core.embedder import TokenCounter, default_model_path
from tests.rag_support import MIXED_CORPUS
from tests.s3_server import s3_env, s3_server  # noqa: F401 (fixtures)

BUCKET = "rag-docs"


@pytest.fixture(scope="module")
def tokenizer():
    return TokenCounter(f"{default_model_path()}/tokenizer.json")


@pytest.fixture
def corpus(s3_env):  # noqa: F811
    client = s3_env.client()
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    for name, data in MIXED_CORPUS.items():
        client.put_object(Bucket=BUCKET, Key=f"docs/{name}", Body=data)
    client.put_object(Bucket=BUCKET, Key="docs/drafts/wip.md", Body=b"# WIP\n")
    client.put_object(Bucket=BUCKET, Key="docs/.hidden/secret.md", Body=b"# Hidden\n")
    client.put_object(Bucket=BUCKET, Key="docs-old/stale.md", Body=b"# Old prefix\n")
    return client


def test_discover_lists_a_prefix_with_globs(corpus):
    records = discover(f"s3://{BUCKET}/docs", ["**/*.md", "**/*.html", "**/*.pdf", "**/*.txt"], ["drafts/**"],
                       progress=False)
    assert [r["source"] for r in records] == [
        "broken.pdf", "garage/bike.txt", "garden.html", "kitchen.md", "latin1.md", "manual.pdf"
    ]
    bike = records[1]
    assert bike["uri"] == f"s3://{BUCKET}/docs/garage/bike.txt"
    assert bike["bytes"] == len(MIXED_CORPUS["garage/bike.txt"]) and bike["etag"] and "path" not in bike
    assert [r["source"] for r in discover(f"s3://{BUCKET}/docs/", ["*.md"], progress=False)] == [
        "kitchen.md", "latin1.md"
    ]


def test_chunks_read_from_s3_and_bad_files_are_quarantined(corpus, tokenizer):
    records = discover(f"s3://{BUCKET}/docs/", ["**/*"], ["drafts/**"], progress=False)
    corpus.delete_object(Bucket=BUCKET, Key="docs/garage/bike.txt")  # gone between discover and chunk
    chunks, quarantined = chunk_documents(records, tokenizer)
    reasons = {q["source"]: q["reason"] for q in quarantined}
    assert set(reasons) == {"broken.pdf", "latin1.md", "garage/bike.txt"}
    assert "NoSuchKey" in reasons["garage/bike.txt"]
    by_source = {c["source"]: c for c in chunks}
    assert set(by_source) == {"kitchen.md", "garden.html", "manual.pdf"}
    assert by_source["garden.html"]["heading_path"] == "Garden"
    assert by_source["manual.pdf"]["metadata"]["title"] == "Boiler manual"
    assert by_source["kitchen.md"]["uri"] == f"s3://{BUCKET}/docs/kitchen.md"
    import hashlib

    assert by_source["kitchen.md"]["doc_hash"] == hashlib.sha256(MIXED_CORPUS["kitchen.md"]).hexdigest()


def test_an_object_changed_after_discover_is_quarantined_not_chunked(corpus, tokenizer):
    # The cached chunk step must never hold chunks of other bytes than its manifest lists.
    records = discover(f"s3://{BUCKET}/docs/", ["*.md"], progress=False)
    corpus.put_object(Bucket=BUCKET, Key="docs/kitchen.md", Body=b"# Kitchen\n\nThe kettle moved to the shelf.\n")
    chunks, quarantined = chunk_documents(records, tokenizer)
    reasons = {q["source"]: q["reason"] for q in quarantined}
    assert reasons["kitchen.md"].startswith("changed since discover: its ETag is ")
    assert records[0]["etag"] in reasons["kitchen.md"]
    assert "kitchen.md" not in {c["source"] for c in chunks}


def test_a_corpus_is_listed_and_read_where_only_mlflow_names_the_endpoint(corpus, tokenizer, monkeypatch, s3_env):  # noqa: F811
    # core.s3's endpoint rule: MLFLOW_S3_ENDPOINT_URL is the last one asked.
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env.endpoint)
    records = discover(f"s3://{BUCKET}/docs/", ["*.md"], progress=False)
    assert [r["source"] for r in records] == ["kitchen.md", "latin1.md"]
    chunks, _ = chunk_documents(records, tokenizer)
    assert {c["source"] for c in chunks} == {"kitchen.md"}


def test_wrong_credentials_and_missing_buckets_are_clear_errors(corpus, monkeypatch):
    with pytest.raises(RuntimeError, match="NoSuchBucket"):
        discover("s3://no-such-bucket/docs/", progress=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(RuntimeError, match=f"cannot list s3://{BUCKET}/docs/: SignatureDoesNotMatch"):
        discover(f"s3://{BUCKET}/docs/", progress=False)


def test_an_unreachable_endpoint_stops_the_step(corpus, tokenizer, monkeypatch):
    records = discover(f"s3://{BUCKET}/docs/", ["*.md"], progress=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="cannot read s3://"):
        chunk_documents(records, tokenizer)


@pytest.mark.slow
def test_ingest_from_s3_into_milvus_lite(corpus, tmp_path):
    from modelchain.pipelines.inprocess_ingest import ingest
    from modelchain.core.embedder import make_embedder
    from modelchain.core.retriever import Retriever
    from modelchain.core.vectorstore import MilvusLiteStore

    embedder = make_embedder("onnx-int8")
    with MilvusLiteStore(str(tmp_path / "m.db"), "docs", embedder.dim) as store:
        stats = ingest(f"s3://{BUCKET}/docs/", store, embedder, ["**/*"], ["drafts/**"], progress=False)
        assert stats["written_documents"] == 4 and len(stats["quarantined"]) == 2
        hits = Retriever(store, embedder).retrieve("What pressure should the boiler have?", k=1)
        assert hits[0].source == "manual.pdf" and hits[0].metadata["uri"] == f"s3://{BUCKET}/docs/manual.pdf"
        again = ingest(f"s3://{BUCKET}/docs/", store, embedder, ["**/*"], ["drafts/**"], progress=False)
        assert (again["inserted"], again["deleted"], again["skipped_documents"]) == (0, 0, 4)

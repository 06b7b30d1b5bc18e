"""No row lost to a failed read, against a real S3 server (SeaweedFS) that refuses some reads.

The ingest runs as a key that may list the bucket but read only ``docs/open/*``: the other
documents fail with AccessDenied, as a transient error or a permission change would. They
keep their rows, are quarantined and are read again by the next run; only a document gone
from the listing loses its rows; a listing that fails stops before anything is deleted.
"""

import boto3
import pytest
from botocore.config import Config

from modelchain.components.chunk.logic import chunk_corpus
from modelchain.components.discover.logic import discover_corpus
from modelchain.components.embed.logic import embed_changes
from modelchain.components.upsert.logic import write_changes
from modelchain.components.verify.logic import verify_ingest
from modelchain.core.config import compose
from modelchain.core.vectorstore import open_store
from tests.s3_server import start_s3_server

BUCKET = "rag-partial"
READER = {"name": "reader", "credentials": [{"accessKey": "reader", "secretKey": "reader-secret"}],
          "actions": [f"List:{BUCKET}", f"Read:{BUCKET}/docs/open/*"]}
DOCS = {
    "open/install.md": "# Install\n\nRun pip install modelchain on Python 3.11.\n",
    "open/serve.md": "# Serving\n\nAdapters are loaded into the running vLLM server by name.\n",
    "open/gone.md": "# Old page\n\nThis page about the retired scheduler is deleted later.\n",
    "locked/billing.md": "# Billing\n\nInvoices are sent on the first day of each month.\n",
    "locked/security.md": "# Security\n\nAPI tokens are rotated every ninety days.\n",
}


@pytest.fixture(scope="module")
def server():
    srv = start_s3_server(extra_identities=[READER])
    try:
        admin = srv.client()
        admin.create_bucket(Bucket=BUCKET)
        for name, text in DOCS.items():
            admin.put_object(Bucket=BUCKET, Key=f"docs/{name}", Body=text.encode())
        yield srv
    finally:
        srv.stop()


def as_key(monkeypatch, server, access_key, secret_key):
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


def run_steps(rag):
    """discover -> chunk -> embed -> upsert -> verify, as the components call them."""
    documents = discover_corpus(rag.source, progress=False)
    chunks, quarantined = chunk_corpus(rag, documents, progress=False)
    plan, vectors = embed_changes(rag, chunks, quarantined)
    counts = write_changes(rag, plan, vectors)
    return quarantined, plan, counts, verify_ingest(rag, chunks, quarantined)


def rows_by_source(rag):
    with open_store(rag) as store:
        rows = {}
        for row in store.iter_rows(("source",)):
            rows.setdefault(row["source"], set()).add(row["id"])
        return rows


def test_refused_reads_keep_their_rows_and_are_retried(server, tmp_path, monkeypatch):
    rag = compose("rag_ingest", [
        f"rag.source.uri=s3://{BUCKET}/docs/", f"rag.milvus.uri={tmp_path / 'milvus.db'}",
        "rag.embedding.runtime=torch", "rag.chunk.tokens=64", "rag.chunk.overlap=8",
    ]).rag

    # 1. The admin key reads everything.
    as_key(monkeypatch, server, server.access_key, server.secret_key)
    quarantined, plan, counts, check = run_steps(rag)
    assert quarantined == [] and counts["added_documents"] == len(DOCS) and check["passed"], check["report"]
    first = rows_by_source(rag)
    assert set(first) == set(DOCS)

    # 2. A key that may list but read only docs/open/*; one open page is deleted meanwhile.
    server.client().delete_object(Bucket=BUCKET, Key="docs/open/gone.md")
    as_key(monkeypatch, server, "reader", "reader-secret")
    quarantined, plan, counts, check = run_steps(rag)
    reasons = {q["source"]: q["reason"] for q in quarantined}
    assert set(reasons) == {"locked/billing.md", "locked/security.md"}
    assert all("AccessDenied" in reason for reason in reasons.values())
    assert plan.sources_to_delete == ["open/gone.md"] and plan.quarantined_sources == sorted(reasons)
    assert (counts["deleted_documents"], counts["quarantined_documents"], counts["unchanged_documents"]) == (1, 2, 2)
    after = rows_by_source(rag)
    assert {s: after[s] for s in reasons} == {s: first[s] for s in reasons}  # kept, row for row
    assert "open/gone.md" not in after
    assert check["passed"] and check["kept_sources"] == sorted(reasons), check["report"]

    # 3. A listing that fails stops before anything is planned or deleted.
    as_key(monkeypatch, server, "reader", "wrong-secret")
    with pytest.raises(RuntimeError, match=f"cannot list s3://{BUCKET}/docs/: SignatureDoesNotMatch"):
        run_steps(rag)
    assert rows_by_source(rag) == after

    # 4. Readable again: the quarantined documents are read, found unchanged, left alone.
    as_key(monkeypatch, server, server.access_key, server.secret_key)
    quarantined, plan, counts, check = run_steps(rag)
    assert quarantined == [] and (counts["inserted"], counts["deleted"]) == (0, 0)
    assert counts["unchanged_documents"] == 4 and check["passed"], check["report"]
    assert rows_by_source(rag) == after


def test_a_reader_key_sees_the_listing_but_not_the_locked_bytes(server):
    reader = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id="reader",
                          aws_secret_access_key="reader-secret", region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
    keys = [o["Key"] for o in reader.list_objects_v2(Bucket=BUCKET, Prefix="docs/")["Contents"]]
    assert "docs/locked/billing.md" in keys
    assert reader.get_object(Bucket=BUCKET, Key="docs/open/install.md")["Body"].read().startswith(b"# Install")
    with pytest.raises(Exception, match="AccessDenied"):
        reader.get_object(Bucket=BUCKET, Key="docs/locked/billing.md")

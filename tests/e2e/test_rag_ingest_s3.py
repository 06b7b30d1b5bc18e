"""rag_ingest with kfp.local from an S3 prefix (SeaweedFS): Markdown, HTML, text and PDF, with quarantine."""

import pytest

from modelchain.core.vectorstore import MilvusLiteStore
from tests.rag_support import MIXED_CORPUS
from tests.s3_server import s3_env, s3_server  # noqa: F401 (fixtures)

from .conftest import run_cli

pytestmark = pytest.mark.e2e

QUESTIONS = (
    "rag.verify.questions=["
    "{question: 'Where is the milk?', source: kitchen.md},"
    "{question: 'How often do tomatoes need water?', source: garden.html},"
    "{question: 'What pressure should the boiler read when cold?', source: manual.pdf}]"
)


def test_ingest_from_s3_with_every_format(s3_env, tmp_path):  # noqa: F811
    client = s3_env.client()
    client.create_bucket(Bucket="e2e-docs")
    for name, data in MIXED_CORPUS.items():
        client.put_object(Bucket="e2e-docs", Key=f"docs/{name}", Body=data)
    home = tmp_path / "home"
    result = run_cli(
        "run", "rag_ingest", "rag.source.uri=s3://e2e-docs/docs/", "rag.source.include=['**/*']",
        "rag.milvus.collection=mixed", QUESTIONS, home=home,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "questions) | 1.000 |" in result.stdout
    assert "quarantined broken.pdf: not a readable PDF" in output
    assert "quarantined latin1.md: not UTF-8 text" in output
    with MilvusLiteStore(str(home / "milvus.db"), "mixed", 384) as store:
        assert set(store.doc_hashes()) == {"kitchen.md", "garden.html", "garage/bike.txt", "manual.pdf"}

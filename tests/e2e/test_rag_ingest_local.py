"""The rag_ingest pipeline end to end with kfp.local and Milvus Lite on a corpus the test writes."""

import pytest

from modelchain.core.vectorstore import MilvusLiteStore

from .conftest import run_cli

pytestmark = pytest.mark.e2e

DOCS = {
    "kitchen.md": "# Kitchen\n\nThe kettle is on the left of the stove.\n\n## Fridge\n\nMilk sits on the top shelf.\n",
    "garden.md": "# Garden\n\nTomatoes need watering every morning in summer.\n",
    "garage/bike.txt": "The bicycle pump hangs on the wall behind the car.\n",
}
QUESTIONS = (
    "rag.verify.questions=["
    "{question: 'Where is the milk?', source: kitchen.md},"
    "{question: 'How often do tomatoes need water?', source: garden.md},"
    "{question: 'Where is the bicycle pump?', source: garage/bike.txt}]"
)


def test_ingest_fills_milvus_and_a_rerun_changes_nothing(tmp_path):
    corpus = tmp_path / "corpus"
    for name, text in DOCS.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text)
    home = tmp_path / "home"
    args = [
        "run", "rag_ingest", f"rag.source.uri={corpus}", "rag.source.include=['**/*.md','**/*.txt']",
        "rag.milvus.collection=house", QUESTIONS,
    ]
    first = run_cli(*args, home=home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "questions) | 1.000 |" in first.stdout

    def rows():
        with MilvusLiteStore(str(home / "milvus.db"), "house", 384) as store:
            return store.count(), store.doc_hashes()

    count, hashes = rows()
    assert set(hashes) == set(DOCS) and count >= len(DOCS)
    assert f"Milvus collection 'house' at {home / 'milvus.db'}: {count} chunks" in first.stdout

    second = run_cli(*args, home=home)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "embedded 0 chunks; 3 documents unchanged" in second.stdout
    assert rows() == (count, hashes)

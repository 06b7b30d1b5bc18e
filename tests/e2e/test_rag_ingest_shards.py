"""rag_ingest with rag.shards=2 through kfp.local (a ParallelFor of chunk -> embed -> upsert,
Milvus Lite): the same rows as one shard, a rerun that changes nothing even with another
shard count, and a deleted file that takes exactly its rows."""

import numpy as np
import pytest

from modelchain.components.rag_changes import shard_of
from modelchain.core.vectorstore import MilvusLiteStore

from .conftest import run_cli

pytestmark = pytest.mark.e2e

TOPICS = ["tides", "glaciers", "bread", "bees", "lighthouses", "comets", "violins", "moss", "kites", "salt"]


def write_corpus(folder):
    """Ten nested Markdown notes, a few chunks each."""
    for i, topic in enumerate(TOPICS):
        path = folder / f"part-{i % 3}" / f"{topic}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        sections = [
            f"## {topic.title()} note {j}\n\n" + " ".join(
                f"Fact {k} about {topic}: observation {i * 100 + j * 10 + k} was written down on day {k + j}."
                for k in range(12)
            )
            for j in range(3)
        ]
        path.write_text(f"# {topic.title()}\n\n" + "\n\n".join(sections) + "\n")
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.md"))


def stored_rows(home, collection):
    with MilvusLiteStore(str(home / "milvus.db"), collection, 384) as store:
        return {row["id"]: row for row in store.iter_rows(("source", "doc_hash", "vector"))}


def ingest(corpus, home, shards):
    result = run_cli("run", "rag_ingest", f"rag.source.uri={corpus}", f"rag.shards={shards}", home=home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_two_shards_write_what_one_writes_and_keep_it_in_step(tmp_path):
    corpus = tmp_path / "corpus"
    sources = write_corpus(corpus)
    assert {shard_of(s, 2) for s in sources} == {0, 1}, "the corpus must give both shards documents"

    ingest(corpus, tmp_path / "one", shards=1)
    out = ingest(corpus, tmp_path / "two", shards=2)
    assert "shard 0 of 2:" in out and "shard 1 of 2:" in out
    assert "2 shards: documents: 10 added, 0 updated, 0 unchanged, 0 deleted, 0 quarantined" in out
    one, two = stored_rows(tmp_path / "one", "docs"), stored_rows(tmp_path / "two", "docs")
    assert len(one) > 3 * len(sources) and set(two) == set(one)
    for key, row in one.items():
        assert (two[key]["source"], two[key]["doc_hash"]) == (row["source"], row["doc_hash"])
    # The default runtime quantises activations per batch (dynamic int8), and a shard's
    # batches hold other texts than one run's: vectors agree to a cosine, not to the bit.
    keys = sorted(one)
    a, b = (np.array([rows[k]["vector"] for k in keys]) for rows in (one, two))
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosines.min() > 0.99, cosines.min()

    # Another shard count over an unchanged corpus: nothing to embed, nothing rewritten.
    out = ingest(corpus, tmp_path / "two", shards=3)
    assert f"0 added, 0 updated, {len(sources)} unchanged, 0 deleted" in out and "embedded 0 chunks" in out
    assert set(stored_rows(tmp_path / "two", "docs")) == set(one)

    # A deleted file loses exactly its rows, whichever shard it is in.
    gone = "part-0/bees.md"
    (corpus / gone).unlink()
    out = ingest(corpus, tmp_path / "two", shards=2)
    assert "0 added, 0 updated, 9 unchanged, 1 deleted" in out
    left = stored_rows(tmp_path / "two", "docs")
    assert set(left) == {key for key, row in one.items() if row["source"] != gone}

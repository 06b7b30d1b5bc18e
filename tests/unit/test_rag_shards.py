"""Shards of a rag_ingest run: stable hash ranges of document keys, plans over a shard's own
rows in a real Milvus Lite collection, and the write token that lets a run's shards write one
after another while a write by another run is still caught."""

from collections import Counter

import numpy as np
import pytest

from modelchain.components.rag_changes import (
    PlanOvertaken,
    check_plan_current,
    in_shard,
    plan_changes,
    read_stored,
    shard_of,
    stored_in_shard,
)
from modelchain.components.upsert.logic import write_changes
from modelchain.core.config import ConfigError, compose
from modelchain.core.vectorstore import MilvusLiteStore

from tests.unit.test_vectorstore import DIM, make_rows


def test_a_document_keeps_its_shard_and_shards_are_near_equal():
    sources = [f"docs/section-{i}/page-{i * 7 % 13}.md" for i in range(4000)]
    assert [shard_of(s, 4) for s in sources] == [shard_of(s, 4) for s in reversed(sources)][::-1]
    sizes = Counter(shard_of(s, 4) for s in sources)
    assert set(sizes) == {0, 1, 2, 3} and max(sizes.values()) - min(sizes.values()) < 200, sizes
    assert {shard_of(s, 1) for s in sources} == {0}
    records = [{"source": s} for s in sources]
    assert sorted(r["source"] for shard in range(4) for r in in_shard(records, shard, 4)) == sorted(sources)
    with pytest.raises(ValueError, match=r"shard must be in \[0, 2\), got 2"):
        in_shard(records, 2, 2)
    with pytest.raises(ValueError, match="shards must be at least 1, got 0"):
        shard_of("a.md", 0)


def shard_sources(shards, per_shard):
    """``per_shard`` document names in each of ``shards`` shards."""
    found = {shard: [] for shard in range(shards)}
    i = 0
    while min(len(names) for names in found.values()) < per_shard:
        name = f"doc-{i}.md"
        if len(found[shard_of(name, shards)]) < per_shard:
            found[shard_of(name, shards)].append(name)
        i += 1
    return found


def chunks_of(source, n, doc_hash="h1", seed=0):
    return [{**row, "doc_hash": doc_hash, "metadata": {}} for row in make_rows(source, n, doc_hash, seed)]


def plan_shard(store, chunks, shard, shards, run_id):
    """What the embed step plans for one shard."""
    stored = stored_in_shard(read_stored(store), shard, shards)
    return plan_changes(store, chunks, allow_delete_all=True, stored=stored, run_id=run_id)


def vectors_of(plan):
    return np.stack([c["vector"] for c in plan.chunks_to_embed]) if plan.chunks_to_embed else np.zeros((0, DIM))


def test_shards_plan_their_own_rows_and_write_in_any_order(tmp_path, modelchain_home):
    uri = str(tmp_path / "rag.db")
    names = shard_sources(2, 2)  # {0: [a, b], 1: [c, d]}
    (a, b), (c, d) = names[0], names[1]
    with MilvusLiteStore(uri, "docs", DIM) as store:
        store.ensure_collection()
        for source in (a, b, c, d):
            store.upsert(make_rows(source, 2))
    rag = compose("rag_ingest", [f"rag.milvus.uri={uri}", "rag.milvus.collection=docs", "rag.embedding.dim=8",
                                 "rag.lock.wait_s=0", "rag.shards=2"]).rag
    # This run: a changed, b gone (shard 0); shard 1 holds no document any more.
    with MilvusLiteStore(uri, "docs", DIM) as store:
        plan0 = plan_shard(store, chunks_of(a, 3, "h2", seed=1), 0, 2, "run-1")
        plan1 = plan_shard(store, [], 1, 2, "run-1")
    assert plan0.updated_sources == [a] and plan0.removed_sources == [b] and plan0.unchanged_chunks == 0
    assert plan1.removed_sources == [c, d] and not plan1.chunks_to_embed  # not "delete everything"
    assert plan0.plan_id == plan1.plan_id  # planned against one state: one token
    # Shard 1 writes first, then shard 0: each finds its plan current.
    assert write_changes(rag, plan1, vectors_of(plan1))["deleted"] == 4
    counts = write_changes(rag, plan0, vectors_of(plan0))
    assert counts["inserted"] == 3 and counts["total_rows"] == 3
    with MilvusLiteStore(uri, "docs", DIM) as store:
        assert store.doc_hashes() == {a: "h2"}
        # A shard that plans after its sibling wrote joins the same token.
        late = plan_shard(store, chunks_of(c, 1), 1, 2, "run-1")
        assert late.plan_id == plan0.plan_id
    write_changes(rag, late, vectors_of(late))

    # Another run writes between a shard's plan and its write: refused, as for one step.
    with MilvusLiteStore(uri, "docs", DIM) as store:
        stale = plan_shard(store, chunks_of(d, 1), 1, 2, "run-2")
        check_plan_current(store, stale)
    with MilvusLiteStore(uri, "docs", DIM) as store:
        other = plan_shard(store, chunks_of(b, 1), 0, 2, "run-3")
    write_changes(rag, other, vectors_of(other))
    with pytest.raises(PlanOvertaken, match="written by another ingest after this run planned"):
        write_changes(rag, stale, vectors_of(stale))
    # ... and so is a sibling whose run-mate planned after the other run wrote.
    with MilvusLiteStore(uri, "docs", DIM) as store:
        first = plan_shard(store, chunks_of(d, 1), 1, 2, "run-4")
    with MilvusLiteStore(uri, "docs", DIM) as store:
        intruder = plan_shard(store, chunks_of(b, 2, "h3"), 0, 2, "run-5")
    write_changes(rag, intruder, vectors_of(intruder))
    with MilvusLiteStore(uri, "docs", DIM) as store:
        sibling = plan_shard(store, chunks_of(a, 2, "h4", seed=2), 0, 2, "run-4")
    assert write_changes(rag, sibling, vectors_of(sibling))["inserted"] == 2
    with pytest.raises(PlanOvertaken):
        write_changes(rag, first, vectors_of(first))


def test_shards_are_checked_in_the_config():
    assert compose("rag_ingest", []).rag.shards == 1
    with pytest.raises(ConfigError, match=r"^rag.shards: must be in \[1, 256\], got 0"):
        compose("rag_ingest", ["rag.shards=0"])

"""The ingest lock: the lock file of a Milvus Lite folder, lock tickets in a real Milvus Lite
collection (the protocol a Milvus server runs), and a plan that another ingest overtook."""

import json
import threading
import time

import numpy as np
import pytest

from modelchain.components.rag_changes import PlanOvertaken, check_plan_current, plan_changes
from modelchain.components.embed.logic import embed_changes
from modelchain.components.upsert.logic import write_changes
from modelchain.core.config import ConfigError, compose
from modelchain.core.ingest_lock import LOCK_COLLECTION, FileLock, IngestBusy, TicketLock
from modelchain.core.vectorstore import MilvusLiteStore

from tests.unit.test_vectorstore import DIM, make_rows


def test_a_lock_file_admits_one_holder_and_names_it_to_the_next(tmp_path):
    lock = FileLock(tmp_path / "x.db.lock", "Milvus Lite x.db")
    released = []
    with lock.hold("ingest of docs/", 0, on_release=lambda: released.append(True)):
        with pytest.raises(IngestBusy, match=r"^Milvus Lite x.db is being written by another ingest \(pid \d+ on "
                                             r".*ingest of docs/, since .*\); stopped without waiting, nothing"):
            with FileLock(tmp_path / "x.db.lock", "Milvus Lite x.db").hold("second", 0):
                pass
        with pytest.raises(IngestBusy, match="stopped after waiting 0 s"):
            with FileLock(tmp_path / "x.db.lock", "Milvus Lite x.db").hold("second", 0.3):
                pass
    assert released == [True]  # the store is closed before the next run may open the folder

    # A waiting run gets the lock as soon as the holder lets go.
    holding = threading.Event()

    def hold_briefly():
        with lock.hold("first", 0):
            holding.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold_briefly)
    thread.start()
    holding.wait(5)
    start = time.monotonic()
    with FileLock(tmp_path / "x.db.lock", "Milvus Lite x.db").hold("second", 10):
        waited = time.monotonic() - start
    thread.join()
    assert 0.2 < waited < 5


def ticket_lock(uri, lease_s=30.0):
    from pymilvus import MilvusClient

    return TicketLock(lambda: MilvusClient(uri), "docs", "Milvus collection 'docs'", lease_s)


def test_lock_tickets_in_milvus_exclude_each_other_and_outlive_a_dead_holder(tmp_path):
    uri = str(tmp_path / "locks.db")
    with MilvusLiteStore(uri, "docs", DIM) as keep_open:  # one Lite server for the threads' clients
        keep_open.ensure_collection()
        inside, most, errors = [0], [0], []
        guard = threading.Lock()

        def contend():
            try:
                for _ in range(3):
                    with ticket_lock(uri).hold("contender", 60):
                        with guard:
                            inside[0] += 1
                            most[0] = max(most[0], inside[0])
                        time.sleep(0.05)
                        with guard:
                            inside[0] -= 1
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=contend) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and most[0] == 1

        client = keep_open.client
        client.load_collection(LOCK_COLLECTION)
        assert client.query(LOCK_COLLECTION, filter='name == "docs"', output_fields=["ticket"]) == []
        # A live ticket of another run: a run that may not wait stops, naming it.
        holder = {"host": "node-7", "pid": 4242, "purpose": "ingest of s3://bucket/docs/", "since": time.time()}
        client.insert(LOCK_COLLECTION, [{"ticket": "other", "name": "docs", "holder": json.dumps(holder),
                                         "expires_at": time.time() + 60, "vector": [0.0, 0.0]}])
        with pytest.raises(IngestBusy, match=r"pid 4242 on node-7, ingest of s3://bucket/docs/"):
            with ticket_lock(uri).hold("me", 0):
                pass
        # Its lease runs out (its run died): the next run removes it and goes ahead.
        client.upsert(LOCK_COLLECTION, [{"ticket": "other", "name": "docs", "holder": json.dumps(holder),
                                         "expires_at": time.time() - 1, "vector": [0.0, 0.0]}])
        with ticket_lock(uri).hold("me", 0):
            tickets = client.query(LOCK_COLLECTION, filter='name == "docs"', output_fields=["ticket"])
            assert [t["ticket"] for t in tickets] != ["other"] and len(tickets) == 1


def test_a_held_ticket_is_renewed_while_its_run_works(tmp_path):
    uri = str(tmp_path / "locks.db")
    with MilvusLiteStore(uri, "docs", DIM) as keep_open:
        keep_open.ensure_collection()
        with ticket_lock(uri, lease_s=0.6).hold("slow run", 0):
            time.sleep(1.5)  # longer than the lease: only renewal keeps it
            with pytest.raises(IngestBusy, match="slow run"):
                with ticket_lock(uri, lease_s=0.6).hold("second", 0):
                    pass


def test_a_plan_that_another_ingest_overtook_is_refused_and_writes_nothing(tmp_path, modelchain_home):
    uri = str(tmp_path / "rag.db")
    with MilvusLiteStore(uri, "docs", DIM) as store:
        store.ensure_collection()
        store.upsert(make_rows("a.md", 2))
    with MilvusLiteStore(uri, "docs", DIM) as store:
        chunks = [{**r, "doc_hash": "h2", "metadata": {}} for r in make_rows("a.md", 3, seed=1)]
        plan = plan_changes(store, chunks)
        check_plan_current(store, plan)  # nobody wrote since
    with MilvusLiteStore(uri, "docs", DIM) as other:
        other.upsert(make_rows("b.md", 1))  # another run writes between plan and upsert
    rag = compose("rag_ingest", [f"rag.milvus.uri={uri}", "rag.milvus.collection=docs", "rag.embedding.dim=8",
                                 "rag.lock.wait_s=0"]).rag
    vectors = np.stack([c["vector"] for c in plan.chunks_to_embed])
    with pytest.raises(PlanOvertaken, match=r"'docs' .* was written by another ingest after this run planned"):
        write_changes(rag, plan, vectors)
    with MilvusLiteStore(uri, "docs", DIM) as store:
        assert store.count() == 3 and store.doc_hashes() == {"a.md": "h1", "b.md": "h1"}
        fresh = plan_changes(store, chunks)
    assert write_changes(rag, fresh, vectors)["total_rows"] == 3  # b.md is not in this corpus
    # A retried upsert of the same plan (a step retried on EKS) is not taken for another run.
    assert write_changes(rag, fresh, vectors)["total_rows"] == 3
    with MilvusLiteStore(uri, "docs", DIM) as other:
        other.upsert(make_rows("c.md", 1))
    with pytest.raises(PlanOvertaken):
        write_changes(rag, fresh, vectors)
    with pytest.raises(ConfigError, match=r"^rag.lock.wait_s: must be >= 0"):
        compose("rag_ingest", ["rag.lock.wait_s=-1"])


HOLD_AND_OPEN = """
import sys, time
from modelchain.core.ingest_lock import FileLock
from modelchain.core.vectorstore import MilvusLiteStore
db = sys.argv[1]
with MilvusLiteStore(db, "docs", 8) as store, FileLock(db + ".lock", "x").hold("an ingest in another process", 0):
    store.exists()  # connected: this process now serves the folder
    print("holding", flush=True)
    time.sleep(3)
"""


def test_a_step_waits_for_an_ingest_in_another_process_before_it_opens_the_folder(tmp_path, modelchain_home):
    """Milvus Lite serves a folder to one process: a step that connected before taking the lock
    would fail to open it while another process ingests."""
    import subprocess
    import sys

    uri = str(tmp_path / "rag.db")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_OPEN, uri], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        rag = compose("rag_ingest", [f"rag.milvus.uri={uri}", "rag.milvus.collection=docs",
                                     "rag.embedding.runtime=torch", "rag.lock.wait_s=60"]).rag
        chunks = [{**r, "metadata": {}} for r in make_rows("a.md", 2)]
        start = time.monotonic()
        plan, vectors = embed_changes(rag, chunks)
        assert time.monotonic() - start > 0.5  # it waited for the other process
        assert [c["id"] for c in plan.chunks_to_embed] == ["a.md-0", "a.md-1"] and vectors.shape == (2, 384)
    finally:
        holder.wait(timeout=60)
    assert holder.returncode == 0

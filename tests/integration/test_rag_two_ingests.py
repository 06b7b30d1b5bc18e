"""Two ingests into one Milvus Lite collection at once, as two processes: the second waits for the
first and then finds nothing to do, so the collection equals one uninterrupted run; with no wait
allowed, a run stops with one line naming the holder and writes nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelchain.bench._rag_corpus import generate_corpus
from modelchain.core.ingest_lock import FileLock

from tests.integration.test_rag_ingest_interrupted import snapshot

pytestmark = pytest.mark.slow


def ingest_cmd(source: Path, db: Path, wait_s: float) -> list[str]:
    return [
        sys.executable, "-m", "modelchain.pipelines.inprocess_ingest", str(source), str(db), "docs",
        "--runtime", "onnx-int8", "--batch-size", "16", "--write-rows", "16",
        "--chunk-tokens", "128", "--overlap", "16", "--include", "**/*.md", "--wait", str(wait_s),
    ]


def start(source: Path, db: Path, wait_s: float) -> subprocess.Popen:
    return subprocess.Popen(ingest_cmd(source, db, wait_s), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, (json.loads(out) if proc.returncode == 0 else {}), err


def test_two_ingests_at_once_end_as_one_run_and_a_run_that_may_not_wait_stops(tmp_path):
    corpus = tmp_path / "docs"
    generate_corpus(corpus, 40, 0, seed=5)

    reference = tmp_path / "reference.db"
    rc, stats, err = finish(start(corpus, reference, 0))
    assert rc == 0, err[-3000:]
    expected = snapshot(reference)
    assert expected[0] == stats["total_rows"] > 0

    # Two processes at once into a fresh collection.
    db = tmp_path / "shared.db"
    first, second = start(corpus, db, 600), start(corpus, db, 600)
    results = [finish(first), finish(second)]
    assert [r[0] for r in results] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    waited = [r for r in results if "is being written by another ingest" in r[2] and "waiting up to 600 s" in r[2]]
    assert len(waited) == 1, "exactly one run waits for the other"
    assert waited[0][1]["inserted"] == 0 and waited[0][1]["deleted"] == 0  # the first did it all
    assert snapshot(db) == expected

    # While another holds the lock, a run that may not wait stops at once and writes nothing.
    shutil.copy(next(corpus.rglob("*.md")), corpus / "added.md")
    with FileLock(f"{db}.lock", "test").hold("the test's own ingest", 0):
        rc, _, err = finish(start(corpus, db, 0))
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: Milvus Lite {db} (collection 'docs') is being written by another ingest "
                           f"(pid {os.getpid()} on ")
    assert "the test's own ingest" in line and "stopped without waiting, nothing written" in line
    assert snapshot(db) == expected

    # Once the holder lets go, the next run takes the change.
    rc, stats, err = finish(start(corpus, db, 0))
    assert rc == 0 and stats["changes"]["added_documents"] == 1, err[-2000:]

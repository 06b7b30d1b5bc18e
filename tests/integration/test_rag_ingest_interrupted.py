"""An ingest killed mid-way (SIGKILL while embedding and upserting), run again, ends with exactly
the collection an uninterrupted run makes: the same ids, doc hashes and row count."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from modelchain.bench._rag_corpus import generate_corpus
from modelchain.core.vectorstore import MilvusLiteStore

pytestmark = pytest.mark.slow

N_DOCS = 80


def run_ingest(source: Path, db: Path, kill_after_writes: int | None = None) -> int:
    """Run the one-process ingest; with ``kill_after_writes``, SIGKILL it after that many upserts."""
    cmd = [
        sys.executable, "-m", "modelchain.pipelines.inprocess_ingest", str(source), str(db), "docs",
        "--runtime", "onnx-int8", "--batch-size", "16", "--write-rows", "16",
        "--chunk-tokens", "128", "--overlap", "16", "--include", "**/*.md",
    ]
    # Its own session, so the kill takes the whole process group, as when a pod dies.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = []
    writes = 0
    for line in proc.stderr:
        log.append(line)
        if line.startswith("wrote "):
            writes += 1
            if kill_after_writes is not None and writes == kill_after_writes:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=600)
    proc.stderr.close()
    if kill_after_writes is None:
        assert proc.returncode == 0, "".join(log[-30:])
    else:
        assert proc.returncode == -signal.SIGKILL, f"not killed mid-way: {''.join(log[-30:])}"
    return writes


def snapshot(db: Path) -> tuple[int, dict]:
    with MilvusLiteStore(str(db), "docs", 384) as store:
        rows = {r["id"]: (r["source"], r["doc_hash"], r["content_hash"])
                for r in store.iter_rows(("source", "doc_hash", "content_hash"))}
        return store.count(), rows


def change_corpus(root: Path) -> None:
    """Edit 10 documents, delete 5 and add 10 (from a corpus generated with another seed)."""
    docs = sorted(root.rglob("*.md"))
    for path in docs[:10]:
        path.write_text(path.read_text() + "\n## Changelog\n\nThe limits were raised in the last release.\n")
    for path in docs[10:15]:
        path.unlink()
    extra = root.parent / "extra"
    generate_corpus(extra, 10, 0, seed=7)
    for path in sorted(extra.rglob("*.md")):
        target = root / "new" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)


def test_a_killed_ingest_run_again_equals_an_uninterrupted_one(tmp_path):
    v1 = tmp_path / "v1" / "docs"
    generate_corpus(v1, N_DOCS, 0, seed=3)
    v2 = tmp_path / "v2" / "docs"
    shutil.copytree(v1, v2)
    change_corpus(v2)

    # Reference: uninterrupted runs over v1, then v2.
    reference = tmp_path / "reference.db"
    run_ingest(v1, reference)
    count_v1, rows_v1 = snapshot(reference)
    run_ingest(v2, reference)
    count_v2, rows_v2 = snapshot(reference)
    assert count_v1 == len(rows_v1) and count_v2 == len(rows_v2) and rows_v1 != rows_v2

    # A first ingest killed mid-way, then run again.
    first = tmp_path / "first.db"
    run_ingest(v1, first, kill_after_writes=3)
    count, rows = snapshot(first)
    assert 0 < count < count_v1  # it was stopped half-way
    run_ingest(v1, first)
    assert snapshot(first) == (count_v1, rows_v1)

    # An incremental ingest (edits, deletes, new documents) killed mid-way, then run again.
    again = tmp_path / "again.db"
    run_ingest(v1, again)
    run_ingest(v2, again, kill_after_writes=2)
    assert snapshot(again) != (count_v2, rows_v2)
    run_ingest(v2, again)
    assert snapshot(again) == (count_v2, rows_v2)

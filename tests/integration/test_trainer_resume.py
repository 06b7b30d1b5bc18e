"""The local trainer under torchrun (2 CPU workers, gloo) survives a SIGKILLed worker.

One run goes uninterrupted. Another loses a worker to SIGKILL after its first checkpoint;
torchrun then stops the other worker and exits with an error, as after a reclaimed machine.
The same command run again must resume from the newest complete checkpoint, lose at most
one checkpoint interval of steps, and end where the uninterrupted run ends.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelchain.training import checkpoint as ckpt

from ..tiny_model import tiny_model  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

MAX_STEPS = 30
EVERY = 5
# The resumed run sees the same batches (data order is a function of seed and step) and
# restarts from the saved LoRA weights, AdamW moments, schedule and every rank's RNG state,
# so the only possible difference is floating-point summation order; the two runs measured
# identical here. 1e-4 relative leaves room for that and nothing more: resuming from a
# wrong step, with a reset optimizer or with other batches moves the final loss by far more.
FINAL_LOSS_RTOL = 1e-4
LABELS = ["billing", "shipping", "technical", "account", "returns"]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    rows = []
    for i, word in enumerate(["card", "parcel", "app", "password", "refund"] * 8):
        question = f"Ticket {i}: my {word} problem. " + "Some more detail. " * (i % 9) + "Which team?"
        rows.append({"messages": [
            {"role": "system", "content": "Route tickets."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": LABELS[i % 5]},
        ]})
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def torchrun(tiny_model, train_file, out):
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "modelchain.training.local_trainer",
        "--base-model", str(tiny_model), "--train", str(train_file), "--out", str(out),
        "--max-steps", str(MAX_STEPS), "--batch-size", "4", "--grad-accum", "2", "--lr", "5e-3",
        "--checkpoint-every", str(EVERY), "--keep-checkpoints", "2", "--no-progress",
    ]


def environment():
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def run(cmd, timeout=120):
    done = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def newest_step(root):
    found = ckpt.complete_checkpoints(root)
    return found[-1].step if found else 0


def _children(pid):
    """Direct children of pid, read from /proc (the test runs on Linux, as torchrun here does)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in parentheses may hold spaces: the parent pid follows its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def worker_of_rank(parent_pid, rank, deadline):
    """The pid of torchrun's worker process with the given RANK."""
    while time.monotonic() < deadline:
        pending, seen = [parent_pid], []
        while pending:
            pid = pending.pop()
            kids = _children(pid)
            seen += kids
            pending += kids
        for pid in seen:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ and b"local_trainer" in cmdline:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank} under pid {parent_pid}")


def test_sigkilled_worker_resumes_from_the_newest_checkpoint(tmp_path, tiny_model, train_file):
    reference = tmp_path / "reference"
    run(torchrun(tiny_model, train_file, reference))
    expected = json.loads((reference / "train_metrics.json").read_text())
    assert expected["world_size"] == 2 and expected["resumed_from_step"] == 0
    assert expected["checkpoints_written"] == (MAX_STEPS - 1) // EVERY

    out = tmp_path / "adapter"
    checkpoints = tmp_path / "adapter.checkpoints"
    job = subprocess.Popen(torchrun(tiny_model, train_file, out), env=environment(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        worker = worker_of_rank(job.pid, 1, deadline)
        while newest_step(checkpoints) < EVERY:
            assert job.poll() is None, f"the run ended before its first checkpoint:\n{job.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 90 s"
            time.sleep(0.02)
        newest_before_kill = newest_step(checkpoints)
        os.kill(worker, signal.SIGKILL)
        log, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode != 0, "torchrun must fail when a worker is killed"
    assert not out.exists(), "a killed run must not leave an adapter"
    # The checkpoint after the newest one seen had not appeared, so at the kill the run had
    # finished at most newest_before_kill + EVERY steps (the other rank cannot step alone).
    assert EVERY <= newest_before_kill < MAX_STEPS
    steps_done_at_most = newest_before_kill + EVERY

    resumed = run(torchrun(tiny_model, train_file, out))
    metrics = json.loads((out / "train_metrics.json").read_text())
    resumed_from = metrics["resumed_from_step"]
    steps_lost = steps_done_at_most - resumed_from
    print(f"killed after checkpoint {newest_before_kill}; resumed from step {resumed_from}; "
          f"steps lost <= {steps_lost}; final loss {metrics['final_loss']:.6f} vs {expected['final_loss']:.6f}")
    assert f"resumed from step {resumed_from}" in resumed.stderr + resumed.stdout
    assert resumed_from >= newest_before_kill >= EVERY
    assert steps_lost <= EVERY
    assert len(metrics["losses"]) == MAX_STEPS
    # The steps before the checkpoint come from the checkpoint, the rest were trained again.
    assert metrics["losses"][:resumed_from] == expected["losses"][:resumed_from]
    assert metrics["final_loss"] == pytest.approx(expected["final_loss"], rel=FINAL_LOSS_RTOL)
    assert metrics["losses"] == pytest.approx(expected["losses"], rel=FINAL_LOSS_RTOL)
    # A finished run leaves no checkpoints behind for a later run to resume by mistake.
    assert not checkpoints.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "reference"]

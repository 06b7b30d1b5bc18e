"""Checkpoints of the local trainer: atomic writes, the choice of the one to resume, resuming."""

import json

import pytest

from modelchain.training import checkpoint as ckpt
from modelchain.training import local_trainer
from modelchain.training.local_trainer import train_lora

from ..tiny_model import tiny_model  # noqa: F401 (fixture)

LABELS = ["billing", "shipping", "technical", "account", "returns"]


# ----------------------------------------------------------------------------- choosing a checkpoint


def fake_checkpoint(root, step, fingerprint="fp", complete=True, state_step=None):
    path = root / ckpt.step_dir_name(step)
    path.mkdir(parents=True)
    state = {"step": step if state_step is None else state_step, "fingerprint": fingerprint, "complete": complete}
    (path / ckpt.STATE_FILE).write_text(json.dumps(state))
    return path


def test_latest_takes_the_newest_complete_checkpoint_of_this_run(tmp_path):
    fake_checkpoint(tmp_path, 5)
    fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 15, complete=False)  # state written, never marked complete
    fake_checkpoint(tmp_path, 20, fingerprint="other settings")
    fake_checkpoint(tmp_path, 25, state_step=3)  # a folder renamed by hand
    (tmp_path / ckpt.step_dir_name(30)).mkdir()  # no state at all
    (tmp_path / ".tmp-step-000035-123").mkdir()  # a writer killed before its rename
    (tmp_path / ".tmp-step-000035-123" / ckpt.STATE_FILE).write_text('{"step": 35, "complete": true, "fingerprint": "fp"}')
    found = ckpt.latest(tmp_path, "fp")
    assert found.step == 10 and found.path.name == "step-000010"
    assert ckpt.latest(tmp_path, "nothing like it") is None
    assert ckpt.latest(tmp_path / "missing", "fp") is None


def test_clear_foreign_keeps_only_this_runs_complete_checkpoints(tmp_path):
    fake_checkpoint(tmp_path, 5)
    fake_checkpoint(tmp_path, 10, complete=False)
    fake_checkpoint(tmp_path, 15, fingerprint="other")
    (tmp_path / ".tmp-step-000020-9").mkdir()
    (tmp_path / "notes.txt").write_text("not ours")
    removed = ckpt.clear_foreign(tmp_path, "fp")
    assert sorted(p.name for p in removed) == [".tmp-step-000020-9", "step-000010", "step-000015"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "step-000005"]


def test_fingerprint_follows_settings_and_data(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("a\n")
    first = ckpt.fingerprint({"lr": 1e-3}, data)
    assert ckpt.fingerprint({"lr": 1e-3}, data) == first
    assert ckpt.fingerprint({"lr": 2e-3}, data) != first
    data.write_text("b\n")
    assert ckpt.fingerprint({"lr": 1e-3}, data) != first


# ----------------------------------------------------------------------------- write, read, resume


@pytest.fixture
def train_file(tmp_path):
    rows = []
    for i, word in enumerate(["card", "parcel", "app", "password", "refund"] * 4):
        question = f"Ticket {i}: my {word} problem. " + "More detail. " * (i % 5) + "Which team?"
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": LABELS[i % 5]}]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Dropout on, so that resuming must restore the random state to repeat the same masks.
SETTINGS = dict(max_steps=9, batch_size=2, grad_accum=2, learning_rate=5e-3, rank=4, dropout=0.1, progress=False)


class Crash(Exception):
    pass


def crash_at(monkeypatch, failing_step):
    """Make the trainer die when it asks for the batch of `failing_step` (0-based)."""
    real = local_trainer.global_batch

    def batch_or_crash(step, *args):
        if step == failing_step:
            raise Crash(f"killed at step {step}")
        return real(step, *args)

    monkeypatch.setattr(local_trainer, "global_batch", batch_or_crash)


def test_checkpoints_are_written_every_n_steps_and_pruned(tmp_path, train_file, tiny_model, monkeypatch):
    crash_at(monkeypatch, 8)
    with pytest.raises(Crash):
        train_lora(tiny_model, train_file, tmp_path / "out", checkpoint_every=2, keep_checkpoints=2, **SETTINGS)
    root = tmp_path / "out.checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000006", "step-000008"]  # 2 and 4 pruned
    newest = root / "step-000008"
    assert sorted(p.name for p in newest.iterdir()) == ["adapter", "optimizer.pt", "rng.pt", "scheduler.pt", "state.json"]
    state = json.loads((newest / "state.json").read_text())
    assert state["step"] == 8 and state["complete"] is True and state["world_size"] == 1
    assert len(state["losses"]) == 8
    # The adapter inside a checkpoint loads on its own.
    assert json.loads((newest / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert not (tmp_path / "out").exists()


def test_a_restarted_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path, train_file, tiny_model, monkeypatch):
    reference = train_lora(tiny_model, train_file, tmp_path / "reference", **SETTINGS)
    assert reference["resumed_from_step"] == 0

    out = tmp_path / "out"
    crash_at(monkeypatch, 7)
    with pytest.raises(Crash):
        train_lora(tiny_model, train_file, out, checkpoint_every=3, **SETTINGS)
    monkeypatch.undo()
    root = tmp_path / "out.checkpoints"
    # A half-written checkpoint newer than the last complete one is ignored and removed.
    (root / ".tmp-step-000009-4242").mkdir()
    run_fingerprint = json.loads((root / "step-000006" / "state.json").read_text())["fingerprint"]
    fake_checkpoint(root, 8, fingerprint=run_fingerprint, complete=False)

    resumed = train_lora(tiny_model, train_file, out, checkpoint_every=3, **SETTINGS)
    assert resumed["resumed_from_step"] == 6
    # Same batches, same optimizer state, same dropout masks: the same numbers.
    assert resumed["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert resumed["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-5)
    assert json.loads((out / "train_metrics.json").read_text())["resumed_from_step"] == 6
    assert not root.exists()  # a finished run removes its checkpoints


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path, train_file, tiny_model, monkeypatch):
    crash_at(monkeypatch, 5)
    with pytest.raises(Crash):
        train_lora(tiny_model, train_file, tmp_path / "out", checkpoint_every=2, **SETTINGS)
    monkeypatch.undo()
    other = {**SETTINGS, "learning_rate": 1e-3}
    metrics = train_lora(tiny_model, train_file, tmp_path / "out", checkpoint_every=2, **other)
    assert metrics["resumed_from_step"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "train.jsonl"]

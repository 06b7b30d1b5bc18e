"""Checkpoints of the local trainer: written whole or not at all, resumed from the newest.

A checkpoint is a folder ``step-000040/`` under the checkpoint root, holding

- ``adapter/``: the LoRA weights as a peft adapter (loadable on its own, e.g. to evaluate it),
- ``optimizer.pt`` and ``scheduler.pt``: AdamW moments and the learning-rate schedule,
- ``rng.pt``: the python, numpy and torch random states of every rank (dropout continues
  exactly where it stopped),
- ``state.json``: the step (which also fixes the data position, see ``packing.global_batch``),
  the losses so far, the run's fingerprint, and ``"complete": true``.

It is written into ``.tmp-step-000040-<pid>/`` and renamed into place last, so a process
killed half-way leaves only a temporary folder, which resuming ignores and later runs remove.
The fingerprint (settings and data) keeps a run from resuming another run's checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STEP_DIR = re.compile(r"^step-(\d{6,})$")
TMP_PREFIX = ".tmp-"
STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    step: int
    path: Path
    state: dict[str, Any]


def fingerprint(settings: dict[str, Any], train_path: str | os.PathLike) -> str:
    """A hash of what decides the training trajectory: settings and the training data's bytes."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    with open(train_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("complete") is True else None


def complete_checkpoints(root: str | os.PathLike) -> list[Checkpoint]:
    """Every complete checkpoint under ``root``, oldest first (temporary folders are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if not match or not path.is_dir():
            continue
        state = _read_state(path)
        if state is not None and state.get("step") == int(match.group(1)):
            found.append(Checkpoint(int(match.group(1)), path, state))
    return sorted(found, key=lambda c: c.step)


def latest(root: str | os.PathLike, run_fingerprint: str) -> Checkpoint | None:
    """The newest complete checkpoint of this run (same fingerprint), or None."""
    mine = [c for c in complete_checkpoints(root) if c.state.get("fingerprint") == run_fingerprint]
    return mine[-1] if mine else None


def clear_foreign(root: str | os.PathLike, run_fingerprint: str) -> list[Path]:
    """Remove temporary folders and checkpoints of other settings or data; returns what went.

    Called before a run starts training into ``root``: a killed writer's temporary folder
    can never become complete, and another run's checkpoints can never be resumed by this one.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for path in root.iterdir():
        foreign = path.name.startswith(TMP_PREFIX)
        if STEP_DIR.match(path.name):
            state = _read_state(path)
            foreign = state is None or state.get("fingerprint") != run_fingerprint
        if foreign:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save(
    root: str | os.PathLike,
    step: int,
    *,
    model,
    optimizer,
    scheduler,
    rng_states: list[dict[str, Any]],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then keep only the newest ``keep``."""
    import torch

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.save_pretrained(tmp / "adapter")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_states, tmp / "rng.pt")
        body = json.dumps({**state, "step": step, "world_size": len(rng_states), "complete": True}, indent=2)
        (tmp / STATE_FILE).write_text(body + "\n")
        _fsync_tree(tmp)
        if final.exists():  # left by an earlier attempt at this step with the same settings
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in complete_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old.path, ignore_errors=True)
    return final


def load(checkpoint: Checkpoint, *, model, optimizer, scheduler, rank: int) -> bool:
    """Restore weights, optimizer and scheduler, and this rank's random state.

    Returns whether the random state was restored: it is not when the checkpoint was
    written by a different number of processes (the caller reseeds instead).
    """
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(checkpoint.path / "adapter" / "adapter_model.safetensors")
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"checkpoint {checkpoint.path} lacks LoRA weights, e.g. {missing[0]}")
    optimizer.load_state_dict(torch.load(checkpoint.path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(checkpoint.path / "scheduler.pt", weights_only=True))
    states = torch.load(checkpoint.path / "rng.pt", weights_only=False)
    if len(states) != checkpoint.state.get("world_size") or rank >= len(states):
        return False
    set_rng_state(states[rank])
    return True


def _fsync_tree(folder: Path) -> None:
    # Data on disk before the rename makes the folder visible, so a crash of the machine
    # (not only of the process) cannot leave a renamed folder with empty files.
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    if sys.platform.startswith("linux"):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_run(root: str | os.PathLike, run_fingerprint: str) -> None:
    """Remove a finished run's checkpoints, and the root itself when nothing else is left."""
    root = Path(root)
    for found in complete_checkpoints(root):
        if found.state.get("fingerprint") == run_fingerprint:
            shutil.rmtree(found.path, ignore_errors=True)
    if root.is_dir():
        for path in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty

"""Output files, written row by row as data prep streams (the lines are made in rows.py).

For each split, `{train,val,test}.jsonl` in the chat format the local trainer, the NeMo
entrypoint and the evaluation read, `{"messages": [{"role", "content"}, ...], "id": ...}`;
its sha256 is the split's hash in the data card and in lineage. (The NeMo entrypoint renders
these rows with the base model's own chat template in the training pod, so data prep writes
no NeMo-specific files.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SPLITS = ("train", "val", "test")


class _File:
    def __init__(self, path: Path, digest: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "wb", buffering=1 << 20)
        self.sha = hashlib.sha256() if digest else None
        self.count = 0

    def write_lines(self, data: bytes, count: int) -> None:
        """`count` newline-terminated lines."""
        self.handle.write(data)
        if self.sha is not None:
            self.sha.update(data)
        self.count += count


class SplitWriters:
    """Appends each kept row to its split; `close()` returns counts and hashes."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.chat = {s: _File(out_dir / f"{s}.jsonl", digest=True) for s in SPLITS}

    def write_many(self, split: str, count: int, chat: bytes) -> None:
        """`count` rows of one split, as newline-terminated chat lines (made by rows.RowStage)."""
        self.chat[split].write_lines(chat, count)

    def close(self) -> dict[str, dict]:
        summary = {}
        for split in SPLITS:
            self.chat[split].handle.close()
            summary[split] = {
                "count": self.chat[split].count,
                "sha256": self.chat[split].sha.hexdigest(),
                "files": {"chat": f"{split}.jsonl"},
            }
        return summary

    def abort(self) -> None:
        for f in self.chat.values():
            f.handle.close()

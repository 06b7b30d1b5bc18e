"""Output files, written row by row as data prep streams (the lines are made in rows.py).

For each split:

- `{train,val,test}.jsonl`: the chat format the local trainer and the evaluation read,
  `{"messages": [{"role", "content"}, ...], "id": ...}`; its sha256 is the split's hash in
  the data card and in lineage;
- `nemo_sft/{training,validation,test}.jsonl`: NeMo SFT pairs `{"input", "output"}`, the
  input being the conversation up to the answer rendered with the model's chat template
  (opened for the assistant's turn), as the NeMo entrypoint does;
- `nemo_chat/{training,validation,test}.jsonl`: NeMo's chat format
  `{"system", "conversations": [{"from": "User"|"Assistant", "value"}], "mask": "User",
  "type": "VALUE_TO_TEXT"}`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SPLITS = ("train", "val", "test")
NEMO_NAMES = {"train": "training", "val": "validation", "test": "test"}


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
    """Appends each kept row to its split in every format; `close()` returns counts and hashes."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.chat = {s: _File(out_dir / f"{s}.jsonl", digest=True) for s in SPLITS}
        self.sft = {s: _File(out_dir / "nemo_sft" / f"{NEMO_NAMES[s]}.jsonl") for s in SPLITS}
        self.nemo_chat = {s: _File(out_dir / "nemo_chat" / f"{NEMO_NAMES[s]}.jsonl") for s in SPLITS}

    def write_many(self, split: str, count: int, chat: bytes, sft: bytes, nemo_chat: bytes) -> None:
        """`count` rows of one split, as newline-terminated lines (made by rows.RowStage) in each format."""
        self.chat[split].write_lines(chat, count)
        self.sft[split].write_lines(sft, count)
        self.nemo_chat[split].write_lines(nemo_chat, count)

    def close(self) -> dict[str, dict]:
        summary = {}
        for split in SPLITS:
            for files in (self.chat, self.sft, self.nemo_chat):
                files[split].handle.close()
            summary[split] = {
                "count": self.chat[split].count,
                "sha256": self.chat[split].sha.hexdigest(),
                "files": {"chat": f"{split}.jsonl", "nemo_sft": f"nemo_sft/{NEMO_NAMES[split]}.jsonl",
                          "nemo_chat": f"nemo_chat/{NEMO_NAMES[split]}.jsonl"},
            }
        return summary

    def abort(self) -> None:
        for files in (self.chat, self.sft, self.nemo_chat):
            for f in files.values():
                f.handle.close()

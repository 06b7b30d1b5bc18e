"""Small file helpers: atomic writes and hashing, so nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

# mkstemp/mkdtemp create private (0600/0700) entries; what we publish gets the modes a plain
# open()/mkdir() would give under the process umask.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _fsync_path(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root` (and `root`), so a rename publishes durable data."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            file = os.path.join(dirpath, name)
            if not os.path.islink(file):
                _fsync_path(file)
        _fsync_path(dirpath)


def _swap_names(path: Path) -> tuple[Path, Path]:
    """The two fixed names of a swap in progress: the staged new folder and the backup of the old."""
    return path.with_name(f".{path.name}.new"), path.with_name(f".{path.name}.old")


def recover_dir(path: str | os.PathLike) -> None:
    """Finish or undo a folder swap of atomic_dir that a dead process left half done.

    `.NAME.new` is a complete staged folder, `.NAME.old` the previous folder. With NAME
    missing (the process died between the two renames) the staged folder is published if
    it is there, else the backup is restored; with NAME present the leftovers are removed
    (NAME is whole: either the swap finished or it never started). Nothing to do: no-op.
    """
    path = Path(path)
    new, old = _swap_names(path)
    if not os.path.lexists(path):
        if new.is_dir():
            os.replace(new, path)
        elif old.is_dir():
            os.replace(old, path)
        else:
            return
        _fsync_path(path.parent)
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only when the block succeeds.

    The block fills a private folder; on success it is fsynced, renamed to `.NAME.new`,
    then `NAME` moves to `.NAME.old` and `.NAME.new` to `NAME`, and the parent is fsynced.
    A process that dies between those renames leaves `NAME` missing: the next atomic_dir
    (or `recover_dir`) of the same path publishes `.NAME.new` (or restores `.NAME.old`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    new, old = _swap_names(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        fsync_tree(tmp)
        os.replace(tmp, new)  # from here on the staged folder is complete and has a name recovery knows
        try:
            if os.path.lexists(path):
                os.replace(path, old)
            os.replace(new, path)
            _fsync_path(path.parent)
        except BaseException:
            with contextlib.suppress(Exception):
                recover_dir(path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()

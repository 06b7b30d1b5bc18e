"""Discover: list the documents of a corpus, with a content hash for each.

The hash is what makes ingestion incremental: a document whose bytes have not changed is
not chunked, embedded or written again.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Sequence

from modelchain.core.io import sha256_file

DEFAULT_INCLUDE = ("**/*.md", "**/*.txt")


def discover(
    source_uri: str,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = (),
) -> list[dict]:
    """Files under the folder ``source_uri`` matching ``include`` but no ``exclude`` glob.

    Globs are relative to the folder, ``**`` spanning any number of sub-folders (so
    ``**/*.md`` also matches ``README.md`` at the top, and ``drafts/**`` everything under
    ``drafts``); wildcards do not match hidden names. Returns one record per file,
    sorted by ``source``: ``source`` (posix path relative to the folder), ``path``
    (absolute), ``sha256`` and ``bytes``.
    """
    root = _local_root(source_uri)
    if not root.is_dir():
        raise FileNotFoundError(f"document folder not found: {source_uri}")
    excluded = {path for pattern in exclude for path in _glob(root, pattern)}
    paths = {path for pattern in include for path in _glob(root, pattern)} - excluded
    records = []
    for path in paths:
        records.append(
            {
                "source": path.relative_to(root).as_posix(),
                "path": str(path),
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
            }
        )
    return sorted(records, key=lambda r: r["source"])


def _local_root(source_uri: str) -> Path:
    if source_uri.startswith("file://"):
        source_uri = source_uri[len("file://") :]
    elif "://" in source_uri:
        raise ValueError(f"only local folders can be discovered so far, got {source_uri!r}")
    return Path(source_uri).expanduser().resolve()


def _glob(root: Path, pattern: str) -> list[Path]:
    if pattern.startswith("/") or ".." in Path(pattern).parts:
        raise ValueError(f"glob {pattern!r} must be relative to the document folder")
    # glob.glob, unlike Path.glob on Python 3.11, lets "dir/**" match the files below dir.
    # Like a shell, wildcards skip hidden names (.git, .venv) unless the pattern names them.
    matches = glob.glob(pattern, root_dir=root, recursive=True)
    return [root / match for match in matches if (root / match).is_file()]

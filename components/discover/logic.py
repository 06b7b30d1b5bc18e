"""Discover: list the documents of a corpus (a local folder or an S3 prefix).

Local files get a content hash; S3 objects their ETag and size. The chunk step reads the
bytes again (core.corpus), refuses a document that no longer matches its record, and
hashes the rest: that hash is what makes ingestion incremental, since a document whose
bytes have not changed is not embedded or written again.
"""

from __future__ import annotations

import glob
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from modelchain.core.corpus import SUPPORTED_INCLUDE
from modelchain.core.io import sha256_file
from modelchain.core.progress import progress_bar

if TYPE_CHECKING:
    from omegaconf import DictConfig

DEFAULT_INCLUDE = SUPPORTED_INCLUDE  # every supported type, at any depth


def discover_corpus(source: "DictConfig", progress: bool = True) -> list[dict]:
    """The documents of a typed ``rag.source`` (uri, include, exclude); ValueError if there are none."""
    documents = discover(source.uri, include=source.include, exclude=source.exclude, progress=progress)
    if not documents:
        raise ValueError(no_documents_message(source.uri, source.include, source.exclude))
    return documents


def no_documents_message(source_uri: str, include: Sequence[str], exclude: Sequence[str] = ()) -> str:
    """One line saying why ``source_uri`` gave no documents: empty, or nothing matches the globs."""
    names = _all_names(source_uri)
    if not names:
        return f"no documents under {source_uri}: it holds no files"
    patterns = ", ".join(include)
    excluded = f" and not rag.source.exclude ({', '.join(exclude)})" if exclude else ""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"no documents under {source_uri}: none of its {len(names)} files ({shown}) matches "
        f"rag.source.include ({patterns}){excluded}"
    )


def _all_names(source_uri: str) -> list[str]:
    """Every non-hidden file under a folder or prefix, relative to it (for error messages)."""
    if source_uri.startswith("s3://"):
        return [r["source"] for r in _discover_s3(source_uri, ["**"], [], progress=False)]
    root = _local_root(source_uri)
    return sorted(p.relative_to(root).as_posix() for p in _glob(root, "**"))


def discover(
    source_uri: str,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = (),
    progress: bool = True,
) -> list[dict]:
    """Documents under ``source_uri`` matching ``include`` but no ``exclude`` glob.

    ``source_uri`` is a folder (a path or ``file://``) or an S3 prefix (``s3://bucket/docs/``).
    Globs are relative to it, ``**`` spanning any number of sub-folders (so ``**/*.md``
    also matches ``README.md`` at the top, and ``drafts/**`` everything under ``drafts``);
    wildcards do not match hidden names. Returns one record per document, sorted by
    ``source`` (posix path relative to the folder or prefix), with ``uri`` and ``bytes``;
    local files also ``path`` (absolute) and ``sha256``, S3 objects ``etag``.
    """
    for pattern in [*include, *exclude]:
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise ValueError(f"glob {pattern!r} must be relative to the document folder")
    if source_uri.startswith("s3://"):
        return _discover_s3(source_uri, include, exclude, progress)
    root = _local_root(source_uri)
    if not root.is_dir():
        raise FileNotFoundError(f"document folder not found: {source_uri}")
    excluded = {path for pattern in exclude for path in _glob(root, pattern)}
    paths = sorted({path for pattern in include for path in _glob(root, pattern)} - excluded)
    records = []
    with progress_bar(len(paths), "Discovering", "doc", progress) as bar:
        for path in paths:
            records.append(
                {
                    "source": path.relative_to(root).as_posix(),
                    "uri": str(path),
                    "path": str(path),
                    "sha256": sha256_file(path),
                    "bytes": path.stat().st_size,
                }
            )
            bar.update(1)
    return sorted(records, key=lambda r: r["source"])


def _local_root(source_uri: str) -> Path:
    if source_uri.startswith("file://"):
        source_uri = source_uri[len("file://") :]
    elif "://" in source_uri:
        raise ValueError(f"a document source is a folder or an s3:// prefix, got {source_uri!r}")
    return Path(source_uri).expanduser().resolve()


def _glob(root: Path, pattern: str) -> list[Path]:
    # glob.glob, unlike Path.glob on Python 3.11, lets "dir/**" match the files below dir.
    # Like a shell, wildcards skip hidden names (.git, .venv) unless the pattern names them.
    matches = glob.glob(pattern, root_dir=root, recursive=True)
    return [root / match for match in matches if (root / match).is_file()]


# ----------------------------------------------------------------------------- S3


def _discover_s3(source_uri: str, include: Sequence[str], exclude: Sequence[str], progress: bool) -> list[dict]:
    from botocore.exceptions import BotoCoreError, ClientError

    from modelchain.core import s3

    bucket, prefix = s3.split_uri(source_uri)
    if prefix:
        prefix += "/"  # a prefix names a folder: "docs" must not match "docs-old/"
    records = []
    try:
        pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        with progress_bar(None, "Discovering", "doc", progress) as bar:
            for page in pages:
                for obj in page.get("Contents", []):
                    # A document's name is its key below the prefix: refused (UnsafeKeyError, a
                    # ValueError naming the key) when it would leave the corpus's folder.
                    source = s3.relative_key(bucket, prefix, obj["Key"])
                    if source.endswith("/") or not source:
                        continue  # a folder marker
                    if _matches_any(source, include) and not _matches_any(source, exclude):
                        records.append(
                            {
                                "source": source,
                                "uri": f"s3://{bucket}/{obj['Key']}",
                                "etag": obj.get("ETag", "").strip('"'),
                                "bytes": int(obj["Size"]),
                            }
                        )
                        bar.update(1)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise RuntimeError(
            f"cannot list {source_uri}: {error.get('Code', '')} {error.get('Message', '')}".strip()
        ) from None
    except BotoCoreError as exc:
        raise RuntimeError(f"cannot list {source_uri}: {exc}") from None
    return sorted(records, key=lambda r: r["source"])


def _matches_any(source: str, patterns: Sequence[str]) -> bool:
    return any(_glob_regex(pattern).fullmatch(source) for pattern in patterns)


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as glob.glob(recursive=True) reads it, for S3 keys relative to the prefix."""
    parts = pattern.split("/")
    out = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            # Zero or more non-hidden folders; at the end, everything below.
            out += r"(?:[^/.][^/]*/)*" if not last else r"[^/.][^/]*(?:/[^/.][^/]*)*"
            continue
        piece = "(?!\\.)" if part[:1] in ("*", "?", "[") else ""
        j = 0
        while j < len(part):
            char = part[j]
            if char == "*":
                piece += "[^/]*"
            elif char == "?":
                piece += "[^/]"
            elif char == "[" and part.find("]", j + 2) != -1:
                end = part.find("]", j + 2)  # "]" right after "[" is a member, as in glob
                body = part[j + 1 : end]
                body = "^" + body[1:] if body.startswith("!") else body
                piece += "[" + body.replace("\\", "\\\\").replace("[", "\\[") + "]"
                j = end
            else:
                piece += re.escape(char)
            j += 1
        out += piece + ("" if last else "/")
    return re.compile(out)

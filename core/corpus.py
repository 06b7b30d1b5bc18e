"""Reading the documents of a RAG corpus: the bytes behind a discover record, checked against it.

A discover record names a document by ``path`` (a local file) or ``uri`` (``s3://``) and
carries what it was when listed: ``sha256`` for a local file, ``etag`` for an S3 object.
The chunk step is cached by KFP on the discover manifest, so the chunks it makes must be
those of the bytes the manifest describes: a document whose bytes no longer match its
record is refused (``DocumentChanged``), never chunked under the old hash.

S3 reads go through ``core.s3`` (the one client factory and its endpoint rule). boto3 is
imported only when an S3 document is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelchain.core.io import sha256_bytes

# The document types a corpus may hold, by file ending: the chunk step parses each family
# (any other name an include pattern picks is read as plain text), and the default
# rag.source.include takes them all at any depth.
MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdx")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
PDF_SUFFIXES = (".pdf",)
TEXT_SUFFIXES = (".txt",)
SUPPORTED_SUFFIXES = MARKDOWN_SUFFIXES + HTML_SUFFIXES + PDF_SUFFIXES + TEXT_SUFFIXES
SUPPORTED_INCLUDE = tuple(f"**/*{suffix}" for suffix in SUPPORTED_SUFFIXES)


class DocumentChanged(Exception):
    """A document's bytes differ from its discover record: it changed after it was listed."""


class DocumentReader:
    """Reads a discover record's bytes: a local ``path``, else an ``s3://`` ``uri``.

    A missing or refused object raises OSError (the document is quarantined); bytes that
    do not match the record's ``sha256`` or ``etag`` raise DocumentChanged (quarantined
    too); an S3 endpoint that cannot be reached, or missing credentials, raise
    RuntimeError, since every other document would fail the same way.
    """

    def __init__(self) -> None:
        self._s3: Any = None

    def read(self, doc: dict) -> bytes:
        if doc.get("path"):
            raw = Path(doc["path"]).read_bytes()
            listed = doc.get("sha256")
            if listed and sha256_bytes(raw) != listed:
                raise DocumentChanged(
                    f"changed since discover: its bytes no longer match the manifest's sha256 {listed[:12]}..."
                )
            return raw
        uri = doc.get("uri", "")
        if not uri.startswith("s3://"):
            raise OSError(f"no local path and not an s3:// URI: {uri!r}")
        from botocore.exceptions import BotoCoreError, ClientError

        from modelchain.core import s3

        if self._s3 is None:
            self._s3 = s3.client()
        bucket, key = s3.split_uri(uri)
        try:
            response = self._s3.get_object(Bucket=bucket, Key=key)
            raw = response["Body"].read()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise OSError(f"{uri}: {error.get('Code', '')} {error.get('Message', '')}".strip()) from None
        except BotoCoreError as exc:
            raise RuntimeError(f"cannot read {uri}: {exc}") from None
        listed, now = doc.get("etag"), response.get("ETag", "").strip('"')
        if listed and now and now != listed:
            raise DocumentChanged(f"changed since discover: its ETag is {now}, the manifest's {listed}")
        return raw

"""Where rows come from: local paths and s3:// URIs; JSONL, JSON, Parquet and CSV, gzip or not.

A source URI is a file, a folder or S3 prefix (every data file under it), or a glob; several
URIs may be given separated by commas. The content is sniffed before it is read, so a file
whose content contradicts its name (Parquet called .jsonl, CSV called .json) is a clear error
rather than a stream of confusing row errors. Everything is read as a stream: JSONL line by
line, JSON arrays element by element, Parquet by record batches, CSV row by row.

Readers yield `Batch`es: JSONL items are the raw line bytes (parsing them is part of the
row work, so a bad line is quarantined, not fatal); other formats yield parsed objects, or
a `BadItem` carrying the reason a row could not be read.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import glob as globlib
import gzip
import io
import json
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

from modelchain.core.s3 import S3UriError, UnsafeKeyError, relative_key, split_uri
from modelchain.core.s3 import client as s3_client
from modelchain.data.formats import AUTO, EXTENSIONS, FAMILIES, TITLES

BATCH_ROWS = 2048
READ_CHUNK = 8 << 20  # bytes per read (and per S3 ranged GET)
SNIFF_BYTES = 64 << 10
# Names a JSON document may keep its rows under (the Langfuse API wraps lists in "data").
_ROW_KEYS = ("data", "rows", "records", "items", "examples", "traces", "spans")
_WILDCARDS = "*?["
# S3 error codes that mean the credentials are wrong or not allowed.
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
                     "ExpiredToken", "AuthorizationHeaderMalformed", "InvalidSecurity"}


class DataError(ValueError):
    """A source that cannot be read at all; the message names the URI."""


@dataclass(frozen=True)
class SourceFile:
    uri: str  # as shown to the user: a local path or s3://bucket/key
    size: Optional[int] = None


@dataclass
class BadItem:
    reason: str


@dataclass
class Batch:
    source: str
    unit: str  # "line" (JSONL) or "row"
    numbers: list[int] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)  # bytes (JSONL), dict/other (parsed), BadItem


# --------------------------------------------------------------------------- S3
# The client and the URI parser are core.s3's (one endpoint rule for every S3 reader).
def _bucket_and_key(uri: str) -> tuple[str, str]:
    """core.s3.split_uri, as a DataError; a key given with a trailing slash keeps it (a prefix)."""
    try:
        bucket, key = split_uri(uri)
    except S3UriError as exc:
        raise DataError(str(exc)) from exc
    return bucket, (key + "/" if key and uri.endswith("/") else key)


def s3_error(exc: BaseException, uri: str) -> DataError:
    """botocore's exceptions as one line that says what to fix."""
    from botocore.exceptions import (ClientError, EndpointConnectionError, NoCredentialsError,
                                     PartialCredentialsError)

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return DataError(f"{uri}: no S3 credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)")
    if isinstance(exc, EndpointConnectionError):
        return DataError(f"{uri}: cannot reach the S3 endpoint {exc.kwargs.get('endpoint_url', '')}")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _CREDENTIAL_CODES:
            return DataError(f"{uri}: S3 refused the credentials ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        if code in ("NoSuchKey", "404", "NotFound"):
            return DataError(f"{uri}: no such S3 object")
        if code == "NoSuchBucket":
            return DataError(f"{uri}: no such S3 bucket")
        message = exc.response.get("Error", {}).get("Message", "")
        return DataError(f"{uri}: S3 error {code} {message}".strip())
    return DataError(f"{uri}: S3 read failed: {type(exc).__name__}: {exc}")


class S3Reader(io.RawIOBase):
    """A seekable read-only file over one S3 object, by ranged GETs.

    Seekable so Parquet can read its footer first and then only the row groups; wrapped in a
    BufferedReader each GET fetches READ_CHUNK bytes.
    """

    def __init__(self, client, uri: str, size: Optional[int] = None):
        super().__init__()
        self._client, self.uri = client, uri
        self._bucket, self._key = _bucket_and_key(uri)
        if size is None:
            try:
                size = client.head_object(Bucket=self._bucket, Key=self._key)["ContentLength"]
            except Exception as exc:
                raise s3_error(exc, uri) from exc
        self.size, self._pos = size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self.size or len(buffer) == 0:
            return 0
        end = min(self.size, self._pos + len(buffer)) - 1
        try:
            body = self._client.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-{end}")["Body"]
            data = body.read()
        except Exception as exc:
            raise s3_error(exc, self.uri) from exc
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


# --------------------------------------------------------------------------- expanding URIs
def _is_data_name(name: str) -> bool:
    base = Path(name).name
    if base.startswith((".", "_")):  # hidden files, _SUCCESS markers
        return False
    stem = base[:-3] if base.endswith(".gz") else base
    return Path(stem).suffix.lower() in EXTENSIONS


def expand(uri_list: str) -> list[SourceFile]:
    """Every file the source URIs name, in a stable order; an error if one names nothing."""
    files: list[SourceFile] = []
    for uri in [u.strip() for u in uri_list.split(",") if u.strip()]:
        found = _expand_s3(uri) if uri.startswith("s3://") else _expand_local(uri)
        if not found:
            raise DataError(f"{uri}: no data files there (looked for {', '.join(sorted(EXTENSIONS))}, optionally .gz)")
        files += found
    if not files:
        raise DataError("no source URI given (data.source.uri)")
    return files


def _expand_local(uri: str) -> list[SourceFile]:
    path = uri.removeprefix("file://")
    if any(c in path for c in _WILDCARDS):
        names = sorted(p for p in globlib.glob(path, recursive=True) if os.path.isfile(p))
        return [SourceFile(p, os.path.getsize(p)) for p in names]
    p = Path(path)
    if p.is_file():
        return [SourceFile(path, p.stat().st_size)]
    if p.is_dir():
        names = sorted(str(q) for q in p.rglob("*") if q.is_file() and _is_data_name(q.name))
        return [SourceFile(n, os.path.getsize(n)) for n in names]
    raise DataError(f"{uri}: no such dataset file or folder")


def _expand_s3(uri: str) -> list[SourceFile]:
    bucket, key = _bucket_and_key(uri)
    client = s3_client()
    pattern = None
    if any(c in key for c in _WILDCARDS):
        first = min(key.index(c) for c in _WILDCARDS if c in key)
        prefix, pattern = key[:first], key
    elif key and not key.endswith("/"):
        try:  # an object: the common case, one request
            head = client.head_object(Bucket=bucket, Key=key)
            return [SourceFile(uri, head["ContentLength"])]
        except Exception as exc:
            error = s3_error(exc, uri)
            if "no such S3 object" not in str(error):
                raise error from exc
        prefix = key + "/"
    else:
        prefix = key
    found = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = item["Key"]
                # The same rule as every other download: no key that leaves its folder.
                if relative_key(bucket, prefix, name).endswith("/"):
                    continue
                if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
                    continue
                if pattern is None and not _is_data_name(name):
                    continue
                found.append(SourceFile(f"s3://{bucket}/{name}", item["Size"]))
    except UnsafeKeyError as exc:
        raise DataError(str(exc)) from None
    except Exception as exc:
        raise s3_error(exc, uri) from exc
    if not found and pattern is None and not key.endswith("/") and key:
        raise DataError(f"{uri}: no such S3 object or prefix")
    return sorted(found, key=lambda f: f.uri)


# --------------------------------------------------------------------------- opening and sniffing
def open_binary(source: SourceFile) -> BinaryIO:
    """A buffered, seekable binary stream over a local file or S3 object."""
    if source.uri.startswith("s3://"):
        return io.BufferedReader(S3Reader(s3_client(), source.uri, source.size), buffer_size=READ_CHUNK)
    try:
        return open(source.uri.removeprefix("file://"), "rb", buffering=READ_CHUNK)
    except OSError as exc:
        raise DataError(f"{source.uri}: cannot open ({exc.strerror})") from exc


def claimed_format(uri: str) -> tuple[Optional[str], bool]:
    """(format the name claims or None, whether the name says gzip)."""
    name = Path(uri.split("?")[0]).name.lower()
    gz = name.endswith(".gz")
    stem = name[:-3] if gz else name
    return EXTENSIONS.get(Path(stem).suffix), gz


def sniff(head: bytes) -> str:
    """What the first bytes look like: parquet, json (array/document), jsonl, csv or binary."""
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf16"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not text:
        return "empty"
    if b"\x00" in head[:4096]:
        return "binary"
    if text[:1] == b"[":
        return "json"
    if text[:1] == b"{":
        first, newline, rest = text.partition(b"\n")
        try:
            json.loads(first)
            # One object on one line is both a JSON document and a one-row JSON Lines file.
            return "jsonl" if rest.strip() or len(head) >= SNIFF_BYTES else "json_or_jsonl"
        except (ValueError, UnicodeDecodeError):
            # A one-line object cut off by the sniff window is JSONL too; a pretty-printed
            # document has its first line end inside the object.
            return "json" if newline else "jsonl"
    return "csv"


_NAMES = {**TITLES, "binary": "binary data", "utf16": "UTF-16 text", "empty": "empty"}  # and the sniffer's other verdicts


def decide_format(uri: str, declared: str, sniffed: str) -> str:
    """The format to read with; an error when the content contradicts the name or config."""
    claim = declared if declared != AUTO else claimed_format(uri)[0]
    if sniffed == "utf16":
        raise DataError(f"{uri}: the content is UTF-16 text; convert it to UTF-8")
    if sniffed == "binary":
        what = f"the name says {_NAMES[claim]} but " if claim else ""
        raise DataError(f"{uri}: {what}the content is binary, not JSON, Parquet or CSV")
    if sniffed == "json_or_jsonl":
        sniffed = claim if claim in ("json", "jsonl") else "jsonl"
    if claim is None:
        return sniffed
    if FAMILIES[claim] != FAMILIES[sniffed]:
        raise DataError(f"{uri}: the name says {_NAMES[claim]} but the content is {_NAMES[sniffed]}")
    # JSON and JSON Lines are told apart by content: many .json files hold one object a line.
    return sniffed if FAMILIES[claim] == "json" else claim


# --------------------------------------------------------------------------- readers
def read_batches(source: SourceFile, declared: str = "auto", batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """Stream one file as batches of raw items, after checking its content matches its name."""
    raw = open_binary(source)
    try:
        magic = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        _, named_gz = claimed_format(source.uri)
        stream: BinaryIO = raw
        if magic == b"\x1f\x8b":
            stream = io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=READ_CHUNK)
        elif named_gz:
            raise DataError(f"{source.uri}: the name says gzip but the content is not gzip-compressed")
        try:
            head = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{source.uri}: cannot decompress: {exc}") from exc
        sniffed = sniff(head)
        if sniffed == "empty":
            return  # an empty file has no rows; the caller reports an empty dataset
        fmt = decide_format(source.uri, declared, sniffed)
        if fmt == "parquet":
            if stream is not raw:
                raise DataError(f"{source.uri}: gzip-compressed Parquet is not supported (Parquet compresses itself)")
            yield from _parquet_batches(source.uri, raw, batch_rows)
        elif fmt == "jsonl":
            yield from _jsonl_batches(source.uri, stream, batch_rows)
        elif fmt == "json":
            yield from _json_batches(source.uri, stream, batch_rows)
        else:
            yield from _csv_batches(source.uri, stream, batch_rows)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source.uri}: read failed: {exc}") from exc
    finally:
        raw.close()


def _jsonl_batches(uri: str, stream: BinaryIO, batch_rows: int) -> Iterator[Batch]:
    """Raw lines with their 1-based line numbers; blank lines are skipped but counted."""
    line_no = 0
    rest = b""
    items: list[bytes] = []
    numbers: list[int] = []
    first = True
    while True:
        chunk = stream.read(READ_CHUNK)
        if chunk and first:
            chunk, first = chunk.removeprefix(b"\xef\xbb\xbf"), False
        if chunk:
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
        else:  # the end: a last line without a newline
            lines, rest = [rest], b""
        # `isspace()` stops at the first other byte; `strip()` would copy every line
        kept = [line for line in lines if line and not line.isspace()]
        if len(kept) == len(lines):  # the usual case: no blank line in this chunk
            numbers.extend(range(line_no + 1, line_no + len(lines) + 1))
        else:
            numbers.extend(line_no + 1 + i for i, line in enumerate(lines) if line and not line.isspace())
        items.extend(kept)
        line_no += len(lines)
        while len(items) >= batch_rows or (not chunk and items):
            yield Batch(uri, "line", numbers[:batch_rows], items[:batch_rows])
            del numbers[:batch_rows], items[:batch_rows]
        if not chunk:
            return


def _parquet_batches(uri: str, stream: BinaryIO, batch_rows: int) -> Iterator[Batch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{uri}: not a readable Parquet file: {exc}") from exc
    row = 0
    try:
        for record_batch in parquet.iter_batches(batch_size=batch_rows):
            items = record_batch.to_pylist()
            yield Batch(uri, "row", list(range(row + 1, row + len(items) + 1)), items)
            row += len(items)
    except pa.ArrowException as exc:
        raise DataError(f"{uri}: Parquet read failed after row {row}: {exc}") from exc


def _text(uri: str, stream: BinaryIO) -> io.TextIOWrapper:
    # surrogateescape keeps going past bytes that are not UTF-8, so the row holding them is
    # quarantined with a reason instead of the whole file failing.
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _has_surrogates(value: Any) -> bool:
    return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def _csv_batches(uri: str, stream: BinaryIO, batch_rows: int) -> Iterator[Batch]:
    csv.field_size_limit(min(sys.maxsize, (1 << 31) - 1))
    delimiter = "\t" if claimed_format(uri)[0] == "csv" and ".tsv" in uri.lower() else ","
    reader = csv.reader(_text(uri, stream), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataError(f"{uri}: not readable as CSV: {exc}") from exc
    if any(_has_surrogates(h) for h in header):
        raise DataError(f"{uri}: the CSV header is not UTF-8")
    batch = Batch(uri, "row")
    row_no = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{uri}: CSV error at line {reader.line_num}: {exc}") from exc
        if not values:
            continue
        row_no += 1
        batch.numbers.append(row_no)
        if len(values) != len(header):
            batch.items.append(BadItem(f"row has {len(values)} fields, the header has {len(header)}"))
        elif any(_has_surrogates(v) for v in values):
            batch.items.append(BadItem("not UTF-8 text"))
        else:
            batch.items.append(dict(zip(header, values)))
        if len(batch.items) >= batch_rows:
            yield batch
            batch = Batch(uri, "row")
    if batch.items:
        yield batch


def _json_batches(uri: str, stream: BinaryIO, batch_rows: int) -> Iterator[Batch]:
    """A JSON array streamed element by element; any other document is read whole."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    parser = json.JSONDecoder()
    buf, pos, done = "", 0, False

    def fill() -> bool:
        nonlocal buf, pos
        chunk = stream.read(READ_CHUNK)
        try:
            text = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            raise DataError(f"{uri}: not UTF-8 text ({exc.reason})") from exc
        buf, pos = buf[pos:] + text, 0
        return bool(chunk)

    def skip_ws() -> None:
        nonlocal pos, done
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or done:
                return
            done = not fill()

    done = not fill()
    skip_ws()
    if buf[pos:pos + 1] != "[":
        while not done:  # a whole document: an object holding the rows, or a single row
            done = not fill()
        try:
            document = json.loads(buf[pos:])
        except json.JSONDecodeError as exc:
            raise DataError(f"{uri}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
        rows = _rows_of(document)
        for start in range(0, len(rows), batch_rows):
            items = rows[start:start + batch_rows]
            yield Batch(uri, "row", list(range(start + 1, start + len(items) + 1)), items)
        return
    pos += 1
    batch, row_no = Batch(uri, "row"), 0
    while True:
        skip_ws()
        if buf[pos:pos + 1] == "]":
            break
        if row_no and buf[pos:pos + 1] == ",":
            pos += 1
            skip_ws()
        elif row_no:
            raise DataError(f"{uri}: malformed JSON array after element {row_no} (expected , or ])")
        while True:
            try:
                value, end = parser.raw_decode(buf, pos)
                if end < len(buf) or done:  # a value ending the buffer (a number) may go on
                    break
            except json.JSONDecodeError as exc:
                if done:
                    raise DataError(f"{uri}: malformed JSON in element {row_no + 1}: {exc.msg}") from exc
            done = not fill()  # the element may continue in the next chunk
        pos = end
        row_no += 1
        batch.numbers.append(row_no)
        batch.items.append(value)
        if len(batch.items) >= batch_rows:
            yield batch
            batch = Batch(uri, "row")
    if batch.items:
        yield batch


def _rows_of(document: Any) -> list:
    """The rows of a JSON document: a list under a well-known key, else the document itself."""
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        for key in _ROW_KEYS:
            if isinstance(document.get(key), list):
                return document[key]
    return [document]

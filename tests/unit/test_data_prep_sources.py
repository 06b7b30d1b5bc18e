"""Reading sources: every format, gzip, folders and globs, sniffing, and files that lie about themselves."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelchain.data import sources
from modelchain.data.prepare import DataError, prepare
from modelchain.data.sources import BadItem, SourceFile, expand, read_batches

ROWS = [{"prompt": f"Question number {i} about my order", "response": f"answer {i}", "team": "billing"}
        for i in range(40)]


def write_jsonl(path, rows=ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, rows=ROWS):
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path, rows=ROWS, row_group_size=7):
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def items(path, fmt="auto", batch_rows=16):
    out = []
    for batch in read_batches(SourceFile(str(path)), fmt, batch_rows):
        for number, item in zip(batch.numbers, batch.items):
            out.append((batch.unit, number, json.loads(item) if isinstance(item, bytes) else item))
    return out


def gz(path):
    target = path.with_name(path.name + ".gz")
    target.write_bytes(gzip.compress(path.read_bytes()))
    return target


@pytest.mark.parametrize(
    "kind,compressed",
    [(k, c) for k in ("jsonl", "json", "json_doc", "csv") for c in (False, True)] + [("parquet", False)],
)
def test_every_format_reads_the_same_rows(tmp_path, kind, compressed):
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl")
    elif kind == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(ROWS, indent=2))
    elif kind == "json_doc":  # the Langfuse API shape: rows under "data"
        path = tmp_path / "d.json"
        path.write_text(json.dumps({"data": ROWS, "meta": {"page": 1}}))
    elif kind == "parquet":
        path = write_parquet(tmp_path / "d.parquet")
    else:
        path = write_csv(tmp_path / "d.csv")
    if compressed:
        path = gz(path)
    got = items(path)
    expected = [{k: str(v) for k, v in r.items()} for r in ROWS] if kind == "csv" else ROWS  # CSV has only text
    assert [g[2] for g in got] == expected
    assert [g[1] for g in got] == list(range(1, len(ROWS) + 1))


def test_jsonl_line_numbers_count_blank_lines_and_bom(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}\n\n{"a": 2}\r\n{"a": 3}')
    assert [(n, v) for _, n, v in items(path)] == [(1, {"a": 1}), (3, {"a": 2}), (4, {"a": 3})]


def test_json_array_streams_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_CHUNK", 64)  # elements and numbers straddle every chunk
    rows = [{"text": "x" * (i * 7), "n": 1234567 + i} for i in range(30)] + [[1, 2], 3.25, "s"]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows))
    assert [v for _, _, v in items(path)] == rows


def test_parquet_is_read_in_record_batches(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", row_group_size=5)
    batches = list(read_batches(SourceFile(str(path)), "auto", batch_rows=4))
    assert max(len(b.items) for b in batches) <= 5 and sum(len(b.items) for b in batches) == len(ROWS)
    assert batches[0].unit == "row"


def test_csv_bad_rows_become_bad_items(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,response\nhello,world\nonly one field\ncaf\xe9,x\n")
    got = items(path)
    assert got[0][2] == {"prompt": "hello", "response": "world"}
    assert isinstance(got[1][2], BadItem) and "1 fields" in got[1][2].reason
    assert isinstance(got[2][2], BadItem) and "not UTF-8" in got[2][2].reason


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("d.jsonl", b"PAR1\x00\x00garbage", "the name says JSON Lines but the content is Parquet"),
        ("d.parquet", b'{"prompt": "x"}\n', "the name says Parquet but the content is JSON Lines"),
        ("d.csv", b'[{"prompt": "x"}]', "the name says CSV but the content is JSON"),
        ("d.json", b"prompt,response\na,b\n", "the name says JSON but the content is CSV"),
        ("d.jsonl.gz", b'{"prompt": "x"}\n', "not gzip-compressed"),
        ("d.jsonl", "\ufeff{}".encode("utf-16"), "UTF-16"),
        ("d.jsonl", b"\x00\x01\x02\x03binary", "binary"),
        ("d.parquet", b"PAR1 but not really parquet", "not a readable Parquet file"),
    ],
)
def test_content_that_contradicts_the_name_is_a_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        items(path)
    assert str(path) in str(err.value)


def test_declared_format_is_checked_too(tmp_path):
    path = write_csv(tmp_path / "d.txt")
    assert len(items(path, "csv")) == len(ROWS)
    with pytest.raises(DataError, match="the name says Parquet but the content is CSV"):
        items(path, "parquet")


def test_folders_and_globs_expand_to_data_files_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "b.jsonl")
    write_csv(tmp_path / "sub" / "a.csv")
    gz(write_jsonl(tmp_path / "sub" / "c.jsonl"))
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / ".hidden.jsonl").write_text("{}")
    names = [f.uri.removeprefix(str(tmp_path) + "/") for f in expand(str(tmp_path))]
    assert names == ["b.jsonl", "sub/a.csv", "sub/c.jsonl", "sub/c.jsonl.gz"]
    assert [f.uri for f in expand(f"{tmp_path}/**/*.gz")] == [f"{tmp_path}/sub/c.jsonl.gz"]
    both = expand(f"{tmp_path}/b.jsonl, {tmp_path}/sub/a.csv")
    assert len(both) == 2
    with pytest.raises(DataError, match="no data files there"):
        expand(f"{tmp_path}/*.parquet")
    with pytest.raises(DataError, match="no such dataset file"):
        expand(f"{tmp_path}/missing.jsonl")


def test_prepare_reads_mixed_sources_and_names_them_in_the_card(tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", ROWS[:20])
    write_parquet(tmp_path / "in" / "b.parquet", [dict(r, prompt=r["prompt"] + " (parquet)") for r in ROWS[20:]])
    result = prepare(str(tmp_path / "in"), tmp_path / "out")
    assert result.card["rows_in"] == 40 and result.card["rows_out"] == 40
    assert result.card["source_uris"] == [str(tmp_path / "in" / "a.jsonl"), str(tmp_path / "in" / "b.parquet")]


def test_quarantine_names_source_and_row_for_every_format(tmp_path):
    rows = ROWS[:30] + [{"prompt": "no response here"}]
    write_parquet(tmp_path / "d.parquet", rows)
    prepare(str(tmp_path / "d.parquet"), tmp_path / "out", max_bad_fraction=0.1)
    entry = json.loads((tmp_path / "out" / "quarantine.jsonl").read_text())
    assert entry == {"source": str(tmp_path / "d.parquet"), "row": 31, "reason": "field 'response' missing or not a string"}


class _FakeS3:
    """Records the requests data prep makes; holds objects under one bucket."""

    def __init__(self, keys):
        self.keys, self.calls = keys, []

    def head_object(self, Bucket, Key):
        from botocore.exceptions import ClientError

        self.calls.append(("head", Bucket, Key))
        if Key not in self.keys:
            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")
        return {"ContentLength": 10}

    def get_paginator(self, name):
        fake = self

        class Pages:
            def paginate(self, Bucket, Prefix):
                fake.calls.append(("list", Bucket, Prefix))
                return [{"Contents": [{"Key": k, "Size": 10} for k in fake.keys if k.startswith(Prefix)]}]

        return Pages()


def test_s3_uris_list_objects_prefixes_and_globs(monkeypatch):
    fake = _FakeS3(["chats/a.jsonl", "chats/b.csv", "chats/notes.md", "chats-old/c.jsonl"])
    monkeypatch.setattr(sources, "s3_client", lambda: fake)
    assert [f.uri for f in expand("s3://bkt/chats/")] == ["s3://bkt/chats/a.jsonl", "s3://bkt/chats/b.csv"]
    assert fake.calls == [("list", "bkt", "chats/")]  # a trailing slash names a prefix: no object lookup
    fake.calls.clear()
    assert [f.uri for f in expand("s3://bkt/chats")] == ["s3://bkt/chats/a.jsonl", "s3://bkt/chats/b.csv"]
    assert fake.calls == [("head", "bkt", "chats"), ("list", "bkt", "chats/")]
    assert [f.uri for f in expand("s3://bkt/chats/a.jsonl")] == ["s3://bkt/chats/a.jsonl"]
    assert [f.uri for f in expand("s3://bkt/chats*/*.jsonl")] == ["s3://bkt/chats-old/c.jsonl", "s3://bkt/chats/a.jsonl"]
    with pytest.raises(DataError, match="no bucket in the S3 URI"):
        expand("s3:///chats/")

"""Data prep from a real S3 server (SeaweedFS): objects, prefixes, globs, every format, and errors."""

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelchain.data.prepare import DataError, prepare
from tests.s3_server import s3_env, s3_server  # noqa: F401 (fixtures)

BUCKET = "datasets"
ROWS = [{"prompt": f"S3 question {i} about a parcel", "response": f"answer {i}"} for i in range(60)]


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parquet(rows):
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=8)
    return sink.getvalue()


@pytest.fixture(scope="module")
def bucket(s3_server):  # noqa: F811
    client = s3_server.client()
    client.create_bucket(Bucket=BUCKET)
    objects = {
        "chats/part-0.jsonl": jsonl(ROWS[:20]),
        "chats/part-1.jsonl.gz": gzip.compress(jsonl(ROWS[20:40])),
        "chats/part-2.parquet": parquet(ROWS[40:]),
        "chats/_SUCCESS": b"",
        "other/rows.csv": b"prompt,response\n" + b"".join(f"csv q {i},a {i}\n".encode() for i in range(30)),
        "other/lies.jsonl": parquet(ROWS[:5]),
    }
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    return BUCKET


def test_a_prefix_of_mixed_formats(s3_env, bucket, tmp_path):  # noqa: F811
    result = prepare(f"s3://{bucket}/chats/", tmp_path / "out")
    assert result.card["rows_in"] == 60 and result.card["rows_out"] == 60
    assert result.card["source_uris"] == [f"s3://{bucket}/chats/part-{i}" + ext
                                          for i, ext in enumerate((".jsonl", ".jsonl.gz", ".parquet"))]
    assert prepare(f"s3://{bucket}/chats", tmp_path / "again").card["splits"] == result.card["splits"]


def test_an_object_and_a_glob(s3_env, bucket, tmp_path):  # noqa: F811
    assert prepare(f"s3://{bucket}/other/rows.csv", tmp_path / "a").card["rows_in"] == 30
    assert prepare(f"s3://{bucket}/chats/*.parquet", tmp_path / "b").card["rows_in"] == 20


def test_parquet_on_s3_streams_with_ranged_reads(s3_env, bucket, tmp_path):  # noqa: F811
    from modelchain.data.sources import SourceFile, read_batches

    batches = list(read_batches(SourceFile(f"s3://{bucket}/chats/part-2.parquet"), "auto", batch_rows=5))
    assert sum(len(b.items) for b in batches) == 20 and max(len(b.items) for b in batches) <= 5


@pytest.mark.parametrize(
    "uri,message",
    [
        ("s3://datasets/chats/missing.jsonl", "no such S3 object or prefix"),
        ("s3://no-such-bucket/x.jsonl", "no such S3 bucket"),
        ("s3://datasets/other/lies.jsonl", "the name says JSON Lines but the content is Parquet"),
        ("s3://datasets/nothing/*.jsonl", "no data files there"),
    ],
)
def test_bad_s3_sources_are_clear_errors(s3_env, bucket, tmp_path, uri, message):  # noqa: F811
    with pytest.raises(DataError, match=message) as err:
        prepare(uri, tmp_path / "out")
    assert uri.split("*")[0].rstrip("/") in str(err.value)
    assert not (tmp_path / "out").exists()


def test_wrong_credentials(s3_env, bucket, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(DataError, match=r"S3 refused the credentials \((403|SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId)\)"):
        prepare(f"s3://{bucket}/chats/part-0.jsonl", tmp_path / "out")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(DataError, match="S3 refused the credentials"):
        prepare(f"s3://{bucket}/chats/", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_reads_s3_with_the_standard_chain(s3_env, bucket, tmp_path):  # noqa: F811
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "modelchain.pipelines.cli", "data", "prep", "data=chat_jsonl",
         f"data.source.uri=s3://{bucket}/chats/", "data.fields.messages=null", "data.tokens.max_tokens=0",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    assert "read 60 rows: 0 quarantined, 0 duplicates, 60 kept" in out.stdout

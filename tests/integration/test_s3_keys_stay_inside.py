"""No S3 key escapes its folder: adapters, training data and corpora from a real S3 server.

The bucket is a real SeaweedFS one. SeaweedFS itself refuses or rewrites keys that leave a
folder (the first test records how), while AWS S3 stores them verbatim; so the hostile keys
are stored under clean names and tests/s3_listing_proxy.py, a pass-through proxy whose
renaming was written by hand, lists them under the names AWS would return.
"""

import pytest
from botocore.exceptions import ClientError

from modelchain.components.discover.logic import discover
from modelchain.core import artifacts, registry
from modelchain.core.registry import RegistryError
from modelchain.data.sources import DataError, expand
from tests.registry_support import gate_run, make_adapter, snapshot, sqlite_uri, template_db  # noqa: F401 (fixtures)
from tests.s3_listing_proxy import ListingProxy
from tests.s3_server import s3_env, s3_server  # noqa: F401 (fixtures)

BUCKET = "escape-keys"
NAME = "tiny-llama-ticket-routing"


@pytest.fixture
def bucket(s3_env):  # noqa: F811
    client = s3_env.client()
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    return client


@pytest.fixture
def listed_as(s3_env, monkeypatch):  # noqa: F811
    """`listed_as({"stored": "hostile"})`: boto3 now talks to SeaweedFS through a renaming proxy."""
    proxies = []

    def start(renames):
        proxy = ListingProxy(s3_env.endpoint, renames).__enter__()
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        return proxy

    yield start
    for proxy in proxies:
        proxy.__exit__(None, None, None)


def test_seaweedfs_rewrites_or_refuses_keys_that_leave_a_folder(bucket):
    with pytest.raises(ClientError, match="InvalidRequest"):
        bucket.put_object(Bucket=BUCKET, Key="adapter/../escape.txt", Body=b"x")
    bucket.put_object(Bucket=BUCKET, Key="adapter//tmp/x", Body=b"x")
    bucket.put_object(Bucket=BUCKET, Key="/abs/y", Body=b"x")
    keys = {o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {"adapter/tmp/x", "abs/y"}


def _store_adapter(client, prefix: str, folder) -> str:
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")
    return artifacts.manifest_digest(artifacts.read_manifest(folder))


@pytest.mark.parametrize("hostile", ["ABSOLUTE", "../../escape.txt", "sub//x.bin", "./x.bin", "sub/../../escape.txt"])
def test_an_adapter_key_that_leaves_its_folder_is_refused_and_nothing_is_written(bucket, listed_as, tmp_path, hostile):
    outside = tmp_path / "outside" / "x.bin"
    outside.parent.mkdir()
    if hostile == "ABSOLUTE":  # "adapter//<abs path>": a plain join writes to the absolute path
        hostile = "/" + str(outside).lstrip("/")
    digest = _store_adapter(bucket, "runs/1/adapter", make_adapter(tmp_path / "adapter"))
    bucket.put_object(Bucket=BUCKET, Key="runs/1/adapter/zz-extra.bin", Body=b"written where it must not be")
    key = f"runs/1/adapter/{hostile}"
    proxy = listed_as({"runs/1/adapter/zz-extra.bin": key})

    work = tmp_path / "work"
    dest = work / "downloads" / "adapter"
    with pytest.raises(artifacts.ArtifactError) as err:
        artifacts.download_folder(f"s3://{BUCKET}/runs/1/adapter", dest, expected_digest=digest)
    message = str(err.value)
    assert proxy.listings >= 1  # the hostile name really reached the client
    assert message.startswith(f"s3://{BUCKET}/{key}: refused, the key would leave its folder s3://{BUCKET}/runs/1/adapter/")
    assert len(message.splitlines()) == 1
    assert not outside.exists() and not (work / "escape.txt").exists() and not (work / "downloads" / "escape.txt").exists()
    assert [p for p in work.rglob("*")] == [work / "downloads"]  # nothing half-written, no temporary left


def test_resolve_adapter_refuses_a_hostile_key_in_the_registry_store(bucket, listed_as, tmp_path, monkeypatch,
                                                                      sqlite_uri):  # noqa: F811
    monkeypatch.setenv("MODELCHAIN_HOME", str(tmp_path / "home"))
    client = registry.client(sqlite_uri)
    experiment = registry.ensure_experiment(client, "escape", artifact_location=f"s3://{BUCKET}/mlflow")
    run_id = gate_run(client, experiment)
    version = registry.register_adapter(client, run_id, make_adapter(tmp_path / "adapter"), model_name=NAME, tags={})
    source = client.get_model_version(NAME, version).source
    prefix = source.removeprefix(f"s3://{BUCKET}/")
    assert registry.resolve_adapter(f"models:/{NAME}/{version}", tmp_path / "clean", tracking_uri=sqlite_uri)

    bucket.put_object(Bucket=BUCKET, Key=f"{prefix}/zz-extra.bin", Body=b"x")
    key = f"{prefix}/../../../../escape.txt"
    listed_as({f"{prefix}/zz-extra.bin": key})
    before = snapshot(client, NAME)
    with pytest.raises(RegistryError) as err:
        registry.resolve_adapter(f"models:/{NAME}/{version}", tracking_uri=sqlite_uri)
    assert str(err.value) == (
        f"models:/{NAME}/{version}: s3://{BUCKET}/{key}: refused, the key would leave its folder "
        f"s3://{BUCKET}/{prefix}/ (it holds '..')"
    )
    assert not (tmp_path / "home" / "adapters" / NAME / version).exists()
    assert snapshot(client, NAME) == before


def test_training_data_under_a_prefix_refuses_a_hostile_key(bucket, listed_as):
    bucket.put_object(Bucket=BUCKET, Key="chats/part-0.jsonl", Body=b'{"prompt": "q", "response": "a"}\n')
    bucket.put_object(Bucket=BUCKET, Key="chats/part-1.jsonl", Body=b'{"prompt": "q", "response": "a"}\n')
    assert [f.uri for f in expand(f"s3://{BUCKET}/chats/")] == [
        f"s3://{BUCKET}/chats/part-0.jsonl", f"s3://{BUCKET}/chats/part-1.jsonl"
    ]
    listed_as({"chats/part-1.jsonl": "chats//etc/part-1.jsonl"})
    for uri in (f"s3://{BUCKET}/chats/", f"s3://{BUCKET}/chats/*.jsonl", f"s3://{BUCKET}/chats"):
        with pytest.raises(DataError) as err:
            expand(uri)
        assert str(err.value) == (
            f"s3://{BUCKET}/chats//etc/part-1.jsonl: refused, the key would leave its folder "
            f"s3://{BUCKET}/chats/ (it is absolute)"
        )


def test_a_corpus_under_a_prefix_refuses_a_hostile_key(bucket, listed_as):
    bucket.put_object(Bucket=BUCKET, Key="docs/kitchen.md", Body=b"# Kitchen\n")
    bucket.put_object(Bucket=BUCKET, Key="docs/garden.md", Body=b"# Garden\n")
    assert [r["source"] for r in discover(f"s3://{BUCKET}/docs", ["**/*.md"], progress=False)] == [
        "garden.md", "kitchen.md"
    ]
    listed_as({"docs/garden.md": "docs/../garden.md"})
    with pytest.raises(ValueError) as err:
        discover(f"s3://{BUCKET}/docs", ["**/*.md"], progress=False)
    assert str(err.value) == (
        f"s3://{BUCKET}/docs/../garden.md: refused, the key would leave its folder s3://{BUCKET}/docs/ (it holds '..')"
    )

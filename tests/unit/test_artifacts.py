"""Checksum manifests, S3 URIs and transfer settings, and verified downloads from a local store."""

import pytest

from modelchain.core import artifacts, s3
from modelchain.core.artifacts import ArtifactError, ChecksumError

from ..registry_support import make_adapter


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    adapter = make_adapter(tmp_path / "a")
    (adapter / "checkpoints").mkdir()
    (adapter / "checkpoints" / "step-10.bin").write_bytes(b"1234")
    manifest = artifacts.build_manifest(adapter)
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors", "checkpoints/step-10.bin"}
    assert manifest["files"]["checkpoints/step-10.bin"] == {
        "size": 4, "sha256": "03ac674216f3e15c761ee1a5e255f067953623c8b388b4459e13f978d7c846f4"
    }
    artifacts.verify_folder(adapter, manifest)


def test_an_old_manifest_is_not_part_of_the_new_one(tmp_path):
    adapter = make_adapter(tmp_path / "a")
    (adapter / artifacts.MANIFEST).write_text("{}")
    assert artifacts.MANIFEST not in artifacts.build_manifest(adapter)["files"]


def test_verify_names_the_file_and_both_digests(tmp_path):
    adapter = make_adapter(tmp_path / "a")
    manifest = artifacts.build_manifest(adapter)
    expected = manifest["files"]["adapter_model.safetensors"]["sha256"]
    weights = adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    flipped = artifacts.sha256_file(weights)
    with pytest.raises(ChecksumError) as err:
        artifacts.verify_folder(adapter, manifest)
    assert str(err.value) == (
        f"{adapter}: adapter_model.safetensors differs from the manifest: expected sha256 {expected} "
        f"({len(data)} bytes), found sha256 {flipped} ({len(data)} bytes)"
    )
    weights.write_bytes(data[:10])
    with pytest.raises(ChecksumError, match=rf"adapter_model.safetensors differs .* {expected} .* \(10 bytes\)$"):
        artifacts.verify_folder(adapter, manifest)
    weights.unlink()
    with pytest.raises(ChecksumError, match=rf"adapter_model.safetensors is missing: expected sha256 {expected}, found no file"):
        artifacts.verify_folder(adapter, manifest)


def test_a_file_the_manifest_does_not_list_is_refused(tmp_path):
    adapter = make_adapter(tmp_path / "a")
    manifest = artifacts.read_manifest(adapter)
    (adapter / "extra").mkdir()
    (adapter / "extra" / "tokenizer.json").write_text("{}")
    with pytest.raises(ChecksumError, match=r"extra/tokenizer.json is not in the manifest: expected no such file, found sha256 [0-9a-f]{64}$"):
        artifacts.verify_folder(adapter, manifest)


def test_verify_adapter_checks_the_manifest_digest_then_every_file(tmp_path):
    adapter = make_adapter(tmp_path / "a")
    digest = artifacts.manifest_digest(artifacts.read_manifest(adapter))
    assert artifacts.verify_adapter(adapter, digest)["files"].keys() == {"adapter_config.json", "adapter_model.safetensors"}
    # A manifest rewritten to match altered files is not the registered one.
    (adapter / "adapter_config.json").write_text('{"r": 64}')
    artifacts.write_manifest(adapter)
    found = artifacts.manifest_digest(artifacts.read_manifest(adapter))
    with pytest.raises(ChecksumError) as err:
        artifacts.verify_adapter(adapter, digest)
    assert str(err.value) == (
        f"{adapter}: {artifacts.MANIFEST} is not the registered one: expected manifest digest {digest}, found {found}"
    )
    (adapter / artifacts.MANIFEST).unlink()
    with pytest.raises(ChecksumError, match=rf"{artifacts.MANIFEST} is missing: expected manifest digest {digest}, found no manifest"):
        artifacts.verify_adapter(adapter, digest)


@pytest.mark.parametrize("entry", ["/etc/passwd", "../x", "a//b", "./a", ""])
def test_a_manifest_naming_a_path_outside_its_folder_is_refused(tmp_path, entry):
    adapter = make_adapter(tmp_path / "a")
    manifest = artifacts.read_manifest(adapter)
    manifest["files"][entry] = {"size": 1, "sha256": "0" * 64}
    (adapter / artifacts.MANIFEST).write_text(__import__("json").dumps(manifest))
    with pytest.raises(ChecksumError, match=f"manifest entry {entry!r} is not a path inside the folder"):
        artifacts.read_manifest(adapter)


def test_download_from_a_local_store_is_verified_and_atomic(tmp_path):
    store = make_adapter(tmp_path / "store" / "adapter")
    digest = artifacts.manifest_digest(artifacts.read_manifest(store))
    dest = artifacts.download_folder(str(store), tmp_path / "out" / "adapter", expected_digest=digest)
    artifacts.verify_adapter(dest, digest)

    (store / "adapter_config.json").write_text('{"r": 64}')
    with pytest.raises(ChecksumError, match="adapter_config.json differs from the manifest"):
        artifacts.download_folder(str(store), tmp_path / "out2" / "adapter", expected_digest=digest)
    assert list((tmp_path / "out2").iterdir()) == []  # no half-written folder left behind


def test_upload_refuses_a_folder_without_its_manifest(tmp_path):
    adapter = make_adapter(tmp_path / "a", manifest=False)
    with pytest.raises(ChecksumError, match=rf"^{adapter}: no {artifacts.MANIFEST}; an adapter is registered only with"):
        artifacts.upload_to_run(None, "run", adapter, "adapter")


@pytest.mark.parametrize(
    "uri,expected",
    [("s3://bucket/a/b/", ("bucket", "a/b")), ("s3://bucket", ("bucket", "")), ("s3://b/k", ("b", "k"))],
)
def test_split_s3_uri(uri, expected):
    assert artifacts.split_s3_uri(uri) == expected


def test_split_s3_uri_refuses_other_schemes():
    with pytest.raises(ArtifactError, match="not an s3:// URI"):
        artifacts.split_s3_uri("gs://bucket/key")


def test_transfer_config_defaults_and_environment(monkeypatch):
    config = artifacts.transfer_config()
    assert config.multipart_threshold == 64 * artifacts.MIB and config.multipart_chunksize == 64 * artifacts.MIB
    monkeypatch.setenv("MODELCHAIN_S3_MULTIPART_THRESHOLD_MB", "8")
    monkeypatch.setenv("MODELCHAIN_S3_MULTIPART_CHUNK_MB", "1")  # below S3's minimum part size
    config = artifacts.transfer_config()
    assert config.multipart_threshold == 8 * artifacts.MIB
    assert config.multipart_chunksize == 5 * artifacts.MIB


@pytest.mark.parametrize(
    "prefix,key,rel",
    [
        ("adapter/", "adapter/adapter_config.json", "adapter_config.json"),
        ("adapter/", "adapter/sub/w.bin", "sub/w.bin"),
        ("adapter/", "adapter/sub/", "sub/"),  # a folder marker: callers skip it
        ("adapter/", "adapter/", ""),
        ("chats/part-", "chats/part-0.jsonl", "part-0.jsonl"),  # a glob's prefix: relative to its folder
        ("", "docs/a.md", "docs/a.md"),  # a whole bucket
        ("adapter/", "adapter/..data", "..data"),  # dots inside a name are fine
    ],
)
def test_relative_key_keeps_what_stays_inside(prefix, key, rel):
    assert s3.relative_key("b", prefix, key) == rel


@pytest.mark.parametrize(
    "prefix,key,why",
    [
        ("adapter/", "adapter//tmp/x", "it is absolute"),
        ("adapter/", "adapter/../x", "it holds '..'"),
        ("adapter/", "adapter/sub/../../x", "it holds '..'"),
        ("adapter/", "adapter/sub//x", "it has an empty part ('//')"),
        ("adapter/", "adapter/./x", "it holds '.'"),
        ("adapter/", "adapter/..", "it holds '..'"),
        ("adapter/", "adapter/x\x00y", "it holds a NUL byte"),
        ("chats/part-", "chats/part-//x", "it has an empty part ('//')"),
        ("", "/etc/passwd", "it is absolute"),
    ],
)
def test_relative_key_refuses_what_leaves_its_folder_naming_the_key(prefix, key, why):
    with pytest.raises(s3.UnsafeKeyError) as err:
        s3.relative_key("b", prefix, key)
    assert str(err.value).startswith(f"s3://b/{key}: refused, the key would leave its folder ")
    assert str(err.value).endswith(f"({why})")


def test_relative_key_refuses_a_key_outside_the_listed_prefix():
    with pytest.raises(s3.UnsafeKeyError, match=r"^s3://b/other/x: refused, the listing of 'adapter/' returned a key outside it$"):
        s3.relative_key("b", "adapter/", "other/x")


def test_local_path_stays_inside_dest(tmp_path):
    assert artifacts.local_path(tmp_path, "sub/x.bin") == tmp_path.resolve() / "sub" / "x.bin"
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(ArtifactError, match="refused, it would be written outside"):
        artifacts.local_path(tmp_path, "link/x.bin")

"""Checksum manifests, S3 URIs and transfer settings, and verified downloads from a local store."""

import pytest

from modelchain.core import artifacts
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


def test_verify_names_the_file_that_differs_or_is_missing(tmp_path):
    adapter = make_adapter(tmp_path / "a")
    manifest = artifacts.build_manifest(adapter)
    weights = adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(ChecksumError, match=r"adapter_model.safetensors sha256 .* does not match the manifest"):
        artifacts.verify_folder(adapter, manifest)
    weights.write_bytes(data[:10])
    with pytest.raises(ChecksumError, match="has 10 bytes, manifest says"):
        artifacts.verify_folder(adapter, manifest)
    weights.unlink()
    with pytest.raises(ChecksumError, match="adapter_model.safetensors is listed in the manifest but missing"):
        artifacts.verify_folder(adapter, manifest)


def test_download_from_a_local_store_is_verified_and_atomic(tmp_path):
    store = make_adapter(tmp_path / "store" / "adapter")
    manifest = artifacts.build_manifest(store)
    (store / artifacts.MANIFEST).write_text(__import__("json").dumps(manifest))
    dest = artifacts.download_folder(str(store), tmp_path / "out" / "adapter")
    artifacts.verify_folder(dest, manifest)

    (store / "adapter_config.json").write_text('{"r": 64}')
    with pytest.raises(ChecksumError, match="adapter_config.json"):
        artifacts.download_folder(str(store), tmp_path / "out2" / "adapter")
    assert list((tmp_path / "out2").iterdir()) == []  # no half-written folder left behind


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

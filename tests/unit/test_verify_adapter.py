"""The serving side's check, `python -m modelchain.serving.verify_adapter DIR --sha256 DIGEST`, run as the pod runs it."""

import subprocess
import sys

import pytest

from modelchain.core import artifacts
from modelchain.core.config import compose
from modelchain.serving import manifests

from ..registry_support import make_adapter


def run_rendered_command(folder, sha256):
    """The verify-adapter init container's command from a rendered Deployment, aimed at `folder`."""
    cfg = compose("finetune", ["cluster=eks", "serve=eks"])
    deployment = manifests.render(cfg, "s3://modelchain-mlflow/artifacts/1/r/artifacts/adapter", 1, adapter_sha256=sha256)[0]
    (verify,) = [c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "verify-adapter"]
    command = verify["command"]
    assert command[:3] == ["python3", "-m", "modelchain.serving.verify_adapter"]
    command = [sys.executable, *command[1:3], str(folder), *command[4:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture
def adapter(tmp_path):
    folder = make_adapter(tmp_path / "adapter")
    return folder, artifacts.manifest_digest(artifacts.read_manifest(folder))


def test_an_intact_adapter_passes(adapter):
    folder, digest = adapter
    out = run_rendered_command(folder, digest)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"verify_adapter: {folder}: 2 files, 8460 bytes match manifest digest {digest}"


def test_a_partial_sync_is_refused_naming_the_file_and_both_digests(adapter):
    folder, digest = adapter
    weights = folder / "adapter_model.safetensors"
    expected = artifacts.read_manifest(folder)["files"]["adapter_model.safetensors"]["sha256"]
    weights.write_bytes(weights.read_bytes()[:4096])  # a sync cut short
    out = run_rendered_command(folder, digest)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"verify_adapter: refused: {folder}: adapter_model.safetensors differs from the manifest: expected sha256 "
        f"{expected} (8280 bytes), found sha256 {artifacts.sha256_file(weights)} (4096 bytes)"
    ]


def test_another_versions_adapter_is_refused(adapter, tmp_path):
    folder, digest = adapter
    other = make_adapter(tmp_path / "other", seed=7)
    found = artifacts.manifest_digest(artifacts.read_manifest(other))
    out = run_rendered_command(other, digest)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"verify_adapter: refused: {other}: {artifacts.MANIFEST} is not the registered one: "
        f"expected manifest digest {digest}, found {found}"
    )


def test_a_folder_without_manifest_or_files_is_refused(adapter, tmp_path):
    folder, digest = adapter
    (folder / artifacts.MANIFEST).unlink()
    out = run_rendered_command(folder, digest)
    assert out.returncode == 1 and f"{artifacts.MANIFEST} is missing: expected manifest digest {digest}" in out.stderr
    out = run_rendered_command(tmp_path / "empty-sync", digest)
    assert out.returncode == 1 and "no such adapter folder" in out.stderr and len(out.stderr.splitlines()) == 1

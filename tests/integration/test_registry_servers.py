"""The registry against real servers: `mlflow server` (sqlite) with artifacts on SeaweedFS S3."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelchain.core import artifacts, registry
from modelchain.core.registry import RegistryError

from ..registry_support import (  # noqa: F401 (fixtures)
    check_history,
    check_invariants,
    gate_run,
    make_adapter,
    snapshot,
    template_db,
)
from .registry_servers import BUCKET, SECRET_KEY, mlflow_server, s3_env, s3_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

# Small parts, so a 12 MiB file goes up in three: the same code path as a multi-GB checkpoint.
SMALL_PARTS = dict(threshold_mb=5, chunk_mb=5, max_concurrency=2)


@pytest.fixture
def server_client(mlflow_server, s3_env):
    return registry.client(mlflow_server.uri)


def experiment(client, name, artifact_location=None):
    return registry.ensure_experiment(client, name, artifact_location)


def test_direct_s3_register_is_multipart_and_resolve_verifies_checksums(server_client, mlflow_server, tmp_path):
    name = "s3-direct"
    exp = experiment(server_client, name, mlflow_server.direct_root)
    adapter = make_adapter(tmp_path / "adapter", n_values=3 * 1024 * 1024)  # 12 MiB of weights
    transfer = artifacts.transfer_config(**SMALL_PARTS)
    run_id = gate_run(server_client, exp)
    version = registry.register_adapter(server_client, run_id, adapter, model_name=name, tags={}, transfer=transfer)
    mv = server_client.get_model_version(name, version)
    assert mv.source.startswith(f"{mlflow_server.direct_root}/") and mv.source.endswith("/adapter")

    s3 = artifacts.s3_client()
    bucket, prefix = artifacts.split_s3_uri(mv.source)
    weights = s3.head_object(Bucket=bucket, Key=f"{prefix}/adapter_model.safetensors")
    assert weights["ETag"].strip('"').endswith("-3"), weights["ETag"]  # three parts
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/{artifacts.MANIFEST}")["Body"].read())
    assert manifest == artifacts.build_manifest(adapter)

    started = time.monotonic()
    path = registry.resolve_adapter(f"models:/{name}@challenger", tmp_path / "serve" / "a",
                                    tracking_uri=mlflow_server.uri, transfer=transfer)
    print(f"12 MiB adapter resolved from S3 in {time.monotonic() - started:.2f}s")
    assert (path / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()

    # Bit rot (or tampering) in the bucket: the download is refused and nothing is left behind.
    s3.put_object(Bucket=bucket, Key=f"{prefix}/adapter_config.json", Body=b'{"r": 64}')
    dest = tmp_path / "serve" / "b"
    with pytest.raises(RegistryError, match=rf"^models:/{name}/{version}: {mv.source}: adapter_config.json differs from "
                                            rf"the manifest: expected sha256 {manifest['files']['adapter_config.json']['sha256']} "
                                            r"\(\d+ bytes\), found sha256 [0-9a-f]{64} \(9 bytes\)$"):
        registry.resolve_adapter(f"models:/{name}/{version}", dest, tracking_uri=mlflow_server.uri)
    assert not dest.exists()


def test_proxied_artifacts_go_through_the_server_to_s3(server_client, mlflow_server, tmp_path):
    name = "s3-proxied"
    exp = experiment(server_client, name)  # the server's default: mlflow-artifacts:/ -> s3://.../proxied
    adapter = make_adapter(tmp_path / "adapter", seed=7)
    version = registry.register_adapter(server_client, gate_run(server_client, exp), adapter, model_name=name, tags={})
    mv = server_client.get_model_version(name, version)
    assert mv.source.startswith("mlflow-artifacts:/")
    keys = [o["Key"] for o in artifacts.s3_client().list_objects_v2(Bucket=BUCKET, Prefix="proxied/")["Contents"]]
    assert any(k.endswith(f"adapter/{artifacts.MANIFEST}") for k in keys)
    path = registry.resolve_adapter(f"models:/{name}/{version}", tmp_path / "serve", tracking_uri=mlflow_server.uri)
    artifacts.verify_folder(path, artifacts.build_manifest(adapter))


def test_wrong_s3_credentials_leave_the_registry_as_it_was(server_client, mlflow_server, monkeypatch, tmp_path):
    name = "s3-bad-credentials"
    exp = experiment(server_client, name, mlflow_server.direct_root)
    run_id = gate_run(server_client, exp)
    before = snapshot(server_client, name)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(RegistryError) as err:
        registry.register_adapter(server_client, run_id, make_adapter(tmp_path / "adapter"), model_name=name, tags={})
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert "S3 refused the credentials (SignatureDoesNotMatch)" in message and message.startswith("s3://")
    assert snapshot(server_client, name) == before
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    assert server_client.list_artifacts(run_id, "adapter") == []  # nothing half-uploaded either


def test_cli_lineage_from_the_server(server_client, mlflow_server, tmp_path):
    name = "cli-lineage"
    exp = experiment(server_client, name, mlflow_server.direct_root)
    version = registry.register_adapter(server_client, gate_run(server_client, exp), make_adapter(tmp_path / "a"),
                                        model_name=name, tags={})
    registry.promote(server_client, name, version)
    cli = [sys.executable, "-m", "modelchain.pipelines.cli", "lineage", name, "--tracking-uri", mlflow_server.uri]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"models:/{name}@champion  ->  version 1  [challenger, champion]"
    assert f"  adapter      {mlflow_server.direct_root}/" in out.stdout
    as_json = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert json.loads(as_json.stdout)["gate"]["decision"] == "passed"


def test_racing_processes_keep_the_invariants(server_client, mlflow_server, tmp_path):
    name = "race-processes"
    exp = experiment(server_client, name, mlflow_server.direct_root)
    adapter = make_adapter(tmp_path / "adapter")
    runs = [gate_run(server_client, exp) for _ in range(4)]
    registered = {r: registry.register_adapter(server_client, r, adapter, model_name=name, tags={}) for r in runs[:2]}
    refused_run = gate_run(server_client, exp, decision="refused")
    server_client.create_model_version(name, source=f"{mlflow_server.direct_root}/x", run_id=refused_run,
                                       tags={"gate.decision": "refused"})
    go = tmp_path / "go"
    roles = [("register", ",".join(runs[2:])), ("register", ",".join(runs[2:])), ("promote", "1"), ("promote", "2"),
             ("rollback", "-")]
    procs = []
    for i, (role, arg) in enumerate(roles):
        code = ("import sys; from tests.registry_support import race_worker; race_worker(*sys.argv[1:])")
        args = [mlflow_server.uri, name, role, arg, str(tmp_path / f"ready-{i}"), str(go), str(adapter)]
        procs.append(subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=dict(os.environ),
                                      cwd=Path(__file__).resolve().parents[2]))  # `tests` from the root
    deadline = time.monotonic() + 180
    while not all((tmp_path / f"ready-{i}").exists() for i in range(len(roles))):  # all imported, then go together
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        time.sleep(0.1)
    go.touch()
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for result in results:
        registered.update(result["registered"])
        assert all("gate.decision=refused" in r or "no 'previous' version" in r for r in result["refusals"])
    check_invariants(server_client, name, registered)
    check_history(server_client, name, changes=sum(r["changes"] for r in results))
    assert sorted(registered.values(), key=int) == ["1", "2", "4", "5"]

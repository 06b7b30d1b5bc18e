"""Registration, aliases and loading against MLflow on sqlite (artifacts on the local disk)."""

import json
import socket
import time

import pytest

from modelchain.core import artifacts, registry
from modelchain.core.registry import RegistryError

from ..registry_support import (  # noqa: F401 (fixtures)
    experiment_id,
    gate_run,
    make_adapter,
    mlflow_client,
    snapshot,
    sqlite_uri,
    template_db,
)

NAME = "tiny-llama-ticket-routing"


def register(client, experiment_id, adapter, decision="passed"):
    run_id = gate_run(client, experiment_id, decision)
    return run_id, registry.register_adapter(client, run_id, adapter, model_name=NAME, tags={"lineage.x": "1"})


def test_register_stores_adapter_and_manifest_and_sets_challenger(mlflow_client, experiment_id, tmp_path):
    adapter = make_adapter(tmp_path / "adapter")
    run_id, version = register(mlflow_client, experiment_id, adapter)
    assert version == "1"
    mv = mlflow_client.get_model_version(NAME, version)
    assert mv.source.endswith(f"{run_id}/artifacts/adapter")
    assert mv.tags["gate.decision"] == "passed" and mv.tags["lineage.x"] == "1"
    stored = {a.path for a in mlflow_client.list_artifacts(run_id, "adapter")}
    assert stored == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", f"adapter/{artifacts.MANIFEST}"}
    assert mv.tags["lineage.adapter_sha256"] == artifacts.manifest_digest(artifacts.build_manifest(adapter))
    assert registry.aliases(mlflow_client.get_registered_model(NAME)) == {"challenger": "1"}


def test_registering_the_same_run_again_returns_its_version(mlflow_client, experiment_id, tmp_path):
    adapter = make_adapter(tmp_path / "adapter")
    run_id, first = register(mlflow_client, experiment_id, adapter)
    again = registry.register_adapter(mlflow_client, run_id, adapter, model_name=NAME, tags={})
    assert first == again == "1"
    assert len(mlflow_client.search_model_versions(f"name='{NAME}'")) == 1


def test_challenger_only_moves_forward(mlflow_client, experiment_id, tmp_path):
    adapter = make_adapter(tmp_path / "adapter")
    run_1, _ = register(mlflow_client, experiment_id, adapter)
    register(mlflow_client, experiment_id, adapter)
    # A retried registration of the older run must not pull challenger back.
    registry.register_adapter(mlflow_client, run_1, adapter, model_name=NAME, tags={})
    assert registry.aliases(mlflow_client.get_registered_model(NAME))["challenger"] == "2"


def test_refused_gate_registers_nothing(mlflow_client, experiment_id, tmp_path):
    before = snapshot(mlflow_client, NAME)
    with pytest.raises(RegistryError, match="did not pass the gate"):
        register(mlflow_client, experiment_id, make_adapter(tmp_path / "adapter"), decision="refused")
    assert snapshot(mlflow_client, NAME) == before


def test_adapter_without_config_is_a_one_line_error_and_changes_nothing(mlflow_client, experiment_id, tmp_path):
    folder = tmp_path / "not-an-adapter"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"x")
    run_id = gate_run(mlflow_client, experiment_id)
    before = snapshot(mlflow_client, NAME)
    with pytest.raises(RegistryError) as err:
        registry.register_adapter(mlflow_client, run_id, folder, model_name=NAME, tags={})
    assert str(err.value) == f"{folder}: not a LoRA adapter (no adapter_config.json)"
    assert snapshot(mlflow_client, NAME) == before
    assert mlflow_client.list_artifacts(run_id, "adapter") == []


def test_promote_and_rollback_are_one_alias_move_each_and_idempotent(mlflow_client, experiment_id, tmp_path):
    adapter = make_adapter(tmp_path / "adapter")
    for _ in range(3):
        register(mlflow_client, experiment_id, adapter)

    def aliases():
        return registry.aliases(mlflow_client.get_registered_model(NAME))

    assert registry.promote(mlflow_client, NAME, 1)["changed"]
    assert aliases() == {"challenger": "3", "champion": "1"}
    assert registry.promote(mlflow_client, NAME, 2) == {"model": NAME, "champion": "2", "previous": "1", "changed": True}
    assert not registry.promote(mlflow_client, NAME, 2)["changed"]
    assert aliases() == {"challenger": "3", "champion": "2", "previous": "1"}

    rolled = registry.rollback(mlflow_client, NAME)
    assert rolled == {"model": NAME, "champion": "1", "rolled_back_from": "2", "changed": True}
    assert aliases() == {"challenger": "3", "champion": "1"}
    assert not registry.rollback(mlflow_client, NAME)["changed"]  # a retried rollback
    assert aliases() == {"challenger": "3", "champion": "1"}

    registry.promote(mlflow_client, NAME, 3)
    assert aliases() == {"challenger": "3", "champion": "3", "previous": "1"}


def test_a_rollback_interrupted_after_moving_champion_is_finished_by_a_retry(mlflow_client, experiment_id, tmp_path):
    adapter = make_adapter(tmp_path / "adapter")
    register(mlflow_client, experiment_id, adapter)
    register(mlflow_client, experiment_id, adapter)
    registry.promote(mlflow_client, NAME, 1)
    registry.promote(mlflow_client, NAME, 2)
    # The state a crash between "champion -> previous" and "drop previous" leaves behind.
    mlflow_client.set_registered_model_tag(NAME, registry.ROLLBACK_TAG, "2->1")
    mlflow_client.set_registered_model_alias(NAME, "champion", "1")
    result = registry.rollback(mlflow_client, NAME)
    assert result["champion"] == "1" and result["rolled_back_from"] == "2"
    assert registry.aliases(mlflow_client.get_registered_model(NAME)) == {"challenger": "2", "champion": "1"}


def test_rollback_without_previous_is_refused(mlflow_client, experiment_id, tmp_path):
    register(mlflow_client, experiment_id, make_adapter(tmp_path / "adapter"))
    registry.promote(mlflow_client, NAME, 1)
    with pytest.raises(RegistryError, match="no 'previous' version to roll back to"):
        registry.rollback(mlflow_client, NAME)


def test_promote_refuses_a_version_whose_gate_failed(mlflow_client, experiment_id, tmp_path):
    register(mlflow_client, experiment_id, make_adapter(tmp_path / "adapter"))
    registry.promote(mlflow_client, NAME, 1)
    # A version registered by hand, around the gate.
    run_id = gate_run(mlflow_client, experiment_id, decision="refused")
    mlflow_client.create_model_version(NAME, source="/tmp/x", run_id=run_id, tags={"gate.decision": "refused"})
    before = snapshot(mlflow_client, NAME)
    with pytest.raises(RegistryError) as err:
        registry.promote(mlflow_client, NAME, 2)
    assert str(err.value) == (
        f"models:/{NAME}/2 has gate.decision=refused; only versions that passed the gate get an alias"
    )
    assert snapshot(mlflow_client, NAME) == before


@pytest.mark.parametrize(
    "ref,message",
    [
        ("nope@champion", "no registered model 'nope'"),
        (f"{NAME}@champion", f"model '{NAME}' has no alias 'champion' (aliases: challenger=1)"),
        (f"{NAME}/7", f"model '{NAME}' has no version 7"),
        ("a/b/c", "'a/b/c' is not a model reference: use NAME, NAME@ALIAS or NAME/VERSION"),
    ],
)
def test_missing_model_alias_or_version_is_one_line(mlflow_client, experiment_id, tmp_path, ref, message):
    register(mlflow_client, experiment_id, make_adapter(tmp_path / "adapter"))
    with pytest.raises(RegistryError) as err:
        registry.get_version(mlflow_client, registry.ModelRef.parse(ref))
    assert str(err.value) == message


def test_promote_or_rollback_of_a_missing_model_changes_nothing(mlflow_client):
    before = snapshot(mlflow_client, "nope")
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        registry.promote(mlflow_client, "nope", 1)
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        registry.rollback(mlflow_client, "nope")
    assert snapshot(mlflow_client, "nope") == before


def test_model_ref_parsing():
    parse = registry.ModelRef.parse
    assert parse("models:/m@challenger") == registry.ModelRef("m", "challenger", None)
    assert parse("m/3") == registry.ModelRef("m", None, "3")
    assert parse("m").uri == "models:/m@champion"
    assert parse("models:/m/12").uri == "models:/m/12"


def test_resolve_adapter_by_alias_and_version(mlflow_client, sqlite_uri, experiment_id, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELCHAIN_HOME", str(tmp_path / "home"))
    adapter = make_adapter(tmp_path / "adapter", seed=1)
    register(mlflow_client, experiment_id, adapter)
    registry.promote(mlflow_client, NAME, 1)

    path = registry.resolve_adapter(f"models:/{NAME}@champion", tracking_uri=sqlite_uri)
    assert path == tmp_path / "home" / "adapters" / NAME / "1"
    assert (path / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    assert json.loads((path / "adapter_config.json").read_text())["peft_type"] == "LORA"

    # An intact copy is reused as it is (verified); a removed one is fetched again.
    assert registry.resolve_adapter(f"models:/{NAME}/1", tracking_uri=sqlite_uri) == path
    __import__("shutil").rmtree(path)
    again = registry.resolve_adapter(f"models:/{NAME}/1", tracking_uri=sqlite_uri)
    assert (again / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()

    explicit = registry.resolve_adapter(f"models:/{NAME}/1", tmp_path / "serve" / "a", tracking_uri=sqlite_uri)
    assert (explicit / "adapter_config.json").is_file()


def test_resolve_adapter_refuses_files_that_differ_from_the_manifest(mlflow_client, sqlite_uri, experiment_id, tmp_path):
    adapter = make_adapter(tmp_path / "adapter")
    run_id, _ = register(mlflow_client, experiment_id, adapter)
    expected = artifacts.read_manifest(adapter)["files"]["adapter_model.safetensors"]["sha256"]
    stored = tmp_path / "mlartifacts" / run_id / "artifacts" / "adapter" / "adapter_model.safetensors"
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")  # one byte of bit rot in the store
    dest = tmp_path / "serve" / "adapter"
    with pytest.raises(RegistryError) as err:
        registry.resolve_adapter(f"models:/{NAME}/1", dest, tracking_uri=sqlite_uri)
    message = str(err.value)
    assert message.startswith(f"models:/{NAME}/1: ")
    assert f"adapter_model.safetensors differs from the manifest: expected sha256 {expected}" in message
    assert f"found sha256 {artifacts.sha256_file(stored)}" in message
    assert len(message.splitlines()) == 1
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def _flip_a_byte(folder):
    path = folder / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    return "adapter_model.safetensors differs from the manifest"


def _truncate(folder):
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    return "adapter_model.safetensors differs from the manifest"


def _delete_a_file(folder):
    (folder / "adapter_model.safetensors").unlink()
    return "adapter_model.safetensors is missing: expected sha256"


def _delete_the_manifest(folder):
    (folder / artifacts.MANIFEST).unlink()
    return f"{artifacts.MANIFEST} is missing: expected manifest digest"


def _rewrite_the_manifest(folder):
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 64}')
    artifacts.write_manifest(folder)  # a manifest that matches altered files is not the registered one
    return f"{artifacts.MANIFEST} is not the registered one: expected manifest digest"


def _add_a_file(folder):
    (folder / "tokenizer.json").write_text("{}")
    return "tokenizer.json is not in the manifest"


@pytest.mark.parametrize("tamper", [_flip_a_byte, _truncate, _delete_a_file, _delete_the_manifest,
                                    _rewrite_the_manifest, _add_a_file])
def test_a_tampered_cached_adapter_is_refused_and_not_fetched_again(
    mlflow_client, sqlite_uri, experiment_id, tmp_path, monkeypatch, tamper
):
    monkeypatch.setenv("MODELCHAIN_HOME", str(tmp_path / "home"))
    register(mlflow_client, experiment_id, make_adapter(tmp_path / "adapter"))
    digest = mlflow_client.get_model_version(NAME, "1").tags["lineage.adapter_sha256"]
    cached = registry.resolve_adapter(f"models:/{NAME}/1", tracking_uri=sqlite_uri)
    problem = tamper(cached)
    before = {p.relative_to(cached).as_posix(): p.read_bytes() for p in cached.rglob("*") if p.is_file()}

    def no_download(*args, **kwargs):
        raise AssertionError("a tampered cache must not be replaced behind the user's back")

    monkeypatch.setattr(artifacts, "download_folder", no_download)
    with pytest.raises(RegistryError) as err:
        registry.resolve_adapter(f"models:/{NAME}@challenger", tracking_uri=sqlite_uri)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"models:/{NAME}/1 cached at {cached}: ") and problem in message
    assert message.endswith(f"; remove {cached} to fetch it again")
    digests = __import__("re").findall(r"\b[0-9a-f]{64}\b", message)
    if tamper in (_flip_a_byte, _truncate, _rewrite_the_manifest):
        assert len(set(digests)) == 2  # expected and found
    if tamper in (_rewrite_the_manifest, _delete_the_manifest):
        assert digest in message  # the version's lineage.adapter_sha256, the expected one
    after = {p.relative_to(cached).as_posix(): p.read_bytes() for p in cached.rglob("*") if p.is_file()}
    assert after == before  # nothing was re-downloaded or repaired silently


def test_register_refuses_an_adapter_without_its_manifest(mlflow_client, experiment_id, tmp_path):
    adapter = make_adapter(tmp_path / "adapter", manifest=False)
    run_id = gate_run(mlflow_client, experiment_id)
    before = snapshot(mlflow_client, NAME)
    with pytest.raises(RegistryError) as err:
        registry.register_adapter(mlflow_client, run_id, adapter, model_name=NAME, tags={})
    assert str(err.value) == (
        f"{adapter}: no {artifacts.MANIFEST}; an adapter is registered only with the manifest the finetune step "
        "writes (size and sha256 of every file)"
    )
    assert snapshot(mlflow_client, NAME) == before
    assert mlflow_client.list_artifacts(run_id, "adapter") == []


def test_register_refuses_an_adapter_that_differs_from_its_manifest(mlflow_client, experiment_id, tmp_path):
    adapter = make_adapter(tmp_path / "adapter")
    _truncate(adapter)
    run_id = gate_run(mlflow_client, experiment_id)
    before = snapshot(mlflow_client, NAME)
    with pytest.raises(RegistryError, match=rf"^{adapter}: adapter_model.safetensors differs from the manifest: "
                                            r"expected sha256 [0-9a-f]{64} \(8280 bytes\), found sha256 [0-9a-f]{64} \(100 bytes\)$"):
        registry.register_adapter(mlflow_client, run_id, adapter, model_name=NAME, tags={})
    assert snapshot(mlflow_client, NAME) == before
    assert mlflow_client.list_artifacts(run_id, "adapter") == []


def test_a_version_without_its_digest_is_not_loaded(mlflow_client, sqlite_uri, experiment_id, tmp_path):
    register(mlflow_client, experiment_id, make_adapter(tmp_path / "adapter"))
    mlflow_client.delete_model_version_tag(NAME, "1", "lineage.adapter_sha256")
    with pytest.raises(RegistryError, match=rf"^models:/{NAME}/1 has no lineage.adapter_sha256 tag"):
        registry.resolve_adapter(f"models:/{NAME}/1", tmp_path / "serve", tracking_uri=sqlite_uri)
    assert not (tmp_path / "serve").exists()


def test_an_unreachable_tracking_server_fails_fast():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(RegistryError) as err:
        registry.client(f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < registry.PROBE_TIMEOUT_S
    assert str(err.value).startswith(f"MLflow tracking server http://127.0.0.1:{port} is unreachable (")
    assert len(str(err.value).splitlines()) == 1


def test_default_tracking_uri_honours_overrides_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELCHAIN_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.default_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert registry.default_tracking_uri() == "http://mlflow.example:5000"
    assert registry.default_tracking_uri(["cluster=eks"]) == "http://mlflow.mlflow.svc.cluster.local:5000"

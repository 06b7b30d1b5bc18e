"""eval.champion resolved against MLflow on sqlite: what serves, no champion yet, and failing closed."""

import shutil
import socket

import pytest

from modelchain.core import registry
from modelchain.eval.champion import ChampionError, resolve

from ..registry_support import (  # noqa: F401 (fixtures)
    experiment_id,
    gate_run,
    make_adapter,
    mlflow_client,
    sqlite_uri,
    template_db,
)

NAME = "tiny-llama-ticket-routing"


def register(client, experiment_id, adapter) -> str:
    return registry.register_adapter(client, gate_run(client, experiment_id), adapter, model_name=NAME, tags={})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_auto_with_no_model_or_no_alias_is_no_champion_yet(mlflow_client, sqlite_uri, experiment_id, tmp_path):
    none_yet = resolve("auto", NAME, sqlite_uri)
    assert none_yet.status == "absent" and none_yet.reason == f"no champion yet: the registry has no model {NAME!r}"
    register(mlflow_client, experiment_id, make_adapter(tmp_path / "adapter"))  # alias challenger only
    no_alias = resolve("auto", NAME, sqlite_uri)
    assert no_alias.status == "absent" and "has no alias 'champion'" in no_alias.reason


def test_auto_resolves_the_champion_alias_when_called(mlflow_client, sqlite_uri, experiment_id, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELCHAIN_HOME", str(tmp_path / "home"))
    for seed in (1, 2):
        register(mlflow_client, experiment_id, make_adapter(tmp_path / f"adapter{seed}", seed=seed))
    registry.promote(mlflow_client, NAME, "1")
    first = resolve("auto", NAME, sqlite_uri)
    assert (first.status, first.version, first.uri) == ("resolved", "1", f"models:/{NAME}/1")
    assert (tmp_path / "home" / "adapters" / NAME / "1" / "adapter_config.json").is_file()
    # A later run finds what serves then: nothing about the champion is fixed in advance.
    registry.promote(mlflow_client, NAME, "2")
    assert resolve("", NAME, sqlite_uri).version == "2"


def test_unreachable_registry_fails_closed(tmp_path):
    failed = resolve("auto", NAME, f"http://127.0.0.1:{closed_port()}")
    assert failed.status == "failed"
    assert "could not be looked up" in failed.reason and "unreachable" in failed.reason


def test_a_champion_whose_files_are_gone_fails_closed(mlflow_client, sqlite_uri, experiment_id, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELCHAIN_HOME", str(tmp_path / "home"))
    register(mlflow_client, experiment_id, make_adapter(tmp_path / "adapter"))
    registry.promote(mlflow_client, NAME, "1")
    source = mlflow_client.get_model_version(NAME, "1").source
    run_artifacts = mlflow_client.get_run(mlflow_client.get_model_version(NAME, "1").run_id).info.artifact_uri
    shutil.rmtree(run_artifacts.removeprefix("file://") + "/adapter")
    failed = resolve("auto", NAME, sqlite_uri)
    assert failed.status == "failed" and failed.version == "1", (source, failed)
    assert failed.reason.startswith(f"champion models:/{NAME}/1 could not be fetched or verified")


def test_an_explicit_reference_that_does_not_exist_is_bad_input(mlflow_client, sqlite_uri, experiment_id, tmp_path):
    register(mlflow_client, experiment_id, make_adapter(tmp_path / "adapter"))
    with pytest.raises(ChampionError, match=f"eval.champion: models:/{NAME}/7: model '{NAME}' has no version 7"):
        resolve(f"models:/{NAME}/7", NAME, sqlite_uri)
    with pytest.raises(ChampionError, match="no registered model 'elsewhere'"):
        resolve("models:/elsewhere@champion", NAME, sqlite_uri)
    with pytest.raises(ChampionError, match="is not a model reference"):
        resolve("models:/m/latest", NAME, sqlite_uri)
    with pytest.raises(ChampionError, match="registered model's name is needed"):
        resolve("auto", "", sqlite_uri)

"""The local stack proves each adapter right before vLLM loads it (MLflow on sqlite, a recording stack).

The stack object stands in for the running vLLM servers: it records what would be loaded.
"""

from types import SimpleNamespace

import pytest

from modelchain.core import artifacts, registry
from modelchain.core.registry import RegistryError
from modelchain.serving.backend import Rollout
from modelchain.serving.local_vllm import LocalVllmBackend
from tests.registry_support import experiment_id, gate_run, make_adapter, mlflow_client, sqlite_uri, template_db  # noqa: F401

MODEL = "tiny-llama-ticket-routing"


class RecordingStack:
    def __init__(self, workdir):
        self.spec = SimpleNamespace(workdir=workdir)
        self.loaded = []

    def deploy(self, role, adapter_dir, fault=""):
        self.loaded.append((role, str(adapter_dir)))


@pytest.fixture
def backend(mlflow_client, experiment_id, sqlite_uri, tmp_path):  # noqa: F811
    for seed in (1, 2):
        run_id = gate_run(mlflow_client, experiment_id)
        registry.register_adapter(mlflow_client, run_id, make_adapter(tmp_path / f"ad{seed}", seed=seed),
                                  model_name=MODEL, tags={})
    serve = SimpleNamespace(canary=SimpleNamespace(fault=""))
    cluster = SimpleNamespace(workdir=str(tmp_path / "work"), mlflow=SimpleNamespace(tracking_uri=sqlite_uri))
    return LocalVllmBackend(serve, cluster, None, base_model=tmp_path, stack=RecordingStack(tmp_path / "stack"))


def test_both_adapters_are_proven_then_loaded(backend, tmp_path):
    assert backend.deploy(Rollout(MODEL, "2", "1")) == "version 1 (champion)"
    folders = tmp_path / "work" / "adapters" / MODEL
    assert backend.stack.loaded == [("stable", str(folders / "1")), ("canary", str(folders / "2"))]


def test_an_adapter_altered_after_it_was_fetched_is_not_loaded(backend, mlflow_client, monkeypatch):
    real = registry.resolve_adapter

    def fetched_then_altered(uri, dest, **kwargs):
        folder = real(uri, dest, **kwargs)
        if uri.endswith("/2"):
            (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 64}')
        return folder

    monkeypatch.setattr(registry, "resolve_adapter", fetched_then_altered)
    with pytest.raises(artifacts.ChecksumError) as err:
        backend.deploy(Rollout(MODEL, "2", "1"))
    expected = artifacts.read_manifest(backend.stack.spec.workdir.parent / "ad2")["files"]["adapter_config.json"]["sha256"]
    assert f"models:/{MODEL}/2 at " in str(err.value)
    assert f"adapter_config.json differs from the manifest: expected sha256 {expected}" in str(err.value)
    assert backend.stack.loaded == []


def test_a_tampered_cached_adapter_is_refused_before_loading(backend, tmp_path):
    backend.deploy(Rollout(MODEL, "2", "1"))
    backend.stack.loaded.clear()
    (tmp_path / "work" / "adapters" / MODEL / "1" / artifacts.MANIFEST).unlink()
    with pytest.raises(RegistryError, match=rf"^models:/{MODEL}/1 cached at .*{artifacts.MANIFEST} is missing"):
        backend.deploy(Rollout(MODEL, "2", "1"))
    assert backend.stack.loaded == []

"""finetune with a workspace (cluster.workspace.size) under kfp.local, which serves KFP's workspace
placeholder from a folder of its own: the splits and the adapter stay on the workspace, the
artifacts are pointers, and what passed the gate is registered in MLflow on sqlite as usual."""

import pytest

from modelchain.core import registry

from .conftest import run_cli

pytestmark = pytest.mark.e2e

NAME = "local-model-ticket-routing"


def test_splits_and_adapter_stay_on_the_workspace(tmp_path, tiny_model, routing_dataset):
    home = tmp_path / "home"
    out = run_cli("run", "finetune", "model=local_dir", f"model.path={tiny_model}", f"data.source.uri={routing_dataset}",
                  "train=quick", "eval=smoke", "serve.canary.enabled=false", "cluster.workspace.size=1Gi", home=home)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = next((home / "kfp-outputs").glob("finetune-*"))
    for step, artifact in (("data-prep", "splits"), ("finetune", "adapter")):
        pointer = run / step / artifact
        assert pointer.is_file() and pointer.read_text().strip().endswith(f"/{artifact}"), pointer
    client = registry.client(f"sqlite:///{home}/mlflow.db")
    version = client.get_model_version_by_alias(NAME, "challenger")
    stored = {a.path for a in client.list_artifacts(version.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= stored

"""Register: the gated adapter becomes a model version with alias `challenger`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelchain.core import registry
from modelchain.core.config import registered_model_name
from omegaconf import OmegaConf


def run(settings: dict[str, Any], mlflow_run_id: str, adapter_dir: str | Path) -> str:
    """Returns the registered model URI, `models:/NAME/VERSION`."""
    client = registry.client(settings["cluster"]["mlflow"]["tracking_uri"])
    run = client.get_run(mlflow_run_id)
    if run.data.tags.get("gate.decision") != "passed":
        raise RuntimeError(f"MLflow run {mlflow_run_id} did not pass the gate; refusing to register")
    name = registered_model_name(OmegaConf.create(settings))
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(("lineage.", "gate."))}
    tags |= {f"metric.{k}": f"{v:.4f}" for k, v in run.data.metrics.items() if k.startswith("challenger.")}
    version = registry.register_adapter(client, mlflow_run_id, Path(adapter_dir), model_name=name, tags=tags)
    return f"models:/{name}/{version}"

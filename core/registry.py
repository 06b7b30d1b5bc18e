"""MLflow access: experiment runs that record every gate decision, and adapter registration.

mlflow is imported inside the functions: the CLI stays fast without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

CHALLENGER = "challenger"


def client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(mlflow_client, name: str, artifact_location: Optional[str] = None) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if artifact_location and "://" not in artifact_location:
        Path(artifact_location).mkdir(parents=True, exist_ok=True)
    return mlflow_client.create_experiment(name, artifact_location=artifact_location)


def log_run(
    mlflow_client,
    experiment_id: str,
    *,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: dict[str, Path] | None = None,
    failed: bool = False,
) -> str:
    """One finished run with params, metrics, tags and artifact folders/files; returns its id."""
    from mlflow.entities import Metric, Param, RunTag

    run = mlflow_client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        mlflow_client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        )
        for artifact_path, local in (artifacts or {}).items():
            local = Path(local)
            if local.is_dir():
                mlflow_client.log_artifacts(run_id, str(local), artifact_path)
            else:
                mlflow_client.log_artifact(run_id, str(local), artifact_path)
    except BaseException:
        mlflow_client.set_terminated(run_id, "FAILED")
        raise
    mlflow_client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
    return run_id


def register_adapter(
    mlflow_client,
    run_id: str,
    adapter_dir: Path,
    *,
    model_name: str,
    tags: dict[str, str],
    alias: str = CHALLENGER,
) -> str:
    """Log the adapter into `run_id`, create a model version and point `alias` at it.

    The registry changes come last, after the files are stored, so a failure leaves the
    registry as it was. Returns the new version number.
    """
    from mlflow.exceptions import MlflowException

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_dir}: not a LoRA adapter (no adapter_config.json)")
    mlflow_client.log_artifacts(run_id, str(adapter_dir), "adapter")
    artifact_uri = mlflow_client.get_run(run_id).info.artifact_uri
    try:
        mlflow_client.create_registered_model(model_name, description="LoRA adapters registered by modelchain")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = mlflow_client.create_model_version(
        model_name, source=f"{artifact_uri}/adapter", run_id=run_id, tags=tags
    )
    mlflow_client.set_registered_model_alias(model_name, alias, version.version)
    return str(version.version)

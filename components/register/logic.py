"""Register: the gated adapter becomes a model version with alias `challenger`.

The version carries the whole lineage record as tags, copied from the gate's MLflow run:
`lineage.*` (data, base model, training job, KFP run, commit, config hash), `gate.*`, and
the eval metrics as `eval.*`; the adapter files and their checksum manifest are stored in
that run, beside the reports, the data card and the resolved config.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from modelchain.core import registry
from modelchain.core.config import registered_model_name


def version_tags(run) -> dict[str, str]:
    """What a model version copies from its gate run: lineage, gate decision, eval metrics."""
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(("lineage.", "gate."))}
    for key, value in run.data.metrics.items():
        if key.startswith(("challenger.", "base.", "champion.")):
            tags[f"eval.{key}"] = f"{value:.4f}"
    if "eval.n_examples" in run.data.metrics:
        tags["eval.n_examples"] = str(int(run.data.metrics["eval.n_examples"]))
    tags["lineage.mlflow_run_id"] = run.info.run_id
    return tags


def run(model, data, cluster, experiment, mlflow_run_id: str, adapter_dir: str | Path) -> str:
    """Returns the registered model URI, `models:/NAME/VERSION`; the groups are typed configs."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():  # before any network call
        raise registry.RegistryError(f"{adapter_dir}: not a LoRA adapter (no adapter_config.json)")
    client = registry.client(cluster.mlflow.tracking_uri)
    gate_run = client.get_run(mlflow_run_id)  # register_adapter refuses it unless the gate passed
    name = registered_model_name(SimpleNamespace(experiment=experiment, model=model, data=data))
    version = registry.register_adapter(client, mlflow_run_id, adapter_dir, model_name=name, tags=version_tags(gate_run))
    return f"models:/{name}/{version}"

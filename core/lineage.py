"""The lineage record of a model version: from the serving alias back to the data.

`build` gathers it from the registry (version tags, copied at registration) and the gate's
MLflow run (metrics, params, artifacts); `render` prints it for people, and the record
itself is plain JSON for machines (`modelchain lineage --json`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from modelchain.core.registry import ModelRef, aliases, get_registered_model, get_version


def build(mlflow_client, ref: ModelRef) -> dict[str, Any]:
    """The record of the version `ref` names (a missing model, alias or version raises)."""
    mv = get_version(mlflow_client, ref)
    model = get_registered_model(mlflow_client, ref.name)
    run = _run(mlflow_client, mv.run_id)
    tags = {**(run.data.tags if run else {}), **mv.tags}  # the version's copy wins
    metrics = run.data.metrics if run else {}
    splits = {}
    for key, value in tags.items():
        parts = key.split(".")
        if len(parts) == 4 and parts[:2] == ["lineage", "split"]:
            splits.setdefault(parts[2], {})["rows" if parts[3] == "rows" else parts[3]] = value
    return {
        "model": mv.name,
        "version": str(mv.version),
        "uri": f"models:/{mv.name}/{mv.version}",
        "requested": ref.uri,
        "aliases": sorted(alias for alias, version in aliases(model).items() if version == str(mv.version)),
        "registered_at": _iso(mv.creation_timestamp),
        "status": mv.status,
        "adapter": {"source": mv.source, "sha256": tags.get("lineage.adapter_sha256", "")},
        "gate": {
            "decision": tags.get("gate.decision", ""),
            "reasons": [r for r in tags.get("gate.reasons", "").split(" | ") if r],
        },
        "eval": {
            "n_examples": int(metrics["eval.n_examples"]) if "eval.n_examples" in metrics else tags.get("eval.n_examples"),
            "challenger": _side(metrics, tags, "challenger"),
            "base": _side(metrics, tags, "base"),
        },
        "training": {
            "run_id": mv.run_id,
            "run_name": run.info.run_name if run else "",
            "experiment_id": run.info.experiment_id if run else "",
            "params": dict(run.data.params) if run else {},
            "train_metrics": {k[6:]: v for k, v in metrics.items() if k.startswith("train.")},
            "training_image": tags.get("lineage.training_image", ""),
            "pytorchjob": tags.get("lineage.pytorchjob", ""),
            "kfp_run_id": tags.get("lineage.kfp_run_id", ""),
            "git_commit": tags.get("lineage.git_commit", ""),
            "cluster": tags.get("lineage.cluster", ""),
            "config_sha256": tags.get("lineage.config_sha256", ""),
        },
        "base_model": {"id": tags.get("lineage.base_model", ""), "revision": tags.get("lineage.base_model_revision", "")},
        "data": {
            "uri": tags.get("lineage.dataset_uri", ""),
            "name": tags.get("lineage.dataset_name", ""),
            "splits": splits,
        },
        "artifacts": _artifacts(mlflow_client, mv.run_id) if run else [],
        "tags": dict(sorted(mv.tags.items())),
    }


def _run(mlflow_client, run_id: str | None):
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return mlflow_client.get_run(run_id)
    except MlflowException:
        return None  # the run was deleted: the version's tags still tell most of the story


def _side(metrics: dict, tags: dict, side: str) -> dict[str, float]:
    values = {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{side}.")}
    for key, value in tags.items():
        if key.startswith(f"eval.{side}."):
            values.setdefault(key.split(".", 2)[2], float(value))
    return dict(sorted(values.items()))


def _artifacts(mlflow_client, run_id: str) -> list[str]:
    """Files of the run, one level into each folder; an unreadable store is noted, not fatal."""
    try:
        out = []
        for item in mlflow_client.list_artifacts(run_id):
            if not item.is_dir:
                out.append(item.path)
            elif item.path == "adapter":
                out.append(f"adapter/ ({len(mlflow_client.list_artifacts(run_id, item.path))} files)")
            else:
                out += [child.path for child in mlflow_client.list_artifacts(run_id, item.path)]
        return out
    except Exception as exc:  # S3 credentials missing on this machine, say
        return [f"(artifacts not listed: {type(exc).__name__})"]


def _iso(millis: int | None) -> str:
    if not millis:
        return ""
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(record: dict[str, Any]) -> str:
    """The record for people: from what serves, back to the data."""
    lines = []

    def row(label: str, *texts: str) -> None:
        for i, text in enumerate(t for t in texts if t):
            lines.append(f"  {label if i == 0 else '':<12} {text}")

    aliases = f"  [{', '.join(record['aliases'])}]" if record["aliases"] else ""
    lines.append(f"{record['requested']}  ->  version {record['version']}{aliases}")
    row("registered", f"{record['registered_at']}   status {record['status']}")
    adapter = record["adapter"]
    row("adapter", adapter["source"], f"sha256 {adapter['sha256']}" if adapter["sha256"] else "no manifest")
    gate = record["gate"]
    row("gate", gate["decision"] or "(no decision recorded)", *gate["reasons"])
    ev = record["eval"]
    scores = [
        f"{metric} {value:.3f} (base {ev['base'][metric]:.3f})" if metric in ev["base"] else f"{metric} {value:.3f}"
        for metric, value in ev["challenger"].items()
    ]
    row("eval", f"{ev['n_examples']} examples: " + ", ".join(scores) if scores else "(no metrics)")
    tr = record["training"]
    params = tr["params"]
    lora = ", ".join(
        f"{label} {params[key]}" for label, key in (("rank", "lora.rank"), ("alpha", "lora.alpha"),
                                                    ("targets", "lora.target_modules")) if key in params
    )
    steps = ", ".join(
        f"{label} {params[key]}" for label, key in (("max_steps", "max_steps"), ("lr", "learning_rate"),
                                                    ("batch", "batch_size"), ("seq", "max_seq_len")) if key in params
    )
    loss = tr["train_metrics"].get("final_loss")
    row(
        "training",
        f"run {tr['run_id']} ({tr['run_name']}, experiment {tr['experiment_id']})",
        f"LoRA {lora}" if lora else "",
        steps + (f", final loss {loss:.4f}" if loss is not None else ""),
        f"image {tr['training_image'] or '?'}   PyTorchJob {tr['pytorchjob'] or '-'}   cluster {tr['cluster'] or '?'}",
        f"KFP run {tr['kfp_run_id'] or '-'}   git commit {tr['git_commit'] or '-'}",
        f"config sha256 {tr['config_sha256']}" if tr["config_sha256"] else "",
    )
    base = record["base_model"]
    row("base model", f"{base['id'] or '?'} @ {base['revision'] or '?'}")
    data = record["data"]
    row(
        "data",
        f"{data['uri'] or '?'}" + (f" ({data['name']})" if data["name"] else ""),
        *[f"{split:<6} {info.get('rows', '?'):>6} rows  sha256 {info.get('sha256', '?')}"
          for split, info in sorted(data["splits"].items(), key=lambda kv: ("train", "val", "test").index(kv[0])
                                    if kv[0] in ("train", "val", "test") else 9)],
    )
    row("artifacts", *record["artifacts"])
    return "\n".join(lines)

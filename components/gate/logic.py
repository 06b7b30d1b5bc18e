"""Gate: apply the policy of modelchain.eval.gate and record the decision in MLflow.

The MLflow run is written whatever the decision, so a refusal is never silent: it is
tagged `gate.decision=refused` with every reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelchain.core import registry
from modelchain.core.io import atomic_write_text
from modelchain.eval.gate import GateDecision, decide, render_markdown


def run(
    settings: dict[str, Any],
    results: dict,
    *,
    thresholds: dict[str, float],
    min_improvement: float,
    report_path: str | Path,
    splits_dir: str | Path,
    adapter_dir: str | Path,
    kfp_run_id: str = "",
) -> tuple[GateDecision, str]:
    """Decide, write the Markdown report, log the MLflow run; returns (decision, run id)."""
    decision = decide(
        results["challenger"],
        results["base"],
        results["n_examples"],
        thresholds={k: float(v) for k, v in thresholds.items()},
        min_improvement=float(min_improvement),
        min_examples=settings["eval"]["min_examples"],
    )
    atomic_write_text(report_path, render_markdown(decision, results["challenger"], results["base"]))
    run_id = _record(settings, decision, results, Path(report_path), Path(splits_dir), Path(adapter_dir), kfp_run_id)
    return decision, run_id


def lineage_tags(settings: dict[str, Any], card: dict, kfp_run_id: str) -> dict[str, str]:
    """Tags that walk from a model version back to its data, code and config."""
    model = settings["model"]
    tags = {
        "lineage.dataset_uri": ",".join(card.get("source_uris", [])),
        "lineage.base_model": model["hf_id"],
        "lineage.base_model_revision": model["revision"],
        "lineage.kfp_run_id": kfp_run_id,
        "lineage.git_commit": settings.get("build", {}).get("git_commit", ""),
        "lineage.cluster": settings["cluster"]["name"],
    }
    for split, info in card.get("splits", {}).items():
        tags[f"lineage.split.{split}.sha256"] = info["sha256"]
        tags[f"lineage.split.{split}.rows"] = str(info["count"])
    return tags


def _record(settings, decision, results, report_path, splits_dir, adapter_dir, kfp_run_id) -> str:
    mlflow_cfg = settings["cluster"]["mlflow"]
    client = registry.client(mlflow_cfg["tracking_uri"])
    experiment_id = registry.ensure_experiment(client, settings["experiment"]["name"], mlflow_cfg["artifact_location"])
    card = json.loads((splits_dir / "data_card.json").read_text())
    train = settings["train"]
    params = {
        "model": settings["model"]["name"],
        "data": settings["data"]["name"],
        "lora.rank": train["lora"]["rank"],
        "lora.alpha": train["lora"]["alpha"],
        "lora.dropout": train["lora"]["dropout"],
        "lora.target_modules": ",".join(train["lora"]["target_modules"]),
        "max_steps": train["max_steps"],
        "learning_rate": train["learning_rate"],
        "batch_size": train["batch_size"],
        "max_seq_len": train["max_seq_len"],
    }
    metrics = {f"challenger.{k}": v for k, v in results["challenger"].items()}
    metrics |= {f"base.{k}": v for k, v in results["base"].items()}
    metrics["eval.n_examples"] = results["n_examples"]
    train_metrics_path = adapter_dir / "train_metrics.json"
    if train_metrics_path.is_file():
        train_metrics = json.loads(train_metrics_path.read_text())
        metrics |= {f"train.{k}": v for k, v in train_metrics.items() if isinstance(v, (int, float))}
    tags = lineage_tags(settings, card, kfp_run_id) | {
        "gate.decision": "passed" if decision.passed else "refused",
        "gate.reasons": " | ".join(decision.reasons)[:5000],
        "modelchain.pipeline": "finetune",
    }
    run_id = registry.log_run(
        client,
        experiment_id,
        run_name=f"finetune-{kfp_run_id or 'manual'}"[:60],
        params=params,
        metrics=metrics,
        tags=tags,
        artifacts={"reports": report_path},
    )
    for folder, source in (
        ("data", splits_dir / "data_card.md"),
        ("data", splits_dir / "data_card.json"),
        ("training", adapter_dir / "loss_curve.png"),
        ("training", adapter_dir / "train_metrics.json"),
    ):
        if source.is_file():
            client.log_artifact(run_id, str(source), folder)
    client.log_text(run_id, json.dumps(settings, indent=2, default=str), "config/resolved_config.json")
    return run_id

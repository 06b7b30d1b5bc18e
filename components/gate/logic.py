"""Gate: apply the policy of modelchain.eval.gate and record the decision in MLflow.

The MLflow run is written whatever the decision, so a refusal is never silent: it is
tagged `gate.decision=refused` with every reason. The run holds the lineage record that
register copies onto the model version: `lineage.*` tags, eval metrics, the gate report,
the eval report and results, the data card, and the config groups the run used (with its
run-time values) and the training config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from omegaconf import OmegaConf

from modelchain.core import registry
from modelchain.core.config import registered_model_name
from modelchain.core.io import atomic_write_text, sha256_text
from modelchain.eval.gate import GateDecision, GatePolicy, decide
from modelchain.eval.metrics import ANSWER_METRICS
from modelchain.eval.report import render_evaluation, render_html, render_markdown
from modelchain.training.backends import TRAINING_JOB_RECORD, get as training_backend


def run(
    model,
    data,
    train,
    ev,
    cluster,
    experiment,
    results: dict,
    *,
    report_path: str | Path,
    splits_dir: str | Path,
    adapter_dir: str | Path,
    kfp_run_id: str = "",
    git_commit: str = "",
    html_path: str | Path | None = None,
) -> tuple[GateDecision, str]:
    """Decide, write the Markdown (and HTML) report, log the MLflow run; returns (decision, run id).

    The groups are typed configs holding the run's values (the policy's thresholds and
    min_improvement in `ev`; max_steps, learning rate, LoRA rank and alpha in `train`).
    """
    groups = {"model": model, "data": data, "train": train, "eval": ev, "cluster": cluster, "experiment": experiment}
    policy = GatePolicy.from_config(ev)
    decision = decide_results(results, policy)
    atomic_write_text(report_path, render_markdown(decision, results, policy))
    if html_path:
        atomic_write_text(html_path, render_html(decision, results, policy))
    try:
        run_id = _record(
            groups, decision, results, Path(report_path), Path(splits_dir), Path(adapter_dir), kfp_run_id, git_commit,
            Path(html_path) if html_path else None,
        )
    except registry.RegistryError as exc:
        if decision.passed:
            raise  # a passing adapter is registered from this run: without it nothing can go on
        # A refusal stands without its MLflow record (the registry may be what made it fail
        # closed); the report artifact says why.
        print(f"gate: refused, and the MLflow record could not be written: {exc}")
        run_id = ""
    return decision, run_id


def decide_results(results: dict, policy: GatePolicy) -> GateDecision:
    """The policy applied to evaluate's results (per-example scores, plus summary metrics)."""
    sides = [s for s in ("base", "champion", "challenger") if isinstance(results.get(s), dict)]
    scores = results.get("scores") or {
        side: {m: [e[f"{side}_{m}"] for e in results.get("examples", []) if f"{side}_{m}" in e]
               for m in ANSWER_METRICS}
        for side in sides
    }
    summary = {side: dict(results[side]) for side in sides}
    for side, means in (results.get("rag") or {}).get("means", {}).items():
        summary.setdefault(side, {}).update({f"rag_{m}": v for m, v in means.items()})
    return decide(scores, policy, summary, champion=results.get("champion_resolution"), rag=results.get("rag"))


def decision_metrics(decision: GateDecision) -> dict[str, float]:
    """Numbers for KFP Metrics and MLflow: pass/fail per rule and the intervals it used."""
    out = {"gate.passed": 1.0 if decision.passed else 0.0}
    for check in decision.checks:
        out[f"gate.{check.rule}"] = 1.0 if check.passed else 0.0
        if check.interval is not None:
            out[f"gate.{check.rule}.mean"] = check.interval.mean
            out[f"gate.{check.rule}.ci_low"] = check.interval.low
            out[f"gate.{check.rule}.ci_high"] = check.interval.high
        if check.detectable is not None:
            out[f"gate.{check.rule}.detectable"] = check.detectable
        if check.examples_needed:
            out[f"gate.{check.rule}.examples_needed"] = float(check.examples_needed)
    return out


def training_job(cluster, adapter_dir: str | Path) -> dict[str, str]:
    """The job that trained the adapter: what its backend recorded beside it (TRAINING_JOB_RECORD),
    over what the configured backend says of a run that records nothing (the local trainer)."""
    recorded = _read_json(Path(adapter_dir) / TRAINING_JOB_RECORD)
    return {**training_backend(cluster.training.backend).job_record(cluster), **recorded}


def lineage_tags(
    groups: dict[str, Any], card: dict, kfp_run_id: str, git_commit: str, job: dict[str, str]
) -> dict[str, str]:
    """Tags that walk from a model version back to its data, code, config and training job."""
    model, cluster = groups["model"], groups["cluster"]
    tags = {
        "lineage.dataset_uri": ",".join(card.get("source_uris", [])),
        "lineage.dataset_name": groups["data"].name,
        "lineage.base_model": model.hf_id,
        "lineage.base_model_revision": model.revision,
        "lineage.training_image": job.get("image", ""),
        "lineage.pytorchjob": job.get("name", ""),  # the training job's name, whatever its kind
        "lineage.training_job_kind": job.get("kind", ""),
        "lineage.training_job_namespace": job.get("namespace", ""),
        "lineage.training_job_uid": job.get("uid", ""),
        "lineage.kfp_run_id": kfp_run_id,
        "lineage.git_commit": git_commit,
        "lineage.cluster": cluster.name,
        "lineage.registered_model": registered_model_name(SimpleNamespace(**groups)),
        "lineage.config_sha256": sha256_text(_config_json(groups)),
    }
    for split, info in card.get("splits", {}).items():
        tags[f"lineage.split.{split}.sha256"] = info["sha256"]
        tags[f"lineage.split.{split}.rows"] = str(info["count"])
    return tags


def _log_loss_series(client, run_id: str, losses: list) -> None:
    """The training loss of every step as the series `train.loss`: MLflow draws the curve."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    series = [Metric("train.loss", float(loss), now, step) for step, loss in enumerate(losses, 1) if _finite(loss)]
    for start in range(0, len(series), 1000):  # log_batch takes at most 1,000 metrics a call
        client.log_batch(run_id, metrics=series[start : start + 1000])


def _config_json(groups: dict[str, Any]) -> str:
    """The config groups of the run, with its run-time values, as JSON."""
    resolved = {name: OmegaConf.to_container(node, resolve=True) for name, node in groups.items()}
    return json.dumps(resolved, indent=2, sort_keys=True, default=str)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _record(groups, decision, results, report_path, splits_dir, adapter_dir, kfp_run_id, git_commit,
            html_path=None) -> str:
    mlflow_cfg, train = groups["cluster"].mlflow, groups["train"]
    client = registry.client(mlflow_cfg.tracking_uri)
    experiment_id = registry.ensure_experiment(client, groups["experiment"].name, mlflow_cfg.artifact_location)
    card = json.loads((splits_dir / "data_card.json").read_text())
    train_metrics = _read_json(adapter_dir / "train_metrics.json")
    params = {
        "model": groups["model"].name,
        "data": groups["data"].name,
        "lora.rank": train.lora.rank,
        "lora.alpha": train.lora.alpha,
        "lora.dropout": train.lora.dropout,
        "lora.target_modules": ",".join(train.lora.target_modules),
        "max_steps": train.max_steps,
        "learning_rate": train.learning_rate,
        "batch_size": train.batch_size,
        "max_seq_len": train.max_seq_len,
    }
    metrics = {
        f"{side}.{k}": v
        for side in ("challenger", "base", "champion") if isinstance(results.get(side), dict)
        for k, v in results[side].items() if _finite(v)
    }
    for side, means in (results.get("rag") or {}).get("means", {}).items():
        metrics |= {f"{side}.rag_{k}": v for k, v in means.items() if _finite(v)}
    if results.get("rag"):
        metrics["rag.judge_failures"] = results["rag"]["failed_total"]
    metrics |= {k: v for k, v in decision_metrics(decision).items() if _finite(v)}
    metrics["eval.n_examples"] = results["n_examples"]
    metrics |= {f"train.{k}": v for k, v in train_metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    champion = results.get("champion_resolution") or {}
    tags = lineage_tags(groups, card, kfp_run_id, git_commit, training_job(groups["cluster"], adapter_dir)) | {
        "gate.decision": "passed" if decision.passed else "refused",
        "gate.reasons": " | ".join(decision.reasons)[:5000],
        "gate.champion": champion.get("uri", ""),
        "gate.champion_version": champion.get("version", ""),
        "gate.champion_status": champion.get("status", ""),
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
        ("reports", html_path),
        ("data", splits_dir / "data_card.md"),
        ("data", splits_dir / "data_card.json"),
        ("training", adapter_dir / "loss_curve.png"),
        ("training", adapter_dir / "train_metrics.json"),
        ("training", adapter_dir / TRAINING_JOB_RECORD),
    ):
        if source is not None and source.is_file():
            client.log_artifact(run_id, str(source), folder)
    _log_loss_series(client, run_id, train_metrics.get("losses") or [])
    client.log_text(run_id, _config_json(groups), "config/resolved_config.json")
    client.log_text(run_id, json.dumps(OmegaConf.to_container(train, resolve=True), indent=2, sort_keys=True),
                    "config/training.json")
    client.log_text(run_id, json.dumps(results, indent=2, default=str), "eval/results.json")
    if "examples" in results:
        client.log_text(run_id, render_evaluation(results), "eval/report.md")
    return run_id

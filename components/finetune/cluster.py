"""Finetune on EKS: the NeMo LoRA recipe as a PyTorchJob, from this CPU pod.

Estimate the cost and refuse a job over budget; stage the splits on FSx; create the
ConfigMap + PyTorchJob and wait for it (the master's log streams into this step's log);
copy the adapter the entrypoint exported to FSx into the component's output. The estimate,
the outcome and the measured cost go to MLflow, refusals and failures included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional


def run_on_cluster(
    settings: dict[str, Any],
    splits_dir: str | Path,
    adapter_dir: str | Path,
    *,
    max_steps: int,
    learning_rate: float,
    lora_rank: int,
    lora_alpha: int,
    client=None,
    job_name: Optional[str] = None,
    poll_s: float = 15.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train on the cluster and write the HF PEFT adapter into `adapter_dir`; returns metrics."""
    from omegaconf import OmegaConf

    from modelchain.core.io import atomic_dir
    from modelchain.training import cost, pytorchjob
    from modelchain.training.nemo_entrypoint import check_adapter, stage_splits

    cfg = OmegaConf.create({k: v for k, v in settings.items() if k != "build"})
    # The pipeline's run-time parameters win over the values baked in at compile time.
    cfg.train.max_steps, cfg.train.learning_rate = max_steps, learning_rate
    cfg.train.lora.rank, cfg.train.lora.alpha = lora_rank, lora_alpha

    name = job_name or pytorchjob.job_name(cfg, unique=True)
    estimate = cost.estimate(cfg)
    log(f"finetune on {cfg.cluster.name}: PyTorchJob {name}; estimated ${estimate.cost_usd:,.2f}: {estimate.explain()}")
    record = _Record(cfg, name, estimate)
    try:
        cost.check_budget(estimate, cfg.cluster.training.budget_usd)
    except cost.BudgetExceeded as exc:
        record.log("refused", {}, error=str(exc))
        raise

    folder = Path(pytorchjob.run_dir(cfg, name))
    stage_splits(splits_dir, folder / "data")
    spec = pytorchjob.nemo_spec(cfg, name)
    try:
        result = pytorchjob.submit_and_wait(
            pytorchjob.build_job(cfg, name),
            cfg.cluster.namespace,
            pytorchjob.wait_seconds(cfg),
            client,
            config_map=pytorchjob.build_config_map(cfg, name),
            poll_s=poll_s,
            max_pending_s=cfg.cluster.training.max_pending_minutes * 60,
            log=log,
        )
    except pytorchjob.TrainingJobError as exc:
        record.log("failed", {}, error=str(exc))
        raise

    exported = Path(spec["adapter_dir"])
    if not (exported / "adapter_config.json").exists():
        error = f"{exported}: the job succeeded but left no exported adapter (adapter_config.json)"
        record.log("failed", {}, error=error)
        raise FileNotFoundError(error)
    check_adapter(exported, spec)
    with atomic_dir(adapter_dir) as tmp:
        shutil.copytree(exported, tmp, dirs_exist_ok=True)

    metrics: dict[str, Any] = {"max_steps": max_steps, **estimate.metrics()}
    if result.get("duration_s"):
        actual = cost.actual_cost(estimate, result["duration_s"])
        metrics.update({"duration_s": result["duration_s"], "gpu_hours": actual["gpu_hours"], "cost_usd": actual["cost_usd"]})
    record.log("succeeded", metrics)
    return metrics


class _Record:
    """The MLflow run of one cluster fine-tune: estimate, outcome, measured cost."""

    def __init__(self, cfg, name: str, estimate):
        self.cfg, self.name, self.estimate = cfg, name, estimate

    def log(self, outcome: str, metrics: dict[str, Any], error: str = "") -> Optional[str]:
        from modelchain.core import registry

        cfg, est = self.cfg, self.estimate
        params = {
            "pytorchjob": self.name,
            "namespace": cfg.cluster.namespace,
            "instance_type": est.instance_type,
            "nodes": est.nodes,
            "gpus_per_node": est.gpus_per_node,
            "price_per_hour": est.price_per_hour,
            "budget_usd": cfg.cluster.training.budget_usd,
            "nemo_recipe": cfg.model.nemo_recipe,
            "max_steps": cfg.train.max_steps,
        }
        tags = {"modelchain.step": "finetune", "modelchain.cluster": cfg.cluster.name, "modelchain.outcome": outcome}
        if error:
            tags["modelchain.error"] = error[:4000]
        values = {**est.metrics(), **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        try:
            mlflow = registry.client(cfg.cluster.mlflow.tracking_uri)
            experiment = registry.ensure_experiment(mlflow, cfg.experiment.name, cfg.cluster.mlflow.artifact_location)
            return registry.log_run(
                mlflow, experiment, run_name=f"finetune-{self.name}", params=params, metrics=values,
                tags=tags, failed=outcome != "succeeded",
            )
        except Exception as exc:  # the training outcome stands even when MLflow is down
            print(f"finetune: could not log the cost to MLflow: {type(exc).__name__}: {exc}")
            print(json.dumps({"outcome": outcome, **values}, default=str))
            return None

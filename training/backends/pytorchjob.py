"""Training on EKS: the NeMo LoRA recipe as a PyTorchJob, launched from the finetune step's CPU pod.

Estimate the cost and refuse a job over budget; stage the splits on FSx; create the
ConfigMap + PyTorchJob and wait for it (the master's log streams into the step's log);
copy the adapter the entrypoint exported to FSx into the step's output, with
`training_job.json` (kind, name, namespace, uid, image) for the gate's lineage. The
estimate, the outcome and the measured cost go to MLflow, refusals and failures included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from modelchain.training.backends.base import TRAINING_JOB_RECORD


# GPUs of each GPU instance type a training pool can run (AWS EC2 documentation): a job's
# cluster.training.gpus_per_node must match the instance type it is pinned to.
INSTANCE_GPUS: dict[str, int] = {
    "p6-b200.48xlarge": 8,
    "p5en.48xlarge": 8,
    "p5e.48xlarge": 8,
    "p5.48xlarge": 8,
    "p5.4xlarge": 1,
    "p4de.24xlarge": 8,
    "p4d.24xlarge": 8,
    "g6e.48xlarge": 8,
    "g6e.12xlarge": 4,
    "g6.48xlarge": 8,
    "g6.12xlarge": 4,
    "g6.2xlarge": 1,
    "g5.48xlarge": 8,
    "g5.12xlarge": 4,
    "g5.2xlarge": 1,
}


class PyTorchJobBackend:
    name = "pytorchjob"
    # The module that renders, submits and waits for this backend's job (the TrainJob backend
    # shares everything else: cost, staging, adapter check, lineage record, MLflow run).
    jobs_module = "modelchain.training.pytorchjob"

    def __init__(self, client=None, job_name: Optional[str] = None, poll_s: float = 15.0,
                 log: Callable[[str], None] = print):
        # The SDK client (default: from the pod's service account), a fixed job name and the
        # poll period: tests point them at a hand-written exchange of the Kubernetes API.
        self.client, self.job_name, self.poll_s, self.log = client, job_name, poll_s, log

    @property
    def jobs(self):
        import importlib

        return importlib.import_module(self.jobs_module)

    def check_config(self, cfg, need) -> None:
        """What a PyTorchJob running the NeMo recipe needs to be placeable and well-shaped."""
        from modelchain.training.nemo_entrypoint import recipe_problem
        from modelchain.training.pytorchjob import cluster_weights

        train, training, model = cfg.train, cfg.cluster.training, cfg.model
        # AutoModel builds any causal LM from its own folder; a NeMo 2 recipe fixes its model.
        if train.nemo.recipe_family != "automodel":
            problem = recipe_problem(model.nemo_recipe, model.hf_id, model.family)
            need(problem is None, "model.nemo_recipe", problem or "")
        weights = cluster_weights(model)
        need(bool(weights) and str(weights).startswith("/"), "model.cluster_path",
             f"the training pods read model {model.name!r} from a path on FSx (e.g. {cfg.cluster.fsx.mount_path}/models/...), "
             f"never from the hub; got {weights!r}")
        need(training.instance_type in INSTANCE_GPUS, "cluster.training.instance_type",
             f"unknown GPU instance type {training.instance_type!r}; known: {', '.join(sorted(INSTANCE_GPUS))}")
        gpus = INSTANCE_GPUS.get(training.instance_type, training.gpus_per_node)
        need(training.gpus_per_node == gpus, "cluster.training.gpus_per_node",
             f"{training.instance_type} has {gpus} GPUs, got {training.gpus_per_node}")
        need(training.restart_policy in ("OnFailure", "ExitCode", "Never"), "cluster.training.restart_policy",
             f"must be OnFailure, ExitCode or Never, got {training.restart_policy!r}")
        need(train.procs_per_node <= training.gpus_per_node, "train.procs_per_node",
             f"{train.procs_per_node} processes need as many GPUs, but cluster.training.gpus_per_node is "
             f"{training.gpus_per_node}")
        world = train.nodes * train.procs_per_node
        model_parallel = train.tensor_parallel * train.pipeline_parallel
        need(train.tensor_parallel >= 1 and train.pipeline_parallel >= 1, "train.tensor_parallel", "must be >= 1")
        need(world % model_parallel == 0, "train.tensor_parallel",
             f"tensor_parallel x pipeline_parallel = {model_parallel} must divide nodes x procs_per_node = {world}")
        data_parallel = world // model_parallel if world % model_parallel == 0 else 1
        global_batch = train.batch_size * train.grad_accum
        step = train.nemo.micro_batch_size * data_parallel
        need(train.nemo.micro_batch_size >= 1, "train.nemo.micro_batch_size", "must be >= 1")
        need(global_batch % step == 0, "train.batch_size",
             f"batch_size x grad_accum = {global_batch} must be a multiple of micro_batch_size x data-parallel "
             f"size = {step}")
        need(train.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")

    def train(self, *, model, train, cluster, experiment, splits_dir, adapter_dir) -> dict[str, Any]:
        from omegaconf import OmegaConf

        from modelchain.core.io import atomic_dir
        from modelchain.training import cost, pytorchjob
        from modelchain.training.lora_targets import check_adapter

        jobs = self.jobs

        # The training modules read one composed config (cfg.model, cfg.train, cfg.cluster).
        cfg = OmegaConf.create({"model": model, "train": train, "cluster": cluster, "experiment": experiment})
        log = self.log
        name = self.job_name or pytorchjob.job_name(cfg, unique=True)
        estimate = cost.estimate(cfg)
        log(f"finetune on {cluster.name}: {jobs.KIND} {name}; estimated ${estimate.cost_usd:,.2f}: {estimate.explain()}")
        record = _Record(cfg, name, estimate, self.name)
        try:
            cost.check_budget(estimate, cluster.training.budget_usd)
        except cost.BudgetExceeded as exc:
            record.log("refused", {}, error=str(exc))
            raise

        folder = Path(pytorchjob.run_dir(cfg, name))
        pytorchjob.stage_splits(splits_dir, folder / "data")
        spec = pytorchjob.nemo_spec(cfg, name)
        try:
            result = jobs.submit_and_wait(
                jobs.build_job(cfg, name),
                cluster.namespace,
                pytorchjob.wait_seconds(cfg),
                self.client,
                config_map=pytorchjob.build_config_map(cfg, name),
                poll_s=self.poll_s,
                max_pending_s=cluster.training.max_pending_minutes * 60,
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
        job = {"kind": jobs.KIND, "name": result["name"], "namespace": result["namespace"],
               "uid": result.get("uid") or "", "image": cluster.training.image}
        with atomic_dir(adapter_dir) as tmp:
            shutil.copytree(exported, tmp, dirs_exist_ok=True)
            (Path(tmp) / TRAINING_JOB_RECORD).write_text(json.dumps(job, indent=2, sort_keys=True) + "\n")

        metrics: dict[str, Any] = {"max_steps": train.max_steps, **estimate.metrics()}
        if result.get("duration_s"):
            actual = cost.actual_cost(estimate, result["duration_s"])
            metrics.update({"duration_s": result["duration_s"], "gpu_hours": actual["gpu_hours"], "cost_usd": actual["cost_usd"]})
        record.log("succeeded", metrics)
        return metrics

    def job_record(self, cluster) -> dict[str, str]:
        return {"kind": self.jobs.KIND, "name": "", "image": cluster.training.image}

    def render(self, cfg, name: Optional[str] = None) -> list[dict[str, Any]]:
        return self.jobs.render(cfg, name)


class _Record:
    """The MLflow run of one cluster fine-tune: estimate, outcome, measured cost."""

    def __init__(self, cfg, name: str, estimate, backend: str):
        self.cfg, self.name, self.estimate, self.backend = cfg, name, estimate, backend

    def log(self, outcome: str, metrics: dict[str, Any], error: str = "") -> Optional[str]:
        from modelchain.core import registry

        cfg, est = self.cfg, self.estimate
        params = {
            self.backend: self.name,  # the job's name under its backend: pytorchjob | trainjob
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

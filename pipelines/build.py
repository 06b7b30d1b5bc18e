"""What both pipelines share: the baked settings, run-time parameters, and cluster placement."""

from __future__ import annotations

import inspect
import subprocess
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from modelchain.core.config import RUN_PARAMETERS, parameter_values


def git_commit() -> str:
    """The commit of the modelchain checkout the pipeline is built from ('' outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def run_parameters(pipeline: str, cfg: DictConfig, body: Callable[[dict[str, Any]], None]) -> Callable:
    """A function with one argument per run-time parameter of ``pipeline`` (core.config's
    RUN_PARAMETERS), defaulting to the config's value, that calls ``body(params)``.

    KFP reads a pipeline's parameters from its signature; this builds that signature from
    the one table instead of restating it by hand.
    """
    table = RUN_PARAMETERS[pipeline]
    defaults = parameter_values(pipeline, cfg)

    def pipeline_body(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        body(dict(bound.arguments))

    signature = inspect.Signature([
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[p.name], annotation=p.type)
        for p in table
    ])
    pipeline_body.__signature__ = signature
    pipeline_body.__annotations__ = {p.name: p.type for p in table}
    return pipeline_body


# Which steps KFP may cache and retry, by component name; one table for both pipelines.
# Cached: only a step whose inputs are all upstream artifacts and parameters (a pure function
# of immutable inputs). Never a step that reads an outside source that can change under the
# same URI (data prep, discover: next week's data), reads the registry (evaluate: the champion
# moves) or has side effects (register, canary, upsert).
CACHED_STEPS = frozenset({"chunk"})
# Retried with backoff on EKS: the steps that talk to S3, MLflow or Milvus and can run again
# safely. Not finetune (a retry would launch a second training job), register (a second
# version) or canary (its controller resumes on its own).
RETRIED_STEPS = frozenset({"data-prep", "discover", "chunk", "embed", "upsert", "verify", "verify-shards", "evaluate", "gate"})


def workspace(cluster: DictConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """With `cluster.workspace.size` set: the `dsl.pipeline` keyword that asks KFP for the run's
    workspace PVC, and the argument that hands its path to the steps that write large folders
    (components/workspace.py). Without: nothing, and the folders travel as artifacts."""
    settings = cluster.workspace
    if not settings.size:
        return {}, {}
    from kfp import dsl

    patch: dict[str, Any] = {}
    if settings.storage_class:
        patch["storageClassName"] = settings.storage_class
    if settings.access_modes:
        patch["accessModes"] = list(settings.access_modes)
    config = dsl.PipelineConfig(workspace=dsl.WorkspaceConfig(
        size=settings.size, kubernetes=dsl.KubernetesWorkspaceConfig(pvcSpecPatch=patch)))
    return {"pipeline_config": config}, {"workspace": dsl.WORKSPACE_PATH_PLACEHOLDER}


def place(task, cluster: DictConfig):
    """The step's caching (CACHED_STEPS); on EKS its retries, node pool, tolerations, PVCs,
    secrets as environment variables and resources."""
    step = task.component_spec.name
    task.set_caching_options(step in CACHED_STEPS)
    if cluster.kind != "eks":
        return task
    from kfp import kubernetes

    for key, value in cluster.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in cluster.tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
    for mount in cluster.pvc_mounts:
        kubernetes.mount_pvc(task, pvc_name=mount.name, mount_path=mount.mount_path)
    by_secret: dict[str, dict[str, str]] = {}
    for item in cluster.secret_env:
        by_secret.setdefault(item.secret_name, {})[item.key] = item.env
    for secret_name, key_to_env in by_secret.items():
        kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env=key_to_env)
    task.set_cpu_request(cluster.resources.cpu).set_memory_request(cluster.resources.memory)
    if step in RETRIED_STEPS:
        retry = cluster.retry
        task.set_retry(retry.num_retries, retry.backoff_duration, retry.backoff_factor, retry.backoff_max_duration)
    return task

"""Canary after register: roll the new version out behind the stable one, promote or roll back.

Where it is served is the serving backend `serve.engine` names (modelchain.serving.backend):
local-vllm (two vLLM CPU servers, nginx, Prometheus, validation prompts replayed through
nginx) or k8s-vllm (the Deployments and HTTPRoute of `modelchain render serving`, the
cluster's Prometheus). This step only binds the typed config groups, the registry and the
report to it.

`serve.canary.enabled: auto` runs the canary only where the backend can run (locally:
`make setup-serve` installed the stack and vLLM's CPU attention can serve the base model);
otherwise the step records why it was skipped. `true` refuses to skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from modelchain.core import registry
from modelchain.core.io import atomic_write_json
from modelchain.serving.analysis import Thresholds
from modelchain.serving.backend import ENABLED, Rollout, ServingBackend, make_backend
from modelchain.serving.controller import MlflowRegistryHooks
from modelchain.serving.rollout import rollout
from modelchain.serving.traffic import prompts_from_split


def skip_reason(serve, backend: ServingBackend) -> Optional[str]:
    """Why the canary does not run (None: it runs); raises where serve.canary.enabled=true cannot be met."""
    enabled = str(serve.canary.enabled).lower()
    if enabled not in ENABLED:
        raise ValueError(f"serve.canary.enabled: must be auto, true or false, got {serve.canary.enabled!r}")
    if enabled == "false":
        return "serve.canary.enabled=false"
    return backend.unavailable(required=enabled == "true")


def run(serve, model, cluster, model_uri: str, splits_dir: str | Path, out_dir: str | Path,
        backend: Optional[ServingBackend] = None) -> dict[str, Any]:
    """Returns {"outcome": promoted | rolled_back | skipped, "reason", "report"}; writes the report to out_dir.

    `serve`, `model`, `cluster`: the typed config groups; `backend` defaults to serve.engine's.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = registry.ModelRef.parse(model_uri)
    if ref.version is None:
        raise ValueError(f"canary: {model_uri!r} must name a version (models:/NAME/VERSION)")
    backend = backend or make_backend(serve, cluster, model)
    reason = skip_reason(serve, backend)
    if reason is not None:
        result = {"outcome": "skipped", "reason": reason, "model_uri": model_uri}
        atomic_write_json(out_dir / "rollout.json", result)
        return result
    client = registry.client(cluster.mlflow.tracking_uri)
    hooks = MlflowRegistryHooks(client, ref.name, ref.version)
    thresholds = Thresholds.from_serve(serve)
    prompts = prompts_from_split(Path(splits_dir) / "val.jsonl") if backend.replays_traffic else []
    target = Rollout(ref.name, hooks.candidate, hooks.aliases().get(registry.CHAMPION))
    with backend:
        backend.start(target)
        backend.deploy(target)
        result = rollout(backend, serve, hooks, thresholds, prompts, out_dir)
    _log_report(client, ref, out_dir)
    return {**result, "model_uri": model_uri}


def _log_report(client, ref: registry.ModelRef, out_dir: Path) -> None:
    """The rollout report beside the version's other reports in its MLflow run."""
    version = client.get_model_version(ref.name, ref.version)
    staging = out_dir / "mlflow-canary"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in ("rollout.json", "rollout.md"):
        if (out_dir / name).exists():
            shutil.copy2(out_dir / name, staging / name)
    if version.run_id:
        client.log_artifacts(version.run_id, str(staging), "canary")
    shutil.rmtree(staging, ignore_errors=True)

"""Canary after register: roll the new version out behind the stable one, promote or roll back.

Where it is served is the serving backend `serve.engine` and `serve.rollout` name
(modelchain.serving.backend): by default the candidate is a new adapter version loaded into
the running pool (locally one vLLM CPU server behind nginx + njs, on the cluster an
InferencePool with an llm-d InferenceModelRewrite); `serve.rollout=pool` moves traffic between
two pools. This step binds the typed config groups, the registry, the quality probe (the
validation split scored with the gate's first `eval.compare_metrics`) and the report to it.

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
from modelchain.eval.metrics import ANSWER_METRICS
from modelchain.serving.analysis import Thresholds
from modelchain.serving.backend import ENABLED, Rollout, ServingBackend, make_backend
from modelchain.serving.controller import MlflowRegistryHooks
from modelchain.serving.probe import QualityProbe, examples_from_split
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


def quality_probe(serve, eval_cfg, splits_dir: str | Path) -> Optional[QualityProbe]:
    """The probe over the validation split, scored by the gate's first compare metric (None: probe off)."""
    canary = serve.canary
    if canary.probe_examples <= 0:
        return None
    metric = list(eval_cfg.compare_metrics)[0] if eval_cfg.compare_metrics else "exact_match"
    if metric not in ANSWER_METRICS:
        raise ValueError(f"eval.compare_metrics: the canary's quality probe needs an answer metric "
                         f"({', '.join(ANSWER_METRICS)}), got {metric!r}")
    examples = examples_from_split(Path(splits_dir) / "val.jsonl", canary.probe_examples)
    if not examples:
        raise ValueError(f"{Path(splits_dir) / 'val.jsonl'}: no rows with an assistant answer for the quality probe "
                         "(serve.canary.probe_examples=0 turns it off)")
    return QualityProbe(examples, ANSWER_METRICS[metric], metric, canary.probe_margin, canary.probe_max_tokens)


def run(serve, model, cluster, model_uri: str, splits_dir: str | Path, out_dir: str | Path,
        backend: Optional[ServingBackend] = None, eval_cfg=None) -> dict[str, Any]:
    """Returns {"outcome": promoted | rolled_back | skipped, "reason", "report"}; writes the report to out_dir.

    `serve`, `model`, `cluster`, `eval_cfg`: the typed config groups (eval: the gate's metric, for
    the quality probe; None: no probe); `backend` defaults to serve.engine's and serve.rollout's.
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
    probe = quality_probe(serve, eval_cfg, splits_dir) if eval_cfg is not None else None
    target = Rollout.from_aliases(ref.name, hooks.candidate, hooks.aliases())
    with backend:
        backend.start(target)
        backend.deploy(target)
        result = rollout(backend, serve, hooks, thresholds, prompts, out_dir, probe=probe)
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

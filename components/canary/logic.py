"""Canary after register: roll the new version out behind the stable one, promote or roll back.

cluster=local: the local stack (two vLLM CPU servers, nginx, Prometheus) serves the stable
adapter (the champion, or with none yet the base model through an all-zero adapter) and the
candidate under the same public name; eval prompts from the validation split are replayed
through nginx while the controller moves the weights. cluster=eks: the controller drives the
HTTPRoute that `modelchain render serving` wrote, against the cluster's Prometheus.

`serve.canary.enabled: auto` runs the local canary only where the serving stack is installed
(`make setup-serve`) and vLLM's CPU attention can serve the base model; otherwise the step
records why it was skipped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from modelchain.serving.analysis import PrometheusAnalysis, Thresholds
from modelchain.serving.controller import MlflowRegistryHooks, run_canary
from modelchain.serving.local_stack import FAULTS, LocalStack, StackSpec, missing_tools, zero_adapter
from modelchain.serving.traffic import TrafficGenerator, prompts_from_split
from modelchain.core import registry
from modelchain.core.io import atomic_write_json

# Head sizes vLLM 0.32's CPU attention backend accepts (CPUAttentionBackend.get_supported_head_sizes).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
ENABLED = ("auto", "true", "false")


def _head_size(model_dir: Path) -> Optional[int]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
        return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return None


def skip_reason(settings: dict[str, Any], base_model: Optional[Path] = None) -> Optional[str]:
    """Why the canary does not run under these settings (None: it runs)."""
    canary = settings["serve"]["canary"]
    enabled = str(canary["enabled"]).lower()
    if enabled not in ENABLED:
        raise ValueError(f"serve.canary.enabled: must be auto, true or false, got {canary['enabled']!r}")
    if canary["fault"] not in FAULTS:
        raise ValueError(f"serve.canary.fault: must be one of {', '.join(map(repr, FAULTS))}, got {canary['fault']!r}")
    if enabled == "false":
        return "serve.canary.enabled=false"
    if settings["cluster"]["kind"] != "local":
        return None
    missing = missing_tools(canary["vllm_python"])
    if missing:
        if enabled == "true":
            raise RuntimeError(f"serve.canary.enabled=true but the local serving stack needs {', '.join(missing)}")
        return f"the local serving stack is not installed ({', '.join(missing)})"
    if base_model is not None:
        size = _head_size(base_model)
        if size is not None and size not in CPU_HEAD_SIZES:
            why = f"vLLM's CPU attention cannot serve {base_model.name} (head size {size})"
            if enabled == "true":
                raise RuntimeError(f"serve.canary.enabled=true but {why}")
            return why
    return None


def _base_model(settings: dict[str, Any]) -> Path:
    from modelchain.core.models import base_model_from_settings

    return base_model_from_settings(settings["model"])


def run(settings: dict[str, Any], model_uri: str, splits_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Returns {"outcome": promoted | rolled_back | skipped, "reason", "report"}; writes the report to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = registry.ModelRef.parse(model_uri)
    if ref.version is None:
        raise ValueError(f"canary: {model_uri!r} must name a version (models:/NAME/VERSION)")
    local = settings["cluster"]["kind"] == "local"
    base_model = _base_model(settings) if local and str(settings["serve"]["canary"]["enabled"]).lower() != "false" else None
    reason = skip_reason(settings, base_model)
    if reason is not None:
        result = {"outcome": "skipped", "reason": reason, "model_uri": model_uri}
        atomic_write_json(out_dir / "rollout.json", result)
        return result
    tracking_uri = settings["cluster"]["mlflow"]["tracking_uri"]
    client = registry.client(tracking_uri)
    hooks = MlflowRegistryHooks(client, ref.name, ref.version)
    serve = settings["serve"]
    thresholds = Thresholds.from_serve(serve)
    if local:
        result = _run_local(settings, tracking_uri, client, hooks, thresholds, base_model, Path(splits_dir), out_dir)
    else:
        result = _run_cluster(settings, hooks, thresholds, out_dir)
    _log_report(client, ref, out_dir)
    return {**result, "model_uri": model_uri}


def _run_local(settings, tracking_uri, client, hooks, thresholds, base_model: Path, splits_dir: Path,
               out_dir: Path) -> dict[str, Any]:
    home = Path(settings["cluster"]["workdir"]).resolve()
    adapters = home / "adapters"
    # servers' state and logs: local state, not part of the report artifact
    work = home / "canary" / f"{hooks.model}-{hooks.candidate}"
    shutil.rmtree(work, ignore_errors=True)
    candidate = registry.resolve_adapter(f"models:/{hooks.model}/{hooks.candidate}", adapters / hooks.model / hooks.candidate,
                                         tracking_uri=tracking_uri)
    champion = registry.aliases(registry.get_registered_model(client, hooks.model)).get(registry.CHAMPION)
    if champion is not None and champion != hooks.candidate:
        stable = registry.resolve_adapter(f"models:/{hooks.model}/{champion}", adapters / hooks.model / champion,
                                          tracking_uri=tracking_uri)
        stable_label = f"version {champion} (champion)"
    else:
        stable = zero_adapter(candidate, work / "zero-adapter")
        stable_label = "the base model (no champion yet; an all-zero adapter)"
    prompts = prompts_from_split(splits_dir / "val.jsonl")
    spec = StackSpec.from_settings(settings, base_model, work)
    print(f"canary: starting the local stack (2 vLLM CPU servers, nginx, Prometheus) under {work}", flush=True)
    with LocalStack(spec) as stack:
        print(f"canary: stack ready in {stack.timings['start_s']} s; stable serves {stable_label}", flush=True)
        return rollout(stack, settings, hooks, thresholds, stable, candidate, prompts, out_dir, stable_label)


def rollout(stack: LocalStack, settings: dict[str, Any], hooks, thresholds: Thresholds, stable: Path, candidate: Path,
            prompts: list, out_dir: Path, stable_label: str = "") -> dict[str, Any]:
    """One canary on a running local stack: deploy both sides, replay traffic, run the controller."""
    serve, canary = settings["serve"], settings["serve"]["canary"]
    stack.deploy("stable", stable)
    stack.deploy("canary", candidate, fault=canary["fault"])
    print(f"canary: version {hooks.candidate} deployed on the canary side"
          + (f" with fault {canary['fault']!r}" if canary["fault"] else ""), flush=True)
    analysis = PrometheusAnalysis(stack.prometheus_url, stack.selectors)
    with TrafficGenerator(stack.url, serve["served_model_name"], prompts, concurrency=int(canary["traffic_concurrency"]),
                          max_tokens=int(canary["traffic_max_tokens"])) as traffic:
        result = run_canary(
            stack.router, analysis, hooks, list(serve["canary_steps"]), float(serve["analysis_interval_s"]),
            thresholds, out_dir / "rollout.json", scale_down_canary=stack.scale_down_canary,
            promote_serving=stack.promote_serving, no_data_retries=int(canary["no_data_retries"]),
        )
    summary = traffic.stats.summary()
    report = result.report
    report["traffic"] = summary
    report["stack"] = {"timings": stack.timings, "stable": stable_label, "served_at_end": stack.served_adapters(),
                       "fault": canary["fault"], "upstreams": {role: stack.slot(role).address for role in stack.roles}}
    _rewrite(result.report_path, report)
    print(f"canary: {result.outcome} ({result.reason}); client requests {summary['requests']}, "
          f"failed {summary['failed']}, retried on the other side {summary['retried']}", flush=True)
    return {"outcome": result.outcome, "reason": result.reason, "report": str(result.report_path), "traffic": summary}


def _run_cluster(settings, hooks, thresholds, out_dir: Path) -> dict[str, Any]:
    from modelchain.serving.httproute import HTTPRouteRouter

    serve, canary = settings["serve"], settings["serve"]["canary"]
    if not canary["prometheus_url"]:
        raise ValueError("serve.canary.prometheus_url: the cluster's Prometheus HTTP API is needed for the analysis")
    router = HTTPRouteRouter.from_config(OmegaConf.create(settings))
    analysis = PrometheusAnalysis(canary["prometheus_url"], {"stable": canary["stable_selector"],
                                                             "canary": canary["canary_selector"]})
    result = run_canary(router, analysis, hooks, list(serve["canary_steps"]), float(serve["analysis_interval_s"]),
                        thresholds, out_dir / "rollout.json", scale_down_canary=lambda: router.scale_canary(0),
                        no_data_retries=int(canary["no_data_retries"]))
    return {"outcome": result.outcome, "reason": result.reason, "report": str(result.report_path)}


def _rewrite(report_json: Path, report: dict[str, Any]) -> None:
    from modelchain.serving.controller import render_markdown
    from modelchain.core.io import atomic_write_text

    atomic_write_json(report_json, report)
    text = render_markdown(report)
    traffic = report.get("traffic")
    if traffic:
        text += ("\n## Client traffic through the router\n\n"
                 f"- requests {traffic['requests']}, ok {traffic['ok']}, failed {traffic['failed']}, "
                 f"retried on the other side {traffic['retried']}\n"
                 f"- answered by upstream: {traffic['served_by']}\n- latency p50 {traffic['p50_s']} s, p95 {traffic['p95_s']} s\n")
    atomic_write_text(report_json.with_suffix(".md"), text)


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

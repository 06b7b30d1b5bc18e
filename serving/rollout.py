"""One canary rollout on a started, deployed ServingBackend: client traffic, the controller, the report."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

from modelchain.core.io import atomic_write_json, atomic_write_text
from modelchain.serving.analysis import Thresholds
from modelchain.serving.backend import ServingBackend
from modelchain.serving.controller import render_markdown, run_canary
from modelchain.serving.probe import ProbedAnalysis, QualityProbe
from modelchain.serving.traffic import TrafficGenerator


def rollout(backend: ServingBackend, serve, hooks, thresholds: Thresholds, prompts: list, out_dir: str | Path,
            probe: Optional[QualityProbe] = None) -> dict[str, Any]:
    """Run the controller over `backend` (typed `serve` group) and return
    {"outcome", "reason", "report"} (+ "traffic" where prompts were replayed).

    With a `probe`, every analysis step also scores both versions on held-out prompts where
    the backend can address each side (`probe_targets`)."""
    canary = serve.canary
    analysis = backend.analysis()
    if probe is not None:
        analysis = ProbedAnalysis(analysis, probe, backend.probe_targets)
    traffic = None
    if backend.replays_traffic:
        traffic = TrafficGenerator(backend.traffic_url, serve.served_model_name, prompts,
                                   concurrency=canary.traffic_concurrency, max_tokens=canary.traffic_max_tokens)
    with traffic if traffic is not None else contextlib.nullcontext():
        result = run_canary(
            backend.router, analysis, hooks, list(serve.canary_steps), float(serve.analysis_interval_s),
            thresholds, Path(out_dir) / "rollout.json", scale_down_canary=backend.scale_down_canary,
            promote_serving=backend.promote_serving, no_data_retries=canary.no_data_retries,
        )
    outcome = {"outcome": result.outcome, "reason": result.reason, "report": str(result.report_path)}
    report, engine = result.report, backend.report()
    if traffic is not None:
        report["traffic"] = outcome["traffic"] = traffic.stats.summary()
    if engine:
        report["stack"] = engine
    if traffic is not None or engine:
        _rewrite(result.report_path, report)
    if traffic is not None:
        summary = outcome["traffic"]
        print(f"canary: {result.outcome} ({result.reason}); client requests {summary['requests']}, "
              f"failed {summary['failed']}, retried on the other side {summary['retried']}", flush=True)
    return outcome


def _rewrite(report_json: Path, report: dict[str, Any]) -> None:
    """The report again, with what the engine and the replayed traffic add."""
    atomic_write_json(report_json, report)
    text = render_markdown(report)
    traffic = report.get("traffic")
    if traffic:
        text += ("\n## Client traffic through the router\n\n"
                 f"- requests {traffic['requests']}, ok {traffic['ok']}, failed {traffic['failed']}, "
                 f"retried on the other side {traffic['retried']}\n"
                 f"- answered by upstream: {traffic['served_by']}\n- latency p50 {traffic['p50_s']} s, p95 {traffic['p95_s']} s\n")
    atomic_write_text(report_json.with_suffix(".md"), text)

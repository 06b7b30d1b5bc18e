"""The canary controller: move traffic step by step, analyse each step, promote or roll back.

The same loop drives every router (serving/router.py, adapter_router.py, httproute.py). Its
state lives outside it, so a controller that restarts continues. The decision is recorded on
the candidate's version (tag `canary.outcome`) before anything acts on it, so a crash between
two actions is finished by the next run, never reversed:

- outcome `promoting`, or the candidate already has alias `champion` -> finish the promotion
- outcome `rolled_back`                                    -> finish the rollback (weights to stable, unload)
- outcome `promoted` while another version is champion     -> nothing to do (it was superseded)
- the router sends the canary 0 %                          -> a fresh rollout from the first step
- the router sends the canary w %                          -> resume at that step and analyse it again

Rollback: outcome tag, then weights back to stable, then the canary's version unloaded (or its
pool scaled down); registry aliases untouched. Promotion: outcome `promoting`, the candidate
takes all traffic, alias `champion` moves to it, the stable side takes it over (weights
100/0), the old stable is unloaded after a drain, outcome `promoted`. Every step and every
Prometheus query go into the rollout report (JSON and Markdown, rewritten atomically after
each event).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from modelchain.serving.analysis import Thresholds, Verdict
from modelchain.serving.router import TrafficRouter
from modelchain.core.io import atomic_write_json, atomic_write_text

OUTCOME_TAG = "canary.outcome"
PROMOTING, PROMOTED, ROLLED_BACK = "promoting", "promoted", "rolled_back"


class Analysis(Protocol):
    def analyse(self, canary_window_s: int, stable_window_s: int, thresholds: Thresholds) -> Verdict: ...

    def describe(self) -> str: ...


class RegistryHooks(Protocol):
    model: str
    candidate: str  # the model version under test

    def aliases(self) -> dict[str, str]: ...

    def promote(self) -> dict[str, Any]: ...

    def outcome(self) -> Optional[str]: ...

    def record_outcome(self, outcome: str, detail: str) -> None: ...


class MlflowRegistryHooks:
    """The registry side of a rollout, through modelchain.core.registry (lock, gate check)."""

    def __init__(self, mlflow_client, model: str, candidate: str | int):
        self.client = mlflow_client
        self.model = model
        self.candidate = str(candidate)

    def aliases(self) -> dict[str, str]:
        from modelchain.core import registry

        return registry.aliases(registry.get_registered_model(self.client, self.model))

    def promote(self) -> dict[str, Any]:
        from modelchain.core import registry

        return registry.promote(self.client, self.model, self.candidate)

    def outcome(self) -> Optional[str]:
        return self.client.get_model_version(self.model, self.candidate).tags.get(OUTCOME_TAG)

    def record_outcome(self, outcome: str, detail: str) -> None:
        self.client.set_model_version_tag(self.model, self.candidate, OUTCOME_TAG, outcome)
        self.client.set_model_version_tag(self.model, self.candidate, "canary.detail", detail[:4900])


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


@dataclass
class CanaryResult:
    outcome: str  # promoted | rolled_back
    reason: str
    report_path: Path
    report: dict[str, Any]


class _Report:
    """The rollout report, rewritten (JSON + Markdown, atomically) after every event."""

    def __init__(self, path: Path, header: dict[str, Any], clock: Callable[[], float]):
        self.json_path = path.with_suffix(".json")
        self.md_path = path.with_suffix(".md")
        self.clock = clock
        self.t0 = clock()
        self.data: dict[str, Any] = {**header, "started_at": _now(), "events": [], "steps": [], "outcome": None}

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        entry = {"at": _now(), "t_s": round(self.clock() - self.t0, 3), "kind": kind, **fields}
        self.data["events"].append(entry)
        self.write()
        return entry

    def write(self) -> None:
        atomic_write_json(self.json_path, self.data)
        atomic_write_text(self.md_path, render_markdown(self.data))


def run_canary(
    router: TrafficRouter,
    analysis: Analysis,
    registry_hooks: RegistryHooks,
    steps: list[int],
    interval_s: float,
    thresholds: Thresholds,
    report_path: str | Path,
    scale_down_canary: Callable[[], None] = lambda: None,
    promote_serving: Optional[Callable[[], None]] = None,
    no_data_retries: int = 1,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> CanaryResult:
    """Roll the candidate out through `steps` (canary % per step), or roll it back.

    `promote_serving` makes the stable side serve the candidate (locally: nginx's stable
    entry moves to the candidate's server); without it the candidate keeps 100 % on the
    canary side after promotion and the canary is not scaled down.
    """
    steps = _check_steps(steps)
    report = _Report(
        Path(report_path),
        {
            "model": registry_hooks.model,
            "candidate_version": registry_hooks.candidate,
            "router": router.describe(),
            "analysis": analysis.describe(),
            "steps_planned": steps,
            "interval_s": interval_s,
            "thresholds": _fields(thresholds),
        },
        clock,
    )
    weights = router.weights()
    aliases = registry_hooks.aliases()
    earlier = registry_hooks.outcome()
    report.data["state_at_start"] = {"weights": weights, "aliases": aliases, "outcome_tag": earlier}
    report.event("state", weights=weights, aliases=aliases, outcome_tag=earlier)

    def finish(outcome: str, reason: str) -> CanaryResult:
        report.data["outcome"] = outcome
        report.data["reason"] = reason
        report.data["finished_at"] = _now()
        report.data["duration_s"] = round(clock() - report.t0, 3)
        report.data["weights_at_end"] = router.weights()
        report.data["aliases_at_end"] = registry_hooks.aliases()
        report.write()
        return CanaryResult(outcome, reason, report.json_path, report.data)

    def rollback(reason: str) -> CanaryResult:
        registry_hooks.record_outcome(ROLLED_BACK, reason)  # first: a restart finishes the rollback
        report.event("registry", outcome_tag=ROLLED_BACK, aliases="untouched")
        router.set_weights(100, 0)
        report.event("weights", stable=100, canary=0, why="rollback")
        first = report.data.get("first_canary_traffic_t_s")
        if first is not None:
            report.data["time_to_rollback_s"] = round(clock() - report.t0 - first, 3)
        scale_down_canary()
        report.event("scale_down_canary")
        return finish(ROLLED_BACK, reason)

    def promote(reason: str) -> CanaryResult:
        if registry_hooks.outcome() != PROMOTING:
            registry_hooks.record_outcome(PROMOTING, reason)  # first: a restart finishes the promotion
            report.event("registry", outcome_tag=PROMOTING)
        if promote_serving is None:
            # Nothing can take the candidate over on the stable side: it keeps all traffic.
            if router.weights() != {"stable": 0, "canary": 100}:
                router.set_weights(0, 100)
                report.event("weights", stable=0, canary=100, why="promotion")
            result = registry_hooks.promote()
            report.event("registry", alias="champion", result=result)
        else:
            if registry_hooks.aliases().get("champion") != registry_hooks.candidate:
                if router.weights() != {"stable": 0, "canary": 100}:
                    router.set_weights(0, 100)
                    report.event("weights", stable=0, canary=100, why="promotion: the candidate serves all traffic")
                result = registry_hooks.promote()
                report.event("registry", alias="champion", result=result)
            promote_serving()
            report.event("promote_serving", detail="the stable side serves the candidate")
            router.set_weights(100, 0)
            report.event("weights", stable=100, canary=0, why="promotion: the candidate is the new stable")
            scale_down_canary()
            report.event("scale_down_canary")
        registry_hooks.record_outcome(PROMOTED, reason)
        return finish(PROMOTED, reason)

    # -- resume from the state outside the controller
    if aliases.get("champion") == registry_hooks.candidate or earlier == PROMOTING:
        report.event("resume", detail=f"outcome {earlier!r}, champion {aliases.get('champion')!r}: finishing the promotion")
        return promote("promotion decided by an earlier run")
    if earlier == PROMOTED:
        report.event("resume", detail=f"promoted earlier; version {aliases.get('champion')} is champion since")
        return finish(PROMOTED, "promoted by an earlier run, superseded since")
    if earlier == ROLLED_BACK:
        report.event("resume", detail="candidate was rolled back earlier: finishing the rollback")
        if router.weights() != {"stable": 100, "canary": 0}:
            router.set_weights(100, 0)
            report.event("weights", stable=100, canary=0, why="rollback")
        scale_down_canary()
        report.event("scale_down_canary")
        return finish(ROLLED_BACK, "rolled back by an earlier run")
    start = 0
    if weights["canary"] > 0:
        start = next((i for i, w in enumerate(steps) if w >= weights["canary"]), len(steps) - 1)
        report.event("resume", detail=f"canary at {weights['canary']} %: resuming at step {start + 1} ({steps[start]} %)")
        report.data["first_canary_traffic_t_s"] = 0.0

    rollout_start = clock()
    for index in range(start, len(steps)):
        weight = steps[index]
        if router.weights() != {"stable": 100 - weight, "canary": weight}:
            router.set_weights(100 - weight, weight)
        step_start = clock()
        if report.data.get("first_canary_traffic_t_s") is None:
            report.data["first_canary_traffic_t_s"] = round(step_start - report.t0, 3)
        report.event("weights", stable=100 - weight, canary=weight, step=index + 1)
        attempts = 0
        while True:
            sleep(interval_s)
            window = max(int(round(clock() - step_start)), 1)
            stable_window = max(int(round(clock() - rollout_start)), window)
            try:
                verdict = analysis.analyse(window, stable_window, thresholds)
            except Exception as exc:  # Prometheus down is not a healthy canary
                report.data["steps"].append({"step": index + 1, "canary_weight": weight, "attempt": attempts + 1,
                                             "outcome": "error", "error": str(exc)})
                report.event("analysis", step=index + 1, outcome="error", error=str(exc))
                return rollback(f"step {index + 1} ({weight} %): analysis failed: {exc}")
            record = {"step": index + 1, "canary_weight": weight, "attempt": attempts + 1,
                      "window_s": window, "stable_window_s": stable_window, **verdict.to_dict()}
            report.data["steps"].append(record)
            report.event("analysis", step=index + 1, outcome=verdict.outcome, reasons=verdict.reasons)
            if verdict.outcome == "pass":
                break
            if verdict.outcome == "no_data" and attempts < no_data_retries:
                attempts += 1
                continue
            why = "; ".join(verdict.reasons) or verdict.outcome
            return rollback(f"step {index + 1} ({weight} %): {why}")
    return promote(f"all {len(steps)} steps passed")


def _fields(obj) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def _check_steps(steps: list[int]) -> list[int]:
    steps = [int(s) for s in steps]
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
        raise ValueError(f"serve.canary_steps: must be increasing percentages in 1..100, got {steps}")
    return steps


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "no data"
    if isinstance(value, float):
        return f"{value:.3f}{unit}"
    return f"{value}{unit}"


def render_markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# Canary rollout: {data['model']} version {data['candidate_version']}",
        "",
        f"- outcome: **{data.get('outcome') or 'in progress'}**" + (f" ({data['reason']})" if data.get("reason") else ""),
        f"- started {data['started_at']}" + (f", finished {data['finished_at']} ({data['duration_s']} s)" if data.get("finished_at") else ""),
        f"- router: {data['router']}",
        f"- analysis: {data['analysis']}",
        f"- steps: {data['steps_planned']} % to the canary, {data['interval_s']} s each",
    ]
    if data.get("time_to_rollback_s") is not None:
        lines.append(f"- from the first canary traffic to the rollback: {data['time_to_rollback_s']} s")
    start = data.get("state_at_start", {})
    lines.append(f"- state at start: weights {start.get('weights')}, aliases {start.get('aliases')}")
    if data.get("aliases_at_end") is not None:
        lines.append(f"- at the end: weights {data.get('weights_at_end')}, aliases {data.get('aliases_at_end')}")
    lines += ["", "## Steps", "", "| step | canary % | window s | outcome | canary req / err rate / p95 e2e / p95 TTFT | stable req / err rate / p95 e2e / p95 TTFT |",
              "| --- | --- | --- | --- | --- | --- |"]
    for step in data["steps"]:
        if step.get("outcome") == "error":
            lines.append(f"| {step['step']} | {step['canary_weight']} | | error | {step['error']} | |")
            continue
        sides = []
        for side in ("canary", "stable"):
            m = step[side]
            sides.append(f"{m['requests']:.1f} / {_fmt(m['error_rate'])} / {_fmt(m['p95_latency_s'], ' s')} / {_fmt(m['p95_ttft_s'], ' s')}")
        lines.append(f"| {step['step']} | {step['canary_weight']} | {step['window_s']} | {step['outcome']} | {sides[0]} | {sides[1]} |")
    lines += ["", "## Checks", ""]
    for step in data["steps"]:
        for check in step.get("checks", []):
            lines.append(f"- step {step['step']}: {'PASS' if check['passed'] else 'FAIL'} {check['detail']}")
    lines += ["", "## Events", ""]
    for event in data["events"]:
        rest = {k: v for k, v in event.items() if k not in ("at", "t_s", "kind")}
        lines.append(f"- {event['at']} (+{event['t_s']} s) {event['kind']}: {rest}")
    lines += ["", "## Queries", "", "Every PromQL query of every step and the value it returned:", ""]
    for step in data["steps"]:
        for side in ("canary", "stable"):
            for q in (step.get(side) or {}).get("queries", []):
                lines.append(f"- step {step['step']} {side}: `{q['query']}` = {_fmt(q['value'])}")
    return "\n".join(lines) + "\n"

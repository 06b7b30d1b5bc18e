"""The canary's quality probe: both versions answer held-out prompts with references, scored alike.

Errors and latency cannot see a candidate that answers quickly and wrongly. At every analysis
step the probe asks each side the same validation prompts (greedy, addressing each version
directly, not through the traffic split), scores the answers against the references with the
gate's metric (a scorer handed in by the canary step: serving does not import eval), and fails
the step when the candidate's mean falls below the stable's by more than the margin. The
stable side's answers do not change during a rollout (greedy decoding, the same version), so
they are asked once per served name.
"""

from __future__ import annotations

import json
import urllib.error
from concurrent.futures import ThreadPoolExecutor
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from modelchain.core.io import read_jsonl
from modelchain.serving.analysis import Check, Thresholds, Verdict


@dataclass(frozen=True)
class ProbeExample:
    messages: list[dict[str, str]]  # the prompt: every message but the answer
    reference: str


@dataclass(frozen=True)
class ProbeTarget:
    """Where one side is asked: an OpenAI-compatible base URL and the model name it answers to."""

    url: str
    model: str


def examples_from_split(path: str | Path, limit: int) -> list[ProbeExample]:
    """The first `limit` rows of a split whose last message is an assistant answer (the reference)."""
    examples = []
    for row in read_jsonl(path):
        messages = row.get("messages") or []
        if len(messages) > 1 and messages[-1].get("role") == "assistant" and str(messages[-1].get("content", "")).strip():
            examples.append(ProbeExample(messages[:-1], str(messages[-1]["content"])))
        if len(examples) >= limit:
            break
    return examples


class QualityProbe:
    def __init__(self, examples: list[ProbeExample], scorer: Callable[[str, str], float], metric: str,
                 margin: float, max_tokens: int = 64, timeout_s: float = 120.0):
        if not examples:
            raise ValueError("the quality probe needs held-out examples with references")
        if margin < 0:
            raise ValueError(f"serve.canary.probe_margin: must be >= 0, got {margin}")
        self.examples, self.scorer, self.metric = examples, scorer, metric
        self.margin, self.max_tokens, self.timeout_s = margin, max_tokens, timeout_s
        self._stable_cache: dict[ProbeTarget, dict[str, Any]] = {}

    def describe(self) -> str:
        return (f"{len(self.examples)} held-out prompts per side, scored by {self.metric}; the canary fails "
                f"below the stable's mean - {self.margin:g}")

    def ask(self, target: ProbeTarget, messages: list[dict[str, str]]) -> str:
        payload = {"model": target.model, "messages": messages, "max_tokens": self.max_tokens, "temperature": 0.0}
        request = urllib.request.Request(target.url.rstrip("/") + "/v1/chat/completions", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)["choices"][0]["message"]["content"] or ""
        except urllib.error.HTTPError as exc:
            raise ProbeError(f"{target.model} at {target.url}: {exc.code} {exc.read().decode(errors='replace')[:200]}") from exc
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
            raise ProbeError(f"{target.model} at {target.url}: {exc}") from exc

    def score(self, target: ProbeTarget) -> dict[str, Any]:
        # Asked at once: the server batches them, so a probe costs about one answer's time.
        with ThreadPoolExecutor(max_workers=min(8, len(self.examples))) as pool:
            answers = list(pool.map(lambda example: self.ask(target, example.messages), self.examples))
        scores = [float(self.scorer(answer, example.reference)) for answer, example in zip(answers, self.examples)]
        return {"model": target.model, "mean": round(sum(scores) / len(scores), 4), "n": len(scores),
                "first_answers": [a[:120] for a in answers[:3]]}

    def check(self, stable: ProbeTarget, canary: ProbeTarget) -> tuple[Check, dict[str, Any]]:
        if stable not in self._stable_cache:
            self._stable_cache[stable] = self.score(stable)
        theirs, mine = self._stable_cache[stable], self.score(canary)
        floor = theirs["mean"] - self.margin
        passed = mine["mean"] >= floor
        detail = (f"quality probe {self.metric}: canary {mine['model']} {mine['mean']:.3f} >= stable {theirs['model']} "
                  f"{theirs['mean']:.3f} - {self.margin:g} on {mine['n']} held-out prompts")
        return Check("quality_probe", passed, detail), {"metric": self.metric, "margin": self.margin,
                                                        "stable": theirs, "canary": mine, "passed": passed}


class ProbeError(RuntimeError):
    """A side did not answer the probe; the message is one line."""


class ProbedAnalysis:
    """An analysis (controller.Analysis) with the quality probe added to every step it does not already fail."""

    def __init__(self, analysis, probe: QualityProbe, targets: Callable[[], Optional[dict[str, ProbeTarget]]]):
        self.inner, self.probe, self.targets = analysis, probe, targets

    def describe(self) -> str:
        return f"{self.inner.describe()}; quality probe: {self.probe.describe()}"

    def analyse(self, canary_window_s: int, stable_window_s: int, thresholds: Thresholds) -> Verdict:
        verdict = self.inner.analyse(canary_window_s, stable_window_s, thresholds)
        targets = self.targets()
        if verdict.outcome == "fail" or not targets:
            return verdict
        try:
            check, detail = self.probe.check(targets["stable"], targets["canary"])
        except ProbeError as exc:
            check, detail = Check("quality_probe", False, f"quality probe: {exc}"), {"error": str(exc)}
        verdict.checks.append(check)
        verdict.probe = detail
        if not check.passed:
            verdict.outcome = "fail"
        return verdict

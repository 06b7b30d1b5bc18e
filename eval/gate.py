"""The gate policy: the one place that decides whether an adapter may be registered.

Rules, in order:
1. `min_examples`: enough evaluated examples, or the decision means nothing;
2. `floor.METRIC`: the challenger's mean reaches every floor in `thresholds`;
3. `improvement.METRIC` (for each of `compare_metrics`): the challenger beats the base model
   by at least `min_improvement`, judged on the lower bound of a paired bootstrap
   confidence interval of per-example differences (challenger - base);
4. `no_regression.METRIC`: the challenger is not worse than the champion (the model that
   serves, eval/champion.py) by more than `max_regression`, again on the lower bound of the
   paired interval (challenger - champion). Only when the registry answered that there is no
   champion yet (or `eval.champion=none`) do floors and the base comparison decide alone; a
   champion that could not be looked up, fetched, verified or evaluated fails this rule.
5. `judge_failures` (only when RAG answers were scored): on no side and metric did more
   than `eval.judge.max_failure_fraction` of the samples fail, since a mean over the
   survivors says little about the rest.

The interval is a two-sided percentile bootstrap interval at `confidence` (95 % by default);
deciding on its lower bound alone is a one-sided test at 1 - (1 - confidence) / 2 (97.5 %).
Deciding on the interval, not on the point estimate, means that a difference that could be
noise on this many examples never passes a margin by luck. Each comparison also states its
power: the smallest difference this many examples can detect (80 % power at the test's level)
and, when a margin is smaller than that, how many examples would resolve it. Every rule adds
a reason, passed or not, so the report says why in both cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from statistics import NormalDist

import numpy as np

from modelchain.core.config import EvalConfig, JudgeConfig
from modelchain.eval.metrics import unmeasured


@dataclass(frozen=True)
class Interval:
    """Mean of the per-example differences and its two-sided bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    confidence: float
    n: int
    sd: float = math.nan  # standard deviation of the per-example differences (for the power figures)

    @property
    def one_sided(self) -> float:
        """The level of the one-sided test that deciding on the lower bound alone amounts to."""
        return 1.0 - (1.0 - self.confidence) / 2.0

    def __str__(self) -> str:
        return (f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] "
                f"({self.confidence:.0%} two-sided CI, n={self.n})")


POWER = 0.8  # the power at which the detectable difference is stated


def detectable_difference(sd: float, n: int, confidence: float, power: float = POWER) -> float:
    """The smallest true difference a one-sided test on the interval's lower bound detects with `power`.

    Normal approximation of the paired mean: (z of the one-sided level + z of the power) * sd / sqrt(n).
    """
    if n <= 0 or not math.isfinite(sd) or sd <= 0:
        return math.nan  # no example differs: the sample says nothing about the spread
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0) + NormalDist().inv_cdf(power)
    return z * sd / math.sqrt(n)


def examples_needed(sd: float, margin: float, confidence: float, power: float = POWER) -> int:
    """How many paired examples make `margin` detectable (inverse of detectable_difference)."""
    if margin <= 0 or not math.isfinite(sd) or sd <= 0:
        return 0
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0) + NormalDist().inv_cdf(power)
    return math.ceil((z * sd / margin) ** 2)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of mean(a - b) over paired examples (same index = same example)."""
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diffs.ndim != 1 or len(a) != len(b):
        raise ValueError(f"paired scores differ in length: {len(a)} vs {len(b)}")
    n = len(diffs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, confidence, 0)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    sd = float(diffs.std(ddof=1)) if n > 1 else math.nan
    return Interval(float(diffs.mean()), float(low), float(high), confidence, n, sd)


# The eval group's schema: the one place its defaults are written.
_EVAL = EvalConfig()


@dataclass(frozen=True)
class GatePolicy:
    """What the gate asks for; built from the `eval` config group (see `from_config`).

    A field left out takes the `eval` schema's default.
    """

    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(_EVAL.thresholds))
    min_examples: int = _EVAL.min_examples
    min_improvement: float = _EVAL.min_improvement
    max_regression: float = _EVAL.max_regression
    compare_metrics: Sequence[str] = tuple(_EVAL.compare_metrics)
    bootstrap_resamples: int = _EVAL.bootstrap_resamples
    confidence: float = _EVAL.confidence
    seed: int = _EVAL.seed
    max_failure_fraction: float = JudgeConfig().max_failure_fraction  # eval.judge.max_failure_fraction

    @classmethod
    def from_config(cls, ev: Mapping, **overrides) -> "GatePolicy":
        """The policy from the `eval` group (typed config or mapping); keyword arguments replace its values."""
        values = {f.name: ev[f.name] for f in fields(cls) if f.name in ev}
        if "judge" in ev:
            values["max_failure_fraction"] = ev["judge"]["max_failure_fraction"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["thresholds"] = {k: float(v) for k, v in dict(values["thresholds"]).items()}
        values["compare_metrics"] = tuple(values["compare_metrics"])
        return cls(**values)


@dataclass
class Check:
    rule: str
    passed: bool
    detail: str
    interval: Interval | None = None
    margin: float | None = None  # the difference the rule asks about (min_improvement, -max_regression)
    detectable: float | None = None  # the smallest difference this many examples can detect (POWER)
    examples_needed: int | None = None  # set when the margin is below `detectable`


@dataclass
class GateDecision:
    passed: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [f"{'PASS' if c.passed else 'FAIL'} {c.rule}: {c.detail}" for c in self.checks]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": self.reasons, "checks": [asdict(c) for c in self.checks]}


def decide(
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    policy: GatePolicy,
    summary: Mapping[str, Mapping[str, float]] | None = None,
    champion: Mapping | None = None,
    rag: Mapping | None = None,
) -> GateDecision:
    """Apply `policy` to per-example scores.

    ``scores[side][metric]`` is a list of per-example scores for side "challenger", "base"
    and, when a champion was evaluated, "champion"; index i is the same example everywhere.
    ``summary[side][metric]`` holds metrics with no per-example list (perplexity, judge
    means); floors on those compare the value itself. ``champion`` is how evaluate resolved
    `eval.champion` (eval/champion.py Champion.to_dict()); without it, a "champion" side in
    ``scores`` is compared and its absence means no champion. ``rag`` is the RAG scoring summary
    (eval/rag.py `score_rag_for_sides`: samples and failure counts per side) for rule 5.
    """
    challenger = scores["challenger"]
    summary = summary or {}
    # The evaluated examples; lm-eval tasks (harness.*) count their own documents.
    n = min((len(v) for k, v in challenger.items() if not k.startswith("harness.")), default=0)
    checks = [Check("min_examples", n >= policy.min_examples, f"{n} evaluated, need {policy.min_examples}")]

    for metric, floor in sorted(policy.thresholds.items()):
        if metric in challenger:
            value = float(np.mean(challenger[metric])) if len(challenger[metric]) else 0.0
        elif metric in summary.get("challenger", {}):
            value = float(summary["challenger"][metric])
        else:
            checks.append(Check(f"floor.{metric}", False, unmeasured(metric)))
            continue
        if math.isnan(value):
            checks.append(Check(f"floor.{metric}", False, f"metric {metric!r} has no value (every sample failed)"))
            continue
        checks.append(Check(f"floor.{metric}", value >= floor, f"{value:.3f} vs floor {floor:.3f}"))

    def compare(rule: str, other: str, margin: float, what: str) -> None:
        for metric in policy.compare_metrics:
            if metric not in challenger or metric not in scores[other]:
                checks.append(Check(f"{rule}.{metric}", False, f"metric {metric!r} was not measured for {other}"))
                continue
            ci = paired_bootstrap(
                challenger[metric], scores[other][metric],
                resamples=policy.bootstrap_resamples, confidence=policy.confidence, seed=policy.seed,
            )
            ok = ci.low >= margin
            detectable = detectable_difference(ci.sd, ci.n, ci.confidence)
            # The margin is measured from zero difference: a margin nearer zero than the detectable
            # difference cannot be told apart from no difference at this sample size.
            too_fine = math.isfinite(detectable) and 0 < abs(margin) < detectable
            needed = examples_needed(ci.sd, abs(margin), ci.confidence) if too_fine else None
            detail = (f"challenger - {other} = {ci}; {what} {margin:+.3f} (one-sided test at {ci.one_sided:.1%}); "
                      f"detectable at n={ci.n}: "
                      f"{_fmt(detectable) if ci.sd != 0 else 'n/a (no example differs)'}")
            if too_fine:
                detail += (f"; the margin {abs(margin):.3f} is below what {ci.n} examples can resolve: "
                           f"about {needed} would")
            checks.append(Check(f"{rule}.{metric}", ok, detail, ci, margin, detectable, needed))

    if "base" in scores:
        compare("improvement", "base", policy.min_improvement, "lower bound must be >=")
    status = (champion or {}).get("status")
    if status in ("absent", "skipped"):
        checks.append(Check("no_regression", True, f"{champion['reason']}: floors and the base comparison decide"))
    elif status == "failed":
        checks.append(Check("no_regression", False, f"fails closed: {champion['reason']}"))
    elif "champion" in scores:
        compare("no_regression", "champion", -policy.max_regression, "lower bound must be >=")
        if champion and champion.get("version"):
            for check in checks:
                if check.rule.startswith("no_regression."):
                    check.detail = f"champion version {champion['version']}: {check.detail}"
    elif status == "resolved":
        checks.append(Check("no_regression", False, f"fails closed: {champion['uri']} was resolved but not evaluated"))
    else:
        checks.append(Check("no_regression", True, "no champion evaluated: floors and the base comparison decide"))

    # Rule 5: judge failures. The worst (side, metric) failure fraction against the allowed one.
    if rag and rag.get("samples"):
        samples = int(rag["samples"])
        worst = max(((count / samples, side, metric) for side, counts in rag.get("failures", {}).items()
                     for metric, count in counts.items()), default=(0.0, "", ""))
        fraction, side, metric = worst
        where = f"worst {side} {metric}: {round(fraction * samples)}/{samples} failed" if fraction else \
            f"none of {samples} failed"
        checks.append(Check("judge_failures", fraction <= policy.max_failure_fraction,
                            f"{where} ({fraction:.0%}), allowed {policy.max_failure_fraction:.0%}"))
    return GateDecision(all(c.passed for c in checks), checks)


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


"""The gate policy: the one place that decides whether an adapter may be registered.

Rules, in order:
1. enough evaluated examples (`min_examples`), or the decision means nothing;
2. every configured floor (`thresholds`, e.g. exact_match >= 0.5) is reached;
3. the challenger beats the base model on exact match by at least `min_improvement`.
Every rule adds a reason, passed or not, so the report says why in both cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Check:
    rule: str
    passed: bool
    detail: str


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
    challenger: dict[str, float],
    base: dict[str, float],
    n_examples: int,
    *,
    thresholds: dict[str, float],
    min_improvement: float,
    min_examples: int,
) -> GateDecision:
    """Apply the policy to mean metrics of the challenger and of the base model."""
    checks = [
        Check("min_examples", n_examples >= min_examples, f"{n_examples} evaluated, need {min_examples}"),
    ]
    for metric, floor in sorted(thresholds.items()):
        if metric not in challenger:
            checks.append(Check(f"floor.{metric}", False, f"metric {metric!r} was not measured"))
            continue
        value = challenger[metric]
        checks.append(Check(f"floor.{metric}", value >= floor, f"{value:.3f} vs floor {floor:.3f}"))
    gain = challenger.get("exact_match", 0.0) - base.get("exact_match", 0.0)
    checks.append(
        Check(
            "improvement.exact_match",
            gain >= min_improvement,
            f"challenger {challenger.get('exact_match', 0.0):.3f} - base {base.get('exact_match', 0.0):.3f}"
            f" = {gain:+.3f}, need {min_improvement:+.3f}",
        )
    )
    return GateDecision(all(c.passed for c in checks), checks)


def render_markdown(decision: GateDecision, challenger: dict[str, float], base: dict[str, float]) -> str:
    verdict = "PASSED: the adapter may be registered" if decision.passed else "REFUSED: nothing is registered"
    lines = [f"# Gate {verdict}", "", "| metric | base model | challenger |", "| --- | ---: | ---: |"]
    for metric in sorted(set(challenger) | set(base)):
        lines.append(f"| {metric} | {base.get(metric, float('nan')):.3f} | {challenger.get(metric, float('nan')):.3f} |")
    lines += ["", "## Rules", ""] + [f"- {reason}" for reason in decision.reasons]
    return "\n".join(lines) + "\n"

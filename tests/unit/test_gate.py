"""The gate policy: floors, paired bootstrap intervals against base and champion, sample count."""

import math

import numpy as np
import pytest

from modelchain.eval.gate import GatePolicy, decide, paired_bootstrap
from modelchain.eval.report import render_html, render_markdown

POLICY = GatePolicy(thresholds={"exact_match": 0.5}, min_improvement=0.1, max_regression=0.02, min_examples=20)


def answers(rng, n, accuracy):
    """Per-example exact-match scores of a model right about `accuracy` of the time."""
    return (rng.random(n) < accuracy).astype(float).tolist()


def scores(**sides):
    return {side: {"exact_match": values} for side, values in sides.items()}


# --------------------------------------------------------------------------- the interval
def test_bootstrap_interval_covers_the_true_mean_at_the_nominal_rate():
    mu, sigma, n, trials = 0.3, 1.0, 200, 300
    covered, widths = 0, []
    for seed in range(trials):
        rng = np.random.default_rng(10_000 + seed)
        diffs = rng.normal(mu, sigma, n)
        ci = paired_bootstrap(diffs, np.zeros(n), resamples=2000, confidence=0.95, seed=seed)
        covered += ci.low <= mu <= ci.high
        widths.append(ci.high - ci.low)
    # 95% nominal; 300 trials give a binomial standard error of about 1.3 points.
    assert 0.91 <= covered / trials <= 0.985
    expected = 2 * 1.96 * sigma / math.sqrt(n)
    assert np.mean(widths) == pytest.approx(expected, rel=0.06)


def test_bootstrap_is_paired_and_seeded():
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 5, 100)  # large per-example noise common to both sides
    a, b = shared + 0.5, shared
    ci = paired_bootstrap(a, b, seed=3)
    assert ci.mean == pytest.approx(0.5) and ci.high - ci.low < 1e-9  # the pairing removes the shared noise
    assert paired_bootstrap(rng.random(50), rng.random(50), seed=7) != paired_bootstrap(rng.random(50), rng.random(50), seed=8)
    x, y = rng.random(50), rng.random(50)
    assert paired_bootstrap(x, y, seed=7) == paired_bootstrap(x, y, seed=7)
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- the decision
def test_genuinely_better_adapter_passes_against_the_champion():
    rng = np.random.default_rng(0)
    n = 300
    decision = decide(scores(base=answers(rng, n, 0.2), champion=answers(rng, n, 0.6), challenger=answers(rng, n, 0.8)), POLICY)
    assert decision.passed, decision.reasons
    assert all(reason.startswith("PASS") for reason in decision.reasons)
    assert any(r.startswith("PASS no_regression.exact_match: challenger - champion") for r in decision.reasons)


def test_worse_adapter_is_refused_against_the_champion():
    rng = np.random.default_rng(0)
    n = 300
    champion = answers(rng, n, 0.8)
    # The challenger is wrong on a tenth of the examples the champion gets right.
    challenger = [0.0 if c == 1.0 and rng.random() < 0.1 else c for c in champion]
    decision = decide(scores(base=answers(rng, n, 0.2), champion=champion, challenger=challenger), POLICY)
    assert not decision.passed
    failed = [r for r in decision.reasons if r.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("FAIL no_regression.exact_match")


def test_a_point_estimate_inside_the_noise_does_not_pass_a_margin():
    # +0.12 over the base on 30 examples: the point estimate clears 0.1, the interval does not.
    base = [1.0] * 6 + [0.0] * 24
    challenger = [1.0] * 6 + [1.0] * 4 + [0.0] * 16 + [0.0] * 4
    challenger[0] = 0.0  # noise: one loss
    challenger[20:24] = [1.0] * 4
    policy = GatePolicy(thresholds={}, min_improvement=0.1, min_examples=20)
    decision = decide(scores(base=base, challenger=challenger), policy)
    assert np.mean(challenger) - np.mean(base) > 0.1
    assert not decision.passed
    assert any(r.startswith("FAIL improvement.exact_match") for r in decision.reasons)


def test_no_champion_yet_means_floors_and_base_only():
    rng = np.random.default_rng(2)
    absent = {"status": "absent", "reason": "no champion yet: model 'm' has no alias 'champion'"}
    decision = decide(scores(base=answers(rng, 100, 0.1), challenger=answers(rng, 100, 0.9)), POLICY, champion=absent)
    assert decision.passed
    assert ("PASS no_regression: no champion yet: model 'm' has no alias 'champion': floors and the base "
            "comparison decide") in decision.reasons


def test_a_champion_that_could_not_be_compared_fails_closed():
    rng = np.random.default_rng(2)
    failed = {"status": "failed", "reason": "the champion of 'm' could not be looked up: unreachable", "uri": ""}
    decision = decide(scores(base=answers(rng, 100, 0.1), challenger=answers(rng, 100, 0.9)), POLICY, champion=failed)
    assert not decision.passed
    assert "FAIL no_regression: fails closed: the champion of 'm' could not be looked up: unreachable" in decision.reasons
    # Resolved but missing from the scores is no pass either.
    resolved = {"status": "resolved", "reason": "", "uri": "models:/m/1", "version": "1"}
    decision = decide(scores(base=answers(rng, 100, 0.1), challenger=answers(rng, 100, 0.9)), POLICY, champion=resolved)
    assert not decision.passed and "FAIL no_regression: fails closed: models:/m/1 was resolved" in decision.reasons[-1]


def test_the_comparison_names_the_champion_version_and_its_power():
    rng = np.random.default_rng(5)
    resolved = {"status": "resolved", "reason": "", "uri": "models:/m/3", "version": "3"}
    sides = scores(base=answers(rng, 40, 0.1), champion=answers(rng, 40, 0.8), challenger=answers(rng, 40, 0.8))
    decision = decide(sides, POLICY, champion=resolved)
    check = next(c for c in decision.checks if c.rule == "no_regression.exact_match")
    assert check.detail.startswith("champion version 3: challenger - champion = ")
    assert "(95% two-sided CI, n=40)" in check.detail and "one-sided test at 97.5%" in check.detail
    # Normal approximation: (z_0.975 + z_0.8) * sd / sqrt(n).
    assert check.detectable == pytest.approx((1.959964 + 0.841621) * check.interval.sd / math.sqrt(40), rel=1e-5)
    # 0.02 is far below what 40 examples resolve; the suggested n resolves it.
    assert check.examples_needed == math.ceil(((1.959964 + 0.841621) * check.interval.sd / 0.02) ** 2)
    assert f"about {check.examples_needed} would" in check.detail
    from modelchain.eval.gate import detectable_difference

    assert detectable_difference(check.interval.sd, check.examples_needed, 0.95) <= 0.02


def test_a_margin_the_test_set_can_resolve_asks_for_no_more_examples():
    rng = np.random.default_rng(6)
    policy = GatePolicy(thresholds={}, min_improvement=0.0, max_regression=0.5, min_examples=1)
    sides = scores(base=answers(rng, 400, 0.2), champion=answers(rng, 400, 0.6), challenger=answers(rng, 400, 0.6))
    check = next(c for c in decide(sides, policy).checks if c.rule == "no_regression.exact_match")
    assert check.examples_needed is None and "can resolve" not in check.detail


def test_below_floor_is_refused_with_reason():
    decision = decide(scores(base=[0.0] * 40, challenger=[1.0] * 16 + [0.0] * 24), POLICY)
    assert not decision.passed
    assert "FAIL floor.exact_match: 0.400 vs floor 0.500" in decision.reasons


def test_too_few_examples_is_refused():
    decision = decide(scores(base=[0.0] * 5, challenger=[1.0] * 5), POLICY)
    assert not decision.passed and decision.reasons[0].startswith("FAIL min_examples")


def test_unmeasured_metric_is_refused():
    policy = GatePolicy(thresholds={"rouge_l": 0.1}, min_improvement=0, min_examples=1)
    decision = decide(scores(base=[0.0] * 40, challenger=[1.0] * 40), policy)
    assert not decision.passed and "was not measured" in decision.reasons[1]


def test_floor_on_a_summary_metric():
    policy = GatePolicy(thresholds={"rag_faithfulness": 0.7}, min_improvement=-1, min_examples=1)
    decision = decide(scores(base=[0.0] * 4, challenger=[1.0] * 4), policy, {"challenger": {"rag_faithfulness": 0.5}})
    assert "FAIL floor.rag_faithfulness: 0.500 vs floor 0.700" in decision.reasons


def test_policy_from_config_with_overrides():
    ev = {"thresholds": {"exact_match": 0.3}, "min_examples": 4, "min_improvement": 0.0, "max_regression": 0.05,
          "compare_metrics": ["exact_match", "rouge_l"], "bootstrap_resamples": 500, "confidence": 0.9, "seed": 1}
    policy = GatePolicy.from_config(ev, min_improvement=0.2, thresholds=None)
    assert policy.min_improvement == 0.2 and policy.thresholds == {"exact_match": 0.3}
    assert policy.compare_metrics == ("exact_match", "rouge_l") and policy.confidence == 0.9


def test_report_says_why_with_intervals_and_worst_examples():
    examples = [
        {"prompt": f"q{i}", "reference": "billing", "champion": "billing", "challenger": "shipping" if i < 3 else "billing",
         "champion_exact_match": 1.0, "challenger_exact_match": 0.0 if i < 3 else 1.0}
        for i in range(30)
    ]
    sc = {s: {"exact_match": [e[f"{s}_exact_match"] for e in examples]} for s in ("champion", "challenger")}
    sc["base"] = {"exact_match": [0.0] * 30}
    results = {
        "n_examples": 30, "split": "test", "champion_uri": "models:/m@champion", "scores": sc, "examples": examples,
        "base": {"exact_match": 0.0}, "champion": {"exact_match": 1.0}, "challenger": {"exact_match": 0.9},
        "rag": {"mode": "llm", "samples": 30, "failed_total": 2, "means": {"challenger": {"faithfulness": 0.8}},
                "failures": {"challenger": {"faithfulness": 2}}},
    }
    decision = decide(sc, POLICY)
    text = render_markdown(decision, results, POLICY)
    assert text.startswith("# Gate REFUSED")
    assert "## Comparisons and their power (95% two-sided paired bootstrap intervals" in text
    assert "a one-sided test at 97.5%" in text
    assert "FAIL no_regression.exact_match" in text
    assert "| exact_match | 30 | 0.000 | 1.000 | 0.900 | -0.100 [" in text
    assert "Worst 10 examples: challenger beside champion" in text and "| q0 | billing | billing | shipping |" in text
    assert "judge failures are counted, not dropped: 2 in all" in text
    page = render_html(decision, results, POLICY)
    assert page.startswith("<!doctype html>") and "Gate REFUSED" in page and "<td>shipping</td>" in page


def test_champion_setting_none_or_an_adapter_folder_needs_no_registry(tmp_path):
    from modelchain.eval.champion import ChampionError, resolve

    unreachable = "http://127.0.0.1:9"  # nothing answers there; neither setting may ask it
    assert resolve("none", "m", unreachable).status == "skipped"
    (tmp_path / "adapter_config.json").write_text("{}")
    folder = resolve(str(tmp_path), "m", unreachable)
    assert folder.status == "resolved" and folder.path == str(tmp_path)
    with pytest.raises(ChampionError, match="neither auto, none, a models:/ URI nor an adapter folder"):
        resolve(str(tmp_path / "nope"), "m", unreachable)


def test_decision_metrics_carry_the_intervals():
    from modelchain.components.gate.logic import decision_metrics

    rng = np.random.default_rng(4)
    decision = decide(scores(base=answers(rng, 60, 0.2), champion=answers(rng, 60, 0.7), challenger=answers(rng, 60, 0.7)), POLICY)
    metrics = decision_metrics(decision)
    assert metrics["gate.passed"] == float(decision.passed)
    assert metrics["gate.no_regression.exact_match.detectable"] > 0.02
    assert metrics["gate.no_regression.exact_match.examples_needed"] > 60
    low, high = metrics["gate.no_regression.exact_match.ci_low"], metrics["gate.no_regression.exact_match.ci_high"]
    assert low <= metrics["gate.no_regression.exact_match.mean"] <= high


def test_policy_defaults_are_the_eval_schema_defaults():
    from omegaconf import OmegaConf

    from modelchain.core.config import EvalConfig

    assert GatePolicy() == GatePolicy.from_config(OmegaConf.structured(EvalConfig))

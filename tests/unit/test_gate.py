"""The gate policy: floors, improvement over the base model, minimum sample count."""

from modelchain.eval.gate import decide, render_markdown

POLICY = dict(thresholds={"exact_match": 0.5}, min_improvement=0.1, min_examples=20)


def test_better_adapter_passes():
    decision = decide({"exact_match": 0.8, "rouge_l": 0.8}, {"exact_match": 0.1, "rouge_l": 0.2}, 40, **POLICY)
    assert decision.passed
    assert all(reason.startswith("PASS") for reason in decision.reasons)


def test_below_floor_is_refused_with_reason():
    decision = decide({"exact_match": 0.4}, {"exact_match": 0.0}, 40, **POLICY)
    assert not decision.passed
    assert "FAIL floor.exact_match: 0.400 vs floor 0.500" in decision.reasons


def test_no_improvement_is_refused():
    decision = decide({"exact_match": 0.65}, {"exact_match": 0.6}, 40, **POLICY)
    assert not decision.passed
    assert any(r.startswith("FAIL improvement.exact_match") for r in decision.reasons)


def test_too_few_examples_is_refused():
    decision = decide({"exact_match": 1.0}, {"exact_match": 0.0}, 5, **POLICY)
    assert not decision.passed and decision.reasons[0].startswith("FAIL min_examples")


def test_unmeasured_metric_is_refused():
    decision = decide({"exact_match": 1.0}, {"exact_match": 0.0}, 40, thresholds={"rouge_l": 0.1}, min_improvement=0, min_examples=1)
    assert not decision.passed and "was not measured" in decision.reasons[1]


def test_report_says_why():
    decision = decide({"exact_match": 0.4}, {"exact_match": 0.0}, 40, **POLICY)
    text = render_markdown(decision, {"exact_match": 0.4}, {"exact_match": 0.0})
    assert text.startswith("# Gate REFUSED") and "FAIL floor.exact_match" in text

"""Judged and offline RAG metrics keep apart, every mean has its n, and the gate counts judge failures."""

import pytest
from omegaconf import OmegaConf

from modelchain.components.gate.logic import decide_results
from modelchain.core.config import ConfigError, EvalConfig, JudgeConfig, compose
from modelchain.eval import rag
from modelchain.eval.gate import GatePolicy, decide
from modelchain.eval.metrics import GATE_METRICS
from modelchain.eval.report import render_markdown

PAIRED = {"challenger": {"exact_match": [1.0] * 10}, "base": {"exact_match": [0.0] * 10}}


def policy(**values):
    return GatePolicy(min_improvement=-1, min_examples=1, **values)


def rag_results(mode, means, failures, samples=10):
    n = {side: {m: samples - failures.get(side, {}).get(m, 0) for m in ms} for side, ms in means.items()}
    return {"mode": mode, "samples": samples, "means": means, "n": n,
            "failures": {side: {m: failures.get(side, {}).get(m, 0) for m in ms} for side, ms in means.items()},
            "errors": [], "failed_total": sum(sum(f.values()) for f in failures.values())}


def results_with(rag_summary):
    return {"n_examples": 10, "split": "test", "sides": ["base", "challenger"],
            "scores": PAIRED, "base": {"exact_match": 0.0}, "challenger": {"exact_match": 1.0},
            "examples": [], "rag": rag_summary}


def test_offline_metrics_have_names_of_their_own():
    assert all(m.startswith("offline_") for m in rag.OFFLINE)
    assert not set(rag.OFFLINE) & set(rag.JUDGED)
    assert "rag_offline_context_precision" in GATE_METRICS and "rag_context_precision" in GATE_METRICS


def test_a_judged_floor_is_not_met_by_offline_results_and_says_why():
    offline = rag_results("offline", {"challenger": {"offline_context_precision": 0.9}}, {})
    decision = decide_results(results_with(offline), policy(thresholds={"rag_context_precision": 0.5}))
    assert not decision.passed
    reason = next(r for r in decision.reasons if "floor.rag_context_precision" in r)
    assert reason.startswith("FAIL") and "needs an LLM judge (eval.judge.base_url)" in reason
    assert "rag_offline_*" in reason


def test_an_offline_floor_is_not_met_by_judged_results():
    judged = rag_results("llm", {"challenger": {"context_precision": 0.9}}, {})
    decision = decide_results(results_with(judged), policy(thresholds={"rag_offline_context_precision": 0.5}))
    assert "FAIL floor.rag_offline_context_precision: metric 'rag_offline_context_precision' was not measured" \
        in decision.reasons
    # ... and the same floor passes on the offline stand-in itself.
    offline = rag_results("offline", {"challenger": {"offline_context_precision": 0.9}}, {})
    passed = decide_results(results_with(offline), policy(thresholds={"rag_offline_context_precision": 0.5}))
    assert "PASS floor.rag_offline_context_precision: 0.900 vs floor 0.500" in passed.reasons and passed.passed


@pytest.mark.parametrize("failed, passes", [(0, True), (1, True), (2, False), (10, False)])
def test_the_gate_refuses_when_too_many_samples_failed(failed, passes):
    judged = rag_results("llm", {"challenger": {"faithfulness": 0.9, "answer_relevancy": 0.8}},
                         {"challenger": {"answer_relevancy": failed}})
    decision = decide_results(results_with(judged), policy(max_failure_fraction=0.1))
    check = next(c for c in decision.checks if c.rule == "judge_failures")
    assert check.passed is passes and decision.passed is passes
    if failed:
        assert f"challenger answer_relevancy: {failed}/10 failed" in check.detail
    else:
        assert "none of 10 failed" in check.detail


def test_a_failing_champion_side_counts_too():
    judged = rag_results("llm", {"challenger": {"faithfulness": 0.9}, "champion": {"faithfulness": 0.9}},
                         {"champion": {"faithfulness": 5}})
    decision = decide_results(results_with(judged), policy())
    assert "FAIL judge_failures: worst champion faithfulness: 5/10 failed (50%), allowed 10%" in decision.reasons


def test_no_rag_scoring_means_no_judge_rule():
    decision = decide(PAIRED, policy())
    assert "judge_failures" not in {c.rule for c in decision.checks}


def test_max_failure_fraction_comes_from_eval_judge():
    ev = OmegaConf.structured(EvalConfig(name="t", judge=JudgeConfig(max_failure_fraction=0.25)))
    assert GatePolicy.from_config(ev).max_failure_fraction == 0.25
    assert GatePolicy().max_failure_fraction == JudgeConfig().max_failure_fraction == 0.1
    cfg = compose("finetune", ["eval.judge.max_failure_fraction=0.3"])
    assert GatePolicy.from_config(cfg.eval).max_failure_fraction == 0.3
    with pytest.raises(ConfigError, match=r"eval.judge.max_failure_fraction: must be in \[0, 1\]"):
        compose("finetune", ["eval.judge.max_failure_fraction=1.5"])
    with pytest.raises(ConfigError, match="eval.judge.embedding.endpoint"):
        compose("finetune", ["eval.judge.embedding.runtime=openai"])


def test_the_judge_output_mode_and_answer_cap_are_checked_and_reach_the_judge():
    from modelchain.eval.rag import OpenAIJudge

    cfg = compose("finetune", ["eval.judge.base_url=http://127.0.0.1:9/v1", "eval.judge.model=m",
                               "eval.judge.output=json_schema", "eval.judge.max_output_tokens=200"])
    judge = OpenAIJudge.from_config(cfg.eval)
    assert (judge.output, judge.max_output_tokens) == ("json_schema", 200)
    llm = judge.metrics()["faithfulness"].metric.llm
    assert llm.model_args["max_tokens"] == 200 and llm.client.mode.name == "JSON_SCHEMA"
    assert OpenAIJudge(base_url="http://127.0.0.1:9/v1", model="m").metrics()["faithfulness"].metric.llm.client.mode.name == "JSON"
    with pytest.raises(ConfigError, match=r"^eval.judge.output: must be one of json, json_schema, got 'xml'"):
        compose("finetune", ["eval.judge.output=xml"])
    with pytest.raises(ConfigError, match=r"^eval.judge.max_output_tokens: must be >= 1"):
        compose("finetune", ["eval.judge.max_output_tokens=0"])


def test_the_report_gives_every_mean_its_n_and_says_offline_is_not_judged():
    offline = rag_results("offline", {"challenger": {"offline_rouge": 0.4}}, {"challenger": {"offline_rouge": 1}})
    results = results_with(offline)
    text = render_markdown(decide_results(results, policy()), results, policy())
    assert "| offline_rouge | 0.400 (n=9) | 1 |" in text
    assert "offline string-similarity stand-ins, not judged" in text
    assert "| metric | n | base | challenger |" in text and "| exact_match | 10 |" in text


def test_scores_report_the_n_of_each_mean():
    scores = rag.Scores({"a": [1.0, float("nan"), 0.0], "b": [float("nan")] * 3}, {"a": 1, "b": 3})
    assert scores.counts() == {"a": 2, "b": 0}
    assert scores.means()["a"] == 0.5


def test_the_report_gives_repeats_spread_calls_and_a_partial_run():
    judged = rag_results("llm", {"challenger": {"faithfulness": 0.7}}, {"challenger": {"faithfulness": 3}}, samples=30)
    judged |= {"questions": 10, "repeats": 3, "partial": True,
               "spread": {"challenger": {"faithfulness": {"sd": 0.05, "min": 0.65, "max": 0.75, "repeats": 3}}},
               "calls": {"judge_calls": 10, "cached_calls": 4, "tokens": 5000, "token_budget": 5000, "cost": 0.01,
                         "budget_exhausted": True}}
    results = results_with(judged)
    decision = decide_results(results, policy())
    text = render_markdown(decision, results, policy())
    assert "PARTIAL: the judge's token budget ran out" in text
    assert "10 questions, 3 repeats (mean and sd over them)" in text
    assert "| faithfulness | 0.700 (n=27) sd 0.050 | 3 |" in text
    assert "judge calls 10, from cache 4, tokens 5000 of 5000, cost 0.0100" in text
    assert "PASS judge_failures: worst challenger faithfulness: 3/30 failed (10%), allowed 10%" in decision.reasons

"""Judge calls through a local OpenAI-compatible judge: cached by content, fixed sampling, a token budget."""

import json
import math

import pytest

from modelchain.bench.judge_stub import JudgeStub
from modelchain.eval import rag
from modelchain.eval.judge_calls import TokenBudget, request_key
from tests.s3_server import s3_env, s3_server  # noqa: F401 (fixtures)

from .test_rag_judge import ANSWERS, CONTEXTS, QUESTIONS, REFERENCES


def scored(stub, repeat=0, **judge_fields):
    judge = rag.OpenAIJudge(base_url=stub.base_url, model="stub-judge", **judge_fields)
    metrics = judge.metrics(repeat)
    result = rag.score(rag.samples(QUESTIONS, ANSWERS, CONTEXTS, REFERENCES), metrics, **judge.limits())
    return judge, result


def chat_calls(stub):
    return stub.paths.get("/v1/chat/completions", 0)


def test_a_rerun_of_unchanged_answers_makes_no_judge_call(tmp_path):
    with JudgeStub() as stub:
        first_judge, first = scored(stub, cache_dir=str(tmp_path / "cache"))
        made = chat_calls(stub)
        again_judge, again = scored(stub, cache_dir=str(tmp_path / "cache"))
        assert chat_calls(stub) == made  # every answer came from the cache
    assert made > 0 and first_judge.token_budget().calls == made
    assert again_judge.token_budget().summary()["judge_calls"] == 0
    # Within a run, a prompt sent twice (answer relevancy's 3 generations at temperature 0) is made once.
    first_budget = first_judge.token_budget()
    assert again_judge.token_budget().cached == first_budget.calls + first_budget.cached
    assert again.values == first.values and sum(again.failures.values()) == 0
    assert len(list((tmp_path / "cache").rglob("*.json"))) == made


def test_a_changed_answer_is_judged_again_and_only_it(tmp_path):
    with JudgeStub() as stub:
        scored(stub, cache_dir=str(tmp_path / "cache"))
        made = chat_calls(stub)
        judge = rag.OpenAIJudge(base_url=stub.base_url, model="stub-judge", cache_dir=str(tmp_path / "cache"))
        changed = [*ANSWERS[:3], "Refunds are paid in cash at the desk."]
        rag.score(rag.samples(QUESTIONS, changed, CONTEXTS, REFERENCES),
                  {"faithfulness": judge.metrics()["faithfulness"]}, **judge.limits())
        assert 0 < chat_calls(stub) - made <= 3  # the changed sample's faithfulness calls only


def test_every_call_goes_with_temperature_0_and_the_seed_of_its_repeat():
    with JudgeStub() as stub:
        scored(stub, seed=7)
        scored(stub, repeat=2, seed=7)
    seeds = [body["seed"] for body in stub.chat_bodies]
    assert {body["temperature"] for body in stub.chat_bodies} == {0.0}
    assert set(seeds) == {7, 9}


def test_a_spent_budget_stops_the_run_cleanly_and_marks_it_partial():
    with JudgeStub() as stub:
        judge, result = scored(stub, max_tokens=1500, concurrency=1, price_per_1k_tokens=0.5)
        made = chat_calls(stub)
        _, full = scored(stub)
    summary = judge.token_budget().summary()
    assert summary["budget_exhausted"] and summary["tokens"] >= 1500 and summary["cost"] > 0
    assert made < chat_calls(stub) - made  # it stopped: fewer calls than a full run
    failed = sum(result.failures.values())
    assert failed > 0 and any("token budget of 1500 is spent" in e for e in result.errors)
    scored_tasks = sum(not math.isnan(v) for values in result.values.values() for v in values)
    assert scored_tasks + failed == len(QUESTIONS) * len(rag.JUDGED)
    assert sum(full.failures.values()) == 0


def test_the_estimate_refuses_to_start_over_the_budget():
    from omegaconf import OmegaConf

    from modelchain.core.config import EvalConfig, JudgeConfig

    ev = OmegaConf.structured(EvalConfig(name="t", judge=JudgeConfig(base_url="http://x/v1", model="m", max_tokens=1000)))
    with pytest.raises(ValueError, match=r"eval.judge.max_tokens: about \d+ judge tokens needed \(32 tasks\), over"):
        rag._check_budget_estimate(ev, QUESTIONS, CONTEXTS, REFERENCES, passes=2)
    ev.judge.max_tokens = 10_000_000
    rag._check_budget_estimate(ev, QUESTIONS, CONTEXTS, REFERENCES, passes=2)


def test_repeats_give_a_mean_and_a_spread():
    mean, spread = rag._over_repeats([{"f": 0.5, "g": math.nan}, {"f": 0.7, "g": 0.2}, {"f": 0.6, "g": math.nan}])
    assert mean["f"] == pytest.approx(0.6) and spread["f"]["sd"] == pytest.approx(0.1)
    assert (spread["f"]["min"], spread["f"]["max"], spread["f"]["repeats"]) == (0.5, 0.7, 3)
    assert mean["g"] == 0.2 and spread["g"]["sd"] == 0.0 and spread["g"]["repeats"] == 1


def test_the_cache_key_is_the_content():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 0.0, "seed": 0}
    same = json.loads(json.dumps(body, sort_keys=True))
    assert request_key("http://j/v1/chat/completions", body) == request_key("http://j/v1/chat/completions", same)
    assert request_key("http://j/v1/chat/completions", body) != request_key(
        "http://j/v1/chat/completions", {**body, "seed": 1})
    assert request_key("http://j/v1/chat/completions", body) != request_key(
        "http://j/v1/chat/completions", {**body, "model": "other"})
    assert TokenBudget().summary()["budget_exhausted"] is False


def test_an_over_budget_run_is_refused_before_any_model_answers(tmp_path):
    """evaluate() refuses before it loads the base model: the model folder here does not even exist."""
    from modelchain.components.evaluate.logic import run as evaluate
    from modelchain.core.config import compose

    row = {"messages": [{"role": "user", "content": "Who routes billing tickets?"},
                        {"role": "assistant", "content": "the billing team"}]}
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.jsonl").write_text("\n".join([json.dumps(row)] * 4) + "\n")
    cfg = compose("finetune", ["model=local_dir", f"model.path={tmp_path / 'no-model'}", "eval=smoke",
                               "eval.rag_questions=4", "eval.judge.base_url=http://127.0.0.1:9/v1",
                               "eval.judge.model=judge", "eval.judge.max_tokens=5000"])
    with pytest.raises(ValueError, match=r"eval.judge.max_tokens: about \d+ judge tokens needed \(16 tasks\)"):
        evaluate(cfg.model, cfg.eval, cfg.cluster, cfg.rag, tmp_path / "splits", tmp_path / "adapter",
                 tmp_path / "results.json", registered_model="nothing-registered-yet")
    assert not (tmp_path / "results.json").exists()


def test_the_cache_can_live_in_s3_and_serves_a_rerun_from_there(s3_env, tmp_path):
    """Against a real SeaweedFS bucket: the answers are objects under the prefix, a second run
    (another process could be another pod) makes no judge call, and an unreachable bucket is
    only a miss."""
    from modelchain.core import s3

    s3.client().create_bucket(Bucket="judge-cache")
    with JudgeStub() as stub:
        first_judge, first = scored(stub, cache_dir="s3://judge-cache/team/judge/")
        made = chat_calls(stub)
        again_judge, again = scored(stub, cache_dir="s3://judge-cache/team/judge/")
        assert chat_calls(stub) == made and again_judge.token_budget().calls == 0
        keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="judge-cache")["Contents"]]
        assert len(keys) == made and all(k.startswith("team/judge/") and k.endswith(".json") for k in keys)
        assert again.values == first.values
        _, missing = scored(stub, cache_dir="s3://no-such-bucket/judge/")
        # Every task asked the judge (a prompt repeated within the run too: nothing was cached).
        budget = first_judge.token_budget()
        assert chat_calls(stub) - made == budget.calls + budget.cached and missing.values == first.values


def test_one_judge_scores_run_after_run_on_a_keep_alive_server():
    """Each scoring run has its own event loop; a pooled keep-alive connection from the last
    run must not fail the next run's first calls (with no retries, they would be failures)."""
    with JudgeStub(keep_alive=True) as stub:
        judge = rag.OpenAIJudge(base_url=stub.base_url, model="stub-judge")
        metrics = judge.metrics()
        rag_samples = rag.samples(QUESTIONS, ANSWERS, CONTEXTS, REFERENCES)
        first = rag.score(rag_samples, metrics, concurrency=4, timeout_s=30.0, retries=0)
        second = rag.score(rag_samples, metrics, concurrency=4, timeout_s=30.0, retries=0)
    assert sum(first.failures.values()) == 0 and sum(second.failures.values()) == 0, second.errors
    assert second.values == first.values

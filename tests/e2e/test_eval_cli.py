"""`modelchain eval`: evaluation and the gate outside a pipeline, on a tiny model and adapter."""

import json
import math

import pytest

from .conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model):
    """A LoRA adapter on the tiny model (untrained: the plumbing is under test, not the quality)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    return out


def args(tiny_model, dataset, adapter, out, *extra):
    return ["eval", "model=local_dir", f"model.path={tiny_model}", f"data.source.uri={dataset}", "eval=smoke",
            *extra, "--adapter", str(adapter), "--out", str(out)]


def test_eval_passes_then_refuses_with_a_champion(tmp_path, tiny_model, routing_dataset, adapter, monkeypatch):
    out = tmp_path / "passed"
    done = run_cli(*args(tiny_model, routing_dataset, adapter, out, "--champion", str(adapter)), home=tmp_path / "home")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gate: passed" in done.stdout
    for side in ("base", "challenger", "champion"):
        assert f"answering ({side})" in done.stderr  # a progress bar per side
    run_id = json.loads((out / "decision.json").read_text())["mlflow_run_id"]
    assert f"MLflow run {run_id}" in done.stdout

    # The MLflow run is the pipeline gate step's own: decision, reasons, metrics and reports.
    from modelchain.core import registry
    from modelchain.core.config import compose

    monkeypatch.setenv("MODELCHAIN_HOME", str(tmp_path / "home"))
    run = registry.client(compose("finetune", []).cluster.mlflow.tracking_uri).get_run(run_id)
    assert run.data.tags["gate.decision"] == "passed" and "no_regression.exact_match" in run.data.tags["gate.reasons"]
    assert {"challenger.exact_match", "champion.exact_match", "base.perplexity", "gate.passed"} <= set(run.data.metrics)
    client = registry.client(compose("finetune", []).cluster.mlflow.tracking_uri)
    reports = {a.path for a in client.list_artifacts(run_id, "reports")}
    assert {"reports/gate_report.md", "reports/gate_report.html"} <= reports
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "test" and results["sides"] == ["base", "challenger", "champion"]
    assert math.isfinite(results["challenger"]["perplexity"]) and results["challenger"]["perplexity"] > 1
    report = (out / "gate_report.md").read_text()
    assert report.startswith("# Gate PASSED") and "PASS no_regression.exact_match: challenger - champion" in report
    assert "Worst" in report and (out / "gate_report.html").read_text().startswith("<!doctype html>")

    refused = run_cli(*args(tiny_model, routing_dataset, adapter, tmp_path / "refused", "+eval.thresholds.exact_match=1.0"),
                      home=tmp_path / "home")
    assert refused.returncode == 3, refused.stderr[-3000:]
    assert "FAIL floor.exact_match" in refused.stdout and "gate: refused" in refused.stdout
    decision = json.loads((tmp_path / "refused" / "decision.json").read_text())
    assert decision["passed"] is False


class FakeRetriever:
    """Stands in for the Milvus retriever: the same chunks for every question."""

    def retrieve_many(self, questions, k):
        from modelchain.core.retriever import Hit

        chunk = Hit("Billing handles charges; shipping handles parcels.", "guide.md", "Routing", 0.9)
        return [[chunk] * min(k, 2) for _ in questions]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_rag_scoring_for_challenger_and_champion_counts_judge_failures(tmp_path, tiny_model, routing_dataset, adapter):
    from modelchain.components.data_prep.logic import prepare_from_config
    from modelchain.core.config import compose
    from modelchain.core.io import read_jsonl
    from modelchain.eval.rag import JUDGED, score_rag_for_sides
    from modelchain.bench.judge_stub import JudgeStub

    with JudgeStub(faults={"JSON format": "malformed"}) as stub:  # every judge answer is broken
        cfg = compose("finetune", [
            "model=local_dir", f"model.path={tiny_model}", f"data.source.uri={routing_dataset}", "eval=smoke",
            "eval.rag_questions=3", f"eval.judge.base_url={stub.base_url}", "eval.judge.model=stub",
            "eval.judge.timeout_s=5", "eval.judge.retries=0", "eval.judge.repeats=2",
            f"eval.judge.cache_dir={tmp_path / 'judge-cache'}",
        ])
        prepare_from_config(cfg.data, cfg.model, tmp_path / "splits")
        rows = read_jsonl(tmp_path / "splits" / "test.jsonl")[:3]
        out = score_rag_for_sides(cfg.eval, cfg.rag, rows, tiny_model, {"challenger": adapter, "champion": adapter},
                                  retriever=FakeRetriever())
    assert out["mode"] == "llm" and out["questions"] == 3 and out["repeats"] == 2 and out["samples"] == 6
    assert set(out["means"]) == {"challenger", "champion"}
    # Every judged task fails, and each failure is counted under its metric, side and repeat.
    assert out["failures"]["challenger"] == {name: 6 for name in JUDGED}
    assert out["n"]["challenger"] == {name: 0 for name in JUDGED}  # no mean is over a failed sample
    assert out["failed_total"] == 2 * 6 * len(JUDGED) and out["errors"]
    assert out["spread"]["challenger"]["faithfulness"]["repeats"] == 0 and not out["partial"]
    # The champion is the same adapter, so its answers and prompts are the challenger's: all from the cache.
    assert out["calls"]["judge_calls"] > 0 and out["calls"]["cached_calls"] == out["calls"]["judge_calls"]


def test_lm_eval_harness_task_from_the_test_split(tiny_model, adapter):
    from modelchain.eval.harness import TEST_SPLIT_TASK, run_for_sides

    rows = [{"messages": [{"role": "user", "content": f"Ticket {i}: charged twice"},
                          {"role": "assistant", "content": "billing"}]} for i in range(4)]
    means, per_example = run_for_sides(tiny_model, {"base": None, "challenger": adapter}, [TEST_SPLIT_TASK], "",
                                       rows, max_new_tokens=4)
    key = f"harness.{TEST_SPLIT_TASK}.exact_match"
    for side in ("base", "challenger"):
        assert 0.0 <= means[side][key] <= 1.0
        assert len(per_example[side][key]) == 4 and sum(per_example[side][key]) / 4 == means[side][key]


def test_the_numeric_benchmark_through_the_eval_command_is_paired(tmp_path, tiny_model, routing_dataset, adapter):
    """modelchain_arithmetic (built in, GSM8K-shaped) run by `modelchain eval` on both sides, paired in the report."""
    out = tmp_path / "out"
    done = run_cli(*args(tiny_model, routing_dataset, adapter, out, "eval.harness_tasks=[modelchain_arithmetic]"),
                   home=tmp_path / "home")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    key = "harness.modelchain_arithmetic.exact_match"
    for side in ("base", "challenger"):
        assert len(results["scores"][side][key]) == 8  # eval=smoke: 8 problems, the same on both sides
        assert results[side][key] == sum(results["scores"][side][key]) / 8
    row = next(line for line in (out / "gate_report.md").read_text().splitlines() if line.startswith(f"| {key} |"))
    assert row.count("[") == 1 and row.rstrip(" |").endswith("]")  # challenger - base, with its paired interval

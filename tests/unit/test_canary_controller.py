"""The canary controller's logic: steps, verdicts, rollback, promotion, restarts.

The router is in memory and the analysis is scripted (verdicts made by the real `judge`
from given metrics); the registry is real (MLflow on sqlite), so aliases and tags are
checked where they live. Prometheus queries are covered in test_canary_analysis.py.
"""

import json

import pytest

from modelchain.serving.analysis import SideMetrics, Thresholds, judge
from modelchain.serving.controller import OUTCOME_TAG, MlflowRegistryHooks, run_canary
from modelchain.serving.router import InMemoryRouter, RouterError
from modelchain.core import registry
from tests.registry_support import experiment_id, gate_run, make_adapter, mlflow_client, sqlite_uri, template_db  # noqa: F401

MODEL = "smollm2-canary"
T = Thresholds(max_error_rate=0.05, max_p95_latency_s=5.0, max_p95_ttft_s=2.0, max_error_rate_increase=0.02,
               max_latency_ratio=1.5, max_ttft_ratio=1.5, latency_tolerance_s=0.1, min_requests=5)


def side(name, requests=50.0, errors=0.0, latency=1.0, ttft=0.2, window=10):
    return SideMetrics(name, window, requests, errors, errors / requests if requests else None, latency, ttft, True,
                       [{"query": f"q_{name}", "result": [], "value": requests}])


HEALTHY = (side("canary"), side("stable"))
BROKEN = (side("canary", errors=20.0), side("stable"))
SLOW = (side("canary", latency=3.0), side("stable"))
NO_DATA = (side("canary", requests=1.0), side("stable"))


class ScriptedAnalysis:
    """Answers each analysis with the next (canary, stable) metrics pair; records the windows."""

    def __init__(self, *script):
        self.script = list(script)
        self.calls = []

    def analyse(self, canary_window_s, stable_window_s, thresholds):
        self.calls.append((canary_window_s, stable_window_s))
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return judge(*item, thresholds)

    def describe(self):
        return "scripted"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def versions(mlflow_client, experiment_id, tmp_path):  # noqa: F811
    """Version 1 is champion, version 2 the candidate (challenger)."""
    for i in (1, 2):
        run_id = gate_run(mlflow_client, experiment_id)
        registry.register_adapter(mlflow_client, run_id, make_adapter(tmp_path / f"ad{i}", seed=i), model_name=MODEL, tags={})
    registry.promote(mlflow_client, MODEL, "1")
    return mlflow_client


def run(router, analysis, client, tmp_path, steps=(10, 50, 100), **kw):
    calls = {"scale_down": 0, "promote_serving": 0}
    clock = FakeClock()

    def count(name):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    result = run_canary(
        router, analysis, MlflowRegistryHooks(client, MODEL, "2"), list(steps), 10, T, tmp_path / "rollout.json",
        scale_down_canary=count("scale_down"), promote_serving=kw.pop("promote_serving", count("promote_serving")),
        sleep=clock.sleep, clock=clock, **kw,
    )
    return result, calls


def aliases(client):
    return registry.aliases(client.get_registered_model(MODEL))


def test_healthy_candidate_is_promoted_step_by_step(versions, tmp_path):
    router, analysis = InMemoryRouter(), ScriptedAnalysis(HEALTHY, HEALTHY, HEALTHY)
    result, calls = run(router, analysis, versions, tmp_path)
    assert result.outcome == "promoted"
    # every step, then the candidate takes all traffic on the canary side, then stable takes over
    assert router.history == [(90, 10), (50, 50), (0, 100), (100, 0)]
    assert aliases(versions) == {"champion": "2", "previous": "1", "challenger": "2"}
    assert calls == {"scale_down": 1, "promote_serving": 1}
    assert versions.get_model_version(MODEL, "2").tags[OUTCOME_TAG] == "promoted"
    report = json.loads((tmp_path / "rollout.json").read_text())
    assert [s["canary_weight"] for s in report["steps"]] == [10, 50, 100]
    assert all(s["outcome"] == "pass" for s in report["steps"])
    assert report["steps"][0]["canary"]["queries"][0]["query"] == "q_canary"
    md = (tmp_path / "rollout.md").read_text()
    assert "outcome: **promoted**" in md and "`q_canary`" in md
    # the stable baseline window grows with the rollout, the canary's is the step
    assert analysis.calls == [(10, 10), (10, 20), (10, 30)]


def test_failing_step_rolls_back_and_leaves_aliases_alone(versions, tmp_path):
    before = aliases(versions)
    router, analysis = InMemoryRouter(), ScriptedAnalysis(HEALTHY, BROKEN)
    result, calls = run(router, analysis, versions, tmp_path)
    assert result.outcome == "rolled_back"
    assert "step 2 (50 %)" in result.reason and "error_rate" in result.reason
    assert router.weights() == {"stable": 100, "canary": 0}
    assert router.history[-1] == (100, 0)
    assert calls == {"scale_down": 1, "promote_serving": 0}
    assert aliases(versions) == before
    assert versions.get_model_version(MODEL, "2").tags[OUTCOME_TAG] == "rolled_back"
    # fault present from the first step: detected and rolled back within two intervals of it
    assert result.report["time_to_rollback_s"] <= 2 * 10


def test_slow_candidate_fails_on_latency_relative_to_stable(versions, tmp_path):
    result, _ = run(InMemoryRouter(), ScriptedAnalysis(SLOW), versions, tmp_path)
    assert result.outcome == "rolled_back"
    assert "p95_latency_s canary 3 <= stable 1 x 1.5" in result.reason
    assert result.report["time_to_rollback_s"] <= 10


def test_no_data_is_analysed_again_once_then_fails(versions, tmp_path):
    result, _ = run(InMemoryRouter(), ScriptedAnalysis(NO_DATA, HEALTHY, HEALTHY, HEALTHY), versions, tmp_path)
    assert result.outcome == "promoted"
    assert [s["outcome"] for s in result.report["steps"]] == ["no_data", "pass", "pass", "pass"]
    assert result.report["steps"][1]["window_s"] == 20  # the repeated analysis covers the whole step


def test_no_data_twice_rolls_back(versions, tmp_path):
    result, _ = run(InMemoryRouter(), ScriptedAnalysis(NO_DATA, NO_DATA), versions, tmp_path)
    assert result.outcome == "rolled_back" and "no data" in result.reason


def test_prometheus_failure_rolls_back(versions, tmp_path):
    result, _ = run(InMemoryRouter(), ScriptedAnalysis(HEALTHY, RuntimeError("connection refused")), versions, tmp_path)
    assert result.outcome == "rolled_back"
    assert "analysis failed: connection refused" in result.reason
    assert result.report["steps"][-1]["outcome"] == "error"


def test_restart_mid_rollout_resumes_at_the_current_step(versions, tmp_path):
    router = InMemoryRouter(75, 25)  # a controller died during the 25 % step
    analysis = ScriptedAnalysis(HEALTHY, HEALTHY)
    result, _ = run(router, analysis, versions, tmp_path, steps=(10, 25, 50))
    assert result.outcome == "promoted"
    assert [s["canary_weight"] for s in result.report["steps"]] == [25, 50]
    assert router.history[0] == (50, 50)  # 25 % was already applied: not set again
    assert result.report["state_at_start"]["weights"] == {"stable": 75, "canary": 25}


def test_restart_after_alias_finishes_the_promotion_without_analysis(versions, tmp_path):
    registry.promote(versions, MODEL, "2")  # crashed after the alias move, before stable took over
    router = InMemoryRouter(0, 100)
    result, calls = run(router, ScriptedAnalysis(), versions, tmp_path)
    assert result.outcome == "promoted" and result.report["steps"] == []
    assert router.weights() == {"stable": 100, "canary": 0}
    assert calls == {"scale_down": 1, "promote_serving": 1}


def test_restart_after_rollback_cleans_up(versions, tmp_path):
    router = InMemoryRouter(90, 10)
    run(router, ScriptedAnalysis(BROKEN), versions, tmp_path)
    router.set_weights(60, 40)  # e.g. someone moved traffic again by hand
    result, calls = run(router, ScriptedAnalysis(), versions, tmp_path / "again")
    assert result.outcome == "rolled_back" and result.report["steps"] == []
    assert router.weights() == {"stable": 100, "canary": 0}
    assert calls["scale_down"] == 1
    assert aliases(versions)["champion"] == "1"


def test_without_promote_serving_the_canary_keeps_all_traffic(versions, tmp_path):
    router = InMemoryRouter()
    result, calls = run(router, ScriptedAnalysis(HEALTHY), versions, tmp_path, steps=(100,), promote_serving=None)
    assert result.outcome == "promoted"
    assert router.weights() == {"stable": 0, "canary": 100}
    assert calls["scale_down"] == 0


def test_bad_steps_and_weights_are_refused(versions, tmp_path):
    with pytest.raises(ValueError, match="serve.canary_steps"):
        run(InMemoryRouter(), ScriptedAnalysis(), versions, tmp_path, steps=(50, 10))
    with pytest.raises(RouterError, match="sum"):
        InMemoryRouter().set_weights(90, 20)


# --------------------------------------------------------------------------- judge
def test_judge_absolute_relative_and_no_data():
    assert judge(*HEALTHY, T).outcome == "pass"
    # absolute limit on TTFT
    v = judge(side("canary", ttft=2.5), side("stable", ttft=2.4), T)
    assert v.outcome == "fail" and any("p95_ttft_s canary 2.5 <= 2" in r for r in v.reasons)
    # within the tolerance a ratio above the limit passes (0.05 s vs 0.02 s)
    assert judge(side("canary", latency=0.05), side("stable", latency=0.02), T).outcome == "pass"
    # error rate relative to stable: 4 % is under the absolute 5 % but 2+ points above stable's 1 %
    v = judge(side("canary", requests=100, errors=4), side("stable", requests=100, errors=1), T)
    assert v.outcome == "fail" and v.reasons == ["error_rate canary 0.04 <= stable 0.01 + 0.02"]
    # stable without data: relative checks skipped, absolute ones still apply
    v = judge(side("canary"), side("stable", requests=0), T)
    assert v.outcome == "pass" and any("relative checks skipped" in c.detail for c in v.checks)
    # a canary target Prometheus cannot scrape fails at once
    down = side("canary")
    down.up = False
    assert judge(down, side("stable"), T).outcome == "fail"
    assert judge(*NO_DATA, T).outcome == "no_data"


def test_thresholds_from_config_name_the_key():
    from omegaconf import OmegaConf

    from modelchain.core.config import ServeConfig

    serve = OmegaConf.merge(OmegaConf.structured(ServeConfig), {
        "max_error_rate": 0.01, "max_p95_latency_s": 2, "max_p95_ttft_s": 1,
        "canary": {"max_error_rate_increase": 0.01, "max_latency_ratio": 0.5, "max_ttft_ratio": 1.5,
                   "latency_tolerance_s": 0.2, "min_requests": 5}})
    with pytest.raises(ValueError, match="serve.canary.max_latency_ratio"):
        Thresholds.from_serve(serve)

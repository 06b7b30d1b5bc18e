"""Every crash point of an adapter-level rollout recovers: a controller killed at each point, then
a fresh one run over the same state, ends consistent (traffic, loaded adapters, aliases, outcome).

The backend is the real LocalAdapterBackend; its stack is a pool in memory written by hand
(what vLLM lists and the router's targets and weights), which keeps its state across the two
runs as a pool on the cluster does. The registry is real (MLflow on sqlite, real adapter
folders with manifests and digests). The analysis is scripted, the controller is the real one.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelchain.core import registry
from modelchain.core.config import compose, group_json, load_group
from modelchain.serving.backend import Rollout
from modelchain.serving.controller import OUTCOME_TAG, MlflowRegistryHooks, run_canary
from modelchain.serving.local_adapter import LocalAdapterBackend
from modelchain.serving.router import InMemoryRouter
from tests.registry_support import experiment_id, gate_run, make_adapter, mlflow_client, sqlite_uri, template_db  # noqa: F401
from tests.unit.test_canary_controller import BROKEN, HEALTHY, T, ScriptedAnalysis

MODEL = "crash-drill"
PUBLIC = "support"
STEPS = [25, 50, 100]


class Crash(BaseException):
    """The controller's process dies here (nothing catches it, as nothing catches SIGKILL)."""


class MemoryRouter(InMemoryRouter):
    def __init__(self):
        super().__init__()
        self.targets = {"stable": f"{PUBLIC}-base", "canary": f"{PUBLIC}-base"}
        self.crash_on_weight = None  # crash right after this canary weight is applied

    def set_weights(self, stable, canary):
        super().set_weights(stable, canary)
        if canary == self.crash_on_weight:
            self.crash_on_weight = None
            raise Crash(f"after the weight change to {canary} %")

    def route(self, stable_model, canary_model, stable, canary):
        self.targets = {"stable": stable_model, "canary": canary_model}
        InMemoryRouter.set_weights(self, stable, canary)


class MemoryPool:
    """What the vLLM server holds, and the router in front of it."""

    def __init__(self, workdir: Path):
        self.spec = SimpleNamespace(base_model=Path("tiny-llama"), workdir=workdir)  # make_adapter's base
        self.router = MemoryRouter()
        self.loaded: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.crash_after_loading = None

    def listed(self):
        return {f"{PUBLIC}-base": None, **self.loaded}

    def load(self, name, folder):
        self.loaded.setdefault(name, str(folder))
        if name == self.crash_after_loading:
            self.crash_after_loading = None
            raise Crash(f"after loading {name}")
        return 0.0

    def unload(self, name):
        self.loaded.pop(name, None)

    def answers(self, name):
        return name in self.listed()


class CrashingAnalysis(ScriptedAnalysis):
    def analyse(self, canary_window_s, stable_window_s, thresholds):
        if self.script and isinstance(self.script[0], Crash):
            raise self.script.pop(0)
        return super().analyse(canary_window_s, stable_window_s, thresholds)


class CrashingHooks(MlflowRegistryHooks):
    crash_after_promote = False

    def promote(self):
        result = super().promote()
        if self.crash_after_promote:
            self.crash_after_promote = False
            raise Crash("after the alias move")
        return result


@pytest.fixture()
def world(tmp_path, mlflow_client, experiment_id, sqlite_uri):  # noqa: F811
    for version in (1, 2):
        adapter = make_adapter(tmp_path / f"adapter{version}", seed=version)
        registry.register_adapter(mlflow_client, gate_run(mlflow_client, experiment_id), adapter, model_name=MODEL, tags={})
    registry.promote(mlflow_client, MODEL, "1")
    cfg = compose("finetune", [f"cluster.workdir={tmp_path}", f"cluster.mlflow.tracking_uri={sqlite_uri}",
                               f"serve.served_model_name={PUBLIC}", "serve.canary.drain_s=0",
                               f"serve.canary_steps=[{','.join(map(str, STEPS))}]"])
    serve, cluster = load_group("serve", group_json(cfg, "serve")), load_group("cluster", group_json(cfg, "cluster"))
    return SimpleNamespace(client=mlflow_client, pool=MemoryPool(tmp_path / "stack"), serve=serve, cluster=cluster,
                           root=tmp_path)


def run_once(world, script, *, crash=None):
    """One controller run as the canary step does it: deploy, then the controller. Returns its result."""
    hooks = CrashingHooks(world.client, MODEL, "2")
    if crash == "after the alias move":
        hooks.crash_after_promote = True
    if crash == "after the load":
        world.pool.crash_after_loading = f"{PUBLIC}-v2"
    if crash == "after a weight change":
        world.pool.router.crash_on_weight = STEPS[1]
    analysis = CrashingAnalysis(*script)
    if crash == "mid-step":
        analysis.script.insert(1, Crash("mid-step"))
    backend = LocalAdapterBackend.on_stack(world.serve, world.cluster, world.pool)
    if crash == "mid-rollback":
        def scale_down_then_die():
            raise Crash("mid-rollback: traffic moved back, the candidate still loaded")
        scale_down = scale_down_then_die
    else:
        scale_down = backend.scale_down_canary
    backend.deploy(Rollout.from_aliases(MODEL, "2", hooks.aliases()))
    return run_canary(backend.router, analysis, hooks, STEPS, 0.0, T, world.root / "rollout.json",
                      scale_down_canary=scale_down, promote_serving=backend.promote_serving, sleep=lambda s: None)


def state(world):
    pool = world.pool
    return {
        "weights": pool.router.weights(),
        "targets": dict(pool.router.targets),
        "loaded": sorted(pool.loaded),
        "champion": registry.aliases(world.client.get_registered_model(MODEL)).get("champion"),
        "outcome": world.client.get_model_version(MODEL, "2").tags.get(OUTCOME_TAG),
    }


PROMOTED = {"weights": {"stable": 100, "canary": 0}, "targets": {"stable": f"{PUBLIC}-v2", "canary": f"{PUBLIC}-v1"},
            "loaded": [f"{PUBLIC}-v2"], "champion": "2", "outcome": "promoted"}
ROLLED_BACK = {"weights": {"stable": 100, "canary": 0}, "targets": {"stable": f"{PUBLIC}-v1", "canary": f"{PUBLIC}-v2"},
               "loaded": [f"{PUBLIC}-v1"], "champion": "1", "outcome": "rolled_back"}


def test_an_uninterrupted_rollout_ends_in_the_states_the_crash_runs_must_reach(world):
    assert run_once(world, [HEALTHY] * 3).outcome == "promoted"
    assert state(world) == PROMOTED


@pytest.mark.parametrize("crash", ["after the load", "mid-step", "after a weight change", "after the alias move"])
def test_a_controller_killed_during_a_healthy_rollout_is_finished_by_the_next_run(world, crash):
    with pytest.raises(Crash):
        run_once(world, [HEALTHY] * 3, crash=crash)
    assert state(world) != PROMOTED  # it did die half way
    result = run_once(world, [HEALTHY] * 3)
    assert result.outcome == "promoted", result.reason
    assert state(world) == PROMOTED
    # the second run resumed where the first stopped, it did not analyse the passed steps again
    report = json.loads(Path(result.report_path).read_text())
    if crash in ("mid-step", "after a weight change"):
        assert report["events"][1]["kind"] == "resume"


def test_a_controller_killed_mid_rollback_is_finished_by_the_next_run_not_reversed(world):
    with pytest.raises(Crash):
        run_once(world, [BROKEN], crash="mid-rollback")
    half = state(world)
    assert half["outcome"] == "rolled_back"  # the decision was recorded before it acted
    assert half["weights"] == {"stable": 100, "canary": 0} and f"{PUBLIC}-v2" in half["loaded"]
    result = run_once(world, [HEALTHY] * 3)  # the candidate would now look healthy: it is not retried
    assert result.outcome == "rolled_back" and result.reason == "rolled back by an earlier run"
    assert state(world) == ROLLED_BACK


def test_a_rollback_records_its_outcome_before_it_moves_traffic(world):
    order = []
    router = world.pool.router
    original = router.set_weights

    def watched(stable, canary):
        order.append(("weights", stable, canary, world.client.get_model_version(MODEL, "2").tags.get(OUTCOME_TAG)))
        original(stable, canary)

    router.set_weights = watched
    assert run_once(world, [BROKEN]).outcome == "rolled_back"
    assert order[-1] == ("weights", 100, 0, "rolled_back")
    assert state(world) == ROLLED_BACK

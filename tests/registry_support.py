"""Test support for the registry: a tiny adapter, gate-like runs, and a fast sqlite registry.

Creating an MLflow sqlite database runs every migration (10 s or more on a busy machine), so
one template database is made per session and each test gets a copy. Test modules import
the fixtures they use from here.
"""

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from modelchain.core import registry

EXPERIMENT = "registry-tests"


def write_safetensors(path: Path, n_values: int, seed: int = 0) -> Path:
    """A valid safetensors file holding one float32 tensor of random bytes."""
    import random

    data = random.Random(seed).randbytes(n_values * 4)
    header = json.dumps({"lora_A.weight": {"dtype": "F32", "shape": [n_values], "data_offsets": [0, len(data)]}})
    header_bytes = header.encode() + b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)
    return path


def make_adapter(folder: Path, n_values: int = 2048, seed: int = 0, *, manifest: bool = True) -> Path:
    """A folder peft and vLLM would recognise: adapter_config.json + adapter_model.safetensors.

    With its manifest, as the finetune step writes it (registration requires one).
    """
    from modelchain.core.artifacts import write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
              "base_model_name_or_path": "tiny-llama", "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    write_safetensors(folder / "adapter_model.safetensors", n_values, seed)
    if manifest:
        write_manifest(folder)
    return folder


LINEAGE = {
    "lineage.dataset_uri": "/data/tickets.jsonl",
    "lineage.dataset_name": "support_tickets",
    "lineage.base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "lineage.base_model_revision": "main",
    "lineage.training_image": "local",
    "lineage.pytorchjob": "local",
    "lineage.kfp_run_id": "kfp-run-1",
    "lineage.git_commit": "0123456789abcdef",
    "lineage.cluster": "local",
    "lineage.split.train.sha256": "a" * 64,
    "lineage.split.train.rows": "96",
}


def gate_run(client, experiment_id: str, decision: str = "passed") -> str:
    """An MLflow run shaped like the gate's: lineage and gate tags, eval metrics."""
    return registry.log_run(
        client,
        experiment_id,
        run_name="finetune-test",
        params={"lora.rank": 8, "max_steps": 3},
        metrics={"challenger.exact_match": 0.8, "base.exact_match": 0.1, "eval.n_examples": 40},
        tags={**LINEAGE, "gate.decision": decision, "gate.reasons": "PASS floor.exact_match: 0.800 vs floor 0.500"},
    )


_TEMPLATE: dict[str, Path] = {}


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """An MLflow sqlite database with every migration applied, made once per session.

    Each test module that imports this fixture gets its own session-scoped definition, so
    the database itself is remembered here.
    """
    if "path" not in _TEMPLATE:
        path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
        registry.client(f"sqlite:///{path}").search_experiments()
        _TEMPLATE["path"] = path
    return _TEMPLATE["path"]


@pytest.fixture
def sqlite_uri(tmp_path, template_db) -> str:
    """A fresh registry for one test (a copy of the template database)."""
    shutil.copy(template_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def mlflow_client(sqlite_uri):
    return registry.client(sqlite_uri)


@pytest.fixture
def experiment_id(mlflow_client, tmp_path) -> str:
    return registry.ensure_experiment(mlflow_client, EXPERIMENT, str(tmp_path / "mlartifacts"))


def snapshot(client, name: str) -> dict:
    """What a test compares to show the registry was left as it was."""
    models = {m.name: registry.aliases(m) for m in client.search_registered_models()}
    versions = sorted((v.name, str(v.version)) for v in client.search_model_versions(f"name='{name}'"))
    return {"models": models, "versions": versions}


def env_without(*keys: str) -> dict:
    return {k: v for k, v in os.environ.items() if k not in keys}


def check_invariants(client, name: str, registered: dict[str, str]) -> dict[str, str]:
    """What must hold after any interleaving of register, promote and rollback; returns the aliases.

    `registered` maps each gate run that was registered to the version it got.
    """
    versions = {str(v.version): v for v in client.search_model_versions(f"name='{name}'")}
    for run_id, version in registered.items():  # no version lost, each one is its run's
        assert versions[version].run_id == run_id
    assert len({v.run_id for v in versions.values()}) == len(versions), "a run was registered twice"
    aliases = registry.aliases(client.get_registered_model(name))
    for alias, version in aliases.items():  # no alias on a version whose gate failed
        assert versions[version].tags.get("gate.decision") == "passed", (alias, version)
    passed = [v for v, mv in versions.items() if mv.tags.get("gate.decision") == "passed"]
    assert aliases.get("challenger") == max(passed, key=int)
    if "previous" in aliases:
        assert "champion" in aliases and aliases["previous"] != aliases["champion"]
    assert client.search_model_versions(f"name='{name}.lock'") == [], "a lock ticket was left behind"
    return aliases


class SlowClient:
    """An MlflowClient whose every call returns after a short random delay, as over a network.

    Without it, threads on a local sqlite file rarely interleave between a read and the
    write that depends on it; with it, a missing lock shows up as broken invariants.
    """

    def __init__(self, client, max_delay_s: float = 0.01, seed: int = 0):
        import random

        self._client, self._max_delay_s, self._rng = client, max_delay_s, random.Random(seed)

    def __getattr__(self, name):
        import time

        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            result = attr(*args, **kwargs)
            time.sleep(self._rng.random() * self._max_delay_s)
            return result

        return call


def check_history(client, name: str, changes: int) -> list[dict]:
    """The alias history chains (each move starts where the last ended) and lost no move."""
    model = client.get_registered_model(name)
    events = registry.alias_history(model)
    for earlier, later in zip(events, events[1:]):
        assert later["before"] == earlier["after"], (earlier, later)
    tracked = {a: v for a, v in registry.aliases(model).items() if a in registry.TRACKED_ALIASES}
    assert events and events[-1]["after"] == tracked
    assert len([e for e in events if e["op"] in ("promote", "rollback")]) == changes
    return events


def race_worker(tracking_uri: str, name: str, role: str, arg: str, ready: str, go: str, adapter: str,
                max_delay_s: str = "0") -> None:
    """One racing process (see the integration tests): waits for `go`, acts, prints JSON results.

    role "register": register the comma-separated runs in `arg`; "promote": six promotions of
    versions drawn (seed `arg`) from the live list; "rollback": four rollbacks. With
    `max_delay_s` > 0 every registry call returns after a random delay up to it (SlowClient).
    """
    import random
    import time

    client = registry.client(tracking_uri)
    if float(max_delay_s) > 0:
        client = SlowClient(client, float(max_delay_s), seed=f"{role}:{arg}")
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.02)
    out = {"registered": {}, "changes": 0, "refusals": []}
    rng = random.Random(arg)
    steps = {"register": arg.split(","), "promote": range(6), "rollback": range(4)}[role]
    for step in steps:
        try:
            if role == "register":
                out["registered"][step] = registry.register_adapter(client, step, Path(adapter), model_name=name, tags={})
            elif role == "promote":
                version = rng.choice([str(v.version) for v in client.search_model_versions(f"name='{name}'")])
                out["changes"] += registry.promote(client, name, version)["changed"]
            else:
                out["changes"] += registry.rollback(client, name)["changed"]
        except registry.RegistryError as exc:
            out["refusals"].append(str(exc))
    print(json.dumps(out))


def paused_promote_worker(tracking_uri: str, name: str, version: str, lease_s: str, paused: str, go: str) -> None:
    """A promotion that stops inside the lock (see test_registry_lock_processes), prints what became of it.

    With a lease of `lease_s`, it promotes `version`; right after reading the aliases it will
    move (the last read before its writes) it touches `paused` and waits for `go`: the test
    SIGSTOPs it there. Prints {"result": ...} or {"error": type, "message": ..., "lock_lost": bool}.
    """
    import functools
    import sys
    import time

    from modelchain.core import registry_lock

    registry.registry_lock = functools.partial(registry_lock.registry_lock, lease_s=float(lease_s))

    class PausingClient:
        def __init__(self, client):
            self._client = client

        def __getattr__(self, attr):
            return getattr(self._client, attr)

        def get_registered_model(self, model_name):
            model = self._client.get_registered_model(model_name)
            if sys._getframe(2).f_code.co_name == "promote":  # promote's own read of the aliases
                Path(paused).touch()
                while not Path(go).exists():
                    time.sleep(0.05)
            return model

    try:
        out = {"result": registry.promote(PausingClient(registry.client(tracking_uri)), name, version)}
    except Exception as exc:
        out = {"error": type(exc).__name__, "message": str(exc),
               "lock_lost": isinstance(exc, registry_lock.LockLost)}
    print(json.dumps(out))

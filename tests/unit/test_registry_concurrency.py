"""Racing registrations, promotions and rollbacks (threads, MLflow on sqlite) end consistent.

Every client answers after a short random delay (SlowClient), as a tracking server does, so
reads and the writes that depend on them interleave; without the registry lock this test
fails (a run registered twice, or an alias history that does not chain).
"""

import random
import threading

import pytest

from modelchain.core import registry
from modelchain.core.registry import RegistryError

from ..registry_support import (  # noqa: F401 (fixtures)
    SlowClient,
    check_history,
    check_invariants,
    experiment_id,
    gate_run,
    make_adapter,
    mlflow_client,
    sqlite_uri,
    template_db,
)

NAME = "race"

pytestmark = pytest.mark.slow


def test_concurrent_register_promote_rollback_keep_the_invariants(mlflow_client, sqlite_uri, experiment_id, tmp_path):
    adapter = make_adapter(tmp_path / "adapter")
    runs = [gate_run(mlflow_client, experiment_id) for _ in range(4)]
    registered = {run_id: registry.register_adapter(mlflow_client, run_id, adapter, model_name=NAME, tags={})
                  for run_id in runs[:2]}
    # A version that went around the gate: nothing may ever point an alias at it.
    refused_run = gate_run(mlflow_client, experiment_id, decision="refused")
    refused = mlflow_client.create_model_version(NAME, source="/x", run_id=refused_run, tags={"gate.decision": "refused"})
    candidates = [*registered.values(), str(refused.version)]
    errors, refusals, changes = [], [], []

    def registrar(seed):  # two retries of the same pipeline runs, racing each other
        client = SlowClient(registry.client(sqlite_uri), seed=seed)
        for run_id in runs[2:]:
            version = registry.register_adapter(client, run_id, adapter, model_name=NAME, tags={})
            registered[run_id] = version
            candidates.append(version)

    def promoter(seed):
        client, rng = SlowClient(registry.client(sqlite_uri), seed=seed), random.Random(seed)
        for _ in range(6):
            try:
                changes.append(registry.promote(client, NAME, rng.choice(candidates))["changed"])
            except RegistryError as exc:
                refusals.append(str(exc))

    def rollbacker(seed):
        client = SlowClient(registry.client(sqlite_uri), seed=seed)
        for _ in range(5):
            try:
                changes.append(registry.rollback(client, NAME)["changed"])
            except RegistryError as exc:
                refusals.append(str(exc))

    def thread(fn, seed):
        def run():
            try:
                fn(seed)
            except Exception as exc:  # anything but a refusal fails the test below
                errors.append(exc)

        return threading.Thread(target=run)

    threads = [thread(registrar, 1), thread(registrar, 2), thread(promoter, 3), thread(promoter, 4),
               thread(rollbacker, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert all("gate.decision=refused" in r or "no 'previous' version" in r for r in refusals), refusals
    aliases = check_invariants(mlflow_client, NAME, registered)
    check_history(mlflow_client, NAME, changes=sum(changes))
    assert sorted(registered.values(), key=int) == ["1", "2", "4", "5"]
    assert aliases["challenger"] == "5" and sum(changes) >= 3

"""The registry lock between real processes on one MLflow sqlite registry.

A holder stopped with SIGSTOP past its lease, then resumed, writes nothing and says why; two
processes promoting at once lose no version and no alias move.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelchain.core import registry

from ..registry_support import (  # noqa: F401 (fixtures)
    check_history,
    check_invariants,
    experiment_id,
    gate_run,
    make_adapter,
    mlflow_client,
    sqlite_uri,
    template_db,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]  # `tests` imports from the repository root
LEASE_S = 4.0


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ), cwd=ROOT)


def _wait_for(path: Path, procs: list, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        for proc in procs:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)


def _result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_a_holder_paused_past_its_lease_writes_nothing_after_it_resumes(mlflow_client, sqlite_uri, experiment_id,
                                                                         tmp_path):
    name = "paused"
    adapter = make_adapter(tmp_path / "adapter")
    for _ in range(3):
        registry.register_adapter(mlflow_client, gate_run(mlflow_client, experiment_id), adapter, model_name=name,
                                  tags={})
    registry.promote(mlflow_client, name, "1")
    paused, go = tmp_path / "paused", tmp_path / "go"
    holder = _python("import sys; from tests.registry_support import paused_promote_worker; "
                     "paused_promote_worker(*sys.argv[1:])", sqlite_uri, name, "2", str(LEASE_S), str(paused), str(go))
    _wait_for(paused, [holder])  # it holds the lock and has read champion=1
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        go.touch()  # it would go on now, but it is stopped
        started = time.monotonic()
        contender = _python(
            "import functools, sys; from modelchain.core import registry, registry_lock; "
            "registry.registry_lock = functools.partial(registry_lock.registry_lock, lease_s=float(sys.argv[3])); "
            "print(registry.promote(registry.client(sys.argv[1]), sys.argv[2], '3'))",
            sqlite_uri, name, str(LEASE_S))
        stdout, stderr = contender.communicate(timeout=120)
        waited = time.monotonic() - started
        assert contender.returncode == 0, stderr[-2000:]
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    # The contender outwaited more than one lease of the stopped holder's unchanged heartbeat.
    assert waited > 1.5 * LEASE_S, waited
    after = _result(holder)
    print(f"contender waited {waited:.1f}s; the resumed holder: {after}")
    assert after["error"] == "RegistryLockLost" and after["lock_lost"], after
    assert after["message"].startswith("registry lock of 'paused' lost: ticket ")
    assert after["message"].endswith("; nothing written")
    # Only the contender's move happened: champion 3, previous 1; the history has no promote of 2.
    aliases = check_invariants(mlflow_client, name, {})
    assert (aliases["champion"], aliases["previous"]) == ("3", "1")
    events = check_history(mlflow_client, name, changes=2)
    assert [(e["op"], e["version"]) for e in events if e["op"] == "promote"] == [("promote", "1"), ("promote", "3")]


def test_two_processes_promoting_at_once_lose_no_version_and_no_alias_move(mlflow_client, sqlite_uri,
                                                                            experiment_id, tmp_path):
    name = "race-sqlite"
    adapter = make_adapter(tmp_path / "adapter")
    runs = [gate_run(mlflow_client, experiment_id) for _ in range(5)]
    registered = {r: registry.register_adapter(mlflow_client, r, adapter, model_name=name, tags={}) for r in runs[:3]}
    go = tmp_path / "go"
    # Two promoters, and a registrar so that versions appear while they race.
    roles = [("promote", "1"), ("promote", "2"), ("register", ",".join(runs[3:]))]
    procs = [_python("import sys; from tests.registry_support import race_worker; race_worker(*sys.argv[1:])",
                     sqlite_uri, name, role, arg, str(tmp_path / f"ready-{i}"), str(go), str(adapter), "0.01")
             for i, (role, arg) in enumerate(roles)]
    for i in range(len(roles)):
        _wait_for(tmp_path / f"ready-{i}", procs)
    go.touch()
    results = [_result(proc) for proc in procs]
    for result in results:
        registered.update(result["registered"])
        assert result["refusals"] == [], result["refusals"]
    check_invariants(mlflow_client, name, registered)
    changes = sum(r["changes"] for r in results)
    events = check_history(mlflow_client, name, changes=changes)  # every move recorded once, in a chain
    assert sorted(registered.values(), key=int) == ["1", "2", "3", "4", "5"]
    assert changes >= 2 and len([e for e in events if e["op"] == "promote"]) == changes

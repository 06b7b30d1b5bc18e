"""The registry lock on MLflow's sqlite store: one holder at a time, dead holders expire."""

import threading
import time

import pytest

from modelchain.core import registry
from modelchain.core.registry_lock import LockTimeout, lock_model_name, registry_lock

from ..registry_support import mlflow_client, sqlite_uri, template_db  # noqa: F401 (fixtures)


def test_one_holder_at_a_time_across_threads(sqlite_uri):
    inside, peak, order = [0], [0], []
    guard = threading.Lock()  # protects the counters, not the code under test
    errors = []

    def worker(i):
        client = registry.client(sqlite_uri)
        try:
            for _ in range(2):
                with registry_lock(client, "m", purpose=f"worker {i}"):
                    with guard:
                        inside[0] += 1
                        peak[0] = max(peak[0], inside[0])
                    time.sleep(0.02)
                    order.append(i)
                    with guard:
                        inside[0] -= 1
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert peak[0] == 1 and len(order) == 8
    # Every ticket was released.
    client = registry.client(sqlite_uri)
    assert client.search_model_versions(f"name='{lock_model_name('m')}'") == []


def test_a_dead_holders_ticket_expires(mlflow_client):
    with registry_lock(mlflow_client, "m", purpose="setup"):
        pass
    # A holder that died: its ticket stays, with a lease that has run out.
    mlflow_client.create_model_version(
        lock_model_name("m"), source="modelchain-lock:/ticket",
        tags={"owner": "dead", "purpose": "crashed", "expires_at": f"{time.time() - 1:.3f}"},
    )
    started = time.monotonic()
    with registry_lock(mlflow_client, "m", purpose="next", timeout_s=10):
        pass
    assert time.monotonic() - started < 5
    assert mlflow_client.search_model_versions(f"name='{lock_model_name('m')}'") == []


def test_a_live_holder_makes_others_time_out_naming_it(mlflow_client):
    with registry_lock(mlflow_client, "m", purpose="promote 3"):
        with pytest.raises(LockTimeout, match=r"registry lock of 'm' is held by .* \(promote 3\); gave up after 1s"):
            with registry_lock(mlflow_client, "m", purpose="rollback", timeout_s=1):
                pass

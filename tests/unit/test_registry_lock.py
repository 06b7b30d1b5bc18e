"""The registry lock on MLflow's sqlite store: one holder at a time, dead holders expire."""

import threading
import time

import pytest

from modelchain.core import registry
from modelchain.core.registry_lock import LockLost, LockTimeout, lock_model_name, registry_lock

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


def test_a_dead_holders_ticket_expires_after_one_and_a_half_leases_of_silence(mlflow_client):
    with registry_lock(mlflow_client, "m", purpose="setup"):
        pass
    # A holder that died: its ticket stays and its heartbeat never changes again. Its wall-clock
    # claims (an `expires_at` far ahead, as a host with a fast clock would write) are not trusted.
    mlflow_client.create_model_version(
        lock_model_name("m"), source="modelchain-lock:/ticket",
        tags={"owner": "dead", "purpose": "crashed", "lease_s": "1", "expires_at": f"{time.time() + 3600:.3f}"},
    )
    started = time.monotonic()
    with registry_lock(mlflow_client, "m", purpose="next", timeout_s=10):
        waited = time.monotonic() - started
    assert 1.5 <= waited < 6, waited  # more than one lease of the dead ticket, as this process measured it
    assert mlflow_client.search_model_versions(f"name='{lock_model_name('m')}'") == []


def test_the_heartbeat_keeps_a_holder_longer_than_its_lease(sqlite_uri):
    """A holder working for three leases keeps the lock: its heartbeat shows it alive."""
    holder_client, other_client = registry.client(sqlite_uri), registry.client(sqlite_uri)
    released, acquired = [], []

    with registry_lock(holder_client, "m", purpose="long work", lease_s=2) as lease:
        def contender():
            with registry_lock(other_client, "m", purpose="waits", lease_s=2, timeout_s=30):
                acquired.append(time.monotonic())

        thread = threading.Thread(target=contender)
        thread.start()
        time.sleep(5.5)  # well past the 3 s a contender waits on a silent ticket
        lease.check()  # still ours
        released.append(time.monotonic())
    thread.join(30)
    assert acquired and acquired[0] >= released[0]


def test_a_removed_ticket_fails_the_fencing_check(mlflow_client):
    with pytest.raises(LockLost, match=r"^registry lock of 'm' lost: ticket 1 of m.lock: another contender removed it, "
                                       r"taking its lease as expired; nothing written$"):
        with registry_lock(mlflow_client, "m", purpose="promote 2") as lease:
            mlflow_client.delete_model_version(lock_model_name("m"), lease.ticket)
            lease.check()


def test_a_lease_that_could_not_be_renewed_is_lost_for_good(mlflow_client, monkeypatch):
    """Renewals that fail (a registry that does not answer) let the lease run out; the holder
    then stops, even once the registry answers again."""
    from mlflow.exceptions import MlflowException

    with pytest.raises(LockLost, match=r"its lease of 1s ran out unrenewed for 1\.\d+s \(process paused or registry "
                                       r"unreachable\)"):
        with registry_lock(mlflow_client, "m", purpose="promote 2", lease_s=1) as lease:
            real = mlflow_client.update_model_version
            monkeypatch.setattr(mlflow_client, "update_model_version",
                                lambda *a, **k: (_ for _ in ()).throw(MlflowException("connection refused")))
            time.sleep(1.2)
            monkeypatch.setattr(mlflow_client, "update_model_version", real)
            lease.renew()  # a lapsed lease is not revived
            lease.check()


def test_a_live_holder_makes_others_time_out_naming_it(mlflow_client):
    with registry_lock(mlflow_client, "m", purpose="promote 3"):
        with pytest.raises(LockTimeout, match=r"registry lock of 'm' is held by .* \(promote 3\); gave up after 1s"):
            with registry_lock(mlflow_client, "m", purpose="rollback", timeout_s=1):
                pass

"""A lease lock per registered model, built from the one atomic step MLflow offers.

MLflow has no transactions and no compare-and-set on tags or aliases, so two writers that
read-then-write aliases can interleave. What it does guarantee, on sqlite and behind a
tracking server alike: the versions of a registered model are numbered atomically and a
number is never reused (a deleted version stays as a tombstone).

So the lock of model NAME is a companion registered model `NAME.lock` whose versions are
tickets. To acquire, create a ticket; the lowest live ticket holds the lock; to release,
delete it. Since numbers are unique, nobody can delete a newer owner's ticket by mistake.

Leases, without trusting anyone's wall clock:

- heartbeat: from creation to release a thread renews the ticket every `lease_s / 3`
  (`update_model_version`, which changes its description and last-updated time);
- expiry: a contender takes a lower ticket as dead (and deletes it) only when IT has seen
  that ticket's heartbeat unchanged for `EXPIRY_FACTOR` (1.5) times the ticket's lease,
  measured on its own monotonic clock; no host's timestamp is compared with another's;
- fencing: the holder counts its lease from the start of its last renewal that went through
  (monotonic). Once that is older than the lease (the process was paused, or could not reach
  the registry) the lock is lost for good: renewals stop, and `Lease.check()`, which the
  registry calls right before every alias or tag write, raises LockLost; so does a ticket
  that has vanished. A renewal that took longer than half a lease does not count either.

Why that is enough: a contender can delete a ticket no earlier than 1.5 leases after its
last renewal was written, and the holder stops trusting it one lease after that renewal
began; between a passing check and the write there is half a lease (15 s by default). The
caveat that remains (MLflow cannot compare-and-set) is a holder paused longer than that in
the instant between its check and its write.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from typing import Iterator

LOCK_SUFFIX = ".lock"
TICKET_SOURCE = "modelchain-lock:/ticket"  # a URI scheme the tracking server accepts as a source
DEFAULT_LEASE_S = 30.0
EXPIRY_FACTOR = 1.5  # contenders wait this many leases of unchanged heartbeat; must stay above 1
DEFAULT_TIMEOUT_S = 120.0  # longer than EXPIRY_FACTOR leases, so a dead holder is outwaited


class LockTimeout(RuntimeError):
    """The lock stayed held by another owner for longer than the timeout."""


class LockLost(RuntimeError):
    """We may no longer hold the lock: our ticket vanished or our lease ran out unrenewed."""


def lock_model_name(model_name: str) -> str:
    return f"{model_name}{LOCK_SUFFIX}"


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


def _ensure_lock_model(client, lock_name: str, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            lock_name,
            tags={"modelchain.kind": "lock", "modelchain.lock_for": model_name},
            description=f"Registry lock of {model_name!r} (modelchain). Its versions are lock tickets, not models.",
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _live_tickets(client, lock_name: str) -> list:
    tickets = client.search_model_versions(f"name='{lock_name}'")
    return sorted(tickets, key=lambda t: int(t.version))


def _lease_of(ticket, default: float) -> float:
    """The lease its owner promised to renew within (its `lease_s` tag)."""
    try:
        lease = float(ticket.tags.get("lease_s", ""))
    except ValueError:
        return default
    return lease if lease > 0 else default


def _heartbeat(ticket) -> tuple:
    """What changes at every renewal: the description (a counter) and the last-updated time."""
    return (ticket.description, ticket.last_updated_timestamp)


def _delete_ticket(client, lock_name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_model_version(lock_name, version)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # someone else removed it first
            raise


class Lease:
    """Our ticket and its heartbeat; `check()` before every write made under the lock."""

    def __init__(self, client, model_name: str, ticket: str, lease_s: float, owner: str, confirmed: float):
        self.client, self.model_name, self.ticket = client, model_name, ticket
        self.lock_name = lock_model_name(model_name)
        self.lease_s, self.owner = lease_s, owner
        self._confirmed = confirmed  # monotonic start of the last renewal that went through
        self._beats = 0
        self._lost: str | None = None
        self._guard = threading.Lock()  # one renewal at a time (heartbeat thread and acquire)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease {self.lock_name}/{ticket}", daemon=True)

    def __str__(self) -> str:
        return self.ticket

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why

    def _lapsed(self, now: float) -> bool:
        if self._lost is None and now - self._confirmed >= self.lease_s:
            self._lose(f"its lease of {self.lease_s:g}s ran out unrenewed for {now - self._confirmed:.1f}s "
                       f"(process paused or registry unreachable), so another owner may hold the lock")
        return self._lost is not None

    def renew(self) -> None:
        """One heartbeat; marks the lease lost (for good) rather than revive a lapsed one."""
        from mlflow.exceptions import MlflowException

        with self._guard:
            started = time.monotonic()
            if self._lapsed(started):
                return
            self._beats += 1
            try:
                self.client.update_model_version(self.lock_name, self.ticket,
                                                 description=f"heartbeat {self._beats} of {self.owner}")
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    self._lose("another contender removed it, taking its lease as expired")
                return  # anything else (a network error): the next beat tries again, until the lease runs out
            except Exception:
                return
            took = time.monotonic() - started
            if took >= self.lease_s / 2:  # a contender may have judged us dead before it landed
                self._lose(f"a renewal took {took:.1f}s, over half its lease of {self.lease_s:g}s")
            else:
                self._confirmed = started

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            self.renew()
            if self._lost is not None:
                return

    def start(self) -> "Lease":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.lease_s)  # a renewal stuck on the network must not hold up release

    def check(self) -> None:
        """Raise LockLost unless we still hold the lock: call it right before each write.

        Asks the registry that our ticket still exists, then that our lease is still within
        its term on our own monotonic clock (last, so nothing slow runs between it and the write).
        """
        from mlflow.exceptions import MlflowException

        if self._lost is None:
            try:
                self.client.get_model_version(self.lock_name, self.ticket)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                self._lose("another contender removed it, taking its lease as expired")
        if self._lapsed(time.monotonic()):
            raise LockLost(f"registry lock of {self.model_name!r} lost: ticket {self.ticket} of {self.lock_name}: "
                           f"{self._lost}; nothing written")


@contextlib.contextmanager
def registry_lock(
    client,
    model_name: str,
    *,
    purpose: str,
    lease_s: float = DEFAULT_LEASE_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 0.05,
) -> Iterator[Lease]:
    """Hold the lock of `model_name` for the block; yields our Lease (its `ticket` number).

    Writes in the block should each be preceded by `lease.check()` (the fencing check).
    """
    lock_name = lock_model_name(model_name)
    _ensure_lock_model(client, lock_name, model_name)
    owner = _owner()
    started = time.monotonic()
    created = client.create_model_version(
        lock_name,
        source=TICKET_SOURCE,
        tags={"owner": owner, "purpose": purpose[:500], "lease_s": f"{lease_s:g}"},
        description=f"heartbeat 0 of {owner}",
        await_creation_for=0,  # a ticket is ready at once; skip the client's wait (and its log line)
    )
    lease = Lease(client, model_name, str(created.version), lease_s, owner, confirmed=started).start()
    ticket = lease.ticket
    try:
        deadline = time.monotonic() + timeout_s
        delay = poll_s
        seen: dict[str, tuple[tuple, float]] = {}  # ticket -> (heartbeat, when we first saw it)
        while True:
            tickets = _live_tickets(client, lock_name)
            if ticket not in {str(t.version) for t in tickets}:
                lease._lose("another contender removed it while we waited")
            if lease._lapsed(time.monotonic()):
                raise LockLost(f"registry lock of {model_name!r}: ticket {ticket} of {lock_name} lost while "
                               f"waiting: {lease._lost}")
            now = time.monotonic()
            ahead = []
            for other in (t for t in tickets if int(t.version) < int(ticket)):
                version, beat = str(other.version), _heartbeat(other)
                if version not in seen or seen[version][0] != beat:
                    seen[version] = (beat, now)
                if now - seen[version][1] > EXPIRY_FACTOR * _lease_of(other, lease_s):
                    _delete_ticket(client, lock_name, version)  # its owner died or was cut off
                else:
                    ahead.append(other)
            if not ahead:
                break
            if time.monotonic() > deadline:
                holder = ahead[0].tags
                raise LockTimeout(
                    f"registry lock of {model_name!r} is held by {holder.get('owner', '?')} "
                    f"({holder.get('purpose', '?')}); gave up after {timeout_s:.0f}s"
                )
            # Jittered backoff: contenders that woke together do not poll in lockstep.
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.5, 1.0)
        lease.renew()  # the block starts with a full lease
        lease.check()
        yield lease
    finally:
        lease.stop()
        # Best effort: if this fails (server gone), the heartbeat has stopped and others move on.
        with contextlib.suppress(Exception):
            _delete_ticket(client, lock_name, ticket)

"""A lease lock per registered model, built from the one atomic step MLflow offers.

MLflow has no transactions and no compare-and-set on tags or aliases, so two writers that
read-then-write aliases can interleave. What it does guarantee, on sqlite and behind a
tracking server alike: the versions of a registered model are numbered atomically and a
number is never reused (a deleted version stays as a tombstone).

So the lock of model NAME is a companion registered model `NAME.lock` whose versions are
tickets. To acquire, create a ticket; the lowest live ticket holds the lock; to release,
delete it. A ticket carries a lease (`expires_at`) that its owner renews while it waits or
works; a contender deletes a lower ticket whose lease has run out (its owner died), and since
numbers are unique it can never delete a newer owner's ticket by mistake.

The lease is the usual caveat: an owner paused for longer than `lease_s` may lose the lock.
Registry operations take well under a second; the default lease is two minutes.
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
DEFAULT_LEASE_S = 120.0
DEFAULT_TIMEOUT_S = 120.0


class LockTimeout(RuntimeError):
    """The lock stayed held by another owner for longer than the timeout."""


class LockLost(RuntimeError):
    """Our ticket vanished (another contender took our lease as expired)."""


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


def _expires_at(ticket) -> float:
    try:
        return float(ticket.tags.get("expires_at", "0"))
    except ValueError:
        return 0.0


def _delete_ticket(client, lock_name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_model_version(lock_name, version)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # someone else removed it first
            raise


@contextlib.contextmanager
def registry_lock(
    client,
    model_name: str,
    *,
    purpose: str,
    lease_s: float = DEFAULT_LEASE_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 0.05,
) -> Iterator[str]:
    """Hold the lock of `model_name` for the block; yields our ticket number."""
    lock_name = lock_model_name(model_name)
    _ensure_lock_model(client, lock_name, model_name)
    owner = _owner()
    expires = time.time() + lease_s
    created = client.create_model_version(
        lock_name,
        source=TICKET_SOURCE,
        tags={"owner": owner, "purpose": purpose[:500], "expires_at": f"{expires:.3f}"},
        await_creation_for=0,  # a ticket is ready at once; skip the client's wait (and its log line)
    )
    ticket = str(created.version)
    try:
        deadline = time.monotonic() + timeout_s
        delay = poll_s
        while True:
            now = time.time()
            if expires - now < lease_s / 2:  # renew while waiting, so nobody takes us for dead
                expires = now + lease_s
                client.set_model_version_tag(lock_name, ticket, "expires_at", f"{expires:.3f}")
            tickets = _live_tickets(client, lock_name)
            if ticket not in {str(t.version) for t in tickets}:
                raise LockLost(f"{lock_name}: ticket {ticket} was removed while waiting (lease {lease_s:.0f}s)")
            ahead = [t for t in tickets if int(t.version) < int(ticket)]
            for stale in [t for t in ahead if _expires_at(t) < now]:
                _delete_ticket(client, lock_name, stale.version)
            if not [t for t in ahead if _expires_at(t) >= now]:
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
        # Renew once more: the block gets a full lease from now.
        expires = time.time() + lease_s
        client.set_model_version_tag(lock_name, ticket, "expires_at", f"{expires:.3f}")
        yield ticket
    finally:
        # Best effort: if this fails (server gone), the lease runs out and others move on.
        with contextlib.suppress(Exception):
            _delete_ticket(client, lock_name, ticket)

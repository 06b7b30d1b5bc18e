"""One ingest at a time per collection: a lock beside a Milvus Lite folder, or tickets in Milvus.

Two rag_ingest runs writing one collection at once would each plan against rows the other
is changing. Each run holds the collection's ingest lock while it plans and while it writes;
a second run waits up to ``rag.lock.wait_s`` and then stops with a message naming the
holder, having written nothing.

- Milvus Lite (``FileLock``): a ``.lock`` file beside the ``.db`` folder, held with
  ``flock``. The kernel drops it when its holder exits, however it exits, so a crashed run
  never leaves a stale lock. Milvus Lite serves a folder to one process at a time anyway, so
  the lock is per folder, and the holder closes its store before letting the next run in.
- A Milvus server (``TicketLock``): Milvus has no compare-and-set, but reads at Strong
  consistency see every earlier write. A contender inserts a ticket row into a small lock
  collection, then lists the live tickets of its lock: if its own is the only one, it holds
  the lock (any later contender will see it and back off); otherwise it deletes its ticket,
  waits a jittered moment and tries again. A ticket carries a lease that its holder renews
  while it works; a ticket whose lease ran out (its holder died) is deleted by the next
  contender.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

log = logging.getLogger(__name__)

LOCK_COLLECTION = "modelchain_ingest_locks"


class IngestBusy(RuntimeError):
    """Another ingest held the collection's lock for longer than this run would wait."""


def _owner(purpose: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose[:500], "since": time.time()}


def _describe(holder: dict[str, Any]) -> str:
    since = holder.get("since")
    started = time.strftime("%H:%M:%S UTC", time.gmtime(float(since))) if since else "?"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, {holder.get('purpose', '?')}, "
            f"since {started}")


def _busy(what: str, holder: dict[str, Any], wait_s: float) -> IngestBusy:
    waited = f"after waiting {wait_s:.0f} s" if wait_s > 0 else "without waiting"
    return IngestBusy(
        f"{what} is being written by another ingest ({_describe(holder)}); stopped {waited}, nothing written: "
        f"run again when it has finished, or wait longer (rag.lock.wait_s)"
    )


class FileLock:
    """An exclusive ``flock`` on ``path``; the file keeps the holder's pid, host and purpose."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.what = what

    @contextlib.contextmanager
    def hold(self, purpose: str, wait_s: float, on_release: Optional[Callable[[], None]] = None) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait_s
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = self._holder()
                    if time.monotonic() >= deadline:
                        raise _busy(self.what, holder, wait_s) from None
                    if not told:
                        log.warning("%s is being written by another ingest (%s); waiting up to %.0f s",
                                    self.what, _describe(holder), wait_s)
                        told = True
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_owner(purpose)).encode(), 0)
            try:
                yield
            finally:
                if on_release is not None:
                    on_release()
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}


class TicketLock:
    """A lease lock named ``name`` kept as ticket rows in ``LOCK_COLLECTION`` (see the module doc)."""

    def __init__(self, connect: Callable[[], Any], name: str, what: str, lease_s: float = 120.0) -> None:
        self.connect = connect  # a new MilvusClient: the lock renews from its own thread
        self.name = name
        self.what = what
        self.lease_s = lease_s

    def _ensure_collection(self, client: Any) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("ticket", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("name", DataType.VARCHAR, max_length=512)
        schema.add_field("holder", DataType.VARCHAR, max_length=2048)
        schema.add_field("expires_at", DataType.DOUBLE)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires a vector field
        index = MilvusClient.prepare_index_params()
        index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="L2")
        # Contenders may create it at the same moment: whoever loses retries until it is there.
        for attempt in range(100):
            try:
                if not client.has_collection(LOCK_COLLECTION):
                    client.create_collection(LOCK_COLLECTION, schema=schema, index_params=index,
                                             consistency_level="Strong")
                client.load_collection(LOCK_COLLECTION)
                return
            except Exception:  # noqa: BLE001 - created or being created by another contender
                if attempt == 99:
                    raise
                time.sleep(0.05 + random.random() * 0.1)

    def _filter(self) -> str:
        return f"name == {json.dumps(self.name)}"

    def _write(self, client: Any, ticket: str, holder: dict[str, Any]) -> None:
        client.upsert(LOCK_COLLECTION, [{
            "ticket": ticket, "name": self.name, "holder": json.dumps(holder)[:2048],
            "expires_at": time.time() + self.lease_s, "vector": [0.0, 0.0],
        }])

    def _live(self, client: Any) -> list[dict[str, Any]]:
        rows = client.query(LOCK_COLLECTION, filter=self._filter(), output_fields=["ticket", "holder", "expires_at"],
                            consistency_level="Strong")
        return [r for r in rows if float(r["expires_at"]) >= time.time()]

    @contextlib.contextmanager
    def hold(self, purpose: str, wait_s: float) -> Iterator[None]:
        client = self.connect()
        ticket = uuid.uuid4().hex
        holder = _owner(purpose)
        stop = threading.Event()
        renewer: Optional[threading.Thread] = None
        try:
            self._ensure_collection(client)
            deadline = time.monotonic() + wait_s
            delay, told = 0.1, False
            while True:
                # A ticket whose lease ran out belongs to a run that died: remove it.
                client.delete(LOCK_COLLECTION, filter=f"{self._filter()} and expires_at < {time.time():.3f}")
                self._write(client, ticket, holder)
                others = [r for r in self._live(client) if r["ticket"] != ticket]
                if not others:
                    break
                client.delete(LOCK_COLLECTION, ids=[ticket])
                first = json.loads(others[0]["holder"] or "{}")
                if time.monotonic() >= deadline:
                    raise _busy(self.what, first, wait_s)
                if not told:
                    log.warning("%s is being written by another ingest (%s); waiting up to %.0f s",
                                self.what, _describe(first), wait_s)
                    told = True
                time.sleep(delay * (0.5 + random.random()))  # jitter: contenders do not retry in step
                delay = min(delay * 1.5, 2.0)

            def renew() -> None:
                renew_client = self.connect()
                try:
                    while not stop.wait(self.lease_s / 3):
                        self._write(renew_client, ticket, holder)
                finally:
                    renew_client.close()

            renewer = threading.Thread(target=renew, name=f"lock-renew-{self.name}", daemon=True)
            renewer.start()
            yield
        finally:
            stop.set()
            if renewer is not None:
                renewer.join()
            # Best effort: if this fails (server gone), the lease runs out and others move on.
            with contextlib.suppress(Exception):
                client.delete(LOCK_COLLECTION, ids=[ticket])
            client.close()

"""Client traffic during a canary: eval prompts replayed through the router, every answer counted.

Each request goes to the router (nginx), which adds `X-Served-By` (the upstream address or
addresses, when a request was retried on the other side), so the report can say how many
requests each side answered and how many a side failed and the other one rescued.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelchain.core.io import read_jsonl


def prompts_from_split(path: str | Path, limit: int = 200) -> list[list[dict[str, str]]]:
    """The chat prompts of a split file (rows with `messages`; the last one is the answer)."""
    rows = read_jsonl(path)[:limit]
    prompts = [row["messages"][:-1] for row in rows if row.get("messages") and len(row["messages"]) > 1]
    if not prompts:
        raise ValueError(f"{path}: no rows with messages to replay")
    return prompts


@dataclass
class TrafficStats:
    requests: int = 0
    ok: int = 0
    failed: int = 0
    retried: int = 0  # answered after nginx retried on the other side
    served_by: Counter = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first few, with their time
    latencies_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)

        def pct(q: float):
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

        return {
            "requests": self.requests, "ok": self.ok, "failed": self.failed, "retried": self.retried,
            "served_by": dict(self.served_by), "p50_s": pct(0.5), "p95_s": pct(0.95),
            "failures": self.failures[:20],
        }


class TrafficGenerator:
    """`concurrency` client threads sending chat completions in a loop until `stop()`."""

    def __init__(self, url: str, model: str, prompts: list, concurrency: int = 2, max_tokens: int = 16,
                 timeout_s: float = 120.0):
        self.url = url.rstrip("/") + "/v1/chat/completions"
        self.model = model
        self.prompts = prompts
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.stats = TrafficStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next = 0
        self.t0 = 0.0

    def __enter__(self) -> "TrafficGenerator":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.t0 = time.monotonic()
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"traffic-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)
        self._threads = []
        return self.stats.summary()

    def _prompt(self):
        with self._lock:
            prompt = self.prompts[self._next % len(self.prompts)]
            self._next += 1
        return prompt

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.send(self._prompt())

    def send(self, messages) -> bool:
        payload = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens, "temperature": 0.0}
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        start = time.monotonic()
        status, served_by, error = 0, "", ""
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status = response.status
                served_by = response.headers.get("X-Served-By", "")
                body = json.load(response)
                if not body.get("choices"):
                    error = "answer without choices"
        except urllib.error.HTTPError as exc:
            status, served_by = exc.code, exc.headers.get("X-Served-By", "")
            error = exc.read().decode(errors="replace")[:200]
        except (urllib.error.URLError, OSError, ValueError) as exc:
            error = str(exc)[:200]
        elapsed = time.monotonic() - start
        ok = status == 200 and not error
        with self._lock:
            self.stats.requests += 1
            self.stats.latencies_s.append(elapsed)
            if served_by:
                self.stats.served_by[served_by.split(",")[-1].strip()] += 1
                if "," in served_by:
                    self.stats.retried += 1
            if ok:
                self.stats.ok += 1
            else:
                self.stats.failed += 1
                if len(self.stats.failures) < 20:
                    self.stats.failures.append({"t_s": round(start - self.t0, 3), "status": status,
                                                "served_by": served_by, "error": error})
        return ok

"""Judge calls that can be reproduced and bounded: a content cache, fixed sampling, a token budget.

`JudgeTransport` sits under the judge's OpenAI client (an httpx transport), so it sees every
chat completion whatever library builds it (ragas, instructor):

- it sets `temperature` 0 and `seed` on every request (servers that honour them, vLLM among
  them, then answer the same prompt the same way);
- it answers a request it has seen before from the cache, keyed by the SHA-256 of the URL
  and the request body (prompt, model, every parameter), one JSON file per answer in a
  folder or under an ``s3://`` prefix (`eval.judge.cache_dir`), so re-evaluating unchanged
  answers makes no judge call;
- it counts the tokens the server reports (`usage`) against a `TokenBudget`; once the
  budget is spent, further calls raise `BudgetExhausted` instead of reaching the server.

Only successful answers are cached; a timeout or an HTTP error is tried again next time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelchain.core.io import atomic_write_text


class BudgetExhausted(RuntimeError):
    """The judge's token budget is spent: no further call is made."""


@dataclass
class TokenBudget:
    """Tokens the judge may spend (0 = no limit), what was spent, and what it cost."""

    limit: int = 0
    price_per_1k: float = 0.0
    spent: int = 0
    calls: int = 0  # calls that reached the server
    cached: int = 0  # calls answered from the cache
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def exhausted(self) -> bool:
        return bool(self.limit) and self.spent >= self.limit

    def charge(self, tokens: int) -> None:
        with self._lock:
            self.spent += tokens
            self.calls += 1

    def summary(self) -> dict[str, Any]:
        return {"judge_calls": self.calls, "cached_calls": self.cached, "tokens": self.spent,
                "token_budget": self.limit, "cost": round(self.spent / 1000 * self.price_per_1k, 6),
                "budget_exhausted": self.exhausted}


def request_key(url: str, body: dict) -> str:
    """The cache key of a request: its URL and its body, whatever order the keys came in."""
    return hashlib.sha256(json.dumps({"url": url, "body": body}, sort_keys=True).encode()).hexdigest()


class JudgeTransport(httpx.AsyncBaseTransport):
    """An httpx transport for the judge client: fixed sampling, a disk cache and a token budget.

    ``cache_dir`` (a folder or an ``s3://bucket/prefix/``) None turns the cache off; ``seed``
    None leaves the server's own.
    """

    def __init__(self, budget: TokenBudget, cache_dir: str | Path | None = None, seed: int | None = 0,
                 inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.budget = budget
        self.cache = open_cache(str(cache_dir)) if cache_dir else None
        self.seed = seed
        self._given = inner
        self._inner: httpx.AsyncBaseTransport | None = inner
        self._loop: asyncio.AbstractEventLoop | None = None

    def _transport(self) -> httpx.AsyncBaseTransport:
        # A pooled connection belongs to the event loop that opened it, and each scoring run
        # (asyncio.run) has its own: a keep-alive server's connection from the last run would
        # fail the next run's first call. So each loop gets its own connection pool.
        loop = asyncio.get_running_loop()
        if self._given is None and loop is not self._loop:
            self._inner, self._loop = httpx.AsyncHTTPTransport(), loop
        return self._inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or not request.url.path.endswith("/chat/completions"):
            return await self._transport().handle_async_request(request)
        body = json.loads(request.content or b"{}")
        body["temperature"] = 0.0
        if self.seed is not None:
            body["seed"] = self.seed
        key = request_key(str(request.url), body)
        cached = await asyncio.to_thread(self.cache.get, key) if self.cache is not None else None
        if cached is not None:
            with self.budget._lock:
                self.budget.cached += 1
            return _response(200, cached, request)
        if self.budget.exhausted:
            raise BudgetExhausted(f"judge token budget of {self.budget.limit} spent ({self.budget.spent} used)")
        content = json.dumps(body).encode()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        sent = httpx.Request("POST", request.url, headers=headers, content=content, extensions=request.extensions)
        response = await self._transport().handle_async_request(sent)
        raw = await response.aread()
        await response.aclose()
        if response.status_code != 200:
            return httpx.Response(response.status_code, headers=_plain(response.headers), content=raw, request=request)
        answer = json.loads(raw)
        self.budget.charge(int((answer.get("usage") or {}).get("total_tokens") or 0))
        if self.cache is not None:
            await asyncio.to_thread(self.cache.put, key, answer)
        return _response(200, answer, request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()


class DiskCache:
    """Judge answers as ``<folder>/<key[:2]>/<key>.json``, each written atomically."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text())
        except (OSError, ValueError):  # absent, or a torn file from a killed run: ask again
            return None

    def put(self, key: str, answer: dict) -> None:
        atomic_write_text(self._path(key), json.dumps(answer))


class S3Cache:
    """Judge answers as objects ``<prefix>/<key[:2]>/<key>.json`` under an ``s3://bucket/prefix/``,
    shared by every run and pod that can read the bucket (an object PUT is atomic).

    The cache only saves calls: an object that cannot be read or written is a miss, logged
    once, and the judge is asked.
    """

    def __init__(self, uri: str) -> None:
        from modelchain.core import s3

        self.uri = uri
        self.bucket, self.prefix = s3.split_uri(uri)
        self._client = s3.client()
        self._warned = False

    def _key(self, key: str) -> str:
        return "/".join(part for part in (self.prefix, key[:2], f"{key}.json") if part)

    def get(self, key: str) -> dict | None:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            return json.loads(body)
        except self._client.exceptions.NoSuchKey:
            return None
        except Exception as exc:  # noqa: BLE001 - an unreachable cache must not stop scoring
            self._warn(f"cannot read the judge cache {self.uri}: {exc}")
            return None

    def put(self, key: str, answer: dict) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=json.dumps(answer).encode(),
                                    ContentType="application/json")
        except Exception as exc:  # noqa: BLE001
            self._warn(f"cannot write the judge cache {self.uri}: {exc}")

    def _warn(self, message: str) -> None:
        if not self._warned:
            logging.getLogger(__name__).warning("%s; judging without it", message)
            self._warned = True


def open_cache(location: str) -> DiskCache | S3Cache:
    """The judge cache at ``location``: an ``s3://`` prefix, else a folder."""
    return S3Cache(location) if location.startswith("s3://") else DiskCache(location)


def _plain(headers: httpx.Headers) -> dict[str, str]:
    # The body is handed on decoded, so its encoding and length headers no longer apply.
    return {k: v for k, v in headers.items() if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")}


def _response(status: int, answer: dict, request: httpx.Request) -> httpx.Response:
    return httpx.Response(status, json=answer, request=request)


def estimate_tokens(texts_per_task: list[int], calls_per_task: float = 2.0, overhead: int = 700) -> int:
    """A rough token estimate for a scoring run: each task's text (characters / 4) and a prompt
    overhead (the metric's instructions and examples), times the calls a metric makes."""
    return int(sum((chars // 4 + overhead) * calls_per_task for chars in texts_per_task))

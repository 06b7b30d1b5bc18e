"""Canary analysis: each side's error rate, p95 latency and p95 TTFT from vLLM's own metrics.

Queries go to Prometheus' HTTP API (`/api/v1/query`). The series are vLLM's:
- `http_request_duration_seconds_count{handler, method}` and
  `http_requests_total{handler, method, status}` (prometheus-fastapi-instrumentator inside
  vLLM's OpenAI server; `status` is grouped as 2xx/4xx/5xx): requests of the completion
  endpoints, and those not answered 2xx (errors);
- `vllm:e2e_request_latency_seconds` and `vllm:time_to_first_token_seconds` histograms.
Each side is picked by PromQL label matchers (locally `side="stable"` / `side="canary"`,
labels the stack's Prometheus puts on its scrape targets). The canary is measured over the
step's window; stable over the whole rollout so far, since at the last steps it gets little
or no traffic of its own.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

COMPLETION_HANDLERS = "/v1/completions|/v1/chat/completions"
METRICS = ("error_rate", "p95_latency_s", "p95_ttft_s")


def window_increase(selector: str, window: str) -> str:
    """PromQL for how much each counter series matching `selector` grew over the last `window`.

    `increase()` alone misses what a series counted before its first sample: a series born inside
    the window (a new versioned name, a canary server's first requests, a restarted pod) has no
    earlier sample to rise from, and a low-traffic canary then looks like "no data". Series that
    existed at the window's start keep `increase()` (resets handled); those born inside it count
    from zero, their last value.
    """
    return (f"(increase({selector}[{window}]) and {selector} offset {window})"
            f" or (last_over_time({selector}[{window}]) unless {selector} offset {window})")


class AnalysisError(RuntimeError):
    """Prometheus could not be queried; the message is one line."""


@dataclass(frozen=True)
class Thresholds:
    """A step passes when the canary is under every absolute limit and not worse than stable
    by more than the relative ones. Latency ratios fail only above `latency_tolerance_s` of
    difference: on a small model a few tens of ms can double a p95 without mattering.
    The values and their defaults come from the serve group (`from_serve`)."""

    max_error_rate: float
    max_p95_latency_s: float
    max_p95_ttft_s: float
    max_error_rate_increase: float
    max_latency_ratio: float
    max_ttft_ratio: float
    latency_tolerance_s: float
    min_requests: int

    @classmethod
    def from_serve(cls, serve) -> "Thresholds":
        """From the typed `serve` group: absolute limits in serve.*, relative ones in serve.canary.*."""
        canary = serve.canary
        thresholds = cls(
            max_error_rate=serve.max_error_rate,
            max_p95_latency_s=serve.max_p95_latency_s,
            max_p95_ttft_s=serve.max_p95_ttft_s,
            max_error_rate_increase=canary.max_error_rate_increase,
            max_latency_ratio=canary.max_latency_ratio,
            max_ttft_ratio=canary.max_ttft_ratio,
            latency_tolerance_s=canary.latency_tolerance_s,
            min_requests=canary.min_requests,
        )
        for key in ("max_latency_ratio", "max_ttft_ratio"):
            if getattr(thresholds, key) < 1.0:
                raise ValueError(f"serve.canary.{key}: must be >= 1.0, got {getattr(thresholds, key)}")
        return thresholds


@dataclass
class SideMetrics:
    """One side over one window; None = no data for that metric."""

    side: str
    window_s: int
    requests: float = 0.0
    errors: float = 0.0
    error_rate: Optional[float] = None
    p95_latency_s: Optional[float] = None
    p95_ttft_s: Optional[float] = None
    up: Optional[bool] = None
    queries: list[dict[str, Any]] = field(default_factory=list)  # every query and its raw answer

    def has_data(self, min_requests: int) -> bool:
        return self.requests >= min_requests


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Verdict:
    """The outcome of one analysis: pass, fail, or no_data (not enough canary requests)."""

    outcome: str  # pass | fail | no_data
    canary: SideMetrics
    stable: SideMetrics
    checks: list[Check] = field(default_factory=list)
    probe: Optional[dict[str, Any]] = None  # the quality probe's scores (probe.ProbedAnalysis)

    @property
    def reasons(self) -> list[str]:
        return [c.detail for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(canary: SideMetrics, stable: SideMetrics, t: Thresholds) -> Verdict:
    """The verdict of one step from both sides' metrics (pure: no I/O)."""
    checks: list[Check] = []
    if canary.up is False:
        checks.append(Check("canary_up", False, "canary target is down (Prometheus up == 0)"))
        return Verdict("fail", canary, stable, checks)
    if not canary.has_data(t.min_requests):
        checks.append(Check("canary_data", False, f"canary served {canary.requests:.1f} requests in {canary.window_s} s "
                                                  f"(< {t.min_requests}): no data"))
        return Verdict("no_data", canary, stable, checks)

    def absolute(name: str, value: Optional[float], limit: float) -> None:
        if value is None:
            checks.append(Check(f"{name}_abs", True, f"{name}: no data on the canary (skipped)"))
        else:
            checks.append(Check(f"{name}_abs", value <= limit, f"{name} canary {value:.4g} <= {limit:.4g}"))

    absolute("error_rate", canary.error_rate, t.max_error_rate)
    absolute("p95_latency_s", canary.p95_latency_s, t.max_p95_latency_s)
    absolute("p95_ttft_s", canary.p95_ttft_s, t.max_p95_ttft_s)

    stable_ok = stable.has_data(t.min_requests)
    if not stable_ok:
        checks.append(Check("stable_data", True, f"stable served {stable.requests:.1f} requests: no data, "
                                                 "relative checks skipped"))
    else:
        if canary.error_rate is not None and stable.error_rate is not None:
            limit = stable.error_rate + t.max_error_rate_increase
            checks.append(Check("error_rate_rel", canary.error_rate <= limit,
                                f"error_rate canary {canary.error_rate:.4g} <= stable {stable.error_rate:.4g} "
                                f"+ {t.max_error_rate_increase:.4g}"))
        for name, ratio in (("p95_latency_s", t.max_latency_ratio), ("p95_ttft_s", t.max_ttft_ratio)):
            mine, theirs = getattr(canary, name), getattr(stable, name)
            if mine is None or theirs is None:
                checks.append(Check(f"{name}_rel", True, f"{name}: no data on one side, relative check skipped"))
                continue
            ok = mine <= theirs * ratio or mine - theirs <= t.latency_tolerance_s
            checks.append(Check(f"{name}_rel", ok, f"{name} canary {mine:.4g} <= stable {theirs:.4g} x {ratio:g} "
                                                   f"(or within {t.latency_tolerance_s:g} s)"))
    outcome = "pass" if all(c.passed for c in checks) else "fail"
    return Verdict(outcome, canary, stable, checks)


def p95(bucket_selector: str, window: str) -> str:
    """PromQL for the 95th percentile of a histogram's observations in the last `window`."""
    return f"histogram_quantile(0.95, sum by (le) ({window_increase(bucket_selector, window)}))"


class PrometheusAnalysis:
    """Measures a side through Prometheus' HTTP API and judges a step."""

    def __init__(self, url: str, selectors: dict[str, str] | Callable[[], dict[str, str]], timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self._selectors = selectors  # a callable when roles move between servers (local stack)
        self.timeout_s = timeout_s

    @property
    def selectors(self) -> dict[str, str]:
        return dict(self._selectors() if callable(self._selectors) else self._selectors)

    def describe(self) -> str:
        return f"prometheus {self.url} ({', '.join(f'{k}: {{{v}}}' for k, v in self.selectors.items())})"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector `promql` evaluates to now."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise AnalysisError(f"Prometheus {self.url} refused {promql!r}: {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise AnalysisError(f"Prometheus {self.url} did not answer {promql!r}: {exc}") from exc
        if body.get("status") != "success":
            raise AnalysisError(f"Prometheus {self.url}: {promql!r}: {body.get('error', body)}")
        return body["data"]["result"]

    def _scalar(self, promql: str, log: list[dict[str, Any]]) -> Optional[float]:
        result = self.query(promql)
        value = None
        if result:
            number = float(result[0]["value"][1])
            value = None if math.isnan(number) or math.isinf(number) else number
        log.append({"query": promql, "result": result, "value": value})
        return value

    def measure(self, side: str, window_s: int) -> SideMetrics:
        sel = self.selectors[side]
        w = f"{max(int(window_s), 2)}s"
        requests_sel = f'{sel},handler=~"{COMPLETION_HANDLERS}"'
        log: list[dict[str, Any]] = []
        # Down = no scrape answered in the whole window: a crashed server, not one scrape that
        # timed out (the timeout is the 1 s scrape interval, and a busy CPU server can miss one).
        up = self._scalar(f"min(max_over_time(up{{{sel}}}[{w}]))", log)
        # Requests from the duration histogram (no status label), errors = requests - 2xx.
        counted = f"http_request_duration_seconds_count{{{requests_sel}}}"
        answered = f'http_requests_total{{{requests_sel},status="2xx"}}'
        requests = self._scalar(f"sum({window_increase(counted, w)})", log) or 0.0
        ok = self._scalar(f"sum({window_increase(answered, w)})", log) or 0.0
        errors = max(requests - ok, 0.0)
        latency = self._scalar(p95(f"vllm:e2e_request_latency_seconds_bucket{{{sel}}}", w), log)
        ttft = self._scalar(p95(f"vllm:time_to_first_token_seconds_bucket{{{sel}}}", w), log)
        return SideMetrics(
            side=side,
            window_s=int(window_s),
            requests=round(requests, 3),
            errors=round(errors, 3),
            error_rate=(min(errors / requests, 1.0) if requests > 0 else None),
            p95_latency_s=latency,
            p95_ttft_s=ttft,
            up=None if up is None else up >= 1,
            queries=log,
        )

    def analyse(self, canary_window_s: int, stable_window_s: int, thresholds: Thresholds) -> Verdict:
        return judge(self.measure("canary", canary_window_s), self.measure("stable", stable_window_s), thresholds)


@dataclass(frozen=True)
class TargetSeries:
    """The per-target series of a router that splits one model name between versioned names:
    counters of requests and errors and a latency histogram, labelled `target_model_name`."""

    requests: str
    errors: str
    duration: str
    source: str

    def describe(self) -> str:
        return f"{self.source}: {self.requests}, {self.errors}, {self.duration}"


# The local router (serving/adapter_router.py: nginx + njs, counted by mtail from its access log).
LOCAL_ROUTER_SERIES = TargetSeries("modelchain_router_request_total", "modelchain_router_request_error_total",
                                   "modelchain_router_request_duration_seconds", "nginx access log via mtail")
# llm-d's endpoint picker (llm-d/llm-d-router v0.10.0, pkg/epp/metrics), on the cluster.
LLM_D_EPP_SERIES = TargetSeries("llm_d_epp_request_total", "llm_d_epp_request_error_total",
                                "llm_d_epp_request_duration_seconds", "llm-d endpoint picker")


class TargetAnalysis(PrometheusAnalysis):
    """Each side is an adapter version: its series are those whose `target_model_name` is the
    side's versioned name (read when measured, since promotion moves names between sides).

    There is no time to first token per target (answers are not streamed through the router):
    the TTFT checks report no data. `up_selector` picks the pool's servers (both sides share them).
    """

    def __init__(self, url: str, series: TargetSeries, targets: Callable[[], dict[str, str]],
                 up_selector: str = "", extra_selector: str = "", timeout_s: float = 10.0):
        super().__init__(url, lambda: {side: f'target_model_name="{name}"' for side, name in targets().items()}, timeout_s)
        self.series, self.up_selector, self.extra_selector = series, up_selector, extra_selector

    def describe(self) -> str:
        return f"prometheus {self.url}, per version from {self.series.describe()} ({self.selectors})"

    def measure(self, side: str, window_s: int) -> SideMetrics:
        sel = self.selectors[side] + (f",{self.extra_selector}" if self.extra_selector else "")
        w = f"{max(int(window_s), 2)}s"
        log: list[dict[str, Any]] = []
        up = self._scalar(f"min(max_over_time(up{{{self.up_selector}}}[{w}]))", log) if self.up_selector else None
        requests = self._scalar(f"sum({window_increase(f'{self.series.requests}{{{sel}}}', w)})", log) or 0.0
        errors = self._scalar(f"sum({window_increase(f'{self.series.errors}{{{sel}}}', w)})", log) or 0.0
        latency = self._scalar(p95(f"{self.series.duration}_bucket{{{sel}}}", w), log)
        return SideMetrics(side=side, window_s=int(window_s), requests=round(requests, 3), errors=round(errors, 3),
                           error_rate=(min(errors / requests, 1.0) if requests > 0 else None), p95_latency_s=latency,
                           p95_ttft_s=None, up=None if up is None else up >= 1, queries=log)

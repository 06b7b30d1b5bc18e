"""PrometheusAnalysis against a real Prometheus (Debian package).

Prometheus scrapes two small exporters written here that expose vLLM's series with
vLLM's names, labels and bucket bounds (`http_requests_total{handler,method,status}`,
`http_request_duration_seconds_count{handler,method}`,
`vllm:e2e_request_latency_seconds`, `vllm:time_to_first_token_seconds`), growing at known
rates, so the queries' answers can be checked against what the exporters were told.
"""

import shutil
import time

import pytest

from modelchain.core.config import ServeConfig
from modelchain.serving.analysis import PrometheusAnalysis, Thresholds
from modelchain.serving.local_stack import _terminate, free_port, start_prometheus

from ..local_http import LocalHttpServer

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (make setup-serve)")

def schema_thresholds():
    """The thresholds of the serve schema's defaults."""
    from omegaconf import OmegaConf

    return Thresholds.from_serve(OmegaConf.structured(ServeConfig))


E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0]  # vLLM's first latency bounds
TTFT_BUCKETS = [0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5]


class FakeVllm(LocalHttpServer):
    """/metrics of a vLLM server answering `ok_rate` and `error_rate` requests per second,
    each with end-to-end latency `latency` and time to first token `ttft`."""

    def __init__(self, ok_rate, error_rate, latency, ttft):
        self.ok_rate, self.error_rate, self.latency, self.ttft = ok_rate, error_rate, latency, ttft
        self.t0 = time.time()
        super().__init__()

    def respond(self, method, body):
        return 200, {"Content-Type": "text/plain; version=0.0.4"}, self.exposition().encode()

    def exposition(self):
        t = time.time() - self.t0
        ok, errors = self.ok_rate * t, self.error_rate * t
        chat = 'handler="/v1/chat/completions",method="POST"'
        lines = [
            f'http_requests_total{{{chat},status="2xx"}} {ok}',
            f'http_requests_total{{{chat},status="4xx"}} {errors}',
            f'http_request_duration_seconds_count{{{chat}}} {ok + errors}',
            f'http_requests_total{{handler="/v1/models",method="GET",status="2xx"}} {100 * t}',  # not a completion
            f'http_request_duration_seconds_count{{handler="/v1/models",method="GET"}} {100 * t}',
        ]
        for name, buckets, value in (("vllm:e2e_request_latency_seconds", E2E_BUCKETS, self.latency),
                                     ("vllm:time_to_first_token_seconds", TTFT_BUCKETS, self.ttft)):
            labels = 'engine="0",model_name="modelchain-base"'
            for bound in buckets:
                lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {ok if value <= bound else 0}')
            lines += [f'{name}_bucket{{{labels},le="+Inf"}} {ok}', f"{name}_count{{{labels}}} {ok}",
                      f"{name}_sum{{{labels}}} {ok * value}"]
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    stable = FakeVllm(ok_rate=10, error_rate=0, latency=0.7, ttft=0.07)
    canary = FakeVllm(ok_rate=4, error_rate=1, latency=1.8, ttft=0.3)
    process, port = start_prometheus(tmp_path_factory.mktemp("prom"), {"a": stable.address, "b": canary.address})
    url = f"http://127.0.0.1:{port}"
    analysis = PrometheusAnalysis(url, {"stable": 'slot="a"', "canary": 'slot="b"'})
    deadline = time.time() + 60
    while time.time() < deadline:  # until both series are older than the 5 s windows the tests use
        if analysis.measure("canary", 5).requests > 20 and analysis.measure("stable", 5).requests > 40:
            break
        time.sleep(0.5)
    yield analysis
    _terminate(process)
    stable.close()
    canary.close()


def test_each_side_measured_from_vllm_series(prometheus):
    canary = prometheus.measure("canary", 5)
    stable = prometheus.measure("stable", 5)
    assert canary.up is True and stable.up is True
    assert canary.error_rate == pytest.approx(0.2, abs=0.02)  # 1 of 5 requests a second
    assert stable.error_rate == 0
    assert canary.requests == pytest.approx(25, rel=0.3)  # the /v1/models requests do not count
    # histogram_quantile interpolates inside the bucket: 0.95 of (1.5, 2.0] and (0.5, 0.8]
    assert canary.p95_latency_s == pytest.approx(1.5 + 0.95 * 0.5, abs=1e-6)
    assert stable.p95_latency_s == pytest.approx(0.5 + 0.95 * 0.3, abs=1e-6)
    assert canary.p95_ttft_s == pytest.approx(0.25 + 0.95 * 0.25, abs=1e-6)
    counted = 'http_request_duration_seconds_count{slot="b",handler=~"/v1/completions|/v1/chat/completions"}'
    assert [q["query"] for q in canary.queries][1] == (
        f"sum((increase({counted}[5s]) and {counted} offset 5s) or (last_over_time({counted}[5s]) unless {counted} offset 5s))"
    )


def test_verdict_fails_on_errors_and_latency_and_passes_when_relaxed(prometheus):
    verdict = prometheus.analyse(5, 5, schema_thresholds())
    assert verdict.outcome == "fail"
    failed = {c.name for c in verdict.checks if not c.passed}
    assert {"error_rate_abs", "error_rate_rel", "p95_latency_s_rel", "p95_ttft_s_rel"} <= failed
    relaxed = Thresholds(max_error_rate=0.5, max_p95_latency_s=5, max_p95_ttft_s=1, max_error_rate_increase=0.5,
                         max_latency_ratio=3, max_ttft_ratio=10, latency_tolerance_s=0.25, min_requests=5)
    assert prometheus.analyse(5, 5, relaxed).outcome == "pass"


def test_no_data_for_an_unknown_side_and_a_missing_prometheus(prometheus):
    absent = PrometheusAnalysis(prometheus.url, {"stable": 'slot="a"', "canary": 'slot="nothing"'})
    verdict = absent.analyse(5, 5, schema_thresholds())
    assert verdict.outcome == "no_data"
    assert verdict.canary.p95_latency_s is None and verdict.canary.up is None
    from modelchain.serving.analysis import AnalysisError

    with pytest.raises(AnalysisError, match="did not answer"):
        PrometheusAnalysis(f"http://127.0.0.1:{free_port()}", {"canary": 'slot="b"'}).measure("canary", 5)

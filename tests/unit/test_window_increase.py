"""Per-version counting through a real Prometheus (Debian package) when a version's series is
born inside the analysis window, as a canary's versioned name is at its first step.

The exporter written here exposes the local router's series (`modelchain_router_request_total`,
`..._error_total`, labelled `model_name`, `target_model_name`, as mtail writes them): the stable
name counts from the start; the canary's series first appears already at 3 (requests made before
Prometheus' first scrape of it), every one an error. `increase()` alone reads such a series from
its first sample and misses those 3; the analysis must count them.
"""

import shutil
import time

import pytest

from modelchain.serving.analysis import LOCAL_ROUTER_SERIES, TargetAnalysis
from modelchain.serving.local_stack import _terminate, start_prometheus

from ..local_http import LocalHttpServer

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (make setup-serve)")

COUNTED_BEFORE_FIRST_SCRAPE = 3


class FakeRouter(LocalHttpServer):
    """Stable: 2 requests a second from the start, no errors. Canary: absent until `canary_born`
    is set, then 3 requests plus 1 a second, all errors."""

    def __init__(self):
        self.t0 = time.time()
        self.canary_born = None
        super().__init__()

    def canary_count(self):
        return None if self.canary_born is None else COUNTED_BEFORE_FIRST_SCRAPE + int(time.time() - self.canary_born)

    def respond(self, method, body):
        t = time.time() - self.t0
        stable = 'model_name="support",target_model_name="support-v2"'
        canary = 'model_name="support",target_model_name="support-v3"'
        lines = [f"{LOCAL_ROUTER_SERIES.requests}{{{stable}}} {int(2 * t)}",
                 f"{LOCAL_ROUTER_SERIES.errors}{{{stable}}} 0"]
        count = self.canary_count()
        if count is not None:
            lines += [f"{LOCAL_ROUTER_SERIES.requests}{{{canary}}} {count}",
                      f"{LOCAL_ROUTER_SERIES.errors}{{{canary}}} {count}"]
        return 200, {"Content-Type": "text/plain; version=0.0.4"}, ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    router = FakeRouter()
    process, port = start_prometheus(tmp_path_factory.mktemp("prom"), {}, extra_jobs={"router": router.address})
    targets = {"stable": "support-v2", "canary": "support-v3"}
    yield router, TargetAnalysis(f"http://127.0.0.1:{port}", LOCAL_ROUTER_SERIES, lambda: targets)
    _terminate(process)
    router.close()


def wait_for(condition, what: str) -> None:
    deadline = time.time() + 60
    while not condition():
        assert time.time() < deadline, f"Prometheus never saw {what}"
        time.sleep(0.5)


def test_a_series_born_inside_the_window_is_counted_from_zero(analysis):
    router, prometheus = analysis
    wait_for(lambda: prometheus.measure("stable", 30).requests > 0, "the stable series")
    router.canary_born = time.time()  # after Prometheus scraped the stable name: the canary's is new
    wait_for(lambda: prometheus.measure("canary", 30).requests >= COUNTED_BEFORE_FIRST_SCRAPE + 3,
             "the canary's series grow")
    canary = prometheus.measure("canary", 30)
    exposed = router.canary_count()
    # the value of the last scrape: at most one 1 s scrape (1 request) behind what is exposed now
    assert exposed - 1.5 <= canary.requests <= exposed, (canary.requests, exposed, canary.queries)
    assert canary.errors == canary.requests and canary.error_rate == 1.0
    assert canary.has_data(COUNTED_BEFORE_FIRST_SCRAPE + 1)
    stable = prometheus.measure("stable", 3)
    assert stable.requests == pytest.approx(6, abs=2.5)  # an old series: its increase over the window
    assert stable.error_rate == 0


def test_a_name_that_never_served_has_no_data(analysis):
    _, prometheus = analysis
    nothing = TargetAnalysis(prometheus.url, LOCAL_ROUTER_SERIES, lambda: {"canary": "support-v9"})
    measured = nothing.measure("canary", 30)
    assert measured.requests == 0 and measured.error_rate is None and measured.p95_latency_s is None

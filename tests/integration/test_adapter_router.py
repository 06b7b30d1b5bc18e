"""The adapter router on real nginx + njs and mtail, in front of a pool written by hand.

The pool is a small HTTP server of the test's that answers the versioned names it holds and
404 for any other (as vLLM answers a name it has not loaded), and records the `model` of every
request it gets. No vLLM is needed: this checks the split, the pass-through of versioned
names, the retry on the other side, the header a restarted controller reads back, and the
per-version series mtail makes of the access log.
"""

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from modelchain.serving.adapter_router import NJS_MODULE, AdapterRouter
from modelchain.serving.adapter_stack import start_mtail
from modelchain.serving.local_stack import _terminate, free_port
from modelchain.serving.router import RouterError
from tests.local_http import LocalHttpServer

PUBLIC = "support"


class Pool(LocalHttpServer):
    def __init__(self, served):
        super().__init__()
        self.served, self.seen, self.lock = set(served), [], threading.Lock()

    def respond(self, method, raw):
        model = json.loads(raw or b"{}").get("model")
        with self.lock:
            self.seen.append(model)
        if model not in self.served:
            return 404, {"Content-Type": "application/json"}, json.dumps({"error": f"model {model} not found"}).encode()
        answer = {"model": model, "choices": [{"message": {"role": "assistant", "content": f"from {model}"}}]}
        return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()


def ask(url, model):
    payload = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=payload, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("X-Served-By"), json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Served-By"), None


@pytest.fixture()
def routed(tmp_path):
    missing = [tool for tool in ("nginx", "mtail") if __import__("shutil").which(tool) is None]
    if missing or not __import__("os").path.exists(NJS_MODULE):
        pytest.skip(f"needs nginx, its njs module and mtail (make setup-serve): missing {missing or [NJS_MODULE]}")
    pool = Pool({f"{PUBLIC}-v1", f"{PUBLIC}-v2"})
    router = AdapterRouter(tmp_path / "nginx", pool.address, PUBLIC, free_port(),
                           {"stable": f"{PUBLIC}-v1", "canary": f"{PUBLIC}-v2"})
    router.write_config(100, 0)
    router.start()
    mtail, mtail_port = start_mtail(tmp_path / "mtail", router.access_log)
    try:
        yield pool, router, mtail_port
    finally:
        router.stop()
        _terminate(mtail)
        pool.close()


def test_the_public_name_is_split_by_weight_and_versioned_names_pass_through(routed):
    pool, router, _ = routed
    router.route(f"{PUBLIC}-v1", f"{PUBLIC}-v2", 70, 30)
    assert router.live_weights() == {"stable": 70, "canary": 30}
    answers = Counter()
    for _ in range(300):
        status, served_by, body = ask(router.url, PUBLIC)
        assert status == 200
        answers[body["model"]] += 1
        assert served_by == body["model"]
    assert 60 <= answers[f"{PUBLIC}-v2"] <= 120, answers  # 30 % of 300, give or take four sd
    pool.seen.clear()
    status, _, body = ask(router.url, f"{PUBLIC}-v2")  # the probe addresses a version directly
    assert status == 200 and pool.seen == [f"{PUBLIC}-v2"]
    status, _, _ = ask(router.url, "someone-else")
    assert status == 404  # a name the pool lacks is not rewritten into one it has


def test_a_failing_canary_is_asked_again_on_stable_and_counted_against_itself(routed, tmp_path):
    pool, router, mtail_port = routed
    router.route(f"{PUBLIC}-v1", f"{PUBLIC}-v9", 50, 50)  # v9 is not loaded: 404 from the pool
    results = [ask(router.url, PUBLIC) for _ in range(60)]
    assert all(status == 200 for status, _, _ in results)  # no client saw the canary's 404
    retried = [served_by for _, served_by, _ in results if "," in served_by]
    assert retried and set(retried) == {f"{PUBLIC}-v9, {PUBLIC}-v1"}

    deadline, metrics = time.monotonic() + 10, {}
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{mtail_port}/metrics", timeout=5).read().decode()
        metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("modelchain_router_request") and not line.startswith("#")}
        key = f'modelchain_router_request_error_total{{model_name="{PUBLIC}",target_model_name="{PUBLIC}-v9"}}'
        if metrics.get(key, 0) >= len(retried):
            break
        time.sleep(0.2)
    labels = f'model_name="{PUBLIC}",target_model_name="{PUBLIC}-v9"'
    assert metrics[f"modelchain_router_request_total{{{labels}}}"] == len(retried)
    assert metrics[f"modelchain_router_request_error_total{{{labels}}}"] == len(retried)
    stable = f'model_name="{PUBLIC}",target_model_name="{PUBLIC}-v1"'
    assert metrics[f"modelchain_router_request_error_total{{{stable}}}"] == 0  # the series exists before any error
    assert metrics[f"modelchain_router_request_duration_seconds_count{{{stable}}}"] == 60 - len(retried)

    # A restarted controller reads the targets and weights back from the include file.
    again = AdapterRouter(router.prefix, router.pool, PUBLIC, router.listen_port, {"stable": "?", "canary": "?"})
    assert again.read_targets() == {"stable": f"{PUBLIC}-v1", "canary": f"{PUBLIC}-v9"}
    assert again.weights() == {"stable": 50, "canary": 50}


def test_a_name_nginx_cannot_carry_is_refused_and_nothing_changes(routed):
    _, router, _ = routed
    router.route(f"{PUBLIC}-v1", f"{PUBLIC}-v2", 90, 10)
    with pytest.raises(RouterError, match="only letters, digits"):
        router.route(f"{PUBLIC}-v1", 'evil"; }', 50, 50)
    assert router.read_targets() == {"stable": f"{PUBLIC}-v1", "canary": f"{PUBLIC}-v2"}
    assert router.weights() == {"stable": 90, "canary": 10}
    assert router.targets == {"stable": f"{PUBLIC}-v1", "canary": f"{PUBLIC}-v2"}

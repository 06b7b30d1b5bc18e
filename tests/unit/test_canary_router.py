"""NginxRouter against a real nginx (Debian package) in front of two small HTTP backends."""

import shutil
import urllib.error
import urllib.request

import pytest

from modelchain.serving.local_stack import free_port
from modelchain.serving.router import NginxRouter, RouterError, TrafficRouter

from ..local_http import LocalHttpServer

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (make setup-serve)")


class Backend(LocalHttpServer):
    """An HTTP server on 127.0.0.1 answering every POST with its name, or with `status`."""

    def __init__(self, name):
        self.name, self.status, self.hits = name, 200, 0
        super().__init__()

    def respond(self, method, body):
        self.hits += 1
        return self.status, {}, self.name.encode()


@pytest.fixture
def backends():
    stable, canary = Backend("stable"), Backend("canary")
    yield stable, canary
    stable.close()
    canary.close()


@pytest.fixture
def router(tmp_path, backends):
    stable, canary = backends
    prefix = tmp_path / "nginx"
    r = NginxRouter(prefix / "nginx.conf", prefix / "upstream.conf", {"stable": stable.address, "canary": canary.address},
                    listen_port=free_port(), prefix=prefix)
    r.write_config(100, 0)
    r.start()
    yield r
    r.stop()
    assert r.pid() is None


def send(router, n):
    answers = []
    for _ in range(n):
        request = urllib.request.Request(f"{router.url}/v1/chat/completions", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answers.append((response.read().decode(), response.headers["X-Served-By"]))
    return answers


def test_weights_split_requests_and_read_back(router, backends):
    assert isinstance(router, TrafficRouter)
    assert router.weights() == {"stable": 100, "canary": 0}
    assert {a for a, _ in send(router, 10)} == {"stable"}

    router.set_weights(80, 20)
    assert router.live_weights() == {"stable": 80, "canary": 20}
    answers = [a for a, _ in send(router, 100)]
    # nginx's weighted round robin is exact over a full cycle of the weights
    assert answers.count("canary") == 20 and answers.count("stable") == 80

    router.set_weights(0, 100)
    assert {a for a, _ in send(router, 10)} == {"canary"}
    assert "down max_fails=0;  # stable" in router.upstream_file.read_text()

    # a new router object (a restarted controller) reads the state back from the file
    again = NginxRouter(router.conf_path, router.upstream_file, router.backends, router.listen_port, prefix=router.prefix)
    assert again.weights() == {"stable": 0, "canary": 100}
    assert str(router.conf_path) in router.describe()


def test_a_failing_side_is_retried_on_the_other(router, backends):
    stable, canary = backends
    canary.status = 404  # e.g. the canary does not serve the adapter under the public name
    router.set_weights(50, 50)
    answers = send(router, 20)
    assert all(a == "stable" for a, _ in answers)  # no client sees the canary's failure
    assert canary.hits == 10
    assert sum(1 for _, served in answers if "," in served) == 10  # those were retried


def test_bad_weights_and_a_config_nginx_refuses_change_nothing(router, tmp_path):
    router.set_weights(90, 10)
    before = router.upstream_file.read_text()
    with pytest.raises(RouterError, match="sum"):
        router.set_weights(90, 20)
    router.backends = {"stable": "127.0.0.1:notaport", "canary": router.backends["canary"]}
    with pytest.raises(RouterError, match="nginx -t"):
        router.set_weights(50, 50)
    assert router.upstream_file.read_text() == before
    assert router.live_weights() == {"stable": 90, "canary": 10}

    broken = tmp_path / "broken.conf"
    broken.write_text("upstream x {\n")
    with pytest.raises(RouterError, match="not a modelchain-router header"):
        NginxRouter(router.conf_path, broken, router.backends, router.listen_port).weights()

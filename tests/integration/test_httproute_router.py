"""HTTPRouteRouter against a replay of the Kubernetes API.

No Kubernetes API server can run on this machine (no container runtime, no kube-apiserver),
so the real kubernetes Python client (30.1) talks to a small HTTP server on 127.0.0.1 that
answers from recorded exchanges in `recordings/kube/httproute_*.json` and
`canary_scale_up.json`: gateway.networking.k8s.io/v1 HTTPRoute objects with the status a
gateway controller writes, autoscaling/v1 Scale, apps/v1 Deployment status, and the Status
bodies of 404, 403 and 409 answers. Each test checks the requests the router sent (paths,
content types, patch bodies) and what it reads back.
"""

import pytest

from modelchain.serving import manifests
from modelchain.serving.httproute import HTTPRouteRouter, RouteError
from modelchain.core.config import compose
from tests.integration.kube_replay import KubeReplay

NS = "kubeflow-user"
ROUTE = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/vllm"
CANARY = f"/apis/apps/v1/namespaces/{NS}/deployments/vllm-canary"


@pytest.fixture(scope="module")
def cfg():
    return compose("finetune", ["cluster=eks", "serve=eks"])


def api_client(server):
    from kubernetes.client import ApiClient, Configuration

    configuration = Configuration()
    configuration.host = server.url
    return ApiClient(configuration)


def router(server, cfg, **kwargs):
    return HTTPRouteRouter.from_config(cfg, api=api_client(server), **kwargs)


def weights_sent(patch):
    (rule,) = patch["json"]["spec"]["rules"]
    return {ref["name"]: ref["weight"] for ref in rule["backendRefs"]}


def test_recorded_route_is_the_rendered_one(cfg):
    """The recordings hold the route `render serving` writes, so the router is tested on it."""
    import json

    from tests.integration.kube_replay import RECORDINGS

    recorded = json.loads((RECORDINGS / "httproute_shift.json").read_text())["exchanges"][0]["response"]["body"]
    assert recorded["spec"] == manifests.http_route(cfg, 0)["spec"]


def test_shift_reads_patches_and_reads_back(cfg):
    with KubeReplay("httproute_shift") as server:
        shifter = router(server, cfg)
        assert shifter.weights() == {"stable": 100, "canary": 0}
        shifter.set_weights(90, 10)
        assert shifter.weights() == {"stable": 90, "canary": 10}
    assert server.calls() == [f"GET {ROUTE}", f"GET {ROUTE}", f"PATCH {ROUTE}", f"GET {ROUTE}"]
    (patch,) = server.find("PATCH")
    # A merge patch of the rules, guarded by the resourceVersion that was read.
    assert patch["headers"]["content-type"] == "application/merge-patch+json"
    assert patch["json"]["metadata"] == {"resourceVersion": "51200"}
    assert weights_sent(patch) == {"vllm-stable": 90, "vllm-canary": 10}
    (rule,) = patch["json"]["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert rule["timeouts"] == {"request": "300s"} and all(ref["port"] == 8000 for ref in rule["backendRefs"])
    assert shifter.describe() == ("HTTPRoute kubeflow-user/vllm (gateway.networking.k8s.io/v1): "
                                  "vllm-stable (stable) / vllm-canary (canary)")


def test_conflict_is_read_again_and_keeps_the_other_change(cfg):
    with KubeReplay("httproute_conflict") as server:
        router(server, cfg, sleep=lambda s: None).set_weights(75, 25)
    assert server.calls() == [f"GET {ROUTE}", f"PATCH {ROUTE}", f"GET {ROUTE}", f"PATCH {ROUTE}"]
    first, second = server.find("PATCH")
    assert first["json"]["metadata"] == {"resourceVersion": "51347"}
    assert second["json"]["metadata"] == {"resourceVersion": "51402"}
    assert weights_sent(second) == {"vllm-stable": 75, "vllm-canary": 25}
    # The filter added in between is carried over, not overwritten by the stale copy.
    assert second["json"]["spec"]["rules"][0]["filters"][0]["type"] == "RequestHeaderModifier"
    assert "filters" not in first["json"]["spec"]["rules"][0]


def test_rollback_sends_everything_to_stable_and_scales_the_canary_to_zero(cfg):
    with KubeReplay("httproute_rollback") as server:
        rollback = router(server, cfg, sleep=lambda s: None)
        rollback.set_weights(100, 0)
        rollback.scale_canary(0, wait_s=30, poll_s=0.01)
        assert rollback.weights() == {"stable": 100, "canary": 0}
    assert server.calls() == [
        f"GET {ROUTE}", f"PATCH {ROUTE}",
        f"PATCH {CANARY}/scale", f"GET {CANARY}/status", f"GET {CANARY}/status",
        f"GET {ROUTE}",
    ]
    route_patch, scale_patch = server.find("PATCH")
    assert weights_sent(route_patch) == {"vllm-stable": 100, "vllm-canary": 0}
    assert scale_patch["json"] == {"spec": {"replicas": 0}}
    assert scale_patch["headers"]["content-type"] == "application/strategic-merge-patch+json"


def test_setting_the_weights_it_already_has_sends_no_patch(cfg):
    with KubeReplay("httproute_conflict") as server:  # its first answer is 90/10
        router(server, cfg).set_weights(90, 10)
    assert server.calls() == [f"GET {ROUTE}"]


def test_scale_up_waits_for_a_ready_pod(cfg):
    with KubeReplay("canary_scale_up") as server:
        router(server, cfg, sleep=lambda s: None).scale_canary(1, wait_s=30, poll_s=0.01)
    assert server.calls() == [f"PATCH {CANARY}/scale", f"GET {CANARY}/status", f"GET {CANARY}/status"]
    assert server.find("PATCH")[0]["json"] == {"spec": {"replicas": 1}}


def test_scale_up_that_never_gets_ready_times_out(cfg):
    with KubeReplay("canary_scale_up") as server:
        # The recorded Deployment stays at one ready pod: two are never reached.
        with pytest.raises(RouteError, match="vllm-canary: [01] of 2 replicas ready after 1s"):
            router(server, cfg).scale_canary(2, wait_s=1.0, poll_s=0.05)
    assert len(server.find("GET", "/status")) >= 2


def test_missing_route_forbidden_and_default_weights(cfg):
    with KubeReplay("httproute_edge") as server:
        api = api_client(server)
        with pytest.raises(RouteError, match="HTTPRoute kubeflow-user/missing not found"):
            HTTPRouteRouter(NS, "missing", "vllm-stable", "vllm-canary", api=api).weights()
        # Unset weights default to 1 each in the Gateway API: an even split.
        assert HTTPRouteRouter(NS, "vllm", "vllm-stable", "vllm-canary", api=api).weights() == {"stable": 50, "canary": 50}
        with pytest.raises(RouteError, match="forbidden .403.*httproutes.gateway.networking.k8s.io in serving"):
            HTTPRouteRouter("serving", "vllm", "vllm-stable", "vllm-canary", api=api).weights()
        with pytest.raises(RouteError, match="no rule sends traffic to a-stable or a-canary"):
            HTTPRouteRouter(NS, "vllm", "a-stable", "a-canary", api=api).weights()


def test_bad_weights_are_refused_before_any_request(cfg):
    with KubeReplay("httproute_shift") as server:
        shifter = router(server, cfg)
        for stable, canary in ((90, 20), (-10, 110), (50.5, 49.5)):
            with pytest.raises(ValueError, match="summing to 100"):
                shifter.set_weights(stable, canary)
    assert server.calls() == []


def test_is_a_traffic_router():
    router_module = pytest.importorskip("modelchain.serving.router")
    assert isinstance(HTTPRouteRouter(NS, "vllm", "vllm-stable", "vllm-canary", api=object()), router_module.TrafficRouter)

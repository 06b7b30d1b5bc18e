"""The two-pool rollout on the cluster puts the candidate on the canary Deployment before traffic moves.

Against a replay of the Kubernetes API with exchanges written by hand in this file (nothing
recorded from a live server): the Deployment answer is the rendered one, the pod lists are
core/v1 PodLists with the Ready condition the kubelet reports.
"""

import json

import pytest

from modelchain.core.config import compose, group_json, load_group
from modelchain.serving.backend import Rollout
from modelchain.serving import manifests
from modelchain.serving.httproute import RouteError
from modelchain.serving.k8s_vllm import KubernetesVllmBackend
from tests.integration.kube_replay import KubeReplay

NS = "kubeflow-user"
CANARY = f"/apis/apps/v1/namespaces/{NS}/deployments/vllm-canary"
PODS = f"/api/v1/namespaces/{NS}/pods"
ADAPTER = manifests.Adapter("s3://modelchain-mlflow/artifacts/1/RUN5/artifacts/adapter", "5", "b" * 64)


def pod_list(*ready):
    items = [{"metadata": {"name": f"vllm-canary-7d9f-{i}", "namespace": NS,
                           "labels": {"modelchain.io/track": "canary", "modelchain.io/adapter-version": "5"}},
              "status": {"phase": "Running", "podIP": f"10.0.3.{i + 10}",
                         "conditions": [{"type": "Ready", "status": "True" if ok else "False"}]}}
             for i, ok in enumerate(ready)]
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "9001"}, "items": items}


@pytest.fixture()
def backend_and_cfg():
    cfg = compose("finetune", ["cluster=eks", "serve=eks", "serve.rollout=pool", "serve.canary.start_timeout_s=30",
                               "serve.canary.prometheus_url=http://prometheus.monitoring:9090"])
    groups = [load_group(g, group_json(cfg, g)) for g in ("serve", "cluster", "model")]
    return groups, cfg


def run(tmp_path, exchanges, groups):
    from kubernetes.client import ApiClient, Configuration

    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"exchanges": exchanges}))
    server = KubeReplay(path)
    configuration = Configuration()
    configuration.host = server.url
    backend = KubernetesVllmBackend(*groups, api=ApiClient(configuration), sleep=lambda s: None)
    backend.start(Rollout("smollm2-135m-instruct-ticket-routing", "5"))
    return server, backend


def test_the_candidate_is_rolled_onto_the_canary_and_its_pods_are_waited_for(tmp_path, backend_and_cfg):
    groups, cfg = backend_and_cfg
    rendered = manifests.deployment(cfg, "canary", ADAPTER)
    exchanges = [
        {"request": {"method": "PATCH", "path": CANARY}, "response": {"status": 200, "body": rendered}},
        {"request": {"method": "GET", "path": PODS}, "response": {"status": 200, "body": pod_list(False)}},
        {"request": {"method": "GET", "path": PODS}, "response": {"status": 200, "body": pod_list(True)}},
    ]
    server, backend = run(tmp_path, exchanges, groups)
    with server:
        backend.roll_track("canary", ADAPTER, 1)
    (patch,) = server.find("PATCH")
    assert patch["headers"]["content-type"] == "application/strategic-merge-patch+json"
    assert patch["json"]["spec"]["replicas"] == 1
    template = patch["json"]["spec"]["template"]
    assert template["metadata"]["labels"]["modelchain.io/adapter-version"] == "5"
    fetch, verify = template["spec"]["initContainers"]
    assert ADAPTER.uri + "/" in fetch["command"] and ADAPTER.sha256 in verify["command"]
    lists = server.find("GET", PODS)
    assert len(lists) == 2
    assert "modelchain.io/adapter-version=5" in lists[0]["query"]["labelSelector"]


def test_pods_that_never_get_ready_stop_the_rollout_before_traffic(tmp_path, backend_and_cfg):
    groups, cfg = backend_and_cfg
    exchanges = [
        {"request": {"method": "PATCH", "path": CANARY},
         "response": {"status": 200, "body": manifests.deployment(cfg, "canary", ADAPTER)}},
        {"request": {"method": "GET", "path": PODS}, "response": {"status": 200, "body": pod_list(False)}, "repeat": True},
    ]
    groups[0] = load_group("serve", group_json(compose("finetune", [
        "cluster=eks", "serve=eks", "serve.canary.start_timeout_s=0", "serve.canary.prometheus_url=http://prometheus.monitoring:9090",
    ]), "serve"))
    server, backend = run(tmp_path, exchanges, groups)
    with server:
        with pytest.raises(RouteError, match="0 of 1 pods ready with version 5"):
            backend.roll_track("canary", ADAPTER, 1)

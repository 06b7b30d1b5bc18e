"""The cluster's adapter-level router (llm-d InferenceModelRewrite) against a replay of the Kubernetes API,
and the adapter rollout's manifests against the upstream CRDs.

No Kubernetes API server can run here, so the real kubernetes Python client talks to a replay
(tests/integration/replay_server.py) of exchanges written by hand in this file, nothing
recorded from a live server: the objects are the rewrite `modelchain render serving` writes,
with the metadata the API server adds, and the Status body of a 409 Conflict.
"""

import copy
import json

import pytest

from modelchain.core.config import compose
from modelchain.core.manifest_validation import problems, CrdSchemas
from modelchain.serving import adapter_manifests
from modelchain.serving.httproute import RouteError
from modelchain.serving.k8s_adapter import InferenceModelRewriteRouter
from tests.crds import crd_dir
from tests.integration.kube_replay import KubeReplay

NS = "kubeflow-user"
DIGEST = "a" * 64
URI = "s3://modelchain-mlflow/artifacts/1/0a1b2c/artifacts/adapter"


@pytest.fixture(scope="module")
def cfg():
    return compose("finetune", ["cluster=eks", "serve=eks", "serve.adapter_name=support"])


def stored(obj, resource_version, generation=1):
    """The object as the API server answers it: with uid, resourceVersion and generation."""
    obj = copy.deepcopy(obj)
    obj["metadata"].update({"uid": "6f1c3e2a-1b4d-4e8f-9a7c-2d5b8e0f1a3c", "resourceVersion": resource_version,
                            "generation": generation, "creationTimestamp": "2026-12-01T09:00:00Z"})
    return obj


def replay(tmp_path, exchanges):
    path = tmp_path / "rewrite.json"
    path.write_text(json.dumps({"exchanges": exchanges}))
    return KubeReplay(path)


def api_client(server):
    from kubernetes.client import ApiClient, Configuration

    configuration = Configuration()
    configuration.host = server.url
    return ApiClient(configuration)


def path(cfg):
    return f"/apis/llm-d.ai/v1alpha2/namespaces/{NS}/inferencemodelrewrites/{adapter_manifests.rewrite_name(cfg)}"


def test_the_rendered_pool_is_valid_against_the_upstream_crds(cfg):
    crds = CrdSchemas.load(crd_dir())
    manifests = adapter_manifests.render(cfg, URI, 4, adapter_sha256=DIGEST)
    assert [m["kind"] for m in manifests] == ["Deployment", "PodDisruptionBudget", "InferencePool",
                                              "InferenceModelRewrite", "InferenceObjective", "HTTPRoute"]
    for manifest in manifests:
        assert problems(manifest, crds) == [], manifest["kind"]
    deployment, _, pool, rewrite, _, route = manifests
    vllm = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    assert vllm["args"][vllm["args"].index("--lora-modules") + 1] == "support-v4=/adapters/support"
    assert pool["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert rewrite["spec"]["rules"][0]["targets"] == [{"modelRewrite": "support-v4", "weight": 100}]
    assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "InferencePool"
    # A side at weight 0 is left out: llm-d's CRD refuses weight 0, which the schema check catches.
    split = adapter_manifests.model_rewrite(cfg, "support-v4", "support-v5", 10)
    assert problems(split, crds) == []
    zero = copy.deepcopy(split)
    zero["spec"]["rules"][0]["targets"][1]["weight"] = 0
    assert any("weight" in p for p in problems(zero, crds))


def test_weights_move_by_one_guarded_patch_and_a_conflict_is_read_again(cfg, tmp_path):
    rendered = adapter_manifests.model_rewrite(cfg, "support-v4", "support-v4", 0)
    first = stored(rendered, "7001")
    edited = stored(rendered, "7005", generation=2)  # someone else labelled it in between
    edited["metadata"]["labels"]["team"] = "search"
    split = stored(adapter_manifests.model_rewrite(cfg, "support-v4", "support-v5", 10), "7010", generation=3)
    split["metadata"]["labels"]["team"] = "search"
    conflict = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                "message": "Operation cannot be fulfilled on inferencemodelrewrites.llm-d.ai: the object has been modified"}
    exchanges = [
        {"request": {"method": "GET", "path": path(cfg)}, "response": {"status": 200, "body": first}},
        {"request": {"method": "GET", "path": path(cfg)}, "response": {"status": 200, "body": first}},
        {"request": {"method": "PATCH", "path": path(cfg)}, "response": {"status": 409, "body": conflict}},
        {"request": {"method": "GET", "path": path(cfg)}, "response": {"status": 200, "body": edited}},
        {"request": {"method": "PATCH", "path": path(cfg)}, "response": {"status": 200, "body": split}},
        {"request": {"method": "GET", "path": path(cfg)}, "response": {"status": 200, "body": split}, "repeat": True},
    ]
    with replay(tmp_path, exchanges) as server:
        router = InferenceModelRewriteRouter.from_config(cfg, api=api_client(server), sleep=lambda s: None)
        assert router.weights() == {"stable": 100, "canary": 0}
        router.route("support-v4", "support-v5", 90, 10)
        assert router.weights() == {"stable": 90, "canary": 10}
        assert router.targets == {"stable": "support-v4", "canary": "support-v5"}
    stale, fresh = server.find("PATCH")
    assert stale["json"]["metadata"]["resourceVersion"] == "7001"
    assert fresh["json"]["metadata"]["resourceVersion"] == "7005"
    assert fresh["headers"]["content-type"] == "application/merge-patch+json"
    assert fresh["json"]["metadata"]["annotations"] == {"modelchain.io/stable-target": "support-v4",
                                                        "modelchain.io/canary-target": "support-v5"}
    (rule,) = fresh["json"]["spec"]["rules"]
    assert rule["targets"] == [{"modelRewrite": "support-v4", "weight": 90}, {"modelRewrite": "support-v5", "weight": 10}]
    assert rule["matches"] == [{"model": {"type": "Exact", "value": "support"}}]


def test_a_rewrite_that_names_other_targets_is_refused(cfg, tmp_path):
    foreign = stored(adapter_manifests.model_rewrite(cfg, "support-v4", "support-v4", 0), "7001")
    foreign["spec"]["rules"][0]["targets"] = [{"modelRewrite": "support-experimental", "weight": 5},
                                              {"modelRewrite": "support-v4", "weight": 95}]
    exchanges = [{"request": {"method": "GET", "path": path(cfg)}, "response": {"status": 200, "body": foreign},
                  "repeat": True}]
    with replay(tmp_path, exchanges) as server:
        router = InferenceModelRewriteRouter.from_config(cfg, api=api_client(server))
        with pytest.raises(RouteError, match="support-experimental"):
            router.weights()
    assert server.find("PATCH") == []

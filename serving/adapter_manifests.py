"""The cluster side of an adapter-level rollout (serve.rollout=adapter, cluster=eks), as manifests.

- One vLLM Deployment, `<app>-pool`, with run-time LoRA loading on
  (`VLLM_ALLOW_RUNTIME_LORA_UPDATING`). Its pods start serving the version it was rendered with
  under that version's immutable name (`<public>-v<N>`, synced from S3 and proven against the
  digest by init containers, as in the two-pool layout), and mount FSx read-only: the canary
  step writes each new version there, proven, before it asks every pod to load it.
- A Gateway API Inference Extension `InferencePool` over those pods, whose endpoint picker
  (llm-d's EPP, installed with its chart: `serve.epp_service`) routes each request.
- An llm-d `InferenceModelRewrite` that sends the public name (`serve.adapter_name`, else the
  registered model) to weighted versioned names; the canary controller moves those weights
  (k8s_adapter.InferenceModelRewriteRouter). Its annotations say which name is stable and
  which is the canary, so a restarted controller reads the sides back.
- An llm-d `InferenceObjective` for the public name (its priority in the pool), a
  PodDisruptionBudget, and an HTTPRoute from the gateway to the InferencePool.

Validated like every rendered manifest (core/manifest_validation.py) against the upstream
CRDs: InferencePool v1 (gateway-api-inference-extension v1.6.0), llm-d.ai v1alpha2 (llm-d-router v0.10.0).
"""

from __future__ import annotations

import copy
import posixpath
from typing import Any

from modelchain.serving.adapter_router import versioned_name
from modelchain.serving.manifests import (
    ADAPTER_ROOT, APP_LABEL, PART_OF, Adapter, ServingConfigError, _need, adapter_name, check, deployment,
    deployment_name, labels, namespace,
)

POOL = "pool"
INFERENCE_POOL_API = "inference.networking.k8s.io/v1"
LLM_D_API = "llm-d.ai/v1alpha2"
STABLE_TARGET_ANNOTATION = "modelchain.io/stable-target"
CANARY_TARGET_ANNOTATION = "modelchain.io/canary-target"


def runtime_adapter_dir(cfg) -> str:
    """Where the canary step writes versions for the pods to load: serve.runtime_adapter_dir, else FSx."""
    return cfg.serve.runtime_adapter_dir or posixpath.join(cfg.cluster.fsx.mount_path, "adapters")


def rewrite_name(cfg) -> str:
    return f"{cfg.serve.app_name}-{adapter_name(cfg)}".lower().replace("_", "-").replace(".", "-")[:253]


def pool_deployment(cfg, stable: Adapter) -> dict[str, Any]:
    """The pool: the two-pool layout's Deployment, serving the stable version under its versioned name,
    with run-time loading on and FSx mounted for the versions loaded later."""
    manifest = copy.deepcopy(deployment(cfg, "stable", stable))
    public = adapter_name(cfg)
    pool_labels = labels(cfg, POOL)
    manifest["metadata"]["name"] = deployment_name(cfg, POOL)
    manifest["metadata"]["labels"].update(pool_labels)
    manifest["spec"]["selector"] = {"matchLabels": pool_labels}
    pod = manifest["spec"]["template"]
    pod["metadata"]["labels"].update(pool_labels)
    spec = pod["spec"]
    (vllm,) = spec["containers"]
    args = vllm["args"]
    index = args.index("--lora-modules")
    args[index + 1] = f"{versioned_name(public, stable.version)}={posixpath.join(ADAPTER_ROOT, public)}"
    vllm["env"].append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
    fsx = cfg.cluster.fsx
    if not any(v["name"] == "fsx" for v in spec["volumes"]):
        vllm["volumeMounts"].append({"name": "fsx", "mountPath": fsx.mount_path, "readOnly": True})
        spec["volumes"].append({"name": "fsx", "persistentVolumeClaim": {"claimName": fsx.pvc, "readOnly": True}})
    return manifest


def inference_pool(cfg) -> dict[str, Any]:
    serve = cfg.serve
    return {
        "apiVersion": INFERENCE_POOL_API,
        "kind": "InferencePool",
        "metadata": {"name": deployment_name(cfg, POOL), "namespace": namespace(cfg),
                     "labels": {**labels(cfg, POOL), **PART_OF}},
        "spec": {
            "selector": {"matchLabels": labels(cfg, POOL)},
            "targetPorts": [{"number": serve.port}],
            "endpointPickerRef": {"name": serve.epp_service or f"{serve.app_name}-epp", "port": {"number": serve.epp_port}},
        },
    }


def model_rewrite(cfg, stable_target: str, canary_target: str, canary_weight: int) -> dict[str, Any]:
    """Route the public name to the stable and canary versioned names by weight; a side at 0 is left out
    (llm-d requires weight >= 1)."""
    targets = []
    if canary_weight < 100:
        targets.append({"modelRewrite": stable_target, "weight": 100 - canary_weight})
    if canary_weight > 0:
        targets.append({"modelRewrite": canary_target, "weight": canary_weight})
    return {
        "apiVersion": LLM_D_API,
        "kind": "InferenceModelRewrite",
        "metadata": {
            "name": rewrite_name(cfg), "namespace": namespace(cfg), "labels": {APP_LABEL: cfg.serve.app_name, **PART_OF},
            "annotations": {STABLE_TARGET_ANNOTATION: stable_target, CANARY_TARGET_ANNOTATION: canary_target},
        },
        "spec": {
            "poolRef": {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": deployment_name(cfg, POOL)},
            "rules": [{"matches": [{"model": {"type": "Exact", "value": adapter_name(cfg)}}], "targets": targets}],
        },
    }


def inference_objective(cfg) -> dict[str, Any]:
    return {
        "apiVersion": LLM_D_API,
        "kind": "InferenceObjective",
        "metadata": {"name": rewrite_name(cfg), "namespace": namespace(cfg), "labels": {APP_LABEL: cfg.serve.app_name, **PART_OF}},
        "spec": {
            "poolRef": {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": deployment_name(cfg, POOL)},
            "priority": cfg.serve.objective_priority,
        },
    }


def pool_disruption_budget(cfg) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": deployment_name(cfg, POOL), "namespace": namespace(cfg), "labels": {**labels(cfg, POOL), **PART_OF}},
        "spec": {"selector": {"matchLabels": labels(cfg, POOL)}, "minAvailable": cfg.serve.min_available},
    }


def pool_route(cfg) -> dict[str, Any]:
    """The gateway's route to the InferencePool (its endpoint picker chooses the pod)."""
    serve = cfg.serve
    parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": serve.gateway_name}
    if serve.gateway_namespace:
        parent["namespace"] = serve.gateway_namespace
    spec: dict[str, Any] = {"parentRefs": [parent]}
    if serve.hostnames:
        spec["hostnames"] = list(serve.hostnames)
    spec["rules"] = [{
        "matches": [{"path": {"type": "PathPrefix", "value": serve.path_prefix}}],
        "backendRefs": [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                         "name": deployment_name(cfg, POOL), "port": serve.port}],
        "timeouts": {"request": serve.request_timeout},
    }]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": serve.route_name, "namespace": namespace(cfg), "labels": {APP_LABEL: serve.app_name, **PART_OF}},
        "spec": spec,
    }


def render(cfg, adapter_uri: str, version: str | int, *, adapter_sha256: str) -> list[dict[str, Any]]:
    """The pool serving model version `version` (its adapter's S3 URI and manifest digest), in apply order.

    Later versions are not rendered: the canary step loads them into the running pool."""
    stable = Adapter(str(adapter_uri), str(version), str(adapter_sha256 or ""))
    check(cfg, stable, stable, 0)
    _need(1 <= cfg.serve.epp_port <= 65535, "serve.epp_port", f"must be a TCP port, got {cfg.serve.epp_port}")
    if not runtime_adapter_dir(cfg).startswith("/"):
        raise ServingConfigError(f"serve.runtime_adapter_dir: must be an absolute path, got {runtime_adapter_dir(cfg)!r}")
    name = versioned_name(adapter_name(cfg), stable.version)
    return [pool_deployment(cfg, stable), pool_disruption_budget(cfg), inference_pool(cfg),
            model_rewrite(cfg, name, name, 0), inference_objective(cfg), pool_route(cfg)]

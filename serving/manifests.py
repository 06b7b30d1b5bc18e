"""The cluster side of a canary rollout, as manifests built from `serve.*` (cluster=eks).

- Two vLLM Deployments, `<app>-stable` and `<app>-canary`, each running the OpenAI server with
  one LoRA adapter under the same public name (`serve.adapter_name`), so a client cannot tell
  which one answered. An init container syncs the model version's adapter from the registry's
  artifact store (its S3 URI) into an emptyDir that vLLM reads from `/adapters/<name>`; a
  second one, in the components image, then proves the folder against the version's manifest
  digest (`python -m modelchain.serving.verify_adapter`), so vLLM never starts on a missing,
  partial or altered adapter.
- A Service per Deployment, a PodDisruptionBudget per Deployment, and a Gateway API HTTPRoute
  whose weighted backendRefs split traffic between the two Services; the canary controller
  moves those weights (serving/httproute.py).
- Pods land on the Karpenter inference pool (`cluster.karpenter.node_pools[serve.node_pool]`):
  its nodepool label as nodeSelector, its taints tolerated.

Plain dicts: `modelchain render serving` validates them (core/manifest_validation.py) and writes YAML.
Secrets appear only by name.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any, Optional

TRACKS = ("stable", "canary")
ADAPTER_ROOT = "/adapters"  # the emptyDir the init container fills and vLLM reads
APP_LABEL = "app.kubernetes.io/name"
TRACK_LABEL = "modelchain.io/track"
VERSION_LABEL = "modelchain.io/adapter-version"
ADAPTER_URI_ANNOTATION = "modelchain.io/adapter-uri"
ADAPTER_SHA256_ANNOTATION = "modelchain.io/adapter-sha256"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
PART_OF = {"app.kubernetes.io/part-of": "modelchain"}
NODEPOOL_LABEL = "karpenter.sh/nodepool"
# vLLM refuses any other --max-lora-rank (LoRAConfig's accepted ranks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The Gateway API duration format (HTTPRoute rules[].timeouts).
GATEWAY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


@dataclass(frozen=True)
class Adapter:
    """One registered model version's adapter: its artifact URI (S3), version number and manifest digest.

    `sha256` is the version's `lineage.adapter_sha256` (`modelchain lineage MODEL/N` shows it).
    """

    uri: str
    version: str
    sha256: str


class ServingConfigError(ValueError):
    """A serve.* value (or an adapter argument) that cannot make a working rollout; names the key."""


def _need(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ServingConfigError(f"{key}: {why}")


# --------------------------------------------------------------------------- names


def namespace(cfg) -> str:
    return cfg.serve.namespace or cfg.cluster.namespace


def deployment_name(cfg, track: str) -> str:
    """`<serve.app_name>-<track>`: the Deployment, its Service and its PDB share it."""
    return f"{cfg.serve.app_name}-{track}"


def adapter_name(cfg) -> str:
    """The LoRA name clients send as `model`: serve.adapter_name, else the registered model."""
    if cfg.serve.adapter_name:
        return cfg.serve.adapter_name
    from modelchain.core.config import registered_model_name

    return registered_model_name(cfg)


def base_model(cfg) -> str:
    """What vLLM loads: serve.base_model, else model.path, else the Hub id."""
    return cfg.serve.base_model or cfg.model.path or cfg.model.hf_id


def artifact_store(cfg) -> Optional[str]:
    return cfg.serve.artifact_store or cfg.cluster.mlflow.artifact_location


# --------------------------------------------------------------------------- checks


def check(cfg, canary: Adapter, stable: Adapter, canary_weight: int) -> None:
    """Refuse values that would render a rollout that cannot work, naming the key."""
    serve = cfg.serve
    _need(cfg.cluster.kind == "eks", "cluster.kind", f"serving manifests need cluster=eks, got {cfg.cluster.kind!r}")
    _need(bool(DNS_LABEL.match(serve.app_name)) and len(serve.app_name) <= 63 - len("-canary"), "serve.app_name",
          f"{serve.app_name!r} must be a DNS label of at most 56 characters (lower case, digits, '-')")
    _need(bool(DNS_LABEL.match(serve.route_name)), "serve.route_name", f"{serve.route_name!r} is not a DNS label")
    _need(bool(DNS_LABEL.match(namespace(cfg))), "serve.namespace",
          f"{namespace(cfg)!r} (serve.namespace, else cluster.namespace) is not a DNS label")
    name = adapter_name(cfg)
    _need(bool(re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name)), "serve.adapter_name",
          f"{name!r}: letters, digits, '.', '_' and '-' only (it becomes a path and a --lora-modules entry)")
    _need(serve.gpus >= 1, "serve.gpus", f"must be >= 1, got {serve.gpus}")
    _need(serve.replicas >= 1, "serve.replicas", f"must be >= 1, got {serve.replicas}")
    _need(serve.canary_replicas >= 0, "serve.canary_replicas", f"must be >= 0, got {serve.canary_replicas}")
    _need(0 <= serve.min_available < serve.replicas, "serve.min_available",
          f"must be >= 0 and below serve.replicas ({serve.replicas}), or a node drain never finishes; "
          f"got {serve.min_available}")
    _need(1 <= serve.port <= 65535, "serve.port", f"must be a TCP port, got {serve.port}")
    _need(0.0 < serve.gpu_memory_utilization <= 1.0, "serve.gpu_memory_utilization",
          f"must be in (0, 1], got {serve.gpu_memory_utilization}")
    _need(serve.max_model_len >= 1, "serve.max_model_len", f"must be >= 1, got {serve.max_model_len}")
    _need(serve.max_loras >= 1, "serve.max_loras", f"must be >= 1, got {serve.max_loras}")
    _need(serve.max_lora_rank in VLLM_LORA_RANKS, "serve.max_lora_rank",
          f"vLLM accepts {', '.join(map(str, VLLM_LORA_RANKS))}; got {serve.max_lora_rank}")
    if "train" in cfg:
        _need(cfg.train.lora.rank <= serve.max_lora_rank, "serve.max_lora_rank",
              f"{serve.max_lora_rank} is below train.lora.rank ({cfg.train.lora.rank}): vLLM would refuse the adapter")
    for key in ("cpu", "memory"):
        _need(bool(QUANTITY.match(str(serve[key]))), f"serve.{key}", f"{serve[key]!r} is not a Kubernetes quantity")
    _need(bool(GATEWAY_DURATION.match(serve.request_timeout)), "serve.request_timeout",
          f"{serve.request_timeout!r} is not a Gateway API duration (e.g. 300s, 5m)")
    _need(serve.path_prefix.startswith("/"), "serve.path_prefix", f"must start with '/', got {serve.path_prefix!r}")
    _need(0 <= canary_weight <= 100, "--canary-weight", f"must be 0 to 100, got {canary_weight}")
    pools = cfg.cluster.karpenter.node_pools
    _need(serve.node_pool in pools, "serve.node_pool",
          f"{serve.node_pool!r} is not a pool of cluster.karpenter.node_pools ({', '.join(pools) or 'none'})")
    model = base_model(cfg)
    if model.startswith("/"):
        mount = cfg.cluster.fsx.mount_path.rstrip("/") + "/"
        _need(model.startswith(mount), "serve.base_model",
              f"{model} is a path the pods cannot read: put it under cluster.fsx.mount_path ({mount}) or name a Hub id")
    store = artifact_store(cfg)
    for label, version_label, digest_label, adapter in (("--adapter-uri", "--version", "--adapter-sha256", canary),
                                                        ("--stable-uri", "--stable-version", "--stable-sha256", stable)):
        _need(adapter.uri.startswith("s3://") and len(adapter.uri) > len("s3://"), label,
              f"{adapter.uri!r}: the init container syncs from S3; give the model version's s3:// artifact URI")
        if store:
            _need(adapter.uri.rstrip("/").startswith(store.rstrip("/") + "/"), label,
                  f"{adapter.uri} is outside the registry's artifact store {store} (serve.artifact_store)")
        _need(str(adapter.version).isdigit() and int(adapter.version) >= 1, version_label,
              f"a model version number (1, 2, ...), got {adapter.version!r}")
        _need(bool(SHA256_HEX.match(adapter.sha256)), digest_label,
              f"the model version's lineage.adapter_sha256 (64 hex digits; `modelchain lineage MODEL/N` shows it), "
              f"got {adapter.sha256!r}")


# --------------------------------------------------------------------------- pieces


def labels(cfg, track: str) -> dict[str, str]:
    """The selector labels of one track; Prometheus relabels `track` onto vLLM's metrics."""
    return {APP_LABEL: cfg.serve.app_name, TRACK_LABEL: track}


def placement(cfg) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """nodeSelector and tolerations of the inference pool, plus serve.node_selector/tolerations."""
    pool = cfg.cluster.karpenter.node_pools[cfg.serve.node_pool]
    selector = {NODEPOOL_LABEL: pool.name, **dict(cfg.serve.node_selector)}
    tolerations = []
    for taint in pool.taints:
        if taint.value is None:
            tolerations.append({"key": taint.key, "operator": "Exists", "effect": taint.effect})
        else:
            tolerations.append({"key": taint.key, "operator": "Equal", "value": str(taint.value), "effect": taint.effect})
    for extra in cfg.serve.tolerations:
        item = {"key": extra.key, "operator": extra.operator, "effect": extra.effect}
        if extra.value is not None:
            item["value"] = str(extra.value)
        if item not in tolerations:
            tolerations.append(item)
    return selector, tolerations


def _secret_env(cfg) -> list[dict[str, Any]]:
    """S3 credentials for the init container, by secret name only (none = IRSA)."""
    if cfg.serve.s3_secret:
        pairs = [(cfg.serve.s3_secret, key, key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    else:
        pairs = [(s.secret_name, s.key, s.env) for s in cfg.cluster.secret_env if s.env.startswith("AWS_")]
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for secret, key, env in pairs]


def vllm_args(cfg) -> list[str]:
    serve, name = cfg.serve, adapter_name(cfg)
    return [
        "--model", base_model(cfg),
        "--served-model-name", serve.served_model_name,
        "--host", "0.0.0.0",
        "--port", str(serve.port),
        "--tensor-parallel-size", str(serve.gpus),
        "--max-model-len", str(serve.max_model_len),
        "--gpu-memory-utilization", str(serve.gpu_memory_utilization),
        "--enable-lora",
        "--lora-modules", f"{name}={posixpath.join(ADAPTER_ROOT, name)}",
        "--max-loras", str(serve.max_loras),
        "--max-lora-rank", str(serve.max_lora_rank),
        *serve.extra_args,
    ]


def _probe(path: str, period_s: int, failures: int, timeout_s: int = 5) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s, "timeoutSeconds": timeout_s,
            "failureThreshold": failures}


def verify_command(adapter_dir: str, sha256: str) -> list[str]:
    """The check the pod runs after the sync: the folder against the version's manifest digest."""
    return ["python3", "-m", "modelchain.serving.verify_adapter", adapter_dir, "--sha256", sha256]


def verify_container(cfg, adapter: Adapter, adapter_dir: str) -> dict[str, Any]:
    """The init container that refuses a missing, partial or altered adapter before vLLM starts.

    It runs in the components image (modelchain installed) and only reads the emptyDir; a
    non-zero exit keeps the pod from starting, with the file and both digests in its log.
    """
    from modelchain.core.config import component_image

    return {
        "name": "verify-adapter",
        "image": component_image(cfg.cluster),
        "command": verify_command(adapter_dir, adapter.sha256),
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [{"name": "adapters", "mountPath": ADAPTER_ROOT, "readOnly": True}],
    }


def deployment(cfg, track: str, adapter: Adapter) -> dict[str, Any]:
    """A vLLM Deployment serving `adapter` for one track (stable or canary)."""
    serve, name = cfg.serve, adapter_name(cfg)
    adapter_dir = posixpath.join(ADAPTER_ROOT, name)
    selector, tolerations = placement(cfg)
    pod_labels = {**labels(cfg, track), **PART_OF, VERSION_LABEL: str(adapter.version)}
    env = [{"name": "VLLM_NO_USAGE_STATS", "value": "1"}]
    if cfg.serve.hf_token_secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": serve.hf_token_secret, "key": "token"}}})
    mounts = [
        {"name": "adapters", "mountPath": ADAPTER_ROOT, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "adapters", "emptyDir": {"sizeLimit": "4Gi"}},
        # NCCL and vLLM's workers share tensors through /dev/shm; the container default is 64M.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
    ]
    if base_model(cfg).startswith("/"):  # the base model lies on FSx (checked in `check`)
        fsx = cfg.cluster.fsx
        mounts.append({"name": "fsx", "mountPath": fsx.mount_path, "readOnly": True})
        volumes.append({"name": "fsx", "persistentVolumeClaim": {"claimName": fsx.pvc, "readOnly": True}})
    gpu = str(serve.gpus)
    vllm = {
        "name": "vllm",
        "image": serve.image,
        # The module, not the image's entrypoint: the same arguments work across vLLM images.
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(cfg),
        "ports": [{"name": "http", "containerPort": serve.port, "protocol": "TCP"}],
        "env": env,
        "resources": {
            "requests": {"cpu": str(serve.cpu), "memory": str(serve.memory), "nvidia.com/gpu": gpu},
            "limits": {"memory": str(serve.memory), "nvidia.com/gpu": gpu},
        },
        # Loading the base model can take minutes: the startup probe covers it (up to 20 min),
        # so liveness only judges a server that has come up once.
        "startupProbe": _probe("/health", 10, 120),
        "readinessProbe": _probe("/health", 5, 3),
        "livenessProbe": _probe("/health", 15, 4),
        "volumeMounts": mounts,
    }
    fetch = {
        "name": "fetch-adapter",
        "image": serve.adapter_image,
        "command": ["aws", "s3", "sync", "--only-show-errors", adapter.uri.rstrip("/") + "/", adapter_dir + "/"],
        "env": _secret_env(cfg),
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [{"name": "adapters", "mountPath": ADAPTER_ROOT}],
    }
    pod_spec: dict[str, Any] = {
        "nodeSelector": selector,
        "tolerations": tolerations,
        "terminationGracePeriodSeconds": 60,  # in-flight completions finish before the pod goes
        "initContainers": [fetch, verify_container(cfg, adapter, adapter_dir)],
        "containers": [vllm],
        "volumes": volumes,
    }
    if serve.service_account:
        pod_spec["serviceAccountName"] = serve.service_account
    replicas = serve.replicas if track == "stable" else serve.canary_replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment_name(cfg, track), "namespace": namespace(cfg), "labels": dict(pod_labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels(cfg, track)},
            # A new pod must be ready before an old one goes: capacity never drops mid-rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": dict(pod_labels),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(serve.port),
                        "prometheus.io/path": "/metrics",
                        ADAPTER_URI_ANNOTATION: adapter.uri,
                        ADAPTER_SHA256_ANNOTATION: adapter.sha256,
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def service(cfg, track: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": deployment_name(cfg, track), "namespace": namespace(cfg),
                     "labels": {**labels(cfg, track), **PART_OF}},
        "spec": {
            "type": "ClusterIP",
            "selector": labels(cfg, track),
            "ports": [{"name": "http", "port": cfg.serve.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def disruption_budget(cfg, track: str) -> dict[str, Any]:
    """Stable keeps serve.min_available pods through drains and consolidation; the canary's
    pods are not evicted on purpose while they are being judged (a lost pod would count
    against the candidate). Spot reclaims are not voluntary and ignore both."""
    spec: dict[str, Any] = {"selector": {"matchLabels": labels(cfg, track)}}
    if track == "stable":
        spec["minAvailable"] = cfg.serve.min_available
    else:
        spec["maxUnavailable"] = 0
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": deployment_name(cfg, track), "namespace": namespace(cfg),
                     "labels": {**labels(cfg, track), **PART_OF}},
        "spec": spec,
    }


def backend_ref(cfg, track: str, weight: int) -> dict[str, Any]:
    return {"group": "", "kind": "Service", "name": deployment_name(cfg, track), "port": cfg.serve.port,
            "weight": weight}


def http_route(cfg, canary_weight: int = 0) -> dict[str, Any]:
    """The Gateway API route: every request under serve.path_prefix to stable or canary, by weight."""
    serve = cfg.serve
    parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": serve.gateway_name}
    if serve.gateway_namespace:
        parent["namespace"] = serve.gateway_namespace
    spec: dict[str, Any] = {"parentRefs": [parent]}
    if serve.hostnames:
        spec["hostnames"] = list(serve.hostnames)
    spec["rules"] = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": serve.path_prefix}}],
            "backendRefs": [backend_ref(cfg, "stable", 100 - canary_weight), backend_ref(cfg, "canary", canary_weight)],
            "timeouts": {"request": serve.request_timeout},
        }
    ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": serve.route_name, "namespace": namespace(cfg),
                     "labels": {APP_LABEL: serve.app_name, **PART_OF}},
        "spec": spec,
    }


def render(
    cfg,
    adapter_uri: str,
    version: str | int,
    *,
    adapter_sha256: str,
    stable_uri: Optional[str] = None,
    stable_version: Optional[str | int] = None,
    stable_sha256: Optional[str] = None,
    canary_weight: int = 0,
) -> list[dict[str, Any]]:
    """Every serving manifest, in the order to apply them.

    The canary serves `adapter_uri` (model version `version`, manifest digest
    `adapter_sha256`); the stable track serves `stable_uri`/`stable_version`/`stable_sha256`
    (the champion), or the same adapter on a first rollout.
    """
    canary = Adapter(str(adapter_uri), str(version), str(adapter_sha256 or ""))
    stable_given = [stable_uri is not None, stable_version is not None, stable_sha256 is not None]
    if any(stable_given) and not all(stable_given):
        raise ServingConfigError("--stable-uri, --stable-version, --stable-sha256: give all three (the champion) "
                                 "or none (a first rollout)")
    stable = Adapter(str(stable_uri), str(stable_version), str(stable_sha256)) if stable_uri else canary
    check(cfg, canary, stable, canary_weight)
    adapters = {"stable": stable, "canary": canary}
    manifests = [deployment(cfg, track, adapters[track]) for track in TRACKS]
    manifests += [service(cfg, track) for track in TRACKS]
    manifests += [disruption_budget(cfg, track) for track in TRACKS]
    manifests.append(http_route(cfg, canary_weight))
    return manifests

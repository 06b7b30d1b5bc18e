"""vLLM stable/canary Deployments, Services, PDBs and the weighted HTTPRoute, strictly validated."""

import copy
import os
import subprocess
import sys

import pytest
import yaml
from pathlib import Path

from modelchain.serving import manifests
from modelchain.serving.manifests import ServingConfigError
from modelchain.core.config import compose
from modelchain.core import manifest_validation

from ..crds import crd_dir

STORE = "s3://modelchain-mlflow/artifacts"
CANARY_URI = f"{STORE}/1/5f0c2a9e7b3d4e61a8c2d9f0b1e3a745/artifacts/adapter"
STABLE_URI = f"{STORE}/1/0a4d7c1b9e2f4386b5a1c8d3e7f90b26/artifacts/adapter"
CANARY_SHA = "c4" * 32  # the versions' lineage.adapter_sha256
STABLE_SHA = "5b" * 32
ADAPTER = "smollm2-135m-instruct-ticket-routing"  # the registered model: <model.name>-<data.task>
EKS = ["cluster=eks", "serve=eks"]


@pytest.fixture(scope="module")
def cfg():
    return compose("finetune", EKS)


@pytest.fixture(scope="module")
def rendered(cfg):
    found = manifests.render(cfg, CANARY_URI, 4, adapter_sha256=CANARY_SHA, stable_uri=STABLE_URI, stable_version=3,
                             stable_sha256=STABLE_SHA, canary_weight=10)
    return {manifest_validation.file_name(m): m for m in found}


def container(deployment, name="vllm"):
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec["initContainers"] if c["name"] == name)


def arg(args, flag):
    return args[args.index(flag) + 1]


def test_renders_both_tracks_services_budgets_and_the_route(rendered):
    assert list(rendered) == [
        "deployment-vllm-stable.yaml", "deployment-vllm-canary.yaml",
        "service-vllm-stable.yaml", "service-vllm-canary.yaml",
        "poddisruptionbudget-vllm-stable.yaml", "poddisruptionbudget-vllm-canary.yaml",
        "httproute-vllm.yaml",
    ]
    assert {m["metadata"]["namespace"] for m in rendered.values()} == {"kubeflow-user"}


def test_every_manifest_validates_strictly(rendered):
    manifest_validation.validate_all(rendered.values(), crd_dir())


def test_vllm_serves_the_adapter_under_one_public_name(rendered):
    for track, version in (("stable", "3"), ("canary", "4")):
        deployment = rendered[f"deployment-vllm-{track}.yaml"]
        vllm = container(deployment)
        args = vllm["args"]
        assert vllm["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        assert vllm["image"] == "vllm/vllm-openai:v0.11.0"
        assert "--enable-lora" in args
        assert arg(args, "--lora-modules") == f"{ADAPTER}=/adapters/{ADAPTER}"
        assert arg(args, "--max-loras") == "4" and arg(args, "--max-lora-rank") == "64"
        assert arg(args, "--served-model-name") == "modelchain"
        assert arg(args, "--model") == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert arg(args, "--tensor-parallel-size") == "1" and arg(args, "--port") == "8000"
        template = deployment["spec"]["template"]
        assert template["metadata"]["labels"]["modelchain.io/adapter-version"] == version
        assert template["metadata"]["labels"]["modelchain.io/track"] == track


def test_init_container_syncs_the_version_from_the_artifact_store(rendered):
    for track, uri in (("stable", STABLE_URI), ("canary", CANARY_URI)):
        deployment = rendered[f"deployment-vllm-{track}.yaml"]
        fetch = container(deployment, "fetch-adapter")
        assert fetch["image"] == "amazon/aws-cli:2.22.0"
        assert fetch["command"] == ["aws", "s3", "sync", "--only-show-errors", uri + "/", f"/adapters/{ADAPTER}/"]
        # Credentials by secret name only (cluster.secret_env's AWS_* entries).
        assert fetch["env"] == [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "mlflow-s3", "key": "AWS_ACCESS_KEY_ID"}}},
            {"name": "AWS_SECRET_ACCESS_KEY",
             "valueFrom": {"secretKeyRef": {"name": "mlflow-s3", "key": "AWS_SECRET_ACCESS_KEY"}}},
        ]
        spec = deployment["spec"]["template"]["spec"]
        assert {"name": "adapters", "emptyDir": {"sizeLimit": "4Gi"}} in spec["volumes"]
        assert {"name": "adapters", "mountPath": "/adapters"} in fetch["volumeMounts"]
        assert {"name": "adapters", "mountPath": "/adapters", "readOnly": True} in container(deployment)["volumeMounts"]
        assert deployment["spec"]["template"]["metadata"]["annotations"]["modelchain.io/adapter-uri"] == uri


def test_an_init_container_proves_the_adapter_after_the_sync(rendered):
    for track, sha in (("stable", STABLE_SHA), ("canary", CANARY_SHA)):
        deployment = rendered[f"deployment-vllm-{track}.yaml"]
        spec = deployment["spec"]["template"]["spec"]
        assert [c["name"] for c in spec["initContainers"]] == ["fetch-adapter", "verify-adapter"]  # in this order
        verify = container(deployment, "verify-adapter")
        assert verify["image"] == "ghcr.io/modelchain/modelchain:0.1.0"  # the components image (cluster.image)
        assert verify["command"] == ["python3", "-m", "modelchain.serving.verify_adapter", f"/adapters/{ADAPTER}",
                                     "--sha256", sha]
        assert verify["volumeMounts"] == [{"name": "adapters", "mountPath": "/adapters", "readOnly": True}]
        assert "env" not in verify  # it reads the synced folder only: no credentials
        assert deployment["spec"]["template"]["metadata"]["annotations"]["modelchain.io/adapter-sha256"] == sha


def test_the_verify_container_is_pinned_like_the_steps():
    cfg = compose("finetune", EKS + ["cluster.image_digest=sha256:" + "ab" * 32])
    verify = container(manifests.render(cfg, CANARY_URI, 2, adapter_sha256=CANARY_SHA)[0], "verify-adapter")
    assert verify["image"] == "ghcr.io/modelchain/modelchain:0.1.0@sha256:" + "ab" * 32


def test_gpu_resources_probes_and_metrics(rendered):
    deployment = rendered["deployment-vllm-canary.yaml"]
    vllm = container(deployment)
    assert vllm["resources"]["requests"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert vllm["resources"]["limits"] == {"memory": "32Gi", "nvidia.com/gpu": "1"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # Twenty minutes to load the base model before liveness may restart the pod.
    assert vllm["startupProbe"]["periodSeconds"] * vllm["startupProbe"]["failureThreshold"] == 1200
    assert vllm["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations.items() >= {"prometheus.io/scrape": "true", "prometheus.io/port": "8000",
                                   "prometheus.io/path": "/metrics"}.items()
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_pods_land_on_the_karpenter_inference_pool(cfg, rendered):
    pool = cfg.cluster.karpenter.node_pools.inference
    for track in ("stable", "canary"):
        spec = rendered[f"deployment-vllm-{track}.yaml"]["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"karpenter.sh/nodepool": "gpu-inference"} == {"karpenter.sh/nodepool": pool.name}
        assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "true",
                                        "effect": "NoSchedule"}]
    # Every taint of the pool is tolerated, or the pods would stay pending.
    for taint in pool.taints:
        assert any(t["key"] == taint.key and t["effect"] == taint.effect for t in spec["tolerations"])


def test_replicas_services_and_disruption_budgets(rendered):
    assert rendered["deployment-vllm-stable.yaml"]["spec"]["replicas"] == 2
    assert rendered["deployment-vllm-canary.yaml"]["spec"]["replicas"] == 1
    for track in ("stable", "canary"):
        selector = {"app.kubernetes.io/name": "vllm", "modelchain.io/track": track}
        assert rendered[f"deployment-vllm-{track}.yaml"]["spec"]["selector"] == {"matchLabels": selector}
        service = rendered[f"service-vllm-{track}.yaml"]["spec"]
        assert service["selector"] == selector
        assert service["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
        assert rendered[f"poddisruptionbudget-vllm-{track}.yaml"]["spec"]["selector"] == {"matchLabels": selector}
    assert rendered["poddisruptionbudget-vllm-stable.yaml"]["spec"]["minAvailable"] == 1
    assert rendered["poddisruptionbudget-vllm-canary.yaml"]["spec"]["maxUnavailable"] == 0


def test_route_splits_by_weight_between_the_services(rendered):
    route = rendered["httproute-vllm.yaml"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": "modelchain-gateway", "namespace": "gateway-system"}]
    (rule,) = route["spec"]["rules"]
    assert [(ref["name"], ref["port"], ref["weight"]) for ref in rule["backendRefs"]] == [
        ("vllm-stable", 8000, 90), ("vllm-canary", 8000, 10)]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert rule["timeouts"] == {"request": "300s"}


def test_first_rollout_serves_the_candidate_on_both_tracks_with_all_traffic_on_stable(cfg):
    found = {manifest_validation.file_name(m): m for m in manifests.render(cfg, CANARY_URI, 1, adapter_sha256=CANARY_SHA)}
    for track in ("stable", "canary"):
        assert container(found[f"deployment-vllm-{track}.yaml"], "fetch-adapter")["command"][4] == CANARY_URI + "/"
    weights = [ref["weight"] for ref in found["httproute-vllm.yaml"]["spec"]["rules"][0]["backendRefs"]]
    assert weights == [100, 0]


def test_base_model_on_fsx_is_mounted_read_only():
    cfg = compose("finetune", EKS + ["model=llama3_8b", "train=cluster_8gpu"])
    deployment = manifests.render(cfg, CANARY_URI, 2, adapter_sha256=CANARY_SHA)[0]
    spec = deployment["spec"]["template"]["spec"]
    assert arg(container(deployment)["args"], "--model") == "/fsx/models/Meta-Llama-3-8B-Instruct"
    assert {"name": "fsx", "persistentVolumeClaim": {"claimName": "fsx-modelchain", "readOnly": True}} in spec["volumes"]
    assert {"name": "fsx", "mountPath": "/fsx", "readOnly": True} in container(deployment)["volumeMounts"]


def test_named_secrets_and_extra_placement():
    cfg = compose("finetune", EKS + [
        "serve.s3_secret=adapter-reader", "serve.hf_token_secret=hf-token", "serve.service_account=vllm",
        "++serve.node_selector={node.kubernetes.io/instance-type: g6.12xlarge}", "serve.gpus=4",
        "++serve.tolerations=[{key: workload-type, value: inference}]",
    ])
    found = manifests.render(cfg, CANARY_URI, 2, adapter_sha256=CANARY_SHA)
    deployment = found[0]
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "vllm"
    assert spec["nodeSelector"] == {"karpenter.sh/nodepool": "gpu-inference", "node.kubernetes.io/instance-type": "g6.12xlarge"}
    assert {"key": "workload-type", "operator": "Equal", "value": "inference", "effect": "NoSchedule"} in spec["tolerations"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in container(deployment, "fetch-adapter")["env"]} == {"adapter-reader"}
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in container(deployment)["env"]
    assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert arg(container(deployment)["args"], "--tensor-parallel-size") == "4"
    manifest_validation.validate_all(found, crd_dir())


def changed(cfg, values):
    """A copy of `cfg` with `values` set: typed like a composed override, without composing again."""
    from omegaconf import OmegaConf

    copy_ = copy.deepcopy(cfg)
    OmegaConf.set_readonly(copy_, False)
    for key, value in values.items():
        OmegaConf.update(copy_, key, value, merge=False)
    return copy_


@pytest.mark.parametrize(
    ("values", "kwargs", "key"),
    [
        ({"serve.max_lora_rank": 48}, {}, "serve.max_lora_rank: vLLM accepts 1, 8, 16"),
        ({"serve.max_lora_rank": 8, "train.lora.rank": 16}, {}, "serve.max_lora_rank: 8 is below train.lora.rank (16)"),
        ({"serve.gpus": 0}, {}, "serve.gpus: must be >= 1"),
        ({"serve.min_available": 2}, {}, "serve.min_available: must be >= 0 and below serve.replicas (2)"),
        ({"serve.node_pool": "cpu"}, {}, "serve.node_pool: 'cpu' is not a pool of cluster.karpenter.node_pools"),
        ({"serve.memory": "lots"}, {}, "serve.memory: 'lots' is not a Kubernetes quantity"),
        ({"serve.request_timeout": "5 minutes"}, {}, "serve.request_timeout: '5 minutes' is not a Gateway API duration"),
        ({"serve.app_name": "vLLM_serving"}, {}, "serve.app_name: 'vLLM_serving' must be a DNS label"),
        ({"serve.base_model": "/home/me/llama"}, {}, "serve.base_model: /home/me/llama is a path the pods cannot read"),
        ({}, {"adapter_uri": "/tmp/adapter"}, "--adapter-uri: '/tmp/adapter': the init container syncs from S3"),
        ({}, {"adapter_uri": "s3://other-bucket/adapter"}, "--adapter-uri: s3://other-bucket/adapter is outside the "
                                                           "registry's artifact store s3://modelchain-mlflow/artifacts"),
        ({}, {"version": "latest"}, "--version: a model version number"),
        ({}, {"stable_uri": STABLE_URI}, "--stable-uri, --stable-version, --stable-sha256: give all three"),
        ({}, {"stable_uri": STABLE_URI, "stable_version": 3}, "--stable-uri, --stable-version, --stable-sha256: give all"),
        ({}, {"adapter_sha256": ""}, "--adapter-sha256: the model version's lineage.adapter_sha256 (64 hex digits"),
        ({}, {"adapter_sha256": "C4" * 32}, "--adapter-sha256: the model version's lineage.adapter_sha256"),
        ({}, {"stable_uri": STABLE_URI, "stable_version": 3, "stable_sha256": "abc"},
         "--stable-sha256: the model version's lineage.adapter_sha256"),
        ({}, {"canary_weight": 120}, "--canary-weight: must be 0 to 100"),
    ],
)
def test_bad_values_name_their_key(cfg, values, kwargs, key):
    args = {"adapter_uri": CANARY_URI, "version": 4, "adapter_sha256": CANARY_SHA, **kwargs}
    with pytest.raises(ServingConfigError) as error:
        manifests.render(changed(cfg, values), args.pop("adapter_uri"), args.pop("version"), **args)
    assert str(error.value).startswith(key)


def test_local_cluster_is_refused():
    with pytest.raises(ServingConfigError, match="cluster.kind: serving manifests need cluster=eks"):
        manifests.render(compose("finetune", []), CANARY_URI, 1, adapter_sha256=CANARY_SHA)


def test_an_invalid_manifest_names_file_and_field(rendered):
    bad = copy.deepcopy(list(rendered.values()))
    bad[-1]["spec"]["rules"][0]["backendRefs"][1]["weight"] = -1
    bad[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(manifest_validation.ManifestError) as error:
        manifest_validation.validate_all(bad, crd_dir())
    text = str(error.value)
    assert "httproute-vllm.yaml (HTTPRoute vllm): spec.rules[0].backendRefs[1].weight: -1 is less than the minimum of 0" in text
    assert "deployment-vllm-stable.yaml (Deployment vllm-stable)" in text and "httpGett" in text


# --------------------------------------------------------------------------- the CLI
def modelchain(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "modelchain.pipelines.cli", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300,
    )


def test_render_serving_writes_validated_manifests(tmp_path):
    out = modelchain("render", "serving", "serve.rollout=pool", "--adapter-uri", CANARY_URI, "--version", "4", "--adapter-sha256", CANARY_SHA,
                     "--stable-uri", STABLE_URI, "--stable-version", "3", "--stable-sha256", STABLE_SHA,
                     "--canary-weight", "5",
                     "--out", str(tmp_path), "--crd-dir", str(crd_dir()))
    assert out.returncode == 0, out.stderr
    names = ["deployment-vllm-stable.yaml", "deployment-vllm-canary.yaml", "service-vllm-stable.yaml",
             "service-vllm-canary.yaml", "poddisruptionbudget-vllm-stable.yaml",
             "poddisruptionbudget-vllm-canary.yaml", "httproute-vllm.yaml"]
    assert out.stdout.split() == [str(tmp_path / n) for n in names]
    written = [yaml.safe_load((tmp_path / n).read_text()) for n in names]
    manifest_validation.validate_all(written, crd_dir())
    assert [ref["weight"] for ref in written[-1]["spec"]["rules"][0]["backendRefs"]] == [95, 5]
    assert "&id" not in (tmp_path / names[0]).read_text()  # plain YAML, no anchors


def test_render_serving_of_an_adapter_rollout_writes_the_pool_and_refuses_two_pool_flags(tmp_path):
    out = modelchain("render", "serving", "--adapter-uri", CANARY_URI, "--version", "4", "--adapter-sha256", CANARY_SHA,
                     "--out", str(tmp_path / "pool"), "--crd-dir", str(crd_dir()))
    assert out.returncode == 0, out.stderr
    kinds = [yaml.safe_load(Path(line).read_text())["kind"] for line in out.stdout.split()]
    assert kinds == ["Deployment", "PodDisruptionBudget", "InferencePool", "InferenceModelRewrite",
                     "InferenceObjective", "HTTPRoute"]
    out = modelchain("render", "serving", "--adapter-uri", CANARY_URI, "--version", "4", "--adapter-sha256", CANARY_SHA,
                     "--stable-uri", STABLE_URI, "--out", str(tmp_path / "two"), "--crd-dir", str(crd_dir()))
    assert out.returncode == 2 and "serve.rollout=pool" in out.stderr
    assert not (tmp_path / "two").exists()


def test_render_serving_refuses_bad_input_and_writes_nothing(tmp_path):
    out = modelchain("render", "serving", "--out", str(tmp_path / "a"))
    assert out.returncode == 2 and "--adapter-uri URI, --version N and --adapter-sha256 DIGEST" in out.stderr
    out = modelchain("render", "serving", "serve.max_lora_rank=48", "--adapter-uri", CANARY_URI, "--version", "4",
                     "--adapter-sha256", CANARY_SHA, "--out", str(tmp_path / "b"), "--crd-dir", str(crd_dir()))
    assert out.returncode == 2 and "serve.max_lora_rank" in out.stderr
    out = modelchain("render", "serving", "serve.request_timeot=5s", "--adapter-uri", CANARY_URI, "--version", "4",
                     "--adapter-sha256", CANARY_SHA, "--out", str(tmp_path / "c"))
    assert out.returncode == 2 and "serve.request_timeot" in out.stderr
    assert not any((tmp_path / d).exists() for d in "abc")

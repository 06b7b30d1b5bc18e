"""When the canary step runs, and where it sits in the finetune pipeline."""

import json

import pytest

from modelchain.components.canary import logic
from modelchain.core.config import compose, group_json, load_group
from modelchain.serving import local_adapter, local_vllm
from modelchain.serving.backend import backend_class, make_backend
from modelchain.serving.local_stack import zero_adapter


def groups(*overrides):
    """The typed serve, model and cluster groups the canary step receives."""
    cfg = compose("finetune", list(overrides))
    return tuple(load_group(group, group_json(cfg, group)) for group in ("serve", "model", "cluster"))


def skip_reason(*overrides, base_model=None):
    serve, model, cluster = groups(*overrides)
    if base_model is not None:
        backend = backend_class(serve.engine, serve.rollout)(serve, cluster, model, base_model=base_model)
    else:
        backend = make_backend(serve, cluster, model)
    return logic.skip_reason(serve, backend)


# Each local rollout kind and the name its backend asks for the missing tools.
LOCAL_ROLLOUTS = {"adapter": (local_adapter, "missing_adapter_tools"), "pool": (local_vllm, "missing_tools")}


def model_dir(tmp_path, hidden, heads):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": hidden, "num_attention_heads": heads}))
    return tmp_path


@pytest.mark.parametrize("rollout", LOCAL_ROLLOUTS)
def test_enabled_false_auto_and_true(tmp_path, monkeypatch, rollout):
    module, tools = LOCAL_ROLLOUTS[rollout]
    kind = f"serve.rollout={rollout}"
    assert skip_reason(kind, "serve.canary.enabled=false") == "serve.canary.enabled=false"
    # a model with head size 16 cannot be served by vLLM's CPU attention: auto skips, true refuses
    monkeypatch.setattr(module, tools, lambda python: [])
    tiny = model_dir(tmp_path / "tiny", 64, 4)
    assert "head size 16" in skip_reason(kind, base_model=tiny)
    with pytest.raises(RuntimeError, match="serve.canary.enabled=true but vLLM's CPU attention"):
        skip_reason(kind, "serve.canary.enabled=true", base_model=tiny)
    assert skip_reason(kind, base_model=model_dir(tmp_path / "smol", 576, 9)) is None  # SmolLM2: 64
    # without the serving stack: auto skips and says what is missing, true refuses
    monkeypatch.setattr(module, tools, lambda python: ["prometheus"])
    assert "not installed (prometheus)" in skip_reason(kind)
    with pytest.raises(RuntimeError, match="prometheus"):
        skip_reason(kind, "serve.canary.enabled=true")
    # the cluster path does not need the local stack
    assert skip_reason("cluster=eks", "serve=eks", kind) is None


def test_serve_engine_picks_the_backend():
    assert type(make_backend(*_serve_cluster_model())).name == "local-vllm"
    assert type(make_backend(*_serve_cluster_model("cluster=eks"))).name == "k8s-vllm"  # serve follows cluster
    assert type(make_backend(*_serve_cluster_model("cluster=eks", "serve=local"))).name == "local-vllm"
    with pytest.raises(Exception, match=r"serve.engine: unknown engine 'nope' \(registered: local-vllm, k8s-vllm\)"):
        compose("finetune", ["serve.engine=nope"])


def _serve_cluster_model(*overrides):
    serve, model, cluster = groups(*overrides)
    return serve, cluster, model


def test_skipped_canary_writes_its_reason(tmp_path):
    out = tmp_path / "rollout"
    result = logic.run(*groups("serve.canary.enabled=false"), "models:/m/1", tmp_path, out)
    assert result["outcome"] == "skipped"
    assert json.loads((out / "rollout.json").read_text())["reason"] == "serve.canary.enabled=false"
    with pytest.raises(ValueError, match="must name a version"):
        logic.run(*groups("serve.canary.enabled=false"), "models:/m@champion", tmp_path, out)


def test_zero_adapter_keeps_the_shape_and_zeroes_the_weights(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    save_file({"a.lora_A.weight": torch.ones(8, 4), "a.lora_B.weight": torch.ones(4, 8)}, str(candidate / "adapter_model.safetensors"))
    zero = zero_adapter(candidate, tmp_path / "zero")
    weights = load_file(str(zero / "adapter_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {"a.lora_A.weight": (8, 4), "a.lora_B.weight": (4, 8)}
    assert all(float(v.abs().sum()) == 0.0 for v in weights.values())
    assert (zero / "adapter_config.json").read_text() == (candidate / "adapter_config.json").read_text()


def test_the_pipeline_runs_the_canary_after_register(tmp_path):
    from kfp import compiler

    from modelchain.pipelines.finetune import build

    path = tmp_path / "finetune.yaml"
    compiler.Compiler().compile(build(compose("finetune", [])), str(path))
    text = path.read_text()
    assert "comp-canary" in text
    import yaml

    spec = yaml.safe_load(text)
    branch = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert branch["canary"]["dependentTasks"] == ["register"]
    assert branch["canary"]["inputs"]["parameters"]["model_uri"]["taskOutputParameter"]["producerTask"] == "register"


def test_the_kubernetes_backend_drives_the_rendered_route():
    from modelchain.serving.backend import Rollout
    from modelchain.serving.k8s_vllm import KubernetesVllmBackend

    serve, model, cluster = groups("cluster=eks", "serve.rollout=pool")
    backend = KubernetesVllmBackend(serve, cluster, model, api=object())
    with pytest.raises(ValueError, match="serve.canary.prometheus_url"):
        backend.start(Rollout("m", "2"))
    serve, model, cluster = groups("cluster=eks", "serve.rollout=pool", "serve.canary.prometheus_url=http://prometheus:9090")
    backend = KubernetesVllmBackend(serve, cluster, model, api=object())
    backend.start(Rollout("m", "2"))
    assert backend.router.describe().startswith(f"HTTPRoute {cluster.namespace}/{serve.route_name} ")
    assert backend.router.services == {"stable": "vllm-stable", "canary": "vllm-canary"}
    assert backend.analysis().selectors == {"stable": serve.canary.stable_selector, "canary": serve.canary.canary_selector}
    # a promotion rolls the stable Deployment to the candidate (test_pool_rollout.py), then the route moves back
    assert backend.promote_serving is not None and not backend.replays_traffic

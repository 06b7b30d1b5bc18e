"""When the canary step runs, and where it sits in the finetune pipeline."""

import json

import pytest

from modelchain.components.canary import logic
from modelchain.serving.local_stack import zero_adapter
from modelchain.core.config import compose, to_container


def settings(*overrides):
    return to_container(compose("finetune", list(overrides)))


def model_dir(tmp_path, hidden, heads):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": hidden, "num_attention_heads": heads}))
    return tmp_path


def test_enabled_false_auto_and_true(tmp_path, monkeypatch):
    assert logic.skip_reason(settings("serve.canary.enabled=false")) == "serve.canary.enabled=false"
    # a tiny test model (head size 16) cannot be served by vLLM's CPU attention: auto skips, true refuses
    monkeypatch.setattr(logic, "missing_tools", lambda python: [])
    tiny = model_dir(tmp_path / "tiny", 64, 4)
    assert "head size 16" in logic.skip_reason(settings(), tiny)
    with pytest.raises(RuntimeError, match="serve.canary.enabled=true but vLLM's CPU attention"):
        logic.skip_reason(settings("serve.canary.enabled=true"), tiny)
    assert logic.skip_reason(settings(), model_dir(tmp_path / "smol", 576, 9)) is None  # SmolLM2: 64
    # without the serving stack: auto skips and says what is missing, true refuses
    monkeypatch.setattr(logic, "missing_tools", lambda python: ["prometheus"])
    assert "not installed (prometheus)" in logic.skip_reason(settings())
    with pytest.raises(RuntimeError, match="needs prometheus"):
        logic.skip_reason(settings("serve.canary.enabled=true"))
    # the cluster path does not need the local stack
    assert logic.skip_reason(settings("cluster=eks", "serve=eks")) is None


def test_skipped_canary_writes_its_reason(tmp_path):
    out = tmp_path / "rollout"
    result = logic.run(settings("serve.canary.enabled=false"), "models:/m/1", tmp_path, out)
    assert result["outcome"] == "skipped"
    assert json.loads((out / "rollout.json").read_text())["reason"] == "serve.canary.enabled=false"
    with pytest.raises(ValueError, match="must name a version"):
        logic.run(settings("serve.canary.enabled=false"), "models:/m@champion", tmp_path, out)


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

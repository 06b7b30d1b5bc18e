"""Bad input to an adapter-level rollout: one clear error before anything is loaded or moved."""

import json

import pytest

from modelchain.core.config import ConfigError, compose
from modelchain.serving.local_vllm import check_base_model


@pytest.mark.parametrize("steps, why", [
    ("[10,50,25,100]", "increasing"),
    ("[10,25,50]", "ending at 100"),
    ("[0,100]", "1..100"),
])
def test_canary_steps_must_increase_and_end_at_100(steps, why):
    with pytest.raises(ConfigError, match=rf"serve.canary_steps: .*{why}"):
        compose("finetune", [f"serve.canary_steps={steps}"])


@pytest.mark.parametrize("name", ["support-v2", "support-base"])
def test_a_served_name_that_clashes_with_a_versioned_name_is_refused(name):
    with pytest.raises(ConfigError, match=rf"serve.served_model_name: '{name}' clashes"):
        compose("finetune", [f"serve.served_model_name={name}"])


def test_an_unknown_rollout_kind_is_refused():
    with pytest.raises(ConfigError, match="serve.rollout: must be adapter or pool, got 'blue-green'"):
        compose("finetune", ["serve.rollout=blue-green"])


def adapter_on(tmp_path, base):
    folder = tmp_path / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 8}))
    return folder


def test_a_candidate_trained_on_another_base_model_is_refused(tmp_path):
    served = tmp_path / "models" / "smollm2-135m-instruct"
    served.mkdir(parents=True)
    check_base_model(adapter_on(tmp_path / "a", str(served)), served, "models:/m/2")  # the same folder
    check_base_model(adapter_on(tmp_path / "b", "HuggingFaceTB/SmolLM2-135M-Instruct"), served, "models:/m/2")
    with pytest.raises(ValueError, match=r"models:/m/3 was trained on base model 'Qwen/Qwen2.5-0.5B' .* serve.rollout=pool"):
        check_base_model(adapter_on(tmp_path / "c", "Qwen/Qwen2.5-0.5B"), served, "models:/m/3")

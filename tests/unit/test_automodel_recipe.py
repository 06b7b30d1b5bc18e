"""The NeMo AutoModel recipe family rendered from the config (no nemo-automodel needed here;
tests/integration/test_automodel_check.py runs the real library on what this renders)."""

import json

import pytest

from modelchain.core.config import ConfigError, compose
from modelchain.training import pytorchjob
from modelchain.training.automodel_recipe import CHECKPOINTS, automodel_recipe
from modelchain.training.lora_targets import check_adapter

AUTOMODEL = ["cluster=eks", "model=smollm2_135m", "train=cluster_8gpu", "train.nemo.recipe_family=automodel"]


def spec_of(overrides):
    return pytorchjob.nemo_spec(compose("finetune", overrides), "smollm2-lora-t1")


def test_the_recipe_is_rendered_from_the_same_spec_as_nemo2():
    spec = spec_of(AUTOMODEL)
    assert spec["recipe_family"] == "automodel" and spec["hf_model"] == "/fsx/models/SmolLM2-135M-Instruct"
    recipe = automodel_recipe(spec)
    assert recipe["recipe"] == "TrainFinetuneRecipeForNextTokenPrediction"
    assert recipe["model"]["pretrained_model_name_or_path"] == spec["hf_model"]
    assert recipe["peft"]["target_modules"] == ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.gate_proj",
                                                "*.up_proj", "*.down_proj"]
    assert (recipe["peft"]["dim"], recipe["peft"]["alpha"], recipe["peft"]["dropout"]) == (16, 32, 0.05)
    steps = recipe["step_scheduler"]
    assert (steps["global_batch_size"], steps["local_batch_size"], steps["max_steps"]) == (
        spec["global_batch_size"], spec["micro_batch_size"], spec["max_steps"])
    assert recipe["distributed"]["tp_size"] == spec["tensor_parallel"] and recipe["dist_env"]["backend"] == "nccl"
    assert recipe["dataset"]["path_or_dataset_id"] == f"{spec['dataset_root']}/train.jsonl"
    assert recipe["validation_dataset"]["path_or_dataset_id"] == f"{spec['dataset_root']}/val.jsonl"
    assert recipe["checkpoint"]["checkpoint_dir"] == f"{spec['log_dir']}/{CHECKPOINTS}"
    assert recipe["optimizer"]["lr"] == spec["learning_rate"]


def test_automodel_takes_a_model_no_nemo2_recipe_builds():
    # SmolLM2 with no NeMo 2 recipe named: refused for nemo2, built by AutoModel from its folder.
    with pytest.raises(ValueError, match="model.nemo_recipe"):
        spec_of(["cluster=eks", "model=smollm2_135m", "train=cluster_8gpu", "model.nemo_recipe=null"])
    assert spec_of(AUTOMODEL + ["model.nemo_recipe=null"])["recipe_family"] == "automodel"
    with pytest.raises(ConfigError, match=r"^train.nemo.recipe_family: must be one of nemo2, automodel, got 'megatron'"):
        compose("finetune", ["train.nemo.recipe_family=megatron"])


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    # Config validation refuses such a batch for the job; the renderer checks its own inputs too
    # (a spec edited by hand, or a per-device batch given to it).
    spec = {**spec_of(AUTOMODEL), "global_batch_size": 12}
    with pytest.raises(ValueError, match=r"= 12 is not a multiple of the per-device batch 1 x 8 data-parallel ranks"):
        automodel_recipe(spec)


def test_the_adapter_contract_reads_full_module_paths(tmp_path):
    spec = {"lora": {"dim": 8, "target_modules": ["linear_qkv", "linear_proj"]}}
    names = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": names}))
    assert check_adapter(tmp_path, spec)["r"] == 8
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": names[:3]}))
    with pytest.raises(ValueError, match="expected"):
        check_adapter(tmp_path, spec)

"""The real NeMo 2.x LoRA recipe built from our config, serialized, and dry-run for torchrun.

Runs in .venv-nemo. No GPU is needed: the recipe is configuration until it is built, and
nemo_run's dry run resolves and packages it for 8 processes a node without launching them.
"""

import json

import pytest

from modelchain.core.config import compose
from modelchain.training import nemo_entrypoint, pytorchjob

CASES = {
    "llama3_8b_2x8": ["cluster=eks", "model=llama3_8b", "train=cluster_8gpu"],
    # SmolLM2 has no recipe of its own: hf_llama builds it from its config.json (written below).
    "hf_llama_smollm2_1x8": ["cluster=eks", "model=smollm2_135m", "train=demo", "train.procs_per_node=8",
                             "train.nemo.packed_sequences=false", "train.lora.target_modules=[linear_qkv,linear_proj]"],
}
# SmolLM2-135M-Instruct's config.json (HuggingFaceTB/SmolLM2-135M-Instruct), as it lies on FSx.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 100000, "tie_word_embeddings": True,
    "initializer_range": 0.041666666666666664, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("SmolLM2-135M-Instruct")
    (folder / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    return folder


@pytest.fixture
def nemorun_home(tmp_path, monkeypatch):
    """A throw-away NEMORUN_HOME (nemo_run reads the variable once, at import)."""
    from nemo_run import config

    home = tmp_path / "nemo_run"
    monkeypatch.setenv("NEMORUN_HOME", str(home))
    before = config.get_nemorun_home()
    config.set_nemorun_home(str(home))
    yield home
    config.set_nemorun_home(before)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, smollm2_dir):
    overrides = CASES[request.param] + ([f"model.cluster_path={smollm2_dir}"] if "smollm2" in request.param else [])
    cfg = compose("finetune", overrides)
    spec = pytorchjob.nemo_spec(cfg, f"t-{request.param.replace('_', '-')}")
    return cfg, spec, nemo_entrypoint.build_recipe(spec)


def test_recipe_follows_the_config(case):
    cfg, spec, recipe = case
    from nemo.collections import llm

    assert recipe.__fn_or_cls__ is llm.finetune
    train = cfg.train
    assert recipe.peft.dim == train.lora.rank and recipe.peft.alpha == train.lora.alpha
    assert recipe.peft.dropout == train.lora.dropout and recipe.peft.dropout_position == "pre"
    assert list(recipe.peft.target_modules) == list(train.lora.target_modules)
    strategy = recipe.trainer.strategy
    assert strategy.tensor_model_parallel_size == train.tensor_parallel
    assert strategy.pipeline_model_parallel_size == train.pipeline_parallel
    assert (recipe.trainer.num_nodes, recipe.trainer.devices) == (train.nodes, train.procs_per_node)
    assert recipe.trainer.max_steps == train.max_steps
    assert recipe.data.__fn_or_cls__ is llm.FineTuningDataModule
    assert recipe.data.global_batch_size == train.batch_size * train.grad_accum
    assert recipe.data.micro_batch_size == train.nemo.micro_batch_size
    assert recipe.data.seq_length == recipe.model.config.seq_length == train.max_seq_len
    assert recipe.data.dataset_root == spec["dataset_root"]
    if train.nemo.packed_sequences:
        assert recipe.data.packed_sequence_specs.packed_sequence_size == train.max_seq_len
        assert recipe.data.packed_sequence_specs.packed_train_data_path.endswith("/training.npy")
    else:
        assert recipe.data.packed_sequence_specs is None
    assert recipe.optim.config.lr == train.learning_rate


def test_each_recipe_builds_its_own_model(case):
    cfg, spec, recipe = case
    from nemo.collections.llm.gpt.model.llama import Llama3Config8B, LlamaConfig

    config = recipe.model.config
    if cfg.model.nemo_recipe == "llama3_8b":
        assert config.__fn_or_cls__ is Llama3Config8B
        return
    # SmolLM2-135M's shape, from its config.json, not Llama-3.2-1B's (16 layers, 2048 wide).
    assert config.__fn_or_cls__ is LlamaConfig
    assert (config.num_layers, config.hidden_size, config.ffn_hidden_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_query_groups) == (9, 3)
    assert config.vocab_size == 49152 and config.share_embeddings_and_output_weights is True
    assert config.rotary_base == 100000 and config.seq_length == cfg.train.max_seq_len
    assert spec["hf_model"] == str(cfg.model.cluster_path) and spec["hf_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_family_recipe_refuses_another_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**SMOLLM2_CONFIG, "model_type": "qwen2"}))
    cfg = compose("finetune", CASES["hf_llama_smollm2_1x8"] + [f"model.cluster_path={tmp_path}"])
    with pytest.raises(ValueError, match="model_type is 'qwen2'; the hf_llama recipe builds llama models"):
        nemo_entrypoint.build_recipe(pytorchjob.nemo_spec(cfg, "t-qwen"))


def test_checkpoints_and_resume_live_on_fsx(case):
    _, spec, recipe = case
    assert recipe.log.explicit_log_dir == spec["log_dir"] and spec["log_dir"].startswith("/fsx/")
    assert recipe.log.ckpt.every_n_train_steps == min(spec["checkpoint_every"], spec["max_steps"])
    assert recipe.resume.resume_if_exists is True and recipe.resume.resume_ignore_no_checkpoint is True
    assert recipe.resume.resume_from_directory == f"{spec['log_dir']}/checkpoints"
    assert recipe.resume.restore_config.path == f"/fsx/modelchain/nemo/models/{spec['model_name']}"
    callbacks = {c.__fn_or_cls__.__name__ for c in recipe.trainer.callbacks}
    assert "PreemptionCallback" in callbacks


def test_recipe_serializes(case):
    _, _, recipe = case
    from nemo_run.core.serialization.yaml import YamlSerializer

    text = YamlSerializer().serialize(recipe)
    assert "FineTuningDataModule" in text and "LoRA" in text


def _torchrun_app(capfd) -> str:
    """The dry run's printed torchx app, without the line wrapping of its console."""
    return "".join(capfd.readouterr().out.split())


def test_dry_run_for_torchrun(case, nemorun_home, capfd):
    _, spec, recipe = case
    import nemo_run as run

    run.run(recipe, executor=run.LocalExecutor(ntasks_per_node=8, launcher="torchrun"), dryrun=True)
    app = _torchrun_app(capfd)
    assert "dryrun" in app and "'torchrun'" in app
    assert "'--nproc-per-node','8'" in app
    assert "nemo.collections.llm.api.finetune" in app
    assert (nemorun_home / "experiments" / "nemo.collections.llm.api.finetune").is_dir()


def test_entrypoint_dry_run_from_spec_file(tmp_path, nemorun_home, capfd):
    cfg = compose("finetune", CASES["llama3_8b_2x8"])
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(pytorchjob.nemo_spec(cfg, "t-cli")))
    assert nemo_entrypoint.main(["--spec", str(path), "--dry-run"]) == 0
    assert "'--nproc-per-node','8'" in _torchrun_app(capfd)

"""The finetune component on cluster=local: torchrun when train.procs_per_node > 1."""

import json

import pytest

from modelchain.core.config import ConfigError, compose, group_json, load_group

from ..tiny_model import tiny_model  # noqa: F401 (fixture)

LABELS = ["billing", "shipping", "technical", "account", "returns"]


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["train.procs_per_node=9", "train.batch_size=4", "train.grad_accum=2"], "train.procs_per_node"),
        (["train.checkpoint_every=-1"], "train.checkpoint_every"),
        (["train.local.keep_checkpoints=0"], "train.local.keep_checkpoints"),
        (["train.local.packing=maybe"], "train.local.packing"),
    ],
)
def test_bad_local_training_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose("finetune", overrides)


def test_the_local_ddp_option_composes():
    cfg = compose("finetune", ["train=local_ddp"])
    assert cfg.train.procs_per_node == 2 and cfg.train.checkpoint_every == 10
    assert cfg.train.local.packing is True and cfg.train.local.keep_checkpoints == 2


@pytest.mark.slow
def test_two_processes_under_torchrun(tmp_path, tiny_model, modelchain_home):
    from modelchain.components.finetune.logic import run

    splits = tmp_path / "splits"
    splits.mkdir()
    rows = [
        {"messages": [{"role": "user", "content": f"Ticket {i}: my {w} problem." + " Details." * (i % 6)},
                      {"role": "assistant", "content": LABELS[i % 5]}]}
        for i, w in enumerate(["card", "parcel", "app", "password", "refund"] * 4)
    ]
    (splits / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose("finetune", ["model=local_dir", f"model.path={tiny_model}", "train=quick",
                               "train.procs_per_node=2", "train.checkpoint_every=2"])
    adapter = tmp_path / "adapter"
    train = load_group("train", group_json(cfg, "train"), max_steps=5, learning_rate=1e-3, lora_rank=4, lora_alpha=8)
    metrics = run(cfg.model, train, cfg.cluster, cfg.experiment, splits, adapter)
    assert metrics["world_size"] == 2 and metrics["steps"] == 5
    assert metrics["checkpoints_written"] == 2 and metrics["resumed_from_step"] == 0
    assert json.loads((adapter / "train_metrics.json").read_text())["losses"] == metrics["losses"]
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    # Checkpoints lived under the workdir, named after settings and data, and went with success.
    assert (modelchain_home / "checkpoints").is_dir()
    assert list((modelchain_home / "checkpoints").iterdir()) == []

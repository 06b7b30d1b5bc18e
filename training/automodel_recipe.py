"""The NeMo AutoModel recipe family: LoRA fine-tuning of any Hugging Face causal LM, HF-native.

NeMo AutoModel (`nemo-automodel`) trains a model straight from its Hugging Face folder and
saves the LoRA adapter as Hugging Face PEFT, so no checkpoint import or adapter export is
needed. `automodel_recipe(spec)` renders its `TrainFinetuneRecipeForNextTokenPrediction`
YAML config from the same spec.json the NeMo 2 recipes read (training/pytorchjob.py
`nemo_spec`): the weights on FSx, the staged chat splits (read by its `ChatDataset` through
the model's chat template, answer-only loss), the steps, batch sizes, learning rate, LoRA
rank, alpha, dropout and target modules, FSDP2 over the nodes and GPUs. The training pod runs
it from the same entrypoint (training/nemo_entrypoint.py) and the same torchrun command.

Standard library and PyYAML only: it renders on the CPU side and inside the pod alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from modelchain.training.lora_targets import nemo_to_hf
except ImportError:  # in the training pod this file and lora_targets.py sit side by side
    from lora_targets import nemo_to_hf

RECIPE = "TrainFinetuneRecipeForNextTokenPrediction"
# Where the recipe writes its checkpoints under the run's log_dir; the newest step's
# consolidated PEFT folder is what the entrypoint copies to adapter_dir.
CHECKPOINTS = "automodel-checkpoints"


def automodel_recipe(spec: dict[str, Any], backend: str = "nccl", device_batch: int | None = None) -> dict[str, Any]:
    """The AutoModel config (a dict to write as YAML) for a spec.json.

    ``backend`` is torch.distributed's (nccl on GPUs, gloo for a CPU check); ``device_batch``
    overrides the per-device batch (spec ``micro_batch_size``).
    """
    root = Path(spec["dataset_root"])
    lora = spec["lora"]
    local_batch = device_batch or spec["micro_batch_size"]
    data_parallel = spec["nodes"] * spec["gpus_per_node"] // (spec["tensor_parallel"] * spec["pipeline_parallel"])
    if spec["global_batch_size"] % (local_batch * max(1, data_parallel)):
        raise ValueError(
            f"train.batch_size * train.grad_accum = {spec['global_batch_size']} is not a multiple of the per-device "
            f"batch {local_batch} x {data_parallel} data-parallel ranks"
        )

    def chat(split_file: str, split: str) -> dict[str, Any]:
        return {
            "_target_": "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset",
            "path_or_dataset_id": str(root / split_file),
            "split": split,
            "seq_length": spec["seq_length"],
            "padding": "do_not_pad",
            "truncation": "longest_first",
        }

    def loader(shuffle: bool) -> dict[str, Any]:
        return {
            "_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
            "collate_fn": "nemo_automodel.components.datasets.utils.default_collater",
            "shuffle": shuffle,
        }

    every = spec["checkpoint_every"]
    return {
        "recipe": RECIPE,
        "dist_env": {"backend": backend, "timeout_minutes": 30},
        "rng": {"_target_": "nemo_automodel.components.training.rng.StatefulRNG", "seed": spec["seed"], "ranked": True},
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": spec["hf_model"],  # a folder on FSx: pods run offline
            "torch_dtype": "bfloat16" if backend == "nccl" else "float32",
            "attn_implementation": "sdpa",
        },
        "peft": {
            "_target_": "nemo_automodel.components._peft.lora.PeftConfig",
            # Its matcher compares full module names: "*.q_proj" is q_proj in every layer.
            "target_modules": [f"*.{name}" for name in nemo_to_hf(lora["target_modules"])],
            "dim": lora["dim"],
            "alpha": lora["alpha"],
            "dropout": lora["dropout"],
            "use_triton": backend == "nccl",  # its fused LoRA kernel needs a GPU
        },
        "distributed": {
            "_target_": "nemo_automodel.components.distributed.fsdp2.FSDP2Manager",
            "dp_size": None,  # the rest of the world after tensor and pipeline parallelism
            "tp_size": spec["tensor_parallel"],
            "pp_size": spec["pipeline_parallel"],
            "cp_size": 1,
            "sequence_parallel": False,
        },
        "step_scheduler": {
            "global_batch_size": spec["global_batch_size"],
            "local_batch_size": local_batch,
            "max_steps": spec["max_steps"],
            "num_epochs": max(1, spec["max_steps"]),  # max_steps ends the run, not the epochs
            "ckpt_every_steps": every,
            "val_every_steps": every,
        },
        "dataset": chat("train.jsonl", "train"),
        "validation_dataset": chat("val.jsonl", "validation"),
        "dataloader": loader(shuffle=True),
        "validation_dataloader": loader(shuffle=False),
        "packed_sequence": {"packed_sequence_size": spec["seq_length"] if spec["packed_sequences"] else 0},
        "loss_fn": {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": spec["learning_rate"], "betas": [0.9, 0.98],
                      "eps": 1.0e-8, "weight_decay": 0.0},
        "lr_scheduler": {"lr_decay_style": "cosine", "min_lr": spec["learning_rate"] / 10},
        "checkpoint": {
            "enabled": True,
            "checkpoint_dir": str(Path(spec["log_dir"]) / CHECKPOINTS),
            "model_save_format": "safetensors",
            "save_consolidated": True,
        },
    }


def newest_adapter(spec: dict[str, Any]) -> Path:
    """The PEFT folder (adapter_config.json + adapter_model.safetensors) of the newest checkpoint."""
    root = Path(spec["log_dir"]) / CHECKPOINTS
    found = sorted((p.parent for p in root.rglob("adapter_config.json")), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{root}: no PEFT adapter saved by the AutoModel recipe")
    return found[-1]

"""Finetune: train a LoRA adapter on the train split.

`cluster.kind=local` trains here on the CPU (transformers + peft). `cluster.kind=eks` is
the PyTorchJob running the NeMo recipe, which lives in modelchain.training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run(
    settings: dict[str, Any],
    splits_dir: str | Path,
    adapter_dir: str | Path,
    *,
    max_steps: int,
    learning_rate: float,
    lora_rank: int,
    lora_alpha: int,
) -> dict[str, Any]:
    """Train and write the adapter into `adapter_dir`; returns the training metrics."""
    if settings["cluster"]["kind"] == "eks":
        from modelchain.components.finetune.cluster import run_on_cluster

        return run_on_cluster(
            settings,
            splits_dir,
            adapter_dir,
            max_steps=max_steps,
            learning_rate=learning_rate,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
        )
    from modelchain.core.models import resolve_base_model
    from modelchain.training.local_trainer import train_lora

    model, train = settings["model"], settings["train"]
    base_dir = resolve_base_model(
        model["name"], path=model["path"], gguf_package=model["gguf_package"], gguf_file=model["gguf_file"]
    )
    return train_lora(
        base_dir,
        Path(splits_dir) / "train.jsonl",
        adapter_dir,
        rank=lora_rank,
        alpha=lora_alpha,
        dropout=train["lora"]["dropout"],
        target_modules=tuple(train["lora"]["target_modules"]),
        max_steps=max_steps,
        learning_rate=learning_rate,
        batch_size=train["batch_size"],
        grad_accum=train["grad_accum"],
        max_seq_len=train["max_seq_len"],
        seed=train["seed"],
    )

"""KFP wrapper of finetune: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def finetune(
    settings: str,
    splits: Input[Dataset],
    max_steps: int,
    learning_rate: float,
    lora_rank: int,
    lora_alpha: int,
    adapter: Output[Model],
    metrics: Output[Metrics],
):
    """Train a LoRA adapter on the train split; the adapter folder is the output."""
    import json

    from modelchain.components.finetune.logic import run

    result = run(
        json.loads(settings),
        splits.path,
        adapter.path,
        max_steps=max_steps,
        learning_rate=learning_rate,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
    )
    adapter.metadata["framework"] = "peft"
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(f"train_{key}", value)

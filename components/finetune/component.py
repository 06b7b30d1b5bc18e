"""KFP wrapper of finetune: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def finetune(
    model: str,
    train: str,
    cluster: str,
    experiment: str,
    splits: Input[Dataset],
    max_steps: int,
    learning_rate: float,
    lora_rank: int,
    lora_alpha: int,
    adapter: Output[Model],
    metrics: Output[Metrics],
    workspace: str = "",
):
    """Train a LoRA adapter on the train split; the adapter folder is the output (on the run's
    workspace when `workspace` names one, components/workspace.py)."""
    from modelchain.components.finetune.logic import run
    from modelchain.components.workspace import input_folder, output_folder
    from modelchain.core.config import load_group

    result = run(
        load_group("model", model),
        load_group("train", train, max_steps=max_steps, learning_rate=learning_rate, lora_rank=lora_rank,
                   lora_alpha=lora_alpha),
        load_group("cluster", cluster),
        load_group("experiment", experiment),
        input_folder(splits),
        output_folder(adapter, workspace, "adapter"),
    )
    adapter.metadata["framework"] = "peft"
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(f"train_{key}", value)

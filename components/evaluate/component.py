"""KFP wrapper of evaluate: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output


def evaluate(
    model: str,
    eval: str,  # noqa: A002 (named after its config group, as every group parameter is)
    cluster: str,
    rag: str,
    splits: Input[Dataset],
    adapter: Input[Model],
    champion: str,
    registered_model: str,
    results: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """Score the base model, the adapter and the champion on the held-out split.

    `champion` is a run-time parameter: under `auto` the champion alias of `registered_model`
    is looked up when the step runs, so a recurring run compares with what serves that day.
    """
    from modelchain.components.workspace import input_folder
    from pathlib import Path

    from modelchain.components.evaluate.logic import run
    from modelchain.core.config import load_group
    from modelchain.eval.report import render_evaluation

    summary = run(
        load_group("model", model),
        load_group("eval", eval, champion=champion),
        load_group("cluster", cluster),
        load_group("rag", rag),
        input_folder(splits),
        input_folder(adapter),
        results.path,
        registered_model=registered_model,
    )
    for side in summary["sides"]:
        for metric, value in summary[side].items():
            if value == value:  # NaN cannot be logged
                metrics.log_metric(f"{side}_{metric}", value)
    metrics.log_metric("n_examples", summary["n_examples"])
    Path(report.path).write_text(render_evaluation(summary))

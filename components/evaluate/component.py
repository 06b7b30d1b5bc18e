"""KFP wrapper of evaluate: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output


def evaluate(
    settings: str,
    splits: Input[Dataset],
    adapter: Input[Model],
    champion: str,
    results: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """Score the base model, the adapter and the champion (if any) on the held-out split."""
    import json
    from pathlib import Path

    from modelchain.components.evaluate.logic import render_markdown, run

    summary = run(json.loads(settings), splits.path, adapter.path, results.path, champion=champion)
    for side in summary["sides"]:
        for metric, value in summary[side].items():
            if value == value:  # NaN cannot be logged
                metrics.log_metric(f"{side}_{metric}", value)
    metrics.log_metric("n_examples", summary["n_examples"])
    Path(report.path).write_text(render_markdown(summary))

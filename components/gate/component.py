"""KFP wrapper of gate: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def gate(
    settings: str,
    results: Input[Dataset],
    splits: Input[Dataset],
    adapter: Input[Model],
    thresholds: dict,
    min_improvement: float,
    kfp_run_id: str,
    report: Output[Markdown],
    report_html: Output[HTML],
    decision: Output[Metrics],
    mlflow_run: Output[Artifact],
) -> bool:
    """Decide whether the adapter may be registered; the MLflow run records why either way.

    Returns only `passed`: kfp.local (2.17) cannot resolve a NamedTuple output inside
    dsl.If, so the MLflow run id travels as the small `mlflow_run` artifact instead.
    """
    import json

    from modelchain.components.gate.logic import decision_metrics, run

    verdict, run_id = run(
        json.loads(settings),
        json.loads(open(results.path).read()),
        thresholds=thresholds,
        min_improvement=min_improvement,
        report_path=report.path,
        splits_dir=splits.path,
        adapter_dir=adapter.path,
        kfp_run_id=kfp_run_id,
        html_path=report_html.path,
    )
    decision.log_metric("passed", 1.0 if verdict.passed else 0.0)
    for name, value in decision_metrics(verdict).items():
        if name != "gate.passed" and value == value:  # NaN cannot be logged
            decision.log_metric(name.removeprefix("gate.").replace(".", "_"), value)
    with open(mlflow_run.path, "w") as handle:
        json.dump({"run_id": run_id}, handle)
    mlflow_run.metadata["run_id"] = run_id
    print("\n".join(verdict.reasons))
    return verdict.passed

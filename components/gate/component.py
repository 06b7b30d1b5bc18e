"""KFP wrapper of gate: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def gate(
    model: str,
    data: str,
    train: str,
    eval: str,  # noqa: A002 (named after its config group, as every group parameter is)
    cluster: str,
    experiment: str,
    results: Input[Dataset],
    splits: Input[Dataset],
    adapter: Input[Model],
    data_uri: str,
    feedback_since: str,
    feedback_until: str,
    max_steps: int,
    learning_rate: float,
    lora_rank: int,
    lora_alpha: int,
    thresholds: dict,
    min_improvement: float,
    champion: str,
    kfp_run_id: str,
    git_commit: str,
    report: Output[Markdown],
    report_html: Output[HTML],
    decision: Output[Metrics],
    mlflow_run: Output[Artifact],
) -> bool:
    """Decide whether the adapter may be registered; the MLflow run records why either way.

    It takes every run-time parameter of the run: the run's config, as it ran, is part of the
    lineage the MLflow run records. Returns only `passed`: kfp.local (2.17) cannot resolve a
    NamedTuple output inside dsl.If, so the MLflow run id travels as the small `mlflow_run`
    artifact instead.
    """
    from modelchain.components.workspace import input_folder
    import json

    from modelchain.components.gate.logic import decision_metrics, run
    from modelchain.core.config import load_group

    verdict, run_id = run(
        load_group("model", model),
        load_group("data", data, data_uri=data_uri, feedback_since=feedback_since, feedback_until=feedback_until),
        load_group("train", train, max_steps=max_steps, learning_rate=learning_rate, lora_rank=lora_rank,
                   lora_alpha=lora_alpha),
        load_group("eval", eval, thresholds=thresholds, min_improvement=min_improvement, champion=champion),
        load_group("cluster", cluster),
        load_group("experiment", experiment),
        json.loads(open(results.path).read()),
        report_path=report.path,
        splits_dir=input_folder(splits),
        adapter_dir=input_folder(adapter),
        kfp_run_id=kfp_run_id,
        git_commit=git_commit,
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

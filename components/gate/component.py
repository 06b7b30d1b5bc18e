"""KFP wrapper of gate: moves parameters and artifacts in and out of logic.py."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output


def gate(
    settings: str,
    results: Input[Dataset],
    splits: Input[Dataset],
    adapter: Input[Model],
    thresholds: dict,
    min_improvement: float,
    kfp_run_id: str,
    report: Output[Markdown],
    decision: Output[Metrics],
) -> NamedTuple("GateOutputs", passed=bool, mlflow_run_id=str):
    """Decide whether the adapter may be registered; the MLflow run records why either way."""
    import json
    from collections import namedtuple

    from modelchain.components.gate.logic import run

    verdict, run_id = run(
        json.loads(settings),
        json.loads(open(results.path).read()),
        thresholds=thresholds,
        min_improvement=min_improvement,
        report_path=report.path,
        splits_dir=splits.path,
        adapter_dir=adapter.path,
        kfp_run_id=kfp_run_id,
    )
    decision.log_metric("passed", 1.0 if verdict.passed else 0.0)
    for check in verdict.checks:
        decision.log_metric(f"rule_{check.rule}", 1.0 if check.passed else 0.0)
    print("\n".join(verdict.reasons))
    return namedtuple("GateOutputs", ["passed", "mlflow_run_id"])(verdict.passed, run_id)

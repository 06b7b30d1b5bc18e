"""Evaluation and the gate outside a pipeline (`modelchain eval`): results and reports in a folder.

It composes two steps (evaluate, then the gate step, MLflow run included), so it lives with the pipelines.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from modelchain.core.io import atomic_write_text


def evaluate_and_gate(
    cfg: DictConfig,
    splits_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    champion: str | None = None,
    progress: bool = False,
):
    """Evaluate (task accuracy, perplexity, RAG scores when configured), decide, write the reports.

    `cfg` is a composed finetune config; `champion` replaces `eval.champion` when given. The
    decision, reports and MLflow run are the pipeline gate step's own (components/gate):
    the same metrics, tags and artifacts. Writes `results.json`, `gate_report.md`,
    `gate_report.html` and `decision.json` (with the MLflow run id) into `out_dir`; returns
    (GateDecision, MLflow run id).
    """
    from modelchain.components.evaluate.logic import run as evaluate
    from modelchain.components.gate.logic import run as gate
    from modelchain.core.config import registered_model_name

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ev = cfg.eval
    if champion is not None:  # a new node: the composed config is read-only
        ev = OmegaConf.merge(ev, {"champion": champion})  # the MLflow run records the champion compared with
    results = evaluate(cfg.model, ev, cfg.cluster, cfg.rag, splits_dir, adapter_dir, out / "results.json",
                       progress=progress, registered_model=registered_model_name(cfg))
    decision, run_id = gate(
        cfg.model, cfg.data, cfg.train, ev, cfg.cluster, cfg.experiment, results,
        report_path=out / "gate_report.md", splits_dir=splits_dir, adapter_dir=adapter_dir,
        html_path=out / "gate_report.html",
    )
    atomic_write_text(out / "decision.json", json.dumps({**decision.to_dict(), "mlflow_run_id": run_id}, indent=2,
                                                        default=str))
    return decision, run_id

"""Evaluation and the gate outside a pipeline (`modelchain eval`): results and reports in a folder.

It composes two steps (evaluate, then the gate's policy), so it lives with the pipelines.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from modelchain.core.io import atomic_write_text


def evaluate_and_gate(
    cfg: DictConfig,
    splits_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    champion: str | None = None,
):
    """Evaluate (task accuracy, perplexity, RAG scores when configured), decide, write the reports.

    `cfg` is a composed finetune config; `champion` replaces `eval.champion` when given.
    Writes `results.json`, `gate_report.md`, `gate_report.html` and `decision.json` into
    `out_dir`; returns the GateDecision.
    """
    from modelchain.components.evaluate.logic import run as evaluate
    from modelchain.components.gate.logic import decide_results
    from modelchain.core.config import registered_model_name
    from modelchain.eval.gate import GatePolicy
    from modelchain.eval.report import render_html, render_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = evaluate(cfg.model, cfg.eval, cfg.cluster, cfg.rag, splits_dir, adapter_dir, out / "results.json",
                       champion=champion, registered_model=registered_model_name(cfg))
    policy = GatePolicy.from_config(cfg.eval)
    decision = decide_results(results, policy)
    atomic_write_text(out / "gate_report.md", render_markdown(decision, results, policy))
    atomic_write_text(out / "gate_report.html", render_html(decision, results, policy))
    atomic_write_text(out / "decision.json", json.dumps(decision.to_dict(), indent=2, default=str))
    return decision

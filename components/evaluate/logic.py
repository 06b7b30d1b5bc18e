"""Evaluate: answer the validation split with the base model and with the adapter, and score both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelchain.core.io import atomic_write_json, read_jsonl


def run(settings: dict[str, Any], splits_dir: str | Path, adapter_dir: str | Path, results_path: str | Path) -> dict:
    """Writes per-example results to `results_path` (JSON) and returns them."""
    from modelchain.core.models import resolve_base_model
    from modelchain.eval.generation import generate
    from modelchain.eval.metrics import score_examples

    model, ev = settings["model"], settings["eval"]
    rows = read_jsonl(Path(splits_dir) / "val.jsonl")[: ev["max_examples"]]
    prompts = [row["messages"][:-1] for row in rows]
    references = [row["messages"][-1]["content"] for row in rows]
    base_dir = resolve_base_model(
        model["name"], path=model["path"], gguf_package=model["gguf_package"], gguf_file=model["gguf_file"]
    )
    answers = {}
    for side, adapter in (("base", None), ("challenger", adapter_dir)):
        answers[side] = generate(
            base_dir, prompts, adapter_dir=adapter, max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"]
        )
    scores = {side: score_examples(preds, references) for side, preds in answers.items()}
    metric_names = ("exact_match", "rouge_l")
    results = {
        "n_examples": len(rows),
        "split": "val",
        "base": {m: _mean(scores["base"][m]) for m in metric_names},
        "challenger": {m: _mean(scores["challenger"][m]) for m in metric_names},
        "examples": [
            {
                "id": row.get("id"),
                "prompt": prompts[i][-1]["content"],
                "reference": references[i],
                "base": answers["base"][i],
                "challenger": answers["challenger"][i],
                **{f"{side}_{m}": scores[side][m][i] for side in answers for m in metric_names},
            }
            for i, row in enumerate(rows)
        ],
    }
    atomic_write_json(results_path, results)
    return results


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def render_markdown(results: dict) -> str:
    lines = [
        f"# Evaluation on the {results['split']} split ({results['n_examples']} examples)",
        "",
        "| metric | base model | challenger |",
        "| --- | ---: | ---: |",
    ]
    for metric, value in results["challenger"].items():
        lines.append(f"| {metric} | {results['base'][metric]:.3f} | {value:.3f} |")
    wrong = [e for e in results["examples"] if e["challenger_exact_match"] < 1.0][:10]
    if wrong:
        lines += ["", "## Examples the challenger gets wrong (first 10)", "", "| reference | challenger | base |", "| --- | --- | --- |"]
        lines += [f"| {_cell(e['reference'])} | {_cell(e['challenger'])} | {_cell(e['base'])} |" for e in wrong]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:120]

"""Evaluate: answer the held-out test split with the base model, the adapter and the champion.

Task accuracy (exact match, ROUGE-L) is measured on the test split (the validation split
when there is no test split); perplexity of the reference answers on the validation split;
lm-evaluation-harness tasks from local files when `eval.harness_tasks` names any; RAG
scores (eval/rag.py) when `eval.rag_questions` > 0.
Per-example scores are kept so the gate can compare sides on paired examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelchain.core.io import atomic_write_json, read_jsonl

METRICS = ("exact_match", "rouge_l")


def resolve_champion(champion: str, settings: dict[str, Any], dest: str | Path | None = None) -> Path | None:
    """`models:/NAME@champion` (or `models:/NAME/VERSION`) or a local adapter folder -> a folder; "" -> None."""
    if not champion:
        return None
    if champion.startswith("models:/"):
        from modelchain.core.registry import resolve_adapter

        tracking_uri = settings.get("cluster", {}).get("mlflow", {}).get("tracking_uri")
        return resolve_adapter(champion, dest, tracking_uri=tracking_uri)
    path = Path(champion)
    if not (path / "adapter_config.json").is_file():
        raise ValueError(f"eval.champion: {champion} is neither a models:/ URI nor an adapter folder")
    return path


def _split(splits_dir: Path, name: str) -> list[dict]:
    path = splits_dir / f"{name}.jsonl"
    return read_jsonl(path) if path.is_file() and path.stat().st_size else []


def run(
    settings: dict[str, Any],
    splits_dir: str | Path,
    adapter_dir: str | Path,
    results_path: str | Path,
    champion: str | None = None,
) -> dict:
    """Writes per-example results to `results_path` (JSON) and returns them."""
    from modelchain.core.models import base_model_from_settings
    from modelchain.eval.generation import generate
    from modelchain.eval.metrics import score_examples
    from modelchain.eval.perplexity import answer_nll, perplexity

    model, ev = settings["model"], settings["eval"]
    champion = ev.get("champion", "") if champion is None else champion
    splits_dir = Path(splits_dir)
    split = "test" if _split(splits_dir, "test") else "val"
    rows = _split(splits_dir, split)[: ev["max_examples"]]
    val_rows = _split(splits_dir, "val")[: ev["max_examples"]]
    prompts = [row["messages"][:-1] for row in rows]
    references = [row["messages"][-1]["content"] for row in rows]
    base_dir = base_model_from_settings(model)
    adapters = {"base": None, "challenger": Path(adapter_dir)}
    champion_dir = resolve_champion(champion, settings)
    if champion_dir is not None:
        adapters["champion"] = champion_dir

    answers, scores, means = {}, {}, {}
    for side, adapter in adapters.items():
        answers[side] = generate(
            base_dir, prompts, adapter_dir=adapter, max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"]
        )
        scored = score_examples(answers[side], references)
        scores[side] = {m: scored[m] for m in METRICS}
        means[side] = {m: _mean(scored[m]) for m in METRICS}
        if val_rows:
            means[side]["perplexity"] = perplexity(answer_nll(base_dir, [r["messages"] for r in val_rows], adapter))

    if ev.get("harness_tasks"):
        from modelchain.eval.harness import run_for_sides

        harness = run_for_sides(base_dir, adapters, ev["harness_tasks"], ev.get("harness_task_dir", ""),
                                _split(splits_dir, "test") or rows, ev["max_new_tokens"], limit=ev["max_examples"])
        for side, scores_ in harness.items():
            means[side].update(scores_)

    results = {
        "n_examples": len(rows),
        "split": split,
        "perplexity_split": "val",
        "champion_uri": champion or "",
        "sides": list(adapters),
        "scores": scores,
        **means,
        "examples": [
            {
                "id": row.get("id"),
                "prompt": prompts[i][-1]["content"],
                "reference": references[i],
                **{side: answers[side][i] for side in answers},
                **{f"{side}_{m}": scores[side][m][i] for side in answers for m in METRICS},
            }
            for i, row in enumerate(rows)
        ],
    }
    if ev.get("rag_questions", 0) > 0:
        import json

        from modelchain.core.config import load_group
        from modelchain.eval.rag import score_rag_for_sides

        rag_sides = {side: adapter for side, adapter in adapters.items() if adapter is not None}
        typed_eval, typed_rag = load_group("eval", json.dumps(ev)), load_group("rag", json.dumps(settings["rag"]))
        results["rag"] = score_rag_for_sides(typed_eval, typed_rag, rows[: ev["rag_questions"]], base_dir, rag_sides)
    atomic_write_json(results_path, results)
    return results


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def render_markdown(results: dict) -> str:
    """A short evaluation summary (the gate report carries the intervals)."""
    sides = results.get("sides", ["base", "challenger"])
    lines = [
        f"# Evaluation on the {results['split']} split ({results['n_examples']} examples)",
        "",
        "| metric | " + " | ".join(sides) + " |",
        "| --- |" + " ---: |" * len(sides),
    ]
    for metric in results["challenger"]:
        lines.append(f"| {metric} | " + " | ".join(f"{results[s].get(metric, float('nan')):.3f}" for s in sides) + " |")
    wrong = [e for e in results["examples"] if e["challenger_exact_match"] < 1.0][:10]
    if wrong:
        lines += ["", "## Examples the challenger gets wrong (first 10)", "",
                  "| reference | " + " | ".join(sides) + " |", "| --- |" + " --- |" * len(sides)]
        lines += [f"| {_cell(e['reference'])} | " + " | ".join(_cell(e[s]) for s in sides) + " |" for e in wrong]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:120]

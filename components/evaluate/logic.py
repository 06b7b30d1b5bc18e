"""Evaluate: answer the held-out test split with the base model, the adapter and the champion.

Task accuracy (exact match, ROUGE-L) is measured on the test split (the validation split
when there is no test split); perplexity of the reference answers on the validation split;
lm-evaluation-harness tasks from local files when `eval.harness_tasks` names any; RAG
scores (eval/rag.py) when `eval.rag_questions` > 0.
Per-example scores are kept so the gate can compare sides on paired examples.
"""

from __future__ import annotations

from pathlib import Path

from modelchain.core.io import atomic_write_json, read_jsonl
from modelchain.eval import champion as champions
from modelchain.eval.metrics import ANSWER_METRICS


def _split(splits_dir: Path, name: str) -> list[dict]:
    path = splits_dir / f"{name}.jsonl"
    return read_jsonl(path) if path.is_file() and path.stat().st_size else []


def run(
    model,
    ev,
    cluster,
    rag,
    splits_dir: str | Path,
    adapter_dir: str | Path,
    results_path: str | Path,
    champion: str | None = None,
    registered_model: str = "",
    progress: bool = False,
) -> dict:
    """Writes per-example results to `results_path` (JSON) and returns them.

    `model`, `ev` (eval), `cluster` and `rag` are the typed config groups; `champion`, when
    given, replaces `ev.champion`; `registered_model` is the model whose `champion` alias
    `eval.champion=auto` compares with (eval/champion.py). How the champion was resolved is
    recorded as `champion_resolution`; a champion that could not be compared leaves it `failed`
    and the gate refuses. `progress` shows a bar per side while it generates.
    """
    from modelchain.core.models import base_model_from_settings
    from modelchain.eval.generation import generate
    from modelchain.eval.metrics import score_examples
    from modelchain.eval.perplexity import answer_nll, perplexity

    champion = ev.champion if champion is None else champion
    splits_dir = Path(splits_dir)
    split = "test" if _split(splits_dir, "test") else "val"
    rows = _split(splits_dir, split)[: ev.max_examples]
    val_rows = _split(splits_dir, "val")[: ev.max_examples]
    prompts = [row["messages"][:-1] for row in rows]
    references = [row["messages"][-1]["content"] for row in rows]
    resolution = champions.resolve(champion, registered_model, cluster.mlflow.tracking_uri)
    print(f"champion: {resolution.reason}")
    if ev.rag_questions > 0:  # the judge's token budget is checked before any model loads
        from modelchain.eval.rag import check_judge_budget

        check_judge_budget(ev, rag, rows, 2 if resolution.status == champions.RESOLVED else 1)
    base_dir = base_model_from_settings(model)
    adapters = {"base": None, "challenger": Path(adapter_dir)}
    if resolution.status == champions.RESOLVED:
        adapters["champion"] = Path(resolution.path)

    answers, scores, means = {}, {}, {}
    for side, adapter in list(adapters.items()):
        try:
            answers[side] = generate(
                base_dir, prompts, adapter_dir=adapter, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                progress=progress, desc=f"answering ({side})",
            )
            scored = score_examples(answers[side], references)
            scores[side] = {m: scored[m] for m in ANSWER_METRICS}
            means[side] = {m: _mean(scored[m]) for m in ANSWER_METRICS}
            if val_rows:
                nll = answer_nll(base_dir, [r["messages"] for r in val_rows], adapter)
                means[side]["perplexity"] = perplexity(nll)
        except Exception as exc:
            if side != "champion":
                raise
            # The champion could not be evaluated: the gate must not pass for want of a comparison.
            resolution = resolution.failed(f"champion {resolution.uri} could not be evaluated: {exc}")
            print(f"champion: {resolution.reason}")
            del adapters["champion"]
            for partial in (answers, scores, means):
                partial.pop(side, None)

    if ev.harness_tasks:
        from modelchain.eval.harness import run_for_sides

        harness_means, harness_scores = run_for_sides(
            base_dir, adapters, list(ev.harness_tasks), ev.harness_task_dir, _split(splits_dir, "test") or rows,
            ev.max_new_tokens, limit=ev.max_examples)
        for side in harness_means:
            means[side].update(harness_means[side])
            scores[side].update(harness_scores[side])  # paired per task metric in the gate report

    results = {
        "n_examples": len(rows),
        "split": split,
        "perplexity_split": "val",
        "perplexity_n_examples": len(val_rows),
        "champion_uri": resolution.uri,
        "champion_resolution": resolution.to_dict(),
        "sides": list(adapters),
        "scores": scores,
        **means,
        "examples": [
            {
                "id": row.get("id"),
                "prompt": prompts[i][-1]["content"],
                "reference": references[i],
                **{side: answers[side][i] for side in answers},
                **{f"{side}_{m}": scores[side][m][i] for side in answers for m in ANSWER_METRICS},
            }
            for i, row in enumerate(rows)
        ],
    }
    if ev.rag_questions > 0:
        from modelchain.eval.rag import score_rag_for_sides

        rag_sides = {side: adapter for side, adapter in adapters.items() if adapter is not None}
        results["rag"] = score_rag_for_sides(ev, rag, rows[: ev.rag_questions], base_dir, rag_sides)
    atomic_write_json(results_path, results)
    return results


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0

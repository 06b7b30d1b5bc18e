"""Reference-based answer metrics, and the registry of the metrics the gate knows.

`ANSWER_METRICS` is the one list of per-example answer metrics: evaluate scores every one
of them for every side, the gate compares sides on them (`eval.compare_metrics`) and sets
floors on them (`eval.thresholds`). `GATE_METRICS` adds the RAG scores (eval/rag.py), which
are means without per-example pairs, so they take floors only: the judged ones `rag_*` and
the offline stand-ins `rag_offline_*`, never one for the other. Adding an answer metric is
one function here and one line in ANSWER_METRICS.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from functools import lru_cache

from modelchain.eval.rag import JUDGE_OUTPUTS, JUDGED, OFFLINE

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD style)."""
    s = s.lower().translate(_PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _as_number(s: str) -> float | None:
    # Thousands separators are common in answers ("1,000"); punctuation stripping would
    # otherwise turn "3.0" into "30", so numbers are read before normalising.
    text = s.strip().rstrip(".").replace(",", "")
    if _NUMBER.fullmatch(text):
        return float(text)
    return None


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the answers agree after normalisation (or as numbers, "3.0" == "3"), else 0.0."""
    pred_num, ref_num = _as_number(prediction), _as_number(reference)
    if pred_num is not None and ref_num is not None:
        return float(pred_num == ref_num)
    return float(normalize_answer(prediction) == normalize_answer(reference))


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), in [0, 1]."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


# name -> scorer(prediction, reference) -> a score in [0, 1]
ANSWER_METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "rouge_l": rouge_l,
}
# Metrics `eval.thresholds` may set floors on: the answer metrics, and the RAG scores: judged
# (rag_faithfulness, ...) and offline (rag_offline_*), distinct names so neither meets the other's floor.
GATE_METRICS: tuple[str, ...] = (*ANSWER_METRICS, *(f"rag_{m}" for m in JUDGED + OFFLINE))


def unmeasured(metric: str) -> str:
    """Why a floor's metric has no value, in the words of the gate's reason."""
    if metric in {f"rag_{m}" for m in JUDGED}:
        return (f"metric {metric!r} was not measured: it needs an LLM judge (eval.judge.base_url) and "
                f"eval.rag_questions > 0; offline stand-ins (rag_offline_*) never meet a judged floor")
    return f"metric {metric!r} was not measured"


def score_examples(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Score answers against references with every metric of ANSWER_METRICS.

    Returns ``{"n": N, "exact_match": [...], "rouge_l": [...], "mean": {"exact_match": m,
    "rouge_l": m}}``: per-example lists under the metric names, their means under "mean".
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    n = len(predictions)
    out: dict = {"n": n, "mean": {}}
    for name, metric in ANSWER_METRICS.items():
        out[name] = [metric(p, r) for p, r in zip(predictions, references)]
        out["mean"][name] = sum(out[name]) / n if n else 0.0
    return out


def check_config(cfg, need) -> None:
    """Config validation of the eval group (core.config.OWNER_CHECKS), each check naming its key."""
    if "eval" not in cfg:
        return
    ev = cfg.eval
    for metric, floor in ev.thresholds.items():
        need(metric in GATE_METRICS, f"eval.thresholds.{metric}", f"unknown metric ({', '.join(GATE_METRICS)})")
        need(0.0 <= floor <= 1.0, f"eval.thresholds.{metric}", f"must be in [0, 1], got {floor}")
    for metric in ev.compare_metrics:
        need(metric in ANSWER_METRICS, "eval.compare_metrics", f"{metric!r}: use {' or '.join(ANSWER_METRICS)}")
    need(0.5 <= ev.confidence < 1.0, "eval.confidence", f"must be in [0.5, 1), got {ev.confidence}")
    need(ev.bootstrap_resamples >= 100, "eval.bootstrap_resamples", "must be >= 100")
    need(ev.max_regression >= 0.0, "eval.max_regression", "must be >= 0")
    judge = ev.judge
    need(judge.concurrency >= 1, "eval.judge.concurrency", "must be >= 1")
    need(judge.retries >= 0, "eval.judge.retries", "must be >= 0")
    need(judge.timeout_s > 0, "eval.judge.timeout_s", "must be > 0")
    need(not judge.base_url or bool(judge.model), "eval.judge.model", "needed with eval.judge.base_url")
    need(0.0 <= judge.max_failure_fraction <= 1.0, "eval.judge.max_failure_fraction",
         f"must be in [0, 1], got {judge.max_failure_fraction}")
    need(judge.output in JUDGE_OUTPUTS, "eval.judge.output", f"must be one of {', '.join(JUDGE_OUTPUTS)}, got {judge.output!r}")
    need(judge.max_output_tokens >= 1, "eval.judge.max_output_tokens", "must be >= 1")
    need(judge.repeats >= 1, "eval.judge.repeats", "must be >= 1")
    need(judge.max_tokens >= 0, "eval.judge.max_tokens", "must be >= 0 (0 = no budget)")
    need(judge.price_per_1k_tokens >= 0, "eval.judge.price_per_1k_tokens", "must be >= 0")
    from modelchain.core.embedder import RUNTIMES

    need(judge.embedding.runtime in RUNTIMES, "eval.judge.embedding.runtime",
         f"must be one of {', '.join(RUNTIMES)}, got {judge.embedding.runtime!r}")
    need(judge.embedding.runtime != "openai" or bool(judge.embedding.endpoint), "eval.judge.embedding.endpoint",
         "runtime openai needs an OpenAI-compatible base URL")

"""Reference-based answer metrics: exact match and ROUGE-L."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from functools import lru_cache

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


def score_examples(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Score answers against references.

    Returns ``{"n": N, "exact_match": [...], "rouge_l": [...], "mean": {"exact_match": m,
    "rouge_l": m}}``: per-example lists under the metric names, their means under "mean".
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    em = [exact_match(p, r) for p, r in zip(predictions, references)]
    rl = [rouge_l(p, r) for p, r in zip(predictions, references)]
    n = len(em)
    return {
        "n": n,
        "exact_match": em,
        "rouge_l": rl,
        "mean": {
            "exact_match": sum(em) / n if n else 0.0,
            "rouge_l": sum(rl) / n if n else 0.0,
        },
    }

"""The `data` group's config checks: what types alone cannot say, each naming its key.

core.config calls `check_config(cfg, need)` when it composes a config (its OWNER_CHECKS
names this module). Standard library only, like formats.py, whose lists it checks against.
"""

from __future__ import annotations

from typing import Any, Callable

from modelchain.data.formats import AUTO, FEEDBACK_FORMATS, SOURCE_FORMATS


def check_config(cfg: Any, need: Callable[[bool, str, str], None]) -> None:
    """`need(ok, key, why)` for every rule of `cfg.data`; configs without a data group pass."""
    if "data" not in cfg:
        return
    data = cfg.data
    for key in ("val_fraction", "test_fraction", "max_bad_fraction"):
        need(0.0 <= data[key] < 1.0, f"data.{key}", f"must be in [0, 1), got {data[key]}")
    need(data.val_fraction + data.test_fraction < 1.0, "data.val_fraction", "val + test must leave rows to train on")
    formats = (AUTO, *SOURCE_FORMATS)
    need(data.source.format in formats, "data.source.format", f"must be one of {', '.join(formats)}, got {data.source.format!r}")
    need(bool(data.source.uri.strip()) or bool(data.feedback.uri), "data.source.uri", "empty, and no data.feedback.uri")
    need(data.normalization in ("NFC", "NFKC"), "data.normalization", f"must be NFC or NFKC, got {data.normalization!r}")
    need(0.0 < data.dedup.threshold <= 1.0, "data.dedup.threshold", f"must be in (0, 1], got {data.dedup.threshold}")
    need(data.dedup.num_perm >= 8, "data.dedup.num_perm", "must be >= 8")
    need(1 <= data.dedup.shingle_words <= 5, "data.dedup.shingle_words", "must be 1 to 5")
    need(data.tokens.max_tokens >= 0, "data.tokens.max_tokens", "must be >= 0 (0 = no budget)")
    need(data.tokens.action in ("drop", "truncate"), "data.tokens.action", f"must be drop or truncate, got {data.tokens.action!r}")
    feedback = (AUTO, *FEEDBACK_FORMATS)
    need(data.feedback.format in feedback, "data.feedback.format",
         f"must be {', '.join(feedback[:-1])} or {feedback[-1]}, got {data.feedback.format!r}")
    for key in ("min_response_chars", "min_prompt_chars", "workers"):
        need(data[key] >= 0, f"data.{key}", "must be >= 0")

"""Binds the data_prep step's typed config groups (`data`, `model`) to the data prep library.

The step, `modelchain data prep` and `modelchain eval` hand over `cfg.data` and `cfg.model`
as typed configs (from `core.config.load_group` in the step, from a composed config on the
command line); what data prep does with them is in `modelchain.data.prepare`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from modelchain.data.prepare import (
    DataError,
    DedupOptions,
    FieldMap,
    PiiOptions,
    PrepResult,
    TokenOptions,
    check_out_dir,
    prepare,
)

__all__ = ["DataError", "options_from_config", "prepare_from_config"]


def prepare_from_config(data: DictConfig, model: DictConfig, out_dir: str | Path, progress: bool = False) -> PrepResult:
    """Prepare `data.source.uri` (and `data.feedback`) into `out_dir` as the `data` group says."""
    check_out_dir(out_dir)  # before the tokenizer is resolved: a refused folder costs nothing
    return prepare(data.source.uri, out_dir, **options_from_config(data, model), progress=progress)


def options_from_config(data: DictConfig, model: DictConfig,
                        resolve_model: Callable[..., Path] | None = None) -> dict[str, Any]:
    """prepare() keyword arguments from the typed `data` and `model` groups.

    The token budget needs a tokenizer: `data.tokens.tokenizer`, else the base model's.
    """
    tokens = data.tokens
    tokenizer_dir = tokens.tokenizer
    if tokenizer_dir is None and tokens.max_tokens > 0:
        if resolve_model is None:
            from modelchain.core.models import resolve_base_model as resolve_model
        try:
            tokenizer_dir = str(resolve_model(model.name, path=model.path, gguf_package=model.gguf_package,
                                              gguf_file=model.gguf_file))
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"data.tokens: no tokenizer for the token budget ({exc}); set data.tokens.tokenizer "
                            "to a local tokenizer folder or data.tokens.max_tokens=0") from exc
    feedback = None
    if data.feedback.uri:
        from modelchain.data.feedback import FeedbackOptions

        fb = data.feedback
        feedback = FeedbackOptions(uri=fb.uri, format=fb.format, min_score=fb.min_score,
                                   score_names=list(fb.score_names), positive_labels=list(fb.positive_labels),
                                   since=fb.since, until=fb.until)
    return {
        "fields": FieldMap(**data.fields),
        "system_prompt": data.system_prompt,
        "val_fraction": data.val_fraction,
        "test_fraction": data.test_fraction,
        "seed": data.seed,
        "max_bad_fraction": data.max_bad_fraction,
        "min_response_chars": data.min_response_chars,
        "min_prompt_chars": data.min_prompt_chars,
        "source_format": data.source.format,
        "normalization": data.normalization,
        "stratify_by": data.stratify_by,
        "dedup": DedupOptions(**data.dedup),
        "pii": PiiOptions(enabled=data.pii.enabled, kinds=list(data.pii.kinds)),
        "tokens": TokenOptions(max_tokens=tokens.max_tokens, action=tokens.action,
                               tokenizer_dir=tokenizer_dir, sample_rows=tokens.sample_rows),
        "feedback": feedback,
        "workers": data.workers,
    }

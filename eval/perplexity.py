"""Perplexity of the reference answers given their prompts (lower is better)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence


def answer_nll(
    base_model_dir: str | os.PathLike,
    conversations: Sequence[Sequence[dict]],
    adapter_dir: str | os.PathLike | None = None,
    max_seq_len: int = 512,
) -> list[tuple[float, int]]:
    """Per conversation: (summed negative log-likelihood, token count) of the last message.

    The prompt is every message but the last, formatted with the chat template; only the
    tokens of the final (assistant) message are scored.
    """
    import torch

    from modelchain.eval.generation import load_model

    tokenizer, model = load_model(base_model_dir, adapter_dir)
    out = []
    for messages in conversations:
        prompt = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(list(messages), tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_seq_len]
        start = min(len(prompt_ids), len(ids) - 1)
        if len(ids) < 2:
            out.append((0.0, 0))
            continue
        input_ids = torch.tensor([ids])
        with torch.inference_mode():
            logits = model(input_ids=input_ids).logits[0, :-1].float()
        targets = input_ids[0, 1:]
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")[max(start - 1, 0):]
        out.append((float(nll.sum()), int(nll.numel())))
    return out


def perplexity(nll: Sequence[tuple[float, int]]) -> float:
    """exp(total NLL / total tokens) over all scored tokens; nan when nothing was scored."""
    total, tokens = sum(n for n, _ in nll), sum(t for _, t in nll)
    return math.exp(total / tokens) if tokens else math.nan

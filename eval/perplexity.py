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
    tokens of the final (assistant) message are scored. A conversation longer than
    `max_seq_len` loses prompt tokens from the left (see `scoring_window`).
    """
    import torch

    from modelchain.eval.generation import load_model

    tokenizer, model = load_model(base_model_dir, adapter_dir)
    out = []
    for messages in conversations:
        prompt = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(list(messages), tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        ids, start = scoring_window(prompt_ids, full_ids, max_seq_len)
        if start >= len(ids):
            out.append((0.0, 0))
            continue
        input_ids = torch.tensor([ids])
        with torch.inference_mode():
            logits = model(input_ids=input_ids).logits[0, :-1].float()
        targets = input_ids[0, 1:]
        # logits[j] predicts ids[j + 1], so the answer's first token is target start - 1.
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")[start - 1:]
        out.append((float(nll.sum()), int(nll.numel())))
    return out


def scoring_window(prompt_ids: Sequence[int], full_ids: Sequence[int], max_seq_len: int) -> tuple[list[int], int]:
    """The tokens to run and the index of the first answer token among them.

    The answer is what `full_ids` holds beyond its common prefix with `prompt_ids`. Prompt
    tokens go from the left until the whole fits in `max_seq_len`, so the scored tokens are
    always the answer's (cutting from the right, as before, scored prompt tokens as the
    answer once the prompt reached the limit). At least one prompt token stays as context;
    an answer longer than the rest of the window keeps its beginning. Returns start ==
    len(ids) when there is no answer token to score.
    """
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
    shared = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        shared += 1
    context, answer = list(full_ids[:shared]), list(full_ids[shared:])
    if not answer:
        return context[-max_seq_len:], min(len(context), max_seq_len)
    if not context:  # nothing to condition the first answer token on: it is context, not scored
        context, answer = answer[:1], answer[1:]
    answer = answer[: max_seq_len - 1]
    context = context[-(max_seq_len - len(answer)):]
    return context + answer, len(context)


def perplexity(nll: Sequence[tuple[float, int]]) -> float:
    """exp(total NLL / total tokens) over all scored tokens; nan when nothing was scored."""
    total, tokens = sum(n for n, _ in nll), sum(t for _, t in nll)
    return math.exp(total / tokens) if tokens else math.nan

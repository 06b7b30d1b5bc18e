"""Greedy generation from a base model, optionally with a LoRA adapter, for evaluation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from modelchain.core.models import cpu_threads


def load_model(base_model_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None = None):
    """Load tokenizer and model for inference; an adapter is merged into the weights.

    Merging makes generation as fast as the base model and gives the same outputs as
    running the adapter separately.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_model_dir = Path(base_model_dir)
    if not (base_model_dir / "config.json").is_file():
        raise ValueError(f"base model {base_model_dir} has no config.json")
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    tokenizer.padding_side = "left"  # decoder-only models continue from the right end
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ValueError(f"adapter {adapter_dir} has no adapter_config.json")
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.eval()
    torch.set_num_threads(cpu_threads(model))
    return tokenizer, model


def generate(
    base_model_dir: str | os.PathLike,
    prompts: Sequence[Sequence[dict]],
    adapter_dir: str | os.PathLike | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Answer each chat prompt (a list of messages) greedily; return the new text, stripped.

    With `progress`, a bar labelled `desc` counts the prompts answered (on stderr).
    """
    if not prompts:
        return []
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    tokenizer, model = load_model(base_model_dir, adapter_dir)
    texts = [
        tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    # Batching prompts of similar length wastes less compute on padding.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    answers: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(order), desc=desc, unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad(
            {"input_ids": [encoded[i] for i in chunk]}, padding=True, return_tensors="pt"
        )
        with torch.inference_mode():
            output = model.generate(**batch, generation_config=config)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        for i, tokens in zip(chunk, new_tokens):
            answers[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        bar.update(len(chunk))
    bar.close()
    return answers

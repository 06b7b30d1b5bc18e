"""Perplexity on long prompts: the prompt is cut from the left, so the tokens scored are the answer's."""

import math

import pytest

from modelchain.eval.perplexity import answer_nll, scoring_window
from tests.data_prep_support import smollm2_tokenizer_dir  # noqa: F401 (fixture)
from tests.tiny_model import tiny_model  # noqa: F401 (fixture)

ANSWER = "Route it to the billing team."


def conversation(prompt_words: int) -> list[dict]:
    ticket = " ".join(f"charge{i}" for i in range(prompt_words))
    return [{"role": "user", "content": f"Ticket: {ticket}. Which team?"}, {"role": "assistant", "content": ANSWER}]


def encode(tokenizer, messages):
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    return (tokenizer(prompt, add_special_tokens=False)["input_ids"],
            tokenizer(full, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("prompt_words", [5, 300, 2000])
def test_the_window_always_ends_with_the_whole_answer(smollm2_tokenizer_dir, prompt_words):  # noqa: F811
    """With SmolLM2's real tokenizer and chat template, short, at-the-limit and far longer prompts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    prompt_ids, full_ids = encode(tokenizer, conversation(prompt_words))
    answer_ids = full_ids[len(prompt_ids):]
    assert full_ids[: len(prompt_ids)] == prompt_ids  # the template's prompt is a prefix of the conversation
    ids, start = scoring_window(prompt_ids, full_ids, 512)
    assert len(ids) == min(len(full_ids), 512)
    assert ids[start:] == answer_ids  # every answer token is scored, and nothing else
    assert ANSWER in tokenizer.decode(ids[start:])
    assert ANSWER not in tokenizer.decode(ids[:start])
    if len(prompt_ids) >= 512:
        assert ids[:start] == prompt_ids[-start:]  # the prompt lost its beginning, not its end


def test_an_answer_longer_than_the_window_keeps_its_beginning_and_one_prompt_token():
    ids, start = scoring_window([1, 2, 3], [1, 2, 3, 10, 11, 12, 13, 14], 4)
    assert (ids, start) == ([3, 10, 11, 12], 1)
    assert scoring_window([1, 2], [1, 2], 4) == ([1, 2], 2)  # nothing to score
    with pytest.raises(ValueError, match="max_seq_len must be >= 2"):
        scoring_window([1], [1, 2], 1)


def test_answer_nll_scores_the_answer_of_a_long_prompt(tiny_model):  # noqa: F811
    """Before, a prompt at the window's length left one prompt token scored as the whole answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = conversation(600)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt_ids, full_ids = encode(tokenizer, messages)
    assert len(prompt_ids) > 512
    n_answer = len(full_ids) - len(prompt_ids)

    [(nll, count)] = answer_nll(tiny_model, [messages], max_seq_len=512)
    assert count == n_answer and math.isfinite(nll) and nll > 0

    # The same number by hand: the last 512 tokens, the answer's positions only.
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    window = torch.tensor([full_ids[-512:]])
    with torch.inference_mode():
        logits = model(input_ids=window).logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="none")[-n_answer:].sum()
    assert nll == pytest.approx(float(expected), rel=1e-4)

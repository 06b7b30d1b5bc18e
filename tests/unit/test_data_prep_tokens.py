"""Token budget with the SmolLM2 tokenizer and chat template: exact where it matters, drop or truncate."""

import pytest

from modelchain.data.tokens import ChatRenderer, Reservoir, TokenBudget, load_tokenizer
from tests.data_prep_support import smollm2_tokenizer_dir  # noqa: F401 (fixture)


def conv(user, answer="ok", system=None):
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):  # noqa: F811
    return load_tokenizer(smollm2_tokenizer_dir)


def test_renderer_matches_the_template(tokenizer):
    renderer = ChatRenderer(tokenizer)
    for messages in (conv("hi there"), conv("q", "a", system="Be brief."), conv("Ünïcode ✓ {{ not jinja }}")):
        for prompt_only in (False, True):
            m = messages[:-1] if prompt_only else messages
            assert renderer.render(m, prompt_only) == tokenizer.apply_chat_template(m, add_generation_prompt=prompt_only)


@pytest.mark.slow
def test_tokenizer_and_template_equal_transformers(smollm2_tokenizer_dir, tokenizer):  # noqa: F811
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    for messages in (conv("Hello\nworld"), conv("q", "a", system="sys"), conv("x " * 300)):
        text = hf.apply_chat_template(messages, tokenize=False)
        assert tokenizer.apply_chat_template(messages) == text
        assert tokenizer(text)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"]


def test_budget_drops_rows_over_the_maximum(tokenizer):
    budget = TokenBudget(tokenizer, max_tokens=60, action="drop")
    short, long = conv("What is my order status?"), conv("word " * 200)
    out = budget.apply([short, long, short])
    assert out[0] == short and out[1] is None and out[2] == short
    assert budget.stats.over_budget == 1 and budget.stats.dropped == 1
    assert budget.lengths([short, long]) == [len(tokenizer.apply_chat_template(m, tokenize=True)) for m in (short, long)]


def test_budget_truncates_the_start_of_the_prompt(tokenizer):
    budget = TokenBudget(tokenizer, max_tokens=60, action="truncate")
    long = conv(" ".join(f"w{i}" for i in range(300)) + " so which team?", "billing", system="Route it.")
    (out,) = budget.apply([long])
    assert out is not None and budget.stats.truncated == 1
    assert out[-1] == {"role": "assistant", "content": "billing"} and out[0]["content"] == "Route it."
    assert out[1]["content"].endswith("so which team?") and len(out[1]["content"]) < len(long[1]["content"])
    assert len(tokenizer.apply_chat_template(out, tokenize=True)) <= 60


def test_budget_drops_what_cannot_be_truncated(tokenizer):
    budget = TokenBudget(tokenizer, max_tokens=40, action="truncate")
    (out,) = budget.apply([conv("short question", "answer " * 100)])
    assert out is None and budget.stats.dropped == 1


def test_bytes_bound_is_checked_against_exact_counts(tokenizer):
    budget = TokenBudget(tokenizer, max_tokens=10_000)
    budget.apply([conv(f"question {i}") for i in range(300)])
    assert budget._bytes_bound_ok  # a byte-level BPE never has more tokens than bytes
    assert budget.stats.counted_exactly == 256  # only the check rows: all others fit by their size


def test_reservoir_is_uniform_and_reproducible():
    picks = []
    for seed in range(2):
        reservoir = Reservoir(100, seed=seed)
        for i in range(10_000):
            reservoir.offer(i)
        picks.append(reservoir.items)
        assert len(reservoir.items) == 100 and 3000 < sum(reservoir.items) / 100 < 7000
    assert picks[0] != picks[1]
    again = Reservoir(100, seed=0)
    for i in range(10_000):
        again.offer(i)
    assert again.items == picks[0]


def test_the_reservoir_draws_what_random_randrange_draws():
    """The inlined draw keeps the sample (and so the card's histogram) of a seed unchanged."""
    import random

    reservoir, rng, expected = Reservoir(10, seed=7), random.Random(7), []
    for seen, item in enumerate(range(5000), start=1):  # Algorithm R with random.randrange
        if len(expected) < 10:
            expected.append(item)
        elif (j := rng.randrange(seen)) < 10:
            expected[j] = item
    for start in range(0, 5000, 700):
        reservoir.offer_many(range(start, min(start + 700, 5000)))
    assert reservoir.items == expected and reservoir.seen == 5000

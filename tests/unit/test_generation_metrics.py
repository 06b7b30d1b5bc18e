import json

import pytest

from modelchain.eval.metrics import exact_match, normalize_answer, rouge_l, score_examples

from ..tiny_model import tiny_model  # noqa: F401 (fixture)

# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The Billing team.", "billing team"),
        ("  an   ANSWER!! ", "answer"),
        ("shipping,\nreturns", "shipping returns"),
        ("theatre", "theatre"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("billing", "billing", 1.0),
        ("Billing.", "billing", 1.0),
        ("the billing", "billing", 1.0),
        ("billing team", "billing", 0.0),
        ("shipping", "billing", 0.0),
        ("3.0", "3", 1.0),
        ("3", "3.00", 1.0),
        ("1,000", "1000", 1.0),
        ("3.5", "3", 0.0),
        ("30", "3.0", 0.0),  # stripping the dot from "3.0" must not make it "30"
        ("-2", "2", 0.0),
        ("3 apples", "3", 0.0),
    ],
)
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


def test_rouge_l():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("billing", "shipping") == 0.0
    partial = rouge_l("the cat sat", "the cat sat on the mat")
    # LCS 3 tokens: precision 1, recall 0.5, F = 2/3.
    assert partial == pytest.approx(2 / 3)


def test_score_examples():
    scores = score_examples(["billing", "Shipping!", "no idea"], ["billing", "shipping", "returns"])
    assert scores["n"] == 3
    assert scores["exact_match"] == [1.0, 1.0, 0.0]
    assert scores["rouge_l"][:2] == [pytest.approx(1.0), pytest.approx(1.0)] and scores["rouge_l"][2] == 0.0
    assert scores["mean"]["exact_match"] == pytest.approx(2 / 3)
    assert scores["mean"]["rouge_l"] == pytest.approx(2 / 3)
    assert score_examples([], [])["mean"] == {"exact_match": 0.0, "rouge_l": 0.0}
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score_examples(["a", "b"], ["a"])


# ----------------------------------------------------------------------------- generation


PROMPTS = [
    [{"role": "user", "content": "Where is my parcel?"}],
    [{"role": "system", "content": "Route tickets."}, {"role": "user", "content": "I was charged twice for the same order last week, please help."}],
    [{"role": "user", "content": "App crashes."}],
]


def test_generate_one_string_per_prompt_in_order(tiny_model):
    from modelchain.eval.generation import generate

    batched = generate(tiny_model, PROMPTS, max_new_tokens=6, batch_size=2)
    assert len(batched) == len(PROMPTS)
    assert all(isinstance(a, str) for a in batched)
    assert any(batched)  # a random model still emits tokens
    assert all(a == a.strip() and "<|im_end|>" not in a for a in batched)
    # Left padding and sorting by length must not change any answer.
    one_by_one = [generate(tiny_model, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert batched == one_by_one
    assert generate(tiny_model, [], max_new_tokens=4) == []


def test_generate_with_adapter(tmp_path, tiny_model):
    from modelchain.eval.generation import generate
    from modelchain.training.local_trainer import train_lora

    rows = [
        {"messages": [{"role": "user", "content": f"ticket {i}"}, {"role": "assistant", "content": "billing"}]}
        for i in range(8)
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapter = tmp_path / "adapter"
    train_lora(tiny_model, train, adapter, max_steps=40, batch_size=8, learning_rate=2e-2,
               rank=8, dropout=0.0, progress=False)
    prompts = [[{"role": "user", "content": f"ticket {i}"}] for i in (20, 21)]
    tuned = generate(tiny_model, prompts, adapter_dir=adapter, max_new_tokens=4)
    base = generate(tiny_model, prompts, max_new_tokens=4)
    # The adapter taught the random model its only answer; the base model never says it.
    assert tuned == ["billing", "billing"]
    assert base != tuned


def test_generate_checks_its_inputs(tmp_path, tiny_model):
    from modelchain.eval.generation import generate

    with pytest.raises(ValueError, match="config.json"):
        generate(tmp_path / "nothing", PROMPTS)
    with pytest.raises(ValueError, match="adapter_config.json"):
        generate(tiny_model, PROMPTS, adapter_dir=tmp_path)


def test_an_answer_metric_is_one_registry_entry(monkeypatch):
    """A metric in ANSWER_METRICS is scored per example, and the config may gate on it."""
    from modelchain.core.config import ConfigError, compose
    from modelchain.eval import metrics

    def starts_alike(prediction, reference):
        return float(prediction[:1].lower() == reference[:1].lower())

    with pytest.raises(ConfigError, match="eval.compare_metrics"):
        compose("finetune", ["eval.compare_metrics=[starts_alike]"])
    monkeypatch.setitem(metrics.ANSWER_METRICS, "starts_alike", starts_alike)
    monkeypatch.setattr(metrics, "GATE_METRICS", (*metrics.GATE_METRICS, "starts_alike"))
    assert score_examples(["Billing", "nope"], ["billing", "shipping"])["starts_alike"] == [1.0, 0.0]
    cfg = compose("finetune", ["eval.compare_metrics=[exact_match,starts_alike]", "+eval.thresholds.starts_alike=0.5"])
    assert list(cfg.eval.compare_metrics) == ["exact_match", "starts_alike"]

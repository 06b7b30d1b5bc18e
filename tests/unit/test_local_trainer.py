import json
import math

import pytest

from modelchain.training.local_trainer import (
    IGNORE_INDEX,
    encode_example,
    load_chat_rows,
    main,
    train_lora,
)

from ..tiny_model import tiny_model  # noqa: F401 (fixture)

LABELS = ["billing", "shipping", "technical", "account", "returns"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def chat(question, answer, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def train_file(tmp_path):
    rows = [
        {"messages": chat(f"Ticket {i}: my {word} problem. Which team?", LABELS[i % 5], "Route tickets.")}
        for i, word in enumerate(["card", "parcel", "app", "password", "refund"] * 4)
    ]
    return write_rows(tmp_path / "train.jsonl", rows)


# ----------------------------------------------------------------------------- input checks


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.jsonl"):
        load_chat_rows(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ('{"prompt": "hi", "response": "x"}', "messages"),
        ('{"messages": []}', "messages"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "last message"),
        ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}', "last message"),
        ('{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}', "role"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "prompt"),
        ('{"messages": ', "JSON"),
        ("[1, 2]", "messages"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, bad_line, reason):
    good = json.dumps({"messages": chat("q", "a")})
    path = tmp_path / "data.jsonl"
    # A blank line still counts, so the bad row is on line 4.
    path.write_text(f"{good}\n\n{good}\n{bad_line}\n{good}\n")
    with pytest.raises(ValueError, match=rf"data\.jsonl:4: .*{reason}"):
        load_chat_rows(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl has no rows"):
        load_chat_rows(path)


def test_bad_rows_fail_before_anything_is_written(tmp_path, tiny_model):
    path = write_rows(tmp_path / "train.jsonl", [{"messages": chat("q", "a")}, {"text": "no messages"}])
    with pytest.raises(ValueError, match=r"train\.jsonl:2"):
        train_lora(tiny_model, path, tmp_path / "out", max_steps=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_unknown_target_module(tmp_path, train_file, tiny_model):
    with pytest.raises(ValueError, match="linear_qkvx"):
        train_lora(tiny_model, train_file, tmp_path / "out", target_modules=["linear_qkvx"], progress=False)


# ----------------------------------------------------------------------------- loss masking


def test_only_the_answer_is_supervised(tokenizer):
    messages = chat("Where is my parcel?", "shipping", "Route tickets.")
    example = encode_example(tokenizer, messages, max_seq_len=256)
    assert len(example.input_ids) == len(example.labels)
    supervised = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    # One contiguous block at the very end: the answer and its end-of-turn token.
    assert supervised == list(range(supervised[0], len(example.labels)))
    answer = tokenizer.decode([example.input_ids[i] for i in supervised])
    assert answer == "shipping<|im_end|>"
    assert [example.labels[i] for i in supervised] == [example.input_ids[i] for i in supervised]
    # The unsupervised part is exactly the prompt as generation sees it.
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(example.input_ids[: supervised[0]]) == prompt
    assert not example.truncated


def test_earlier_assistant_turns_are_not_supervised(tokenizer):
    messages = chat("first question", "first answer") + [
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "final answer"},
    ]
    example = encode_example(tokenizer, messages, max_seq_len=256)
    supervised = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "final answer<|im_end|>"


def test_truncation_keeps_the_answer(tokenizer):
    messages = chat("word " * 300, "billing")
    example = encode_example(tokenizer, messages, max_seq_len=32)
    assert example.truncated and len(example.input_ids) == 32
    supervised = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "billing<|im_end|>"


# ----------------------------------------------------------------------------- training


def test_three_steps_write_a_loadable_adapter(tmp_path, train_file, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    metrics = train_lora(tiny_model, train_file, out, max_steps=3, batch_size=4, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "loss_curve.png", "train_metrics.json",
    ]
    # Nothing temporary is left next to the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "train.jsonl"]
    assert metrics["steps"] == 3 and len(metrics["losses"]) == 3
    assert all(math.isfinite(x) for x in metrics["losses"])
    assert metrics["final_loss"] == metrics["losses"][-1]
    assert metrics["train_tokens"] > 0 and metrics["tokens_per_second"] > 0
    assert json.loads((out / "train_metrics.json").read_text())["losses"] == metrics["losses"]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, out)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 2 * 7  # two layers, seven projections
    # LoRA B starts at zero; after training it must have moved.
    assert any(torch.count_nonzero(p) > 0 for p in lora_b)


def test_training_is_deterministic_and_learns(tmp_path, train_file, tiny_model):
    kwargs = dict(max_steps=25, batch_size=4, learning_rate=5e-3, rank=4, dropout=0.0, progress=False)
    first = train_lora(tiny_model, train_file, tmp_path / "a", seed=3, **kwargs)
    second = train_lora(tiny_model, train_file, tmp_path / "b", seed=3, **kwargs)
    assert first["losses"] == second["losses"]
    # A random model starts near log(vocab) and must fit this tiny set.
    assert first["losses"][0] > 8
    assert first["mean_loss_last_5"] < first["losses"][0] / 2


def test_packing_changes_the_layout_not_the_training(tmp_path, train_file, tiny_model):
    """Packed end to end in one row (segment attention) or padded one a row, the same steps learn the same."""
    kwargs = dict(max_steps=4, batch_size=4, learning_rate=5e-3, rank=4, dropout=0.0, seed=1, progress=False)
    packed = train_lora(tiny_model, train_file, tmp_path / "packed", packing=True, **kwargs)
    padded = train_lora(tiny_model, train_file, tmp_path / "padded", packing=False, **kwargs)
    assert packed["train_tokens"] == padded["train_tokens"]
    assert packed["padding_fraction"] == 0.0 < padded["padding_fraction"]
    assert packed["losses"] == pytest.approx(padded["losses"], rel=1e-4)


def test_rerun_replaces_the_output(tmp_path, train_file, tiny_model):
    out = tmp_path / "adapter"
    train_lora(tiny_model, train_file, out, max_steps=1, rank=4, progress=False)
    metrics = train_lora(tiny_model, train_file, out, max_steps=2, rank=2, progress=False)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2
    assert len(metrics["losses"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "train.jsonl"]


def test_command_line(tmp_path, train_file, tiny_model, capsys):
    out = tmp_path / "cli-out"
    code = main(["--base-model", str(tiny_model), "--train", str(train_file), "--out", str(out),
                 "--max-steps", "2", "--batch-size", "2", "--target-modules", "linear_qkv", "--no-progress"])
    assert code == 0
    assert "2 steps" in capsys.readouterr().out
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert sorted(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == ["k_proj", "q_proj", "v_proj"]

    code = main(["--base-model", str(tiny_model), "--train", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    assert code == 2
    assert "missing.jsonl" in capsys.readouterr().err

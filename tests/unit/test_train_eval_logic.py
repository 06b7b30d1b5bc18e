"""The finetune and evaluate steps' logic, called as plain functions on typed config groups."""

import json

from modelchain.core.config import compose, group_json, load_group

from ..tiny_model import tiny_model  # noqa: F401 (fixture)


def write_split(path, ids):
    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"ticket {i}"},
                                        {"role": "assistant", "content": "billing"}]} for i in ids]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_finetune_then_evaluate_with_a_champion(tmp_path, tiny_model, monkeypatch):
    from modelchain.components.evaluate.logic import run as evaluate
    from modelchain.components.finetune.logic import run as finetune
    from modelchain.eval.metrics import ANSWER_METRICS

    monkeypatch.setenv("MODELCHAIN_HOME", str(tmp_path / "home"))
    splits = tmp_path / "splits"
    splits.mkdir()
    write_split(splits / "train.jsonl", range(8))
    write_split(splits / "val.jsonl", range(20, 23))
    write_split(splits / "test.jsonl", range(30, 34))
    cfg = compose("finetune", ["model=local_dir", f"model.path={tiny_model}", "train.batch_size=8",
                               "train.lora.dropout=0.0", "eval.max_examples=3"])
    # The groups as the steps rebuild them, with the run's values in train and eval.
    train = load_group("train", group_json(cfg, "train"), max_steps=40, learning_rate=2e-2, lora_rank=8, lora_alpha=16)
    adapter = tmp_path / "adapter"
    metrics = finetune(cfg.model, train, cfg.cluster, cfg.experiment, splits, adapter)
    assert metrics["steps"] == 40 and json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    # The step leaves the manifest registration requires, covering every file it wrote.
    from modelchain.core import artifacts

    manifest = artifacts.checked_manifest(adapter)
    assert {"adapter_config.json", "adapter_model.safetensors", "train_metrics.json"} <= set(manifest["files"])

    ev = load_group("eval", group_json(cfg, "eval"), champion=str(adapter))
    results = evaluate(cfg.model, ev, cfg.cluster, cfg.rag, splits, adapter, tmp_path / "results.json")
    assert results == json.loads((tmp_path / "results.json").read_text())
    assert results["split"] == "test" and results["n_examples"] == 3  # eval.max_examples
    assert results["sides"] == ["base", "challenger", "champion"] and results["champion_uri"] == str(adapter)
    assert set(results["scores"]["challenger"]) == set(ANSWER_METRICS)
    # The adapter taught the random model its only answer; the champion is the same adapter.
    assert results["challenger"]["exact_match"] == 1.0 == results["champion"]["exact_match"]
    assert results["base"]["exact_match"] < 1.0
    assert results["challenger"]["perplexity"] < results["base"]["perplexity"]

"""The finetune pipeline end to end with kfp.local: tiny model, small dataset, MLflow on sqlite."""

import json

import pytest

from modelchain.core import registry
from modelchain.core.config import compose
from modelchain.serving.adapter_stack import missing_adapter_tools

from .conftest import run_cli

pytestmark = pytest.mark.e2e

MODEL_NAME = "local-model-ticket-routing"


def overrides(tiny_model, dataset, *extra):
    return [
        "model=local_dir", f"model.path={tiny_model}", f"data.source.uri={dataset}",
        "train=quick", "eval=smoke", *extra,
    ]


def test_finetune_registers_a_challenger_then_a_refusal_registers_nothing(tmp_path, tiny_model, routing_dataset):
    home = tmp_path / "home"
    out = run_cli("run", "finetune", *overrides(tiny_model, routing_dataset), home=home)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"registered: models:/{MODEL_NAME}@challenger = version 1" in out.stdout

    client = registry.client(f"sqlite:///{home}/mlflow.db")
    version = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    assert str(version.version) == "1"
    run = client.get_run(version.run_id)
    assert run.data.tags["gate.decision"] == "passed"
    assert {"challenger.exact_match", "base.exact_match", "challenger.rouge_l", "train.final_loss"} <= set(run.data.metrics)
    assert run.data.metrics["eval.n_examples"] >= 4
    # Lineage: the split hashes on the version equal the data card's.
    card_path = next(home.glob("kfp-outputs/*/data-prep/splits/data_card.json"))
    card = json.loads(card_path.read_text())
    assert version.tags["lineage.split.train.sha256"] == card["splits"]["train"]["sha256"]
    assert version.tags["lineage.dataset_uri"] == str(routing_dataset)
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "adapter")}
    assert "adapter/adapter_config.json" in artifacts

    # The canary ran through kfp.local: the version was loaded into one vLLM CPU server beside the
    # base model (an all-zero adapter: no champion yet) and promoted step by step.
    missing = missing_adapter_tools(compose("finetune").serve.canary.vllm_python)
    if missing:  # make test installs the stack (make setup-serve); a bare checkout skips, saying why
        assert "canary: version 1 not rolled out" in out.stdout, out.stdout[-3000:]
    else:
        assert "canary: version 1 promoted" in out.stdout, out.stdout[-3000:]
        assert registry.aliases(client.get_registered_model(MODEL_NAME))["champion"] == "1"
        assert client.get_model_version(MODEL_NAME, "1").tags["canary.outcome"] == "promoted"
        report = json.loads(next(home.glob("kfp-outputs/*/canary/rollout/rollout.json")).read_text())
        assert report["stack"]["targets_at_end"]["stable"].endswith("-v1")
        assert report["traffic"]["failed"] == 0

    # A gate that cannot be met: the run is recorded as refused, nothing new is registered.
    refused = run_cli(
        "run", "finetune", *overrides(tiny_model, routing_dataset, "+eval.thresholds.exact_match=1.0", "eval.min_improvement=0.5"),
        home=home,
    )
    assert refused.returncode == 0, refused.stderr[-3000:]
    assert "last gate: refused" in refused.stdout
    runs = client.search_runs([run.info.experiment_id], order_by=["attributes.start_time DESC"])
    assert runs[0].data.tags["gate.decision"] == "refused"
    assert "FAIL floor.exact_match" in runs[0].data.tags["gate.reasons"]
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")] == ["1"]


def test_missing_dataset_fails_cleanly_and_registers_nothing(tmp_path, tiny_model):
    home = tmp_path / "home"
    missing = tmp_path / "nope.jsonl"
    out = run_cli("run", "finetune", *overrides(tiny_model, missing), home=home)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("modelchain: run failed") and str(missing) in last
    assert not any(home.glob("kfp-outputs/*/finetune"))

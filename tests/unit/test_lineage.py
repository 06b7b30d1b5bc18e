"""Gate then register (the components' logic) record the full lineage; the CLI prints it and moves aliases."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelchain.data.prepare import prepare
from modelchain.components.gate.logic import run as gate
from modelchain.components.register.logic import run as register_logic
from modelchain.core import artifacts, lineage, registry
from modelchain.core.config import RUN_PARAMETERS, compose, group_json, load_group
from modelchain.pipelines.cli import main

from ..registry_support import make_adapter, template_db  # noqa: F401 (fixtures)

NAME = "smollm2-135m-instruct-ticket-routing"
HEAVY = ["torch", "transformers", "pymilvus", "sentence_transformers", "ragas", "mlflow", "kfp", "boto3"]
LINEAGE_KEYS = {
    "lineage.dataset_uri", "lineage.dataset_name", "lineage.split.train.sha256", "lineage.split.train.rows",
    "lineage.split.val.sha256", "lineage.split.test.sha256", "lineage.base_model", "lineage.base_model_revision",
    "lineage.training_image", "lineage.pytorchjob", "lineage.kfp_run_id", "lineage.git_commit",
    "lineage.cluster", "lineage.config_sha256", "lineage.adapter_sha256", "lineage.mlflow_run_id",
    "gate.decision", "gate.reasons", "eval.challenger.exact_match", "eval.base.exact_match", "eval.n_examples",
}


# The run's values of the run-time parameters the gate records (the trainer ran with these).
RUN = {"max_steps": 3, "learning_rate": 0.001, "lora_rank": 4, "lora_alpha": 8}


def step_groups(cfg, **run_values):
    """The typed groups the gate and register receive: baked by the pipeline, rebuilt in the step."""
    from modelchain.core.config import parameter_values

    values = {**parameter_values("finetune", cfg), **RUN, **run_values}
    groups = {}
    for group in ("model", "data", "train", "eval", "cluster", "experiment"):
        mine = {p.name: values[p.name] for p in RUN_PARAMETERS["finetune"] if p.group == group}
        groups[group] = load_group(group, group_json(cfg, group), **mine)
    return groups


@pytest.fixture
def pipeline_outputs(tmp_path, monkeypatch, template_db):
    """What data_prep, finetune and evaluate hand to the gate, and the composed config of the pipeline."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(template_db, home / "mlflow.db")
    monkeypatch.setenv("MODELCHAIN_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose("finetune")
    dataset = tmp_path / "tickets.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": f"Ticket {i}: charged twice", "response": "billing"}) + "\n"
                               for i in range(60)))
    prepare(str(dataset), tmp_path / "splits", system_prompt="Route it.")
    adapter = make_adapter(tmp_path / "adapter")
    (adapter / "train_metrics.json").write_text(json.dumps({
        "final_loss": 0.25, "steps": 3, "losses": [1.5, 0.75, 0.25], "settings": {"rank": 4, "alpha": 8, "max_steps": 3, "learning_rate": 0.001},
    }))
    artifacts.write_manifest(adapter)  # as the finetune step leaves it
    return {"home": home, "cfg": cfg, "splits": tmp_path / "splits", "adapter": adapter,
            "results": eval_results(), "report": tmp_path / "gate.md", "dataset": dataset}


def eval_results(n=24, challenger_right=21, base_right=3):
    """Evaluate's output: per-example scores of each side, and their means."""
    right = {"challenger": challenger_right, "base": base_right}
    scores = {side: {m: [1.0] * k + [0.0] * (n - k) for m in ("exact_match", "rouge_l")} for side, k in right.items()}
    examples = [
        {"id": str(i), "prompt": f"Ticket {i}", "reference": "billing",
         **{side: "billing" if scores[side]["exact_match"][i] else "shipping" for side in scores},
         **{f"{side}_{m}": scores[side][m][i] for side in scores for m in scores[side]}}
        for i in range(n)
    ]
    means = {side: {m: sum(v) / n for m, v in by_metric.items()} for side, by_metric in scores.items()}
    return {"n_examples": n, "split": "val", "sides": ["base", "challenger"], "scores": scores, **means,
            "examples": examples}


def run_gate(out, **policy):
    policy = {"thresholds": {"exact_match": 0.5}, "min_improvement": 0.1, **policy}
    g = step_groups(out["cfg"], **policy)
    return gate(g["model"], g["data"], g["train"], g["eval"], g["cluster"], g["experiment"], out["results"],
                report_path=out["report"], splits_dir=out["splits"], adapter_dir=out["adapter"], kfp_run_id="kfp-7f3a",
                git_commit="57a4901d")


def register(out, run_id):
    g = step_groups(out["cfg"])
    return register_logic(g["model"], g["data"], g["cluster"], g["experiment"], run_id, out["adapter"])


def test_gate_and_register_record_the_whole_lineage(pipeline_outputs):
    out = pipeline_outputs
    decision, run_id = run_gate(out)
    assert decision.passed
    uri = register(out, run_id)
    assert uri == f"models:/{NAME}/1"

    client = registry.client(f"sqlite:///{out['home']}/mlflow.db")
    mv = client.get_model_version(NAME, "1")
    assert LINEAGE_KEYS <= set(mv.tags), LINEAGE_KEYS - set(mv.tags)
    assert mv.tags["lineage.pytorchjob"] == "local" and mv.tags["lineage.training_image"] == "local"
    assert mv.tags["lineage.kfp_run_id"] == "kfp-7f3a" and mv.tags["lineage.git_commit"] == "57a4901d"
    assert mv.tags["lineage.dataset_uri"] == str(out["dataset"])
    assert mv.tags["eval.challenger.exact_match"] == "0.8750"

    run = client.get_run(run_id)
    assert run.data.params["lora.rank"] == "4"  # the run's value, not the compiled default
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train.loss")] == [
        (1, 1.5), (2, 0.75), (3, 0.25)]
    files = {a.path for folder in ("adapter", "reports", "eval", "data", "config", "training")
             for a in client.list_artifacts(run_id, folder)}
    assert {"adapter/adapter_config.json", "adapter/modelchain_manifest.json", "eval/report.md", "eval/results.json",
            "data/data_card.json", "data/data_card.md", "config/resolved_config.json", "config/training.json",
            "reports/gate.md", "training/train_metrics.json"} <= files
    training = json.loads(Path(client.download_artifacts(run_id, "config/training.json", str(out["home"]))).read_text())
    assert training["lora"]["rank"] == 4 and training["max_steps"] == 3

    record = lineage.build(client, registry.ModelRef.parse(f"{NAME}@challenger"))
    assert record["version"] == "1" and record["aliases"] == ["challenger"]
    assert record["gate"]["decision"] == "passed" and record["eval"]["challenger"]["exact_match"] == 0.875
    assert set(record["data"]["splits"]) == {"train", "val", "test"}
    text = lineage.render(record)
    assert text.splitlines()[0] == f"models:/{NAME}@challenger  ->  version 1  [challenger]"
    for expected in ("PyTorchJob local", "KFP run kfp-7f3a", "git commit 57a4901d",
                     "HuggingFaceTB/SmolLM2-135M-Instruct @ main",
                     str(out["dataset"]), "exact_match 0.875 (base 0.125)", "adapter/ (4 files)"):
        assert expected in text, expected


def test_the_training_job_a_backend_recorded_reaches_the_model_version(pipeline_outputs):
    out = pipeline_outputs
    job = {"kind": "PyTorchJob", "name": "llama3-8b-instruct-lora-t1", "namespace": "kubeflow-user",
           "uid": "7c1e9a52-3f4b-4d8e-9a6c-2b5d8f0e1a37", "image": "nvcr.io/nvidia/nemo:25.07"}
    (out["adapter"] / "training_job.json").write_text(json.dumps(job))
    artifacts.write_manifest(out["adapter"])  # the backend writes it before the finetune step's manifest
    register(out, run_gate(out)[1])
    client = registry.client(f"sqlite:///{out['home']}/mlflow.db")
    tags = client.get_model_version(NAME, "1").tags
    assert tags["lineage.pytorchjob"] == job["name"] and tags["lineage.training_image"] == job["image"]
    assert tags["lineage.training_job_kind"] == "PyTorchJob" and tags["lineage.training_job_namespace"] == job["namespace"]
    assert tags["lineage.training_job_uid"] == job["uid"]
    assert f"PyTorchJob {job['name']}" in lineage.render(lineage.build(client, registry.ModelRef.parse(f"{NAME}@challenger")))


def test_a_refused_gate_is_recorded_and_register_refuses(pipeline_outputs):
    out = pipeline_outputs
    decision, run_id = run_gate(out, thresholds={"exact_match": 0.95})
    assert not decision.passed
    with pytest.raises(registry.RegistryError, match="did not pass the gate"):
        register(out, run_id)
    client = registry.client(f"sqlite:///{out['home']}/mlflow.db")
    assert client.get_run(run_id).data.tags["gate.decision"] == "refused"
    assert client.search_registered_models() == []


def test_cli_lineage_promote_rollback(pipeline_outputs, capsys):
    out = pipeline_outputs
    for _ in range(2):
        register(out, run_gate(out)[1])

    uri = ["--tracking-uri", f"sqlite:///{out['home']}/mlflow.db"]
    assert main(["promote", NAME, "1"]) == 0  # the registry of the default config ($MODELCHAIN_HOME)
    assert main(["promote", NAME, "2", *uri]) == 0
    assert main(["promote", NAME, "2", *uri]) == 0
    assert main(["rollback", NAME, *uri]) == 0
    assert main(["rollback", NAME, *uri]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"models:/{NAME}/1 is now champion (no champion before)",
        f"models:/{NAME}/2 is now champion (previous: version 1)",
        f"models:/{NAME}/2 is already champion; nothing changed",
        f"{NAME}: champion rolled back from version 2 to 1",
        f"{NAME}: champion already rolled back from version 2 to 1; nothing changed",
    ]

    assert main(["lineage", NAME]) == 0
    assert capsys.readouterr().out.startswith(f"models:/{NAME}@champion  ->  version 1  [champion]\n")
    assert main(["lineage", f"models:/{NAME}/2", "--json", *uri]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["version"] == "2" and record["aliases"] == ["challenger"]
    assert record["training"]["kfp_run_id"] == "kfp-7f3a"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["lineage", "nope"], "modelchain: no registered model 'nope'"),
        (["lineage", f"{NAME}@canary"], f"modelchain: model '{NAME}' has no alias 'canary' (aliases: challenger=1)"),
        (["promote", NAME, "9"], f"modelchain: model '{NAME}' has no version 9"),
        (["rollback", NAME], f"modelchain: model '{NAME}' has no 'previous' version to roll back to"),
        (["lineage", NAME, "cluster=nope"], "modelchain: bad config: "),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(pipeline_outputs, capsys, argv, message):
    out = pipeline_outputs
    register(out, run_gate(out)[1])
    client = registry.client(f"sqlite:///{out['home']}/mlflow.db")
    before = registry.aliases(client.get_registered_model(NAME))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1
    assert registry.aliases(client.get_registered_model(NAME)) == before


@pytest.mark.parametrize("verb", ["lineage", "promote", "rollback"])
def test_registry_verbs_help_imports_nothing_heavy(verb):
    code = (
        "import sys\nfrom modelchain.pipelines.cli import main\n"
        f"try:\n    main([{verb!r}, '--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout and "--tracking-uri" in out.stdout

"""The modelchain CLI: fast help, one-line errors, compiled pipelines with the platform spec."""

import os
import subprocess
import sys

import pytest
import yaml

HEAVY = ["torch", "transformers", "pymilvus", "sentence_transformers", "ragas", "mlflow", "kfp"]
VERBS = ["config", "compile", "run", "submit", "schedule", "demo"]


def modelchain(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "modelchain.pipelines.cli", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=300,
    )


@pytest.mark.parametrize("argv", [["--help"]] + [[verb, "--help"] for verb in VERBS])
def test_help_imports_nothing_heavy(argv):
    code = (
        "import sys\nfrom modelchain.pipelines.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout
    assert "usage: modelchain" in out.stdout


def test_unknown_pipeline_is_one_line_exit_2():
    out = modelchain("compile", "nope")
    assert out.returncode == 2
    assert out.stderr.strip() == "modelchain: unknown pipeline 'nope': choose one of finetune, rag_ingest"


def test_bad_override_is_one_line_exit_2(tmp_path):
    out = modelchain("compile", "finetune", "train.lora.rnak=4", "-o", str(tmp_path / "x.yaml"))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert "train.lora.rnak" in out.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_config_prints_the_composed_config():
    out = modelchain("config", "rag_ingest", "rag.chunk.tokens=128")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["rag"]["chunk"]["tokens"] == 128 and cfg["pipeline"] == "rag_ingest"


def _executors(spec):
    return spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("pipeline", ["finetune", "rag_ingest"])
def test_compile_local_and_eks(tmp_path, pipeline):
    local = tmp_path / "local.yaml"
    eks = tmp_path / "eks.yaml"
    assert modelchain("compile", pipeline, "-o", str(local)).returncode == 0
    out = modelchain("compile", pipeline, "cluster=eks", "-o", str(eks))
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(eks.read_text()))
    pipeline_spec, platform = docs[0], docs[1]
    assert pipeline_spec["pipelineInfo"]["name"] == pipeline.replace("_", "-")
    assert "platforms" not in yaml.safe_load(local.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors and set(executors) == {
        name for name in pipeline_spec["deploymentSpec"]["executors"]
    }
    for spec in executors.values():
        assert spec["nodeSelector"]["labels"] == {"karpenter.sh/nodepool": "cpu-general"}
        assert spec["pvcMount"][0]["mountPath"] == "/fsx"
        secrets = {s["secretName"] if "secretName" in s else s["secretNameParameter"]["runtimeValue"]["constant"]
                   for s in spec["secretAsEnv"]}
        assert secrets == {"mlflow-s3", "milvus-token"}
    # Images are compile-time values from cluster.image.
    images = {e["container"]["image"] for e in pipeline_spec["deploymentSpec"]["executors"].values()}
    assert images == {"ghcr.io/modelchain/modelchain:0.1.0"}


def test_run_time_parameters_have_config_defaults(tmp_path):
    target = tmp_path / "f.yaml"
    out = modelchain("compile", "finetune", "train.max_steps=11", "train.lora.rank=4", "data.feedback.since=7d",
                     "-o", str(target))
    assert out.returncode == 0, out.stderr
    params = yaml.safe_load(target.read_text())["root"]["inputDefinitions"]["parameters"]
    assert params["max_steps"]["defaultValue"] == 11
    assert params["lora_rank"]["defaultValue"] == 4
    assert params["data_uri"]["defaultValue"].endswith("support_tickets.jsonl")
    assert params["thresholds"]["defaultValue"] == {"exact_match": 0.5}
    assert params["feedback_since"]["defaultValue"] == "7d" and params["feedback_until"]["defaultValue"] == ""


@pytest.mark.parametrize(
    "argv,overrides",
    [
        (["compile", "finetune", "-o", "f.yaml", "cluster=eks"], ["cluster=eks"]),
        (["submit", "finetune", "--host", "http://kfp", "--experiment", "support", "--wait", "cluster=eks"], ["cluster=eks"]),
        (["schedule", "finetune", "--host", "http://kfp", "--cron", "0 3 * * 1", "--name", "weekly", "cluster=eks"],
         ["cluster=eks"]),
        (["data", "prep", "--out", "d", "data=chat_jsonl"], ["data=chat_jsonl"]),
        (["render", "training", "--out", "d", "train=cluster_8gpu", "--name", "j", "model=llama3_8b"],
         ["train=cluster_8gpu", "model=llama3_8b"]),
    ],
)
def test_overrides_may_follow_options(argv, overrides):
    from modelchain.pipelines.cli import build_parser, parse_args

    assert parse_args(build_parser(), argv).overrides == overrides


@pytest.mark.parametrize("argv", [["compile", "finetune", "--bogus"], ["compile", "finetune", "-o", "f.yaml", "stray"]])
def test_unknown_options_and_stray_words_are_still_refused(argv, capsys):
    from modelchain.pipelines.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err

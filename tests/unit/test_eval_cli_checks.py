"""`modelchain eval` checks its paths first: one line naming the bad one, exit 2, no model loaded, nothing written."""

import json
import os
import subprocess
import sys
import time

import pytest

HEAVY = ["torch", "transformers", "pymilvus", "sentence_transformers", "ragas", "mlflow", "kfp", "omegaconf", "hydra"]


@pytest.fixture
def paths(tmp_path):
    """Good inputs: prepared splits with a data card, and an adapter folder."""
    splits, adapter = tmp_path / "splits", tmp_path / "adapter"
    splits.mkdir()
    adapter.mkdir()
    row = {"messages": [{"role": "user", "content": "Ticket: charged twice"}, {"role": "assistant", "content": "billing"}]}
    (splits / "test.jsonl").write_text(json.dumps(row) + "\n")
    (splits / "data_card.json").write_text("{}")
    (adapter / "adapter_config.json").write_text("{}")
    return {"splits": splits, "adapter": adapter, "out": tmp_path / "out"}


def run_eval(paths, *extra, **replace):
    """`modelchain eval` in a subprocess that reports which heavy modules it loaded."""
    values = {**paths, **replace}
    argv = ["eval", *extra, "--adapter", str(values["adapter"]), "--out", str(values["out"])]
    if values.get("splits") is not None:
        argv += ["--splits", str(values["splits"])]
    code = (
        "import sys\nfrom modelchain.pipelines.cli import main\n"
        f"rc = main({argv!r})\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\nsys.exit(rc)"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - started


@pytest.mark.parametrize("change, message", [
    (lambda p: {"splits": "/nonexistent"}, "--splits /nonexistent: no such folder"),
    (lambda p: ((p["splits"] / "test.jsonl").write_text(""), {})[1], "neither test.jsonl nor val.jsonl holds any example"),
    (lambda p: ((p["splits"] / "data_card.json").unlink(), {})[1], "no data_card.json"),
    (lambda p: {"adapter": p["adapter"].parent / "typo"}, "typo: no such folder"),
    (lambda p: ((p["adapter"] / "adapter_config.json").unlink(), {})[1], "no adapter_config.json (not a LoRA adapter folder)"),
    (lambda p: (p["out"].write_text("x"), {})[1], "out: exists and is not a folder"),
    (lambda p: {"champion": "models:/only-a-name"}, "--champion models:/only-a-name: not models:/NAME@ALIAS"),
    (lambda p: {"champion": str(p["splits"])}, "neither auto, none, a models:/ URI nor an adapter folder"),
])
def test_a_bad_input_is_one_line_and_exit_2_before_anything_loads(paths, change, message):
    replace = change(paths)
    champion = replace.pop("champion", None)
    done, seconds = run_eval(paths, *(["--champion", champion] if champion else []), **replace)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelchain: ") and message in lines[0], done.stderr
    assert "LOADED []" in done.stdout  # not even the config: the check comes first
    assert seconds < 5
    assert not (paths["out"] / "results.json").exists() and (not paths["out"].exists() or paths["out"].is_file())


def test_the_installed_command_answers_a_missing_splits_folder_in_under_5_seconds(tmp_path):
    command = [os.path.join(os.path.dirname(sys.executable), "modelchain")]
    if not os.path.exists(command[0]):
        command = [sys.executable, "-m", "modelchain.pipelines.cli"]
    started = time.monotonic()
    done = subprocess.run([*command, "eval", "--splits", "/nonexistent", "--adapter", str(tmp_path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 5
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "modelchain: --splits /nonexistent: no such folder (prepared splits, e.g. from `modelchain data prep`)"]


def test_a_bad_champion_in_the_config_is_caught_before_any_model_loads(paths):
    done, _ = run_eval(paths, "eval.champion=/no/such/adapter")
    assert done.returncode == 2
    assert done.stderr.strip() == ("modelchain: eval.champion /no/such/adapter: neither auto, none, a models:/ URI "
                                   "nor an adapter folder (no adapter_config.json)")
    loaded = done.stdout.split("LOADED", 1)[1]
    assert "torch" not in loaded and "transformers" not in loaded

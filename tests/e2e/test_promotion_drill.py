"""The promotion drill: a scheduled retrain never replaces a better model.

Real parts: kfp.local, MLflow on sqlite, the shipped demo data (data=support_tickets) and a
tiny random Llama. Version 1 is trained well and made champion; a challenger trained for
half as long beats the base model but not version 1, and the floors are low enough that only
the champion comparison can refuse it. Then a run whose registry is unreachable (a closed
port on 127.0.0.1) must fail closed, although its adapter passes every other rule.
"""

import re
import socket

import pytest

from modelchain.core import registry

from .conftest import run_cli

pytestmark = pytest.mark.e2e

NAME = "local-model-ticket-routing"
# Low floors and no required margin over the base model: only no_regression can refuse.
LOW_FLOORS = ["eval.thresholds.exact_match=0.05", "eval.min_improvement=0.0"]


def finetune(tiny_model, steps, *extra):
    return ["run", "finetune", "model=local_dir", f"model.path={tiny_model}", "train=quick",
            f"train.max_steps={steps}", "train.batch_size=8", "train.learning_rate=5e-3",
            "serve.canary.enabled=false", *LOW_FLOORS, *extra]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_dirs(home):
    return sorted((home / "kfp-outputs").glob("finetune-*"))


def test_a_worse_challenger_is_refused_against_the_champion_and_an_unreachable_registry_fails_closed(
    tmp_path, tiny_model
):
    home = tmp_path / "home"
    first = run_cli(*finetune(tiny_model, 200), home=home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"registered: models:/{NAME}@challenger = version 1" in first.stdout
    promoted = run_cli("promote", NAME, "1", home=home)
    assert promoted.returncode == 0 and "is now champion" in promoted.stdout, promoted.stderr

    # The challenger: better than the base model, worse than version 1.
    second = run_cli(*finetune(tiny_model, 100), home=home)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "last gate: refused" in second.stdout
    reasons = [line.strip() for line in second.stdout.splitlines() if line.strip().startswith(("PASS ", "FAIL "))]
    failed = [r for r in reasons if r.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith(
        "FAIL no_regression.exact_match: champion version 1: challenger - champion = "), reasons
    assert any(r.startswith("PASS improvement.exact_match: challenger - base = +") for r in reasons)
    client = registry.client(f"sqlite:///{home}/mlflow.db")
    gate_run = client.get_run(re.search(r"last gate: refused \(run (\w+)\)", second.stdout).group(1))
    assert gate_run.data.tags["gate.decision"] == "refused"
    assert gate_run.data.tags["gate.champion_version"] == "1"
    assert "FAIL no_regression.exact_match: champion version 1" in gate_run.data.tags["gate.reasons"]
    assert gate_run.data.metrics["gate.no_regression.exact_match.detectable"] > 0
    assert [str(v.version) for v in client.search_model_versions(f"name='{NAME}'")] == ["1"]
    assert registry.aliases(client.get_registered_model(NAME)) == {"champion": "1", "challenger": "1"}
    refused_run = run_dirs(home)[-1]
    report = (refused_run / "gate" / "report").read_text()
    assert "champion: models:/local-model-ticket-routing/1 (version 1)" in report
    assert not (refused_run / "register").exists() and not (refused_run / "canary").exists()

    # The registry cannot be reached while the run evaluates: the gate fails closed (the adapter
    # would pass every other rule).
    unreachable = f"http://127.0.0.1:{closed_port()}"
    third = run_cli(*finetune(tiny_model, 100, f"cluster.mlflow.tracking_uri={unreachable}"), home=home)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "last gate: refused" in third.stdout
    reasons = [line.strip() for line in third.stdout.splitlines() if line.strip().startswith(("PASS ", "FAIL "))]
    failed = [r for r in reasons if r.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith(
        f"FAIL no_regression: fails closed: the champion of '{NAME}' could not be looked up: "
        f"MLflow tracking server {unreachable} is unreachable"), reasons
    assert [str(v.version) for v in client.search_model_versions(f"name='{NAME}'")] == ["1"]
    assert registry.aliases(client.get_registered_model(NAME)) == {"champion": "1", "challenger": "1"}
    assert not (run_dirs(home)[-1] / "register").exists()

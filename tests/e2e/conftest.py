"""Fixtures for whole-pipeline runs: a tiny model, a small dataset, a small corpus."""

import json
import os
import subprocess
import sys

import pytest

from ..tiny_model import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer, one for the whole session."""
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


TEAMS = {
    "billing": "I was charged twice for my subscription this month",
    "shipping": "My parcel has not arrived and the tracking page is stuck",
    "technical": "The app crashes every time I open the settings page",
    "account": "I cannot reset my password, the email never comes",
    "returns": "I want to send back the shoes, they are too small",
}


@pytest.fixture
def routing_dataset(tmp_path):
    """120 routing rows, written by the test."""
    path = tmp_path / "tickets.jsonl"
    with open(path, "w") as handle:
        for i in range(120):
            team = sorted(TEAMS)[i % len(TEAMS)]
            row = {"prompt": f"Ticket #{i}: {TEAMS[team]} (order {1000 + i}).", "response": team}
            handle.write(json.dumps(row) + "\n")
    return path


def run_cli(*args, home, timeout=900):
    env = {**os.environ, "MODELCHAIN_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "modelchain.pipelines.cli", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )

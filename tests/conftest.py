"""Shared test setup: offline, and every run's local state in a temporary MODELCHAIN_HOME."""

import os

import pytest

# The chain must never reach the network on its own; tests enforce the same.
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAGAS_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)


@pytest.fixture
def modelchain_home(tmp_path, monkeypatch):
    """A fresh MODELCHAIN_HOME (MLflow db, Milvus Lite, KFP outputs) for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("MODELCHAIN_HOME", str(home))
    return home

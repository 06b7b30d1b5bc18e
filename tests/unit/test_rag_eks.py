"""rag_ingest on EKS: the Milvus token travels from a Kubernetes secret, by name, to the client."""

import json

import pytest
import yaml

from modelchain.core.config import ConfigError, compose, load_group
from modelchain.core.vectorstore import MilvusLiteStore, MilvusServerStore, open_store
from modelchain.pipelines.compile import compile_pipeline

MILVUS_STEPS = {"exec-embed", "exec-upsert", "exec-verify"}


def compile_rag(tmp_path, *overrides):
    out = tmp_path / "rag.yaml"
    compile_pipeline("rag_ingest", compose("rag_ingest", ["cluster=eks", "rag=s3_docs", *overrides]), out)
    pipeline_spec, platform = yaml.safe_load_all(out.read_text())
    return out.read_text(), pipeline_spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def token_sources(executor: dict) -> list[tuple[str, str]]:
    """(secret, key) pairs that fill MILVUS_TOKEN in one executor."""
    return [
        (secret["secretName"], item["secretKey"])
        for secret in executor.get("secretAsEnv", [])
        for item in secret["keyToEnv"]
        if item["envVar"] == "MILVUS_TOKEN"
    ]


def test_the_token_comes_from_the_secret_and_reaches_the_milvus_client(tmp_path, monkeypatch):
    text, spec, executors = compile_rag(tmp_path)
    for name in MILVUS_STEPS:
        assert token_sources(executors[name]) == [("milvus-token", "token")], name
    # Only the secret's name is in the compiled pipeline.
    assert "milvus-token" in text and "s3cr3t" not in text

    # The rag group baked into the upsert task, read the way the component reads it.
    baked = spec["root"]["dag"]["tasks"]["upsert"]["inputs"]["parameters"]["rag"]["runtimeValue"]["constant"]
    assert json.loads(baked)["milvus"]["uri"] == "http://milvus.milvus.svc.cluster.local:19530"
    rag = load_group("rag", baked)
    monkeypatch.setenv("MILVUS_TOKEN", "s3cr3t")  # what Kubernetes puts in the pod from the secret
    seen = {}

    class FakeClient:
        def __init__(self, uri, token=""):
            seen.update(uri=uri, token=token)

    import pymilvus

    monkeypatch.setattr(pymilvus, "MilvusClient", FakeClient)
    store = open_store(rag)
    assert type(store) is MilvusServerStore and not store.local and store.index_type == "HNSW"
    store.client
    assert seen == {"uri": "http://milvus.milvus.svc.cluster.local:19530", "token": "s3cr3t"}


def test_a_token_secret_of_the_rag_config_alone_is_mapped(tmp_path):
    only_s3 = (
        "cluster.secret_env=[{secret_name: mlflow-s3, key: AWS_ACCESS_KEY_ID, env: AWS_ACCESS_KEY_ID},"
        "{secret_name: mlflow-s3, key: AWS_SECRET_ACCESS_KEY, env: AWS_SECRET_ACCESS_KEY}]"
    )
    _, _, executors = compile_rag(tmp_path, only_s3, "rag.milvus.token_secret=vector-db")
    for name, executor in executors.items():
        expected = [("vector-db", "token")] if name in MILVUS_STEPS else []
        assert token_sources(executor) == expected, name


def test_two_secrets_for_the_token_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="rag.milvus.token_secret: 'vector-db'.*milvus-token"):
        compile_rag(tmp_path, "rag.milvus.token_secret=vector-db")


def test_local_runs_use_milvus_lite_without_a_token(tmp_path, modelchain_home, monkeypatch):
    monkeypatch.delenv("MILVUS_TOKEN", raising=False)
    store = open_store(compose("rag_ingest").rag)
    assert type(store) is MilvusLiteStore and store.local and store.token is None and store.uri == str(modelchain_home / "milvus.db")

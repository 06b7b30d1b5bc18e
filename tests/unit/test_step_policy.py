"""Caching and retries in the compiled IR follow pipelines/build.py's one table for both pipelines:
only chunk is cached; the steps that talk to S3, MLflow or Milvus retry with backoff on EKS."""

import pytest
import yaml

from modelchain.core.config import compose
from modelchain.pipelines.build import CACHED_STEPS, RETRIED_STEPS
from modelchain.pipelines.compile import compile_pipeline


def _tasks(spec: dict) -> dict:
    """Every task of the root DAG and of nested DAGs (dsl.If), by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return {name: task for name, task in tasks.items() if "componentRef" in task and not name.startswith("condition")}


@pytest.fixture(scope="module", params=[("finetune", "local"), ("finetune", "eks"), ("rag_ingest", "local"), ("rag_ingest", "eks")])
def compiled(request, tmp_path_factory):
    pipeline, cluster = request.param
    path = tmp_path_factory.mktemp("ir") / f"{pipeline}.yaml"
    compile_pipeline(pipeline, compose(pipeline, [f"cluster={cluster}"]), path)
    spec = next(doc for doc in yaml.safe_load_all(path.read_text()) if "root" in doc)
    return cluster, _tasks(spec)


def test_only_pure_steps_are_cached(compiled):
    _, tasks = compiled
    assert tasks, "no tasks found in the IR"
    for name, task in tasks.items():
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (name in CACHED_STEPS), name
    for never in ("data-prep", "discover", "evaluate", "register", "canary", "upsert"):
        assert not tasks.get(never, {}).get("cachingOptions", {}).get("enableCache", False)


def test_retries_only_on_eks_and_only_where_safe(compiled):
    cluster, tasks = compiled
    for name, task in tasks.items():
        policy = task.get("retryPolicy")
        if cluster == "eks" and name in RETRIED_STEPS:
            assert policy == {"maxRetryCount": 3, "backoffDuration": "30s", "backoffFactor": 2.0,
                              "backoffMaxDuration": "600s"}, name
        else:
            assert policy is None, name

"""Caching and retries in the compiled IR follow pipelines/build.py's one table for both pipelines:
only chunk is cached; the steps that talk to S3, MLflow or Milvus retry with backoff on EKS."""

from pathlib import Path

import pytest
import yaml

from modelchain.core.config import compose
from modelchain.pipelines.build import CACHED_STEPS, RETRIED_STEPS
from modelchain.pipelines.compile import compile_pipeline

from ..tiny_model import tiny_model  # noqa: F401 (fixture)


def _tasks(spec: dict) -> dict:
    """Every task of the root DAG and of nested DAGs (dsl.If), by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return {name: task for name, task in tasks.items() if "componentRef" in task and not name.startswith("condition")}


@pytest.fixture(scope="module", params=[
    ("finetune", "local"), ("finetune", "eks"), ("rag_ingest", "local"), ("rag_ingest", "eks"),
    ("rag_ingest", "eks", "rag.shards=3"),
])
def compiled(request, tmp_path_factory):
    pipeline, cluster, *overrides = request.param
    path = tmp_path_factory.mktemp("ir") / f"{pipeline}.yaml"
    compile_pipeline(pipeline, compose(pipeline, [f"cluster={cluster}", *overrides]), path)
    spec = next(doc for doc in yaml.safe_load_all(path.read_text()) if "root" in doc)
    return cluster, _tasks(spec)


def test_shards_fan_out_in_one_parallel_for_and_verify_once(tmp_path):
    path = tmp_path / "rag_ingest.yaml"
    compile_pipeline("rag_ingest", compose("rag_ingest", ["rag.shards=3"]), path)
    spec = next(doc for doc in yaml.safe_load_all(path.read_text()) if "root" in doc)
    root = spec["root"]["dag"]["tasks"]
    loop_name, loop = next((name, task) for name, task in root.items() if "parameterIterator" in task)
    assert loop["taskInfo"]["name"] == "shards"
    assert loop["parameterIterator"]["items"]["raw"] == "[0, 1, 2]"
    assert loop["iteratorPolicy"] == {"parallelismLimit": 3}
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"chunk", "embed", "upsert"}
    assert inner["embed"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert set(root) == {"discover", "verify-shards", loop_name}
    collected = root["verify-shards"]["inputs"]["artifacts"]
    assert {name: item["taskOutputArtifact"]["producerTask"] for name, item in collected.items()} == {
        "chunks": loop_name, "quarantine": loop_name, "changes": loop_name}


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


def test_a_rerun_over_changed_data_at_the_same_uri_is_not_served_from_the_cache(tmp_path, tiny_model):
    """The same `data_uri` next week can hold new data. The inputs a KFP cache keys on (the
    task's image, command and argument values; kfp.local's LocalCache rule) do not change, so
    a cached data-prep would hand the new run last week's splits. Its caching is off, so the
    backend runs it again, and running it again gives the new data's splits."""
    from kfp.local.cache import LocalCache

    from modelchain.components.data_prep.logic import prepare_from_config
    from modelchain.core.io import read_jsonl

    source = tmp_path / "tickets.jsonl"
    cfg = compose("finetune", ["model=local_dir", f"model.path={tiny_model}", f"data.source.uri={source}"])
    path = tmp_path / "finetune.yaml"
    compile_pipeline("finetune", cfg, path)
    spec = next(doc for doc in yaml.safe_load_all(path.read_text()) if "root" in doc)
    task = _tasks(spec)["data-prep"]
    container = spec["deploymentSpec"]["executors"][
        spec["components"][task["componentRef"]["name"]]["executorLabel"]]["container"]
    defaults = spec["root"]["inputDefinitions"]["parameters"]

    def cache_key() -> str:
        arguments = {
            name: value["runtimeValue"]["constant"] if "runtimeValue" in value
            else defaults[value["componentInputParameter"]]["defaultValue"]
            for name, value in task["inputs"]["parameters"].items()
        }
        return LocalCache(str(tmp_path / "cache")).compute_key(
            "data-prep", container["image"], container["command"] + container.get("args", []), arguments)

    demo = (Path(__file__).resolve().parents[2] / "data" / "demo" / "support_tickets.jsonl").read_text().splitlines()
    runs = []
    for week, rows in enumerate((demo[:120], demo[200:320])):
        source.write_text("\n".join(rows) + "\n")
        prepare_from_config(cfg.data, cfg.model, tmp_path / f"splits-{week}")
        runs.append((cache_key(), read_jsonl(tmp_path / f"splits-{week}" / "train.jsonl")))
    (first_key, first_train), (second_key, second_train) = runs
    assert first_key == second_key  # what a cache sees is the same both weeks
    assert {r["id"] for r in first_train}.isdisjoint({r["id"] for r in second_train})  # the data is not
    assert not task.get("cachingOptions", {}).get("enableCache", False)  # so data-prep runs again

"""Submitting the PyTorchJob and waiting for it, against hand-written Kubernetes exchanges.

No Kubernetes API server can run on this machine (no container runtime, no kube-apiserver),
so the real kubeflow-training TrainingClient (1.9.4, kubernetes client 30.1) talks to a small
HTTP server on 127.0.0.1 that answers from exchanges written by hand in `recordings/kube/`
(nothing in them was recorded from a live cluster): the kubeflow.org/v1 PyTorchJob and
core/v1 Pod, PodList, ConfigMap and Status bodies the API server returns, with the training
operator's labels and conditions. Each test checks the
requests the client sent, and what the step reports.
"""

import datetime as dt
import json
from pathlib import Path

import pytest

from modelchain.core.config import compose, group_json, load_group
from tests.integration.kube_replay import KubeReplay
from modelchain.training import cost, pytorchjob

NS, NAME = "kubeflow-user", "llama3-8b-instruct-lora-t1"
JOB_PATH = f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/{NAME}"
CLUSTER = ["cluster=eks", "cluster.training.backend=pytorchjob", "model=llama3_8b", "train=cluster_8gpu"]
# The hand-written pods became unschedulable at 08:00:05 UTC.
AT_08_41 = dt.datetime(2026, 11, 22, 8, 41, 5, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def cfg():
    return compose("finetune", CLUSTER)


def submit(server, cfg, timeout_s=30.0, lines=None, **kwargs):
    return pytorchjob.submit_and_wait(
        pytorchjob.build_job(cfg, NAME),
        NS,
        timeout_s,
        server.training_client(NS),
        config_map=pytorchjob.build_config_map(cfg, NAME),
        poll_s=0.05,
        log=(lines.append if lines is not None else lambda line: None),
        **kwargs,
    )


def test_success_creates_streams_and_reports_times(cfg):
    lines = []
    with KubeReplay("succeeded") as server:
        result = submit(server, cfg, lines=lines)
    assert result == {
        "name": NAME,
        "namespace": NS,
        "uid": "7c1e9a52-3f4b-4d8e-9a6c-2b5d8f0e1a37",
        "start_time": "2026-11-22T08:09:40+00:00",
        "completion_time": "2026-11-22T10:21:10+00:00",
        "duration_s": 7890.0,
    }
    # The ConfigMap first (pods mount it), then the job, then the ConfigMap owned by the job.
    calls = server.calls()
    assert calls[:4] == [
        f"POST /api/v1/namespaces/{NS}/configmaps",
        f"POST /apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs",
        f"GET {JOB_PATH}",
        f"PATCH /api/v1/namespaces/{NS}/configmaps/{NAME}-code",
    ]
    posted = server.find("POST", "/pytorchjobs")[0]["json"]
    assert posted["kind"] == "PyTorchJob" and posted["metadata"]["name"] == NAME
    assert posted["spec"]["nprocPerNode"] == "8" and set(posted["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    patch = server.find("PATCH")[0]
    assert patch["headers"]["content-type"] == "application/json-patch+json"
    assert patch["json"] == [{"op": "add", "path": "/metadata/ownerReferences", "value": [
        {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": NAME,
         "uid": "7c1e9a52-3f4b-4d8e-9a6c-2b5d8f0e1a37"}]}]
    pods = server.find("GET", "/pods")
    assert pods and all(p["query"]["labelSelector"] == f"training.kubeflow.org/job-name={NAME}" for p in pods)
    log_requests = server.find("GET", "/log")
    assert len(log_requests) == 1 and log_requests[0]["path"].endswith(f"/{NAME}-master-0/log")
    assert log_requests[0]["query"] == {"container": "pytorch", "follow": "True"}
    assert f"[{NAME}-master-0] adapter exported to /fsx/modelchain/training/{NAME}/adapter" in lines
    assert not server.find("DELETE")


def test_oom_killed_names_the_reason_and_the_log_tail(cfg):
    with KubeReplay("oom_killed") as server, pytest.raises(pytorchjob.TrainingJobError) as err:
        submit(server, cfg)
    message = str(err.value)
    assert message.startswith(f"PyTorchJob {NS}/{NAME} failed: PyTorchJobFailed: ")
    assert f"pod {NAME}-master-0: OOMKilled (exit code 137)" in message
    assert "last lines of the master's log:" in message and "Killed" in message
    assert not server.find("DELETE")  # a failed job stays for inspection; its pods are cleaned


def test_image_pull_backoff_gives_up_at_once_and_deletes_the_job(cfg):
    with KubeReplay("image_pull_backoff") as server, pytest.raises(pytorchjob.TrainingJobError) as err:
        submit(server, cfg)
    message = str(err.value)
    assert "ImagePullBackOff for image nvcr.io/nvidia/nemo:25.07-typo" in message and "job deleted" in message
    assert server.calls()[-1] == f"DELETE {JOB_PATH}"


def test_unschedulable_for_longer_than_allowed(cfg):
    with KubeReplay("unschedulable") as server, pytest.raises(pytorchjob.TrainingJobError) as err:
        submit(server, cfg, max_pending_s=30 * 60, now=lambda: AT_08_41)
    message = str(err.value)
    assert f"pod {NAME}-master-0: Unschedulable for 41 minutes: 0/6 nodes are available: " in message
    assert "Insufficient vpc.amazonaws.com/efa" in message
    assert server.calls()[-1] == f"DELETE {JOB_PATH}"


def test_unschedulable_within_the_allowance_keeps_waiting(cfg):
    early = dt.datetime(2026, 11, 22, 8, 10, 5, tzinfo=dt.timezone.utc)
    with KubeReplay("unschedulable") as server, pytest.raises(pytorchjob.TrainingJobError) as err:
        submit(server, cfg, timeout_s=0.3, max_pending_s=30 * 60, now=lambda: early)
    assert "did not finish within 0.3 s" in str(err.value)
    assert "Unschedulable: 0/6 nodes are available" in str(err.value)


def test_timeout_deletes_the_job(cfg):
    with KubeReplay("timeout") as server, pytest.raises(pytorchjob.TrainingJobError) as err:
        submit(server, cfg, timeout_s=0.5)
    message = str(err.value)
    assert f"PyTorchJob {NS}/{NAME} did not finish within 0.5 s; job deleted" in message
    assert "global_step: 3" in message  # the log tail
    assert server.calls()[-1] == f"DELETE {JOB_PATH}"


# --------------------------------------------------------------------------- the finetune component


def eks_overrides(tmp_path):
    return CLUSTER + [
        f"cluster.training.run_root={tmp_path}/fsx/training",
        f"cluster.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"cluster.mlflow.artifact_location={tmp_path}/mlartifacts",
    ]


@pytest.fixture
def eks_settings(tmp_path):
    """The groups the finetune step receives, as the pipeline bakes and the step rebuilds them."""
    cfg = compose("finetune", eks_overrides(tmp_path))
    groups = {group: load_group(group, group_json(cfg, group)) for group in ("model", "cluster", "experiment")}
    return {**groups, "train": load_group("train", group_json(cfg, "train"), **RUN)}


@pytest.fixture
def splits(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    row = {"messages": [{"role": "user", "content": "Printer on fire"}, {"role": "assistant", "content": "facilities"}]}
    for name in ("train", "val", "test"):
        (folder / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    return folder


def pod_exports_adapter(run_dir: Path) -> None:
    """What the entrypoint leaves on FSx when the job succeeds (the pods are only a replay here)."""
    adapter = run_dir / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"],
    }))
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)


def mlflow_runs(settings):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings["cluster"].mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(settings["experiment"].name)
    return client.search_runs([experiment.experiment_id])


# The pipeline's run-time values for the finetune step.
RUN = {"max_steps": 1000, "learning_rate": 1e-4, "lora_rank": 16, "lora_alpha": 32}


def run_component(settings, splits, out, server):
    from modelchain.components.finetune.logic import run
    from modelchain.training.backends.pytorchjob import PyTorchJobBackend

    backend = PyTorchJobBackend(client=server.training_client(NS), job_name=NAME, poll_s=0.05, log=lambda line: None)
    return run(settings["model"], settings["train"], settings["cluster"], settings["experiment"], splits, out,
               backend=backend)


def test_finetune_logic_takes_the_configured_backend_on_eks(eks_settings, monkeypatch, tmp_path):
    from modelchain.components.finetune import logic
    from modelchain.training.backends.pytorchjob import PyTorchJobBackend

    assert eks_settings["cluster"].training.backend == "pytorchjob"
    monkeypatch.chdir(tmp_path)  # the step writes the adapter's manifest into "out"
    seen = {}

    def train(self, **kw):
        seen.update(kw)
        Path(kw["adapter_dir"]).mkdir()
        return {"ok": 1}

    monkeypatch.setattr(PyTorchJobBackend, "train", train)
    assert logic.run(eks_settings["model"], eks_settings["train"], eks_settings["cluster"], eks_settings["experiment"],
                     "splits", "out") == {"ok": 1}
    train = seen["train"]
    assert (train.max_steps, train.learning_rate, train.lora.rank, train.lora.alpha) == (1000, 1e-4, 16, 32)
    assert (seen["splits_dir"], seen["adapter_dir"]) == ("splits", "out")


def test_finetune_component_on_eks(eks_settings, splits, tmp_path):
    run_dir = tmp_path / "fsx" / "training" / NAME
    pod_exports_adapter(run_dir)
    out = tmp_path / "adapter_out"
    with KubeReplay("succeeded") as server:
        metrics = run_component(eks_settings, splits, out, server)
    # The splits were staged where the pods read them, and the adapter came back.
    assert (run_dir / "data" / "train.jsonl").read_text() == (splits / "train.jsonl").read_text()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
    assert (out / "adapter_model.safetensors").exists()
    # The job is the one rendered from the config, with the pipeline's run-time values.
    posted_map = server.find("POST", "/configmaps")[0]["json"]
    spec = json.loads(posted_map["data"]["spec.json"])
    assert spec["max_steps"] == 1000 and spec["lora"]["dim"] == 16 and spec["dataset_root"] == f"{run_dir}/data"
    estimate = cost.estimate(compose("finetune", CLUSTER))
    assert metrics["estimated_cost_usd"] == pytest.approx(estimate.cost_usd)
    assert metrics["duration_s"] == 7890.0
    assert metrics["cost_usd"] == pytest.approx(2 * 7890 / 3600 * 98.32)
    (run,) = mlflow_runs(eks_settings)
    assert run.info.status == "FINISHED" and run.data.tags["modelchain.outcome"] == "succeeded"
    assert run.data.metrics["estimated_cost_usd"] == pytest.approx(estimate.cost_usd)
    assert run.data.metrics["cost_usd"] == pytest.approx(metrics["cost_usd"])
    assert run.data.params["pytorchjob"] == NAME and run.data.params["instance_type"] == "p5.48xlarge"
    # What the gate copies into the lineage: the job as the API server created it.
    job = {"kind": "PyTorchJob", "name": NAME, "namespace": NS, "uid": "7c1e9a52-3f4b-4d8e-9a6c-2b5d8f0e1a37",
           "image": "nvcr.io/nvidia/nemo:25.07"}
    assert json.loads((out / "training_job.json").read_text()) == job
    from modelchain.components.gate.logic import training_job

    assert training_job(eks_settings["cluster"], out) == job


def test_budget_refuses_before_anything_is_submitted(eks_settings, splits, tmp_path):
    eks_settings["cluster"] = load_group(
        "cluster", group_json(compose("finetune", eks_overrides(tmp_path) + ["cluster.training.budget_usd=100"]), "cluster"))
    with KubeReplay("succeeded") as server, pytest.raises(cost.BudgetExceeded) as err:
        run_component(eks_settings, splits, tmp_path / "out", server)
    message = str(err.value)
    assert "exceeds cluster.training.budget_usd $100.00" in message and "GPU-hours" in message
    assert server.requests == []
    assert not (tmp_path / "fsx").exists() and not (tmp_path / "out").exists()
    (run,) = mlflow_runs(eks_settings)
    assert run.info.status == "FAILED" and run.data.tags["modelchain.outcome"] == "refused"
    assert run.data.metrics["estimated_cost_usd"] > 100.0


def test_failed_job_is_recorded_and_raised(eks_settings, splits, tmp_path):
    with KubeReplay("oom_killed") as server, pytest.raises(pytorchjob.TrainingJobError, match="OOMKilled"):
        run_component(eks_settings, splits, tmp_path / "out", server)
    (run,) = mlflow_runs(eks_settings)
    assert run.data.tags["modelchain.outcome"] == "failed" and "OOMKilled" in run.data.tags["modelchain.error"]
    assert not (tmp_path / "out").exists()


def test_a_job_that_cannot_be_created_leaves_no_config_map(cfg):
    with KubeReplay("already_exists") as server, pytest.raises(RuntimeError, match="already exists"):
        submit(server, cfg)
    assert server.calls() == [
        f"POST /api/v1/namespaces/{NS}/configmaps",
        f"POST /apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs",
        f"DELETE /api/v1/namespaces/{NS}/configmaps/{NAME}-code",
    ]

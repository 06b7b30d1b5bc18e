"""Submitting the Trainer v2 TrainJob and waiting for it, against hand-written Kubernetes exchanges.

No Kubernetes API server can run on this machine, so the real `kubeflow` SDK TrainerClient
(0.5.0, kubernetes client 30.1) talks to a small HTTP server on 127.0.0.1 that answers from
exchanges written by hand in `recordings/kube/trainjob_*.json` (generated once by a script
after the Trainer v2.3.0 and JobSet API objects: the TrainJob and its conditions, the
ClusterTrainingRuntime, the JobSet's pods with their labels; nothing was recorded from a live
cluster). Each test checks the requests the client sent, and what the step reports.
"""

import datetime as dt
import json

import pytest

from modelchain.core.config import compose, group_json, load_group
from modelchain.training import cost, trainjob
from tests.integration.kube_replay import KubeReplay
from tests.integration.test_pytorchjob_submit import RUN, mlflow_runs, pod_exports_adapter

pytest.importorskip("kubeflow.trainer")

NS, NAME = "kubeflow-user", "llama3-8b-instruct-lora-t1"
UID = "3f6d2a81-5c4e-4b7a-8e91-0d2c6b4a8f15"
JOBS = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
CLUSTER = ["cluster=eks", "model=llama3_8b", "train=cluster_8gpu"]
AT_08_41 = dt.datetime(2026, 11, 22, 8, 41, 5, tzinfo=dt.timezone.utc)  # the pods are unschedulable since 08:00:05


@pytest.fixture(scope="module")
def cfg():
    cfg = compose("finetune", CLUSTER)
    assert cfg.cluster.training.backend == "trainjob"  # the default on EKS
    return cfg


def submit(server, cfg, timeout_s=30.0, lines=None, **kwargs):
    return trainjob.submit_and_wait(
        trainjob.build_job(cfg, NAME),
        NS,
        timeout_s,
        server.trainer_client(NS),
        config_map=trainjob.pytorchjob.build_config_map(cfg, NAME),
        poll_s=0.05,
        log=(lines.append if lines is not None else lambda line: None),
        **kwargs,
    )


def test_success_submits_the_rendered_job_streams_and_reports_times(cfg):
    lines = []
    with KubeReplay("trainjob_succeeded") as server:
        result = submit(server, cfg, lines=lines)
    assert result == {
        "name": NAME,
        "namespace": NS,
        "uid": UID,
        "start_time": "2026-11-22T08:09:40+00:00",
        "completion_time": "2026-11-22T10:21:10+00:00",
        "duration_s": 7890.0,
    }
    calls = server.calls()
    # The runtime is checked before anything is created; then the ConfigMap, the job, the owner.
    created = calls.index(f"POST {JOBS}")
    assert f"GET /apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/{cfg.cluster.training.runtime}" in calls[:created]
    assert calls[created - 1] == f"POST /api/v1/namespaces/{NS}/configmaps"
    assert calls[created + 1] == f"PATCH /api/v1/namespaces/{NS}/configmaps/{NAME}-code"
    # What was submitted is exactly what `modelchain render training` writes.
    assert server.find("POST", "/trainjobs")[0]["json"] == trainjob.render(cfg, NAME)[1]
    patch = server.find("PATCH")[0]
    assert patch["json"] == [{"op": "add", "path": "/metadata/ownerReferences", "value": [
        {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "name": NAME, "uid": UID}]}]
    pods = server.find("GET", "/pods")
    assert pods and all(p["query"]["labelSelector"].startswith(f"jobset.sigs.k8s.io/jobset-name={NAME}") for p in pods)
    logs = server.find("GET", "/log")
    assert len(logs) == 1 and logs[0]["path"].endswith(f"/{NAME}-node-0-0-x7k2p/log")
    assert logs[0]["query"]["container"] == "node" and logs[0]["query"]["follow"] == "True"
    assert f"[{NAME}-node-0-0-x7k2p] adapter exported to /fsx/modelchain/training/{NAME}/adapter" in lines
    assert not server.find("DELETE")


def test_a_runtime_missing_on_the_cluster_creates_nothing(cfg):
    with KubeReplay("trainjob_no_runtime") as server, pytest.raises(trainjob.TrainingJobError) as err:
        submit(server, cfg)
    message = str(err.value)
    assert message.startswith("cluster.training.runtime: ClusterTrainingRuntime 'modelchain-nemo' is not installed")
    assert "modelchain render infra" in message
    assert not server.find("POST") and not server.find("PATCH")


def test_a_runtime_the_step_may_not_read_is_not_called_missing(cfg):
    with KubeReplay("trainjob_runtime_forbidden") as server, pytest.raises(trainjob.TrainingJobError) as err:
        submit(server, cfg)
    assert str(err.value) == "cluster.training.runtime: ClusterTrainingRuntime 'modelchain-nemo' cannot be read (HTTP 403: Forbidden)"
    assert not server.find("POST")


def test_oom_killed_names_the_reason_and_the_log_tail(cfg):
    with KubeReplay("trainjob_oom_killed") as server, pytest.raises(trainjob.TrainingJobError) as err:
        submit(server, cfg)
    message = str(err.value)
    assert message.startswith(
        f"TrainJob {NS}/{NAME} failed: ReachedMaxRestarts: jobset failed due to reaching max number of restarts")
    assert f"pod {NAME}-node-0-0-x7k2p: OOMKilled (exit code 137)" in message
    assert "last lines of the master's log:" in message and "Killed" in message
    assert not server.find("DELETE")  # a failed job stays for inspection


def test_image_pull_backoff_gives_up_at_once_and_deletes_the_job(cfg):
    with KubeReplay("trainjob_image_pull_backoff") as server, pytest.raises(trainjob.TrainingJobError) as err:
        submit(server, cfg)
    message = str(err.value)
    assert "ImagePullBackOff for image nvcr.io/nvidia/nemo:25.07-typo" in message and "job deleted" in message
    assert server.calls()[-1] == f"DELETE {JOBS}/{NAME}"


def test_unschedulable_for_longer_than_allowed(cfg):
    with KubeReplay("trainjob_unschedulable") as server, pytest.raises(trainjob.TrainingJobError) as err:
        submit(server, cfg, max_pending_s=30 * 60, now=lambda: AT_08_41)
    message = str(err.value)
    assert f"pod {NAME}-node-0-0-x7k2p: Unschedulable for 41 minutes: 0/6 nodes are available: " in message
    assert "Insufficient vpc.amazonaws.com/efa" in message
    assert server.calls()[-1] == f"DELETE {JOBS}/{NAME}"


def test_timeout_deletes_the_job(cfg):
    early = dt.datetime(2026, 11, 22, 8, 10, 5, tzinfo=dt.timezone.utc)
    with KubeReplay("trainjob_unschedulable") as server, pytest.raises(trainjob.TrainingJobError) as err:
        submit(server, cfg, timeout_s=0.3, max_pending_s=30 * 60, now=lambda: early)
    message = str(err.value)
    assert f"TrainJob {NS}/{NAME} did not finish within 0.3 s" in message and "job deleted" in message
    assert "Unschedulable: 0/6 nodes are available" in message
    assert server.calls()[-1] == f"DELETE {JOBS}/{NAME}"


# --------------------------------------------------------------------------- the finetune component


def eks_overrides(tmp_path, *extra):
    return CLUSTER + [
        f"cluster.training.run_root={tmp_path}/fsx/training",
        f"cluster.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"cluster.mlflow.artifact_location={tmp_path}/mlartifacts",
        *extra,
    ]


def settings_of(cfg):
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


def run_component(settings, splits, out, server):
    from modelchain.components.finetune.logic import run
    from modelchain.training.backends import get

    backend = get(settings["cluster"].training.backend)
    backend.client, backend.job_name, backend.poll_s, backend.log = server.trainer_client(NS), NAME, 0.05, lambda _: None
    return run(settings["model"], settings["train"], settings["cluster"], settings["experiment"], splits, out,
               backend=backend)


def test_finetune_component_on_eks_with_a_trainjob(splits, tmp_path):
    settings = settings_of(compose("finetune", eks_overrides(tmp_path)))
    run_dir = tmp_path / "fsx" / "training" / NAME
    pod_exports_adapter(run_dir)
    out = tmp_path / "adapter_out"
    with KubeReplay("trainjob_succeeded") as server:
        metrics = run_component(settings, splits, out, server)
    assert (run_dir / "data" / "train.jsonl").read_text() == (splits / "train.jsonl").read_text()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
    spec = json.loads(server.find("POST", "/configmaps")[0]["json"]["data"]["spec.json"])
    assert spec["max_steps"] == 1000 and spec["lora"]["dim"] == 16 and spec["dataset_root"] == f"{run_dir}/data"
    estimate = cost.estimate(compose("finetune", CLUSTER))
    assert metrics["estimated_cost_usd"] == pytest.approx(estimate.cost_usd)
    assert metrics["duration_s"] == 7890.0 and metrics["cost_usd"] == pytest.approx(2 * 7890 / 3600 * 98.32)
    (run,) = mlflow_runs(settings)
    assert run.info.status == "FINISHED" and run.data.tags["modelchain.outcome"] == "succeeded"
    assert run.data.params["trainjob"] == NAME
    job = {"kind": "TrainJob", "name": NAME, "namespace": NS, "uid": UID, "image": "nvcr.io/nvidia/nemo:25.07"}
    assert json.loads((out / "training_job.json").read_text()) == job
    from modelchain.components.gate.logic import training_job

    assert training_job(settings["cluster"], out) == job


def test_budget_refuses_before_anything_is_submitted(splits, tmp_path):
    settings = settings_of(compose("finetune", eks_overrides(tmp_path, "cluster.training.budget_usd=100")))
    with KubeReplay("trainjob_succeeded") as server:
        with pytest.raises(cost.BudgetExceeded, match=r"exceeds cluster.training.budget_usd \$100.00"):
            run_component(settings, splits, tmp_path / "out", server)
        assert not server.find("POST") and not server.find("PATCH")
    assert not (tmp_path / "fsx").exists() and not (tmp_path / "out").exists()
    (run,) = mlflow_runs(settings)
    assert run.info.status == "FAILED" and run.data.tags["modelchain.outcome"] == "refused"


def test_failed_trainjob_is_recorded_and_raised(splits, tmp_path):
    settings = settings_of(compose("finetune", eks_overrides(tmp_path)))
    with KubeReplay("trainjob_oom_killed") as server, pytest.raises(trainjob.TrainingJobError, match="OOMKilled"):
        run_component(settings, splits, tmp_path / "out", server)
    (run,) = mlflow_runs(settings)
    assert run.data.tags["modelchain.outcome"] == "failed" and "OOMKilled" in run.data.tags["modelchain.error"]
    assert not (tmp_path / "out").exists()

"""The PyTorchJob rendered from the config: shape, placement, NCCL/EFA, FSx, restarts, cost, budget."""

import json

import pytest

from modelchain.core.config import ConfigError, compose
from modelchain.core import manifest_validation
from modelchain.training import cost, pytorchjob

from ..crds import crd_dir

CLUSTER = ["cluster=eks", "model=llama3_8b", "train=cluster_8gpu"]


@pytest.fixture(scope="module")
def cfg():
    return compose("finetune", CLUSTER)


@pytest.fixture(scope="module")
def manifests(cfg):
    return pytorchjob.render(cfg, "llama3-8b-instruct-lora-t1")


def pod_spec(job, replica):
    return job["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]


def test_master_and_workers_with_nproc_per_node(cfg, manifests):
    config_map, job = manifests
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["metadata"]["namespace"] == "kubeflow-user"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas["Worker"]["replicas"] == cfg.train.nodes - 1 == 1
    assert job["spec"]["nprocPerNode"] == "8"
    container = pod_spec(job, "Master")["containers"][0]
    assert container["name"] == "pytorch" and container["image"] == "nvcr.io/nvidia/nemo:25.07"
    assert container["ports"] == [{"containerPort": 23456, "name": "pytorchjob-port"}]
    command = container["command"]
    assert command[:3] == ["torchrun", "--nnodes=2", "--nproc-per-node=8"]
    assert "--node-rank=$(PET_NODE_RANK)" in command and "--master-addr=$(MASTER_ADDR)" in command
    assert command[-3:] == ["/opt/modelchain/nemo_entrypoint.py", "--spec", "/opt/modelchain/spec.json"]


def test_gpus_efa_nccl_shm_and_fsx(manifests):
    _, job = manifests
    for replica in ("Master", "Worker"):
        spec = pod_spec(job, replica)
        container = spec["containers"][0]
        for side in ("requests", "limits"):
            assert container["resources"][side]["nvidia.com/gpu"] == "8"
            assert container["resources"][side]["vpc.amazonaws.com/efa"] == "32"
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1"
        assert env["NCCL_DEBUG"] == "INFO" and env["NEMO_HOME"] == "/fsx/modelchain/nemo"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Gi"}
        assert volumes["fsx"]["persistentVolumeClaim"]["claimName"] == "fsx-modelchain"
        assert volumes["code"]["configMap"]["name"] == "llama3-8b-instruct-lora-t1-code"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"shm": "/dev/shm", "fsx": "/fsx", "code": "/opt/modelchain"}


def test_placed_on_the_training_pool_and_tolerating_its_taints(cfg, manifests):
    _, job = manifests
    spec = pod_spec(job, "Worker")
    pool = cfg.cluster.karpenter.node_pools.training
    assert spec["nodeSelector"] == {"karpenter.sh/nodepool": pool.name, "node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert "p5.48xlarge" in pool.instance_types
    tolerations = spec["tolerations"]
    for taint in pool.taints:  # every taint of the pool is tolerated, or no pod lands there
        assert any(
            t["key"] == taint.key and t["effect"] == taint.effect
            and (t["operator"] == "Exists" or t.get("value") == taint.value)
            for t in tolerations
        ), taint


def test_restarts_for_spot_and_deadline(manifests):
    _, job = manifests
    assert {r["restartPolicy"] for r in job["spec"]["pytorchReplicaSpecs"].values()} == {"OnFailure"}
    assert job["spec"]["runPolicy"] == {"backoffLimit": 3, "cleanPodPolicy": "Running", "activeDeadlineSeconds": 86400}
    assert "elasticPolicy" not in job["spec"]
    assert pod_spec(job, "Master")["terminationGracePeriodSeconds"] == 120


def test_config_map_carries_the_entrypoint_and_spec(cfg, manifests):
    config_map, _ = manifests
    assert set(config_map["data"]) == {"nemo_entrypoint.py", "lora_targets.py", "automodel_recipe.py", "spec.json"}
    spec = json.loads(config_map["data"]["spec.json"])
    assert spec["recipe"] == "llama3_8b" and spec["hf_model"] == "/fsx/models/Meta-Llama-3-8B-Instruct"
    assert spec["global_batch_size"] == 64 and spec["micro_batch_size"] == 1 and spec["seq_length"] == 4096
    assert (spec["nodes"], spec["gpus_per_node"], spec["tensor_parallel"], spec["pipeline_parallel"]) == (2, 8, 2, 1)
    assert spec["lora"] == {"dim": 16, "alpha": 32, "dropout": 0.05,
                            "target_modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]}
    run = "/fsx/modelchain/training/llama3-8b-instruct-lora-t1"
    assert (spec["dataset_root"], spec["log_dir"], spec["adapter_dir"]) == (f"{run}/data", f"{run}/nemo", f"{run}/adapter")
    assert spec["checkpoint_every"] == 100 and spec["resume"] is True


def test_kueue_label_single_node_and_other_restart_policy():
    cfg = compose("finetune", CLUSTER + ["train.nodes=1", "cluster.training.kueue_queue=gpu-training",
                                         "cluster.training.restart_policy=ExitCode"])
    _, job = pytorchjob.render(cfg, "one-node")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-training"
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicy"] == "ExitCode"


def test_render_names_are_stable_and_short(cfg):
    assert pytorchjob.job_name(cfg) == pytorchjob.job_name(compose("finetune", CLUSTER))
    assert pytorchjob.job_name(cfg) != pytorchjob.job_name(compose("finetune", CLUSTER + ["train.max_steps=10"]))
    unique = pytorchjob.job_name(cfg, unique=True)
    assert unique.startswith("llama3-8b-instruct-lora-") and len(f"{unique}-worker-99") <= 63


def test_render_needs_eks_and_a_recipe():
    with pytest.raises(ValueError, match="cluster=eks"):
        pytorchjob.render(compose("finetune"))
    with pytest.raises(ValueError, match="model.nemo_recipe"):
        pytorchjob.render(compose("finetune", CLUSTER + ["model.nemo_recipe=null"]))


@pytest.mark.parametrize("overrides", [CLUSTER, ["cluster=eks"], CLUSTER + ["train.nodes=4", "cluster.training.kueue_queue=q"]])
def test_rendered_training_manifests_validate(overrides):
    manifest_validation.validate_all(pytorchjob.render(compose("finetune", overrides)), crd_dir())


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["train.procs_per_node=16"], "train.procs_per_node"),
        (["train.tensor_parallel=3"], "train.tensor_parallel"),
        (["train.batch_size=12"], "train.batch_size"),
        (["cluster.training.restart_policy=Always"], "cluster.training.restart_policy"),
        (["+cluster.training.gpus=8"], "cluster.training.gpus"),
    ],
)
def test_bad_cluster_training_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        compose("finetune", CLUSTER + overrides)
    assert key in str(err.value)


# --------------------------------------------------------------------------- cost


def test_cost_estimate_is_gpu_hours_times_price(cfg):
    est = cost.estimate(cfg)
    tokens = 1000 * 64 * 4096
    hours = tokens / (2000 * 16) / 3600 + 15 / 60
    assert est.tokens == tokens and est.hours == pytest.approx(hours)
    assert est.gpu_hours == pytest.approx(2 * 8 * hours)
    assert est.price_per_gpu_hour == pytest.approx(98.32 / 8)
    assert est.cost_usd == pytest.approx(est.gpu_hours * est.price_per_gpu_hour)
    assert est.cost_usd == pytest.approx(2 * hours * 98.32)
    assert set(est.metrics()) == {"estimated_hours", "estimated_gpu_hours", "estimated_cost_usd", "price_per_gpu_hour"}


def test_budget_refuses_with_the_figures(cfg):
    est = cost.estimate(cfg)
    cost.check_budget(est, None)
    cost.check_budget(est, est.cost_usd + 1)
    with pytest.raises(cost.BudgetExceeded) as err:
        cost.check_budget(est, 100.0)
    message = str(err.value)
    assert f"${est.cost_usd:,.2f}" in message and "$100.00" in message
    assert "GPU-hours" in message and "p5.48xlarge" in message and "budget_usd" in message


def test_unknown_instance_price_names_the_key():
    cfg = compose("finetune", CLUSTER + ["cluster.training.instance_type=p6-b200.48xlarge"])
    with pytest.raises(KeyError, match="cluster.training.prices"):
        cost.estimate(cfg)


def test_actual_cost_from_duration(cfg):
    est = cost.estimate(cfg)
    actual = cost.actual_cost(est, 7200)
    assert actual["gpu_hours"] == pytest.approx(32) and actual["cost_usd"] == pytest.approx(2 * 2 * 98.32)


def test_stage_splits(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.jsonl").write_text('{"a": 1}\n')
    (splits / "val.jsonl").write_text('{"b": 2}\n')
    root = pytorchjob.stage_splits(splits, tmp_path / "fsx" / "run" / "data")
    assert sorted(p.name for p in root.iterdir()) == ["train.jsonl", "val.jsonl"]

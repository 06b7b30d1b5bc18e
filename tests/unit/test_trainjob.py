"""The Trainer v2 TrainJob and ClusterTrainingRuntime rendered from the config, and their strict validation."""

import copy
import json

import pytest

from modelchain.core import manifest_validation
from modelchain.core.config import ConfigError, compose
from modelchain.training import infra, pytorchjob, trainjob

from ..crds import crd_dir

CLUSTER = ["cluster=eks", "model=llama3_8b", "train=cluster_8gpu"]


@pytest.fixture(scope="module")
def cfg():
    return compose("finetune", CLUSTER)


@pytest.fixture(scope="module")
def runtime(cfg):
    return trainjob.runtime(cfg)


@pytest.fixture(scope="module")
def job(cfg):
    return trainjob.build_job(cfg, "ft-1")


def pod_spec(runtime):
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return replicated["template"]["spec"]["template"]["spec"]


def test_both_are_strictly_valid(cfg, runtime):
    manifest_validation.validate_all([runtime, *trainjob.render(cfg, "ft-1")], crd_dir())


def test_the_runtime_is_torch_on_the_training_pool_with_efa_shm_and_fsx(runtime):
    assert (runtime["apiVersion"], runtime["kind"]) == ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime")
    assert runtime["metadata"]["name"] == "modelchain-nemo"
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    # Trainer v2.3.0: the torch policy takes no numProcPerNode any more (the TrainJob does).
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["template"]["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    spec = pod_spec(runtime)
    (container,) = spec["containers"]
    assert container["name"] == "node" and container["image"] == "nvcr.io/nvidia/nemo:25.07"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert container["resources"]["limits"] == {"memory": "1000Gi", "nvidia.com/gpu": "8", "vpc.amazonaws.com/efa": "32"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Gi"}
    assert volumes["fsx"]["persistentVolumeClaim"] == {"claimName": "fsx-modelchain"}
    assert {"name": "fsx", "mountPath": "/fsx"} in container["volumeMounts"]
    assert spec["nodeSelector"] == {"karpenter.sh/nodepool": "gpu-training", "node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert {"key": "workload-type", "operator": "Equal", "value": "training", "effect": "NoSchedule"} in spec["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["restartPolicy"] == "OnFailure" and replicated["template"]["spec"]["backoffLimit"] == 3
    assert runtime["spec"]["template"]["spec"]["failurePolicy"] == {"maxRestarts": 3}


def test_the_job_names_its_runtime_nodes_processes_and_deadline(job):
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    spec = job["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "modelchain-nemo"}
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert spec["activeDeadlineSeconds"] == 24 * 3600
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    # The run's ConfigMap (entrypoint + spec.json) is mounted through a runtime patch.
    (patch,) = spec["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = replicated["template"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "code", "configMap": {"name": "ft-1-code"}}]
    assert pod["containers"] == [{"name": "node", "volumeMounts": [{"name": "code", "mountPath": "/opt/modelchain", "readOnly": True}]}]


def test_the_same_config_gives_the_same_training_command_on_both_cluster_backends(cfg, job):
    legacy = pytorchjob.to_manifest(pytorchjob.build_job(cfg, "ft-1"))
    legacy_command = legacy["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    command = job["spec"]["trainer"]["command"]
    assert command[0] == legacy_command[0] == "torchrun"
    # torchrun's own flags differ only in where the rendezvous comes from (PET_* on Trainer v2).
    assert command[1:] == legacy_command[-3:] == pytorchjob.entrypoint_args()
    assert trainjob.render(cfg, "ft-1")[0] == pytorchjob.render(cfg, "ft-1")[0]  # the same ConfigMap and spec.json
    spec = json.loads(trainjob.render(cfg, "ft-1")[0]["data"]["spec.json"])
    assert (spec["nodes"], spec["gpus_per_node"]) == (job["spec"]["trainer"]["numNodes"], job["spec"]["trainer"]["numProcPerNode"])


def test_kueue_queue_label_and_fewer_gpus_than_the_node_has():
    cfg = compose("finetune", CLUSTER + ["cluster.training.kueue_queue=team-a", "train.procs_per_node=4",
                                        "train.nodes=1", "train.batch_size=8"])
    job = trainjob.build_job(cfg, "ft-2")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["trainer"]["numProcPerNode"] == 4
    assert job["spec"]["trainer"]["resourcesPerNode"]["requests"]["nvidia.com/gpu"] == "4"
    manifest_validation.validate_all([job], crd_dir())


def test_restart_policy_never_leaves_restarts_to_the_jobset():
    cfg = compose("finetune", CLUSTER + ["cluster.training.restart_policy=Never", "cluster.training.backoff_limit=1"])
    runtime = trainjob.runtime(cfg)
    assert pod_spec(runtime)["restartPolicy"] == "Never"
    assert runtime["spec"]["template"]["spec"]["failurePolicy"] == {"maxRestarts": 1}


def test_render_infra_writes_the_runtime_the_job_names(cfg, job):
    runtimes = [m for m in infra.render(cfg) if m["kind"] == "ClusterTrainingRuntime"]
    assert [r["metadata"]["name"] for r in runtimes] == [job["spec"]["runtimeRef"]["name"]]
    renamed = compose("finetune", CLUSTER + ["cluster.training.runtime=nemo-p5"])
    assert trainjob.build_job(renamed, "x")["spec"]["runtimeRef"]["name"] == "nemo-p5"
    assert [m["metadata"]["name"] for m in infra.render(renamed) if m["kind"] == "ClusterTrainingRuntime"] == ["nemo-p5"]


def test_the_v2_3_schemas_refuse_what_older_runtimes_took(runtime, job):
    old_runtime = copy.deepcopy(runtime)
    old_runtime["spec"]["mlPolicy"]["torch"]["numProcPerNode"] = 8  # removed from the torch policy in v2.3.0
    old_job = copy.deepcopy(job)
    old_job["spec"]["podTemplateOverrides"] = []  # replaced by runtimePatches
    with pytest.raises(manifest_validation.ManifestError) as err:
        manifest_validation.validate_all([old_runtime, old_job], crd_dir())
    message = str(err.value)
    assert "spec.mlPolicy.torch: Additional properties are not allowed ('numProcPerNode' was unexpected)" in message
    assert "spec: Additional properties are not allowed ('podTemplateOverrides' was unexpected)" in message


@pytest.mark.parametrize("override,key,why", [
    ("cluster.training.backend=slurm", "cluster.training.backend", "unknown backend 'slurm'; registered: local, pytorchjob, trainjob"),
    ("cluster.training.gpus_per_node=4", "cluster.training.gpus_per_node", "p5.48xlarge has 8 GPUs, got 4"),
    ("cluster.training.instance_type=m5.large", "cluster.training.instance_type", "unknown GPU instance type 'm5.large'"),
    ("cluster.training.runtime=Nemo_Runtime", "cluster.training.runtime", "must be a DNS label"),
])
def test_bad_input_names_its_key_before_anything_is_rendered(override, key, why, tmp_path):
    with pytest.raises(ConfigError) as err:
        compose("finetune", CLUSTER + [override])
    assert str(err.value).startswith(f"{key}: ") and why in str(err.value)


def test_the_legacy_backend_checks_the_instance_type_too():
    with pytest.raises(ConfigError, match="cluster.training.gpus_per_node: p4d.24xlarge has 8 GPUs, got 4"):
        compose("finetune", CLUSTER + ["cluster.training.backend=pytorchjob", "cluster.training.instance_type=p4d.24xlarge",
                                       "cluster.training.gpus_per_node=4"])


# --------------------------------------------------------------------------- NeMo recipes that fit their model


def test_each_shipped_model_names_a_recipe_that_builds_it():
    smollm2 = compose("finetune", ["cluster=eks"])  # the default model
    assert smollm2.model.nemo_recipe == "hf_llama"
    spec = pytorchjob.nemo_spec(smollm2, "ft-3")
    assert spec["hf_model"] == "/fsx/models/SmolLM2-135M-Instruct" and spec["hf_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    llama = compose("finetune", CLUSTER)
    assert pytorchjob.nemo_spec(llama, "ft-4")["hf_model"] == "/fsx/models/Meta-Llama-3-8B-Instruct"


@pytest.mark.parametrize("overrides,message", [
    (["model.nemo_recipe=llama32_1b"],
     "model.nemo_recipe: llama32_1b builds meta-llama/Llama-3.2-1B | meta-llama/Llama-3.2-1B-Instruct, not "
     "HuggingFaceTB/SmolLM2-135M-Instruct; hf_llama takes a llama model's own config"),
    (["model.nemo_recipe=gpt9"], "model.nemo_recipe: unknown NeMo recipe 'gpt9'; supported: llama3_8b ("),
    (["model=local_dir"], "model.nemo_recipe: model 'local' names no NeMo recipe to fine-tune on the cluster; supported: "),
    (["model.family=qwen"], "model.nemo_recipe: hf_llama builds model.family=llama models, not 'qwen'"),
    (["model.cluster_path=HuggingFaceTB/SmolLM2-135M-Instruct"],
     "model.cluster_path: the training pods read model 'smollm2-135m-instruct' from a path on FSx"),
])
def test_a_model_without_a_fitting_recipe_or_a_path_is_refused(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose("finetune", ["cluster=eks", *overrides])
    assert str(err.value).startswith(message)


def test_the_local_trainer_needs_no_recipe():
    assert compose("finetune", ["model.nemo_recipe=llama32_1b"]).cluster.training.backend == "local"

"""The PyTorchJob that runs the NeMo LoRA recipe on the GPU pool: render it, submit it, wait.

`render(cfg, name)` turns a composed finetune config (cluster=eks) into two manifests: a
ConfigMap with the NeMo entrypoint and its run spec, and a kubeflow.org/v1 PyTorchJob (one
Master + nodes-1 Workers, `nprocPerNode` GPUs each) built from the kubeflow-training SDK
objects. `submit_and_wait` creates both with the SDK's TrainingClient, streams the master's
log, and turns a failure into an error that names the pod's reason.

Everything a job reads or writes lives in one folder on FSx for Lustre (`run_dir`): the
staged data, NeMo checkpoints (so a restarted pod resumes) and the exported HF adapter.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Optional

GROUP, VERSION, KIND = "kubeflow.org", "v1", "PyTorchJob"
CONTAINER = "pytorch"  # the operator's container name: it injects MASTER_ADDR, PET_* here
PORT_NAME, PORT = "pytorchjob-port", 23456
CODE_DIR = "/opt/modelchain"  # where the ConfigMap with the entrypoint is mounted
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Pod states that never heal by waiting: give up at once and say why.
FATAL_WAITING = {"ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "ErrImageNeverPull"}


class TrainingJobError(RuntimeError):
    """A PyTorchJob failed, stalled or timed out; the message carries the pods' reasons."""


# --------------------------------------------------------------------------- names and spec


def job_name(cfg, *, unique: bool = False) -> str:
    """`<model>-lora-<suffix>`, a DNS label short enough for the operator's `-worker-N` names.

    Without `unique` the suffix is a hash of the run spec (a stable name for `render`); with
    it, a timestamp and random part (one per submitted run).
    """
    base = re.sub(r"[^a-z0-9-]+", "-", cfg.model.name.lower()).strip("-")[:30].strip("-")
    if unique:
        suffix = dt.datetime.now(dt.timezone.utc).strftime("%m%d%H%M") + "-" + secrets.token_hex(2)
    else:
        suffix = hashlib.sha256(json.dumps(_spec_inputs(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return f"{base}-lora-{suffix}"


def run_dir(cfg, name: str) -> str:
    return f"{cfg.cluster.training.run_root.rstrip('/')}/{name}"


def stage_splits(splits_dir: str | os.PathLike, dataset_root: str | os.PathLike) -> Path:
    """Copy the data_prep splits (train.jsonl, val.jsonl) where the training pods read them."""
    root = Path(dataset_root)
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train.jsonl", "val.jsonl"):
        source = Path(splits_dir) / name
        if source.exists():
            tmp = root / f".{name}.tmp"
            shutil.copyfile(source, tmp)
            os.replace(tmp, root / name)
    return root


def cluster_weights(model) -> Optional[str]:
    """Where the training pods read the base model: model.cluster_path, else model.path (absolute)."""
    return model.cluster_path or model.path


def _spec_inputs(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "train")}


def nemo_spec(cfg, name: str) -> dict[str, Any]:
    """What the NeMo entrypoint reads (spec.json): the recipe settings and the FSx paths."""
    from modelchain.training.nemo_entrypoint import recipe_problem

    train, model, training = cfg.train, cfg.model, cfg.cluster.training
    family = train.nemo.recipe_family
    # AutoModel builds any causal LM from its own folder; a NeMo 2 recipe fixes its model.
    problem = None if family == "automodel" else recipe_problem(model.nemo_recipe, model.hf_id, model.family)
    if problem:
        raise ValueError(f"model.nemo_recipe: {problem}")
    weights = cluster_weights(model)
    if not weights:
        raise ValueError(f"model.cluster_path: model {model.name!r} has no path the training pods read its weights from")
    folder = run_dir(cfg, name)
    return {
        "name": name,
        "recipe_family": family,
        "recipe": model.nemo_recipe,
        "model_name": model.name,
        "hf_model": weights,  # a Hugging Face directory on FSx: pods run with HF_HUB_OFFLINE=1
        "hf_id": model.hf_id,  # recorded with the exported adapter, never downloaded
        "nemo_home": training.nemo_home,
        "dataset_root": f"{folder}/data",
        "log_dir": f"{folder}/nemo",  # NeMo logs; checkpoints in its checkpoints/ folder
        "adapter_dir": f"{folder}/adapter",
        "nodes": train.nodes,
        "gpus_per_node": train.procs_per_node,
        "tensor_parallel": train.tensor_parallel,
        "pipeline_parallel": train.pipeline_parallel,
        "max_steps": train.max_steps,
        "global_batch_size": train.batch_size * train.grad_accum,
        "micro_batch_size": train.nemo.micro_batch_size,
        "seq_length": train.max_seq_len,
        "packed_sequences": train.nemo.packed_sequences,
        "learning_rate": train.learning_rate,
        "seed": train.seed,
        "checkpoint_every": train.checkpoint_every or train.max_steps,
        "keep_checkpoints": train.nemo.keep_checkpoints,
        "resume": train.nemo.resume,
        "lora": {
            "dim": train.lora.rank,
            "alpha": train.lora.alpha,
            "dropout": train.lora.dropout,
            "target_modules": list(train.lora.target_modules),
        },
    }


# --------------------------------------------------------------------------- manifests


def entrypoint_args() -> list[str]:
    """What torchrun runs on every node, on every cluster backend: the entrypoint and its spec."""
    return [f"{CODE_DIR}/nemo_entrypoint.py", "--spec", f"{CODE_DIR}/spec.json"]


def build_config_map(cfg, name: str):
    """The entrypoint, the LoRA name map it imports, and spec.json, as a ConfigMap."""
    from kubernetes import client as k8s

    here = Path(__file__).parent
    return k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=k8s.V1ObjectMeta(name=f"{name}-code", namespace=cfg.cluster.namespace, labels=_labels(name)),
        data={
            "nemo_entrypoint.py": (here / "nemo_entrypoint.py").read_text(encoding="utf-8"),
            "lora_targets.py": (here / "lora_targets.py").read_text(encoding="utf-8"),
            "automodel_recipe.py": (here / "automodel_recipe.py").read_text(encoding="utf-8"),
            "spec.json": json.dumps(nemo_spec(cfg, name), indent=2, sort_keys=True) + "\n",
        },
    )


def build_job(cfg, name: str):
    """The PyTorchJob: Master + Workers on the training pool, NCCL over EFA, FSx, /dev/shm."""
    from kubeflow.training import (
        KubeflowOrgV1PyTorchJob,
        KubeflowOrgV1PyTorchJobSpec,
        KubeflowOrgV1ReplicaSpec,
        KubeflowOrgV1RunPolicy,
    )
    from kubernetes import client as k8s

    train, training, fsx = cfg.train, cfg.cluster.training, cfg.cluster.fsx
    # torchrun takes the node count and GPUs from here and its rank and rendezvous from the
    # variables the operator sets on every pod ($(VAR) is expanded by the kubelet).
    command = [
        "torchrun",
        f"--nnodes={train.nodes}",
        f"--nproc-per-node={train.procs_per_node}",
        "--node-rank=$(PET_NODE_RANK)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        *entrypoint_args(),
    ]
    env = {
        **dict(training.env),
        "NEMO_HOME": training.nemo_home,
        "HF_HUB_OFFLINE": "1",  # the base model is read from FSx, never downloaded by a pod
    }
    gpu_and_efa = {"nvidia.com/gpu": str(train.procs_per_node)}
    if training.efa_per_node > 0:
        gpu_and_efa["vpc.amazonaws.com/efa"] = str(training.efa_per_node)
    container = k8s.V1Container(
        name=CONTAINER,
        image=training.image,
        command=command,
        env=[k8s.V1EnvVar(name=k, value=str(v)) for k, v in env.items()],
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=PORT)],
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": training.cpu, "memory": training.memory, **gpu_and_efa},
            # Extended resources must be requested and limited alike; cpu stays unlimited.
            limits={"memory": training.memory, **gpu_and_efa},
        ),
        volume_mounts=[
            k8s.V1VolumeMount(name="shm", mount_path="/dev/shm"),
            k8s.V1VolumeMount(name="fsx", mount_path=fsx.mount_path),
            k8s.V1VolumeMount(name="code", mount_path=CODE_DIR, read_only=True),
        ],
    )
    pod = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=_labels(name)),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=[
                k8s.V1Volume(name="shm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=training.shm_size)),
                k8s.V1Volume(name="fsx", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=fsx.pvc)),
                k8s.V1Volume(name="code", config_map=k8s.V1ConfigMapVolumeSource(name=f"{name}-code")),
            ],
            node_selector=dict(training.node_selector) or None,
            tolerations=[
                k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
                for t in training.tolerations
            ]
            or None,
            service_account_name=training.service_account,
            # Time for NeMo's preemption callback to write a checkpoint when a node is drained.
            termination_grace_period_seconds=120,
        ),
    )
    replicas = {"Master": KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy=training.restart_policy, template=pod)}
    if train.nodes > 1:
        replicas["Worker"] = KubeflowOrgV1ReplicaSpec(
            replicas=train.nodes - 1, restart_policy=training.restart_policy, template=pod
        )
    labels = _labels(name)
    if training.kueue_queue:
        labels[KUEUE_QUEUE_LABEL] = training.kueue_queue
    return KubeflowOrgV1PyTorchJob(
        api_version=f"{GROUP}/{VERSION}",
        kind=KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=cfg.cluster.namespace, labels=labels),
        spec=KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(train.procs_per_node),
            pytorch_replica_specs=replicas,
            # Static world size (no elasticPolicy): Megatron's tensor/pipeline layout is fixed;
            # a pod that restarts rejoins, and NeMo resumes from the newest checkpoint.
            run_policy=KubeflowOrgV1RunPolicy(
                backoff_limit=training.backoff_limit,
                clean_pod_policy="Running",
                active_deadline_seconds=int(training.max_hours * 3600),
            ),
        ),
    )


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "modelchain", "app.kubernetes.io/component": "training", "modelchain/run": name}


def to_manifest(obj) -> dict[str, Any]:
    """The camelCase manifest of an SDK or kubernetes client object."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def render(cfg, name: Optional[str] = None) -> list[dict[str, Any]]:
    """The ConfigMap and PyTorchJob manifests for one run of `cfg`, in creation order."""
    if cfg.cluster.kind != "eks":
        raise ValueError(f"cluster.kind is {cfg.cluster.kind!r}: the PyTorchJob needs cluster=eks")
    name = name or job_name(cfg)
    return [to_manifest(build_config_map(cfg, name)), to_manifest(build_job(cfg, name))]


# --------------------------------------------------------------------------- submit and wait


def submit_and_wait(
    job,
    namespace: str,
    timeout_s: float,
    client=None,
    *,
    config_map=None,
    poll_s: float = 15.0,
    max_pending_s: float = 30 * 60,
    log: Callable[[str], None] = print,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
) -> dict[str, Any]:
    """Create `job` (and its `config_map`), stream the master's log, wait until it succeeds.

    Raises TrainingJobError naming the pods' reasons when the job fails, when a pod cannot
    start (image pull, unschedulable for longer than `max_pending_s`) or after `timeout_s`;
    in the last two cases the job is deleted so it holds no GPUs. Returns the job's name,
    uid, start and completion times and duration.
    """
    from kubeflow.training import TrainingClient

    client = client or TrainingClient(namespace=namespace)
    name = job.metadata.name
    if config_map is not None:
        client.core_api.create_namespaced_config_map(namespace, config_map)
    try:
        client.create_job(job, namespace=namespace)
    except Exception:
        if config_map is not None:  # no job will own it
            _ignore_errors(client.core_api.delete_namespaced_config_map, config_map.metadata.name, namespace)
        raise
    created = client.get_job(name, namespace=namespace)
    if config_map is not None:
        # The ConfigMap goes when the job goes. kubernetes 30 sends PATCH bodies as
        # application/json-patch+json, so the body is a JSON Patch.
        owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": created.metadata.uid}
        client.core_api.patch_namespaced_config_map(
            config_map.metadata.name, namespace, [{"op": "add", "path": "/metadata/ownerReferences", "value": [owner]}]
        )
    watcher = _Watcher(client, name, namespace, max_pending_s, log, now)
    try:
        finished = client.wait_for_job_conditions(
            name,
            namespace=namespace,
            expected_conditions={"Succeeded"},
            wait_timeout=timeout_s,
            polling_interval=poll_s,
            callback=watcher.check,
        )
    except _Stuck as stuck:
        _delete(client, name, namespace)
        raise TrainingJobError(f"{KIND} {namespace}/{name} cannot run: {stuck}; job deleted{watcher.tail()}") from None
    except TimeoutError:
        reasons = watcher.reasons()
        _delete(client, name, namespace)
        raise TrainingJobError(
            f"{KIND} {namespace}/{name} did not finish within {timeout_s:g} s"
            f"{'; ' + reasons if reasons else ''}; job deleted{watcher.tail()}"
        ) from None
    except RuntimeError:
        # The SDK raises RuntimeError for a Failed job and for API errors alike: look.
        job_now = client.get_job(name, namespace=namespace)
        if _failed_message(job_now) is None:
            raise
        reasons = watcher.reasons(refresh=True)
        raise TrainingJobError(
            f"{KIND} {namespace}/{name} failed: {_failed_message(job_now)}"
            f"{'; ' + reasons if reasons else ''}{watcher.tail()}"
        ) from None
    finally:
        watcher.stop()
    status = finished.status
    start, end = status.start_time, status.completion_time
    return {
        "name": name,
        "namespace": namespace,
        "uid": created.metadata.uid,
        "start_time": start.isoformat() if start else None,
        "completion_time": end.isoformat() if end else None,
        "duration_s": (end - start).total_seconds() if start and end else None,
    }


class _Stuck(Exception):
    """A pod is in a state that waiting will not fix."""


class _Watcher:
    """Called on every poll: streams the master's log and spots pods that cannot start."""

    def __init__(self, client, name, namespace, max_pending_s, log, now):
        self.client, self.name, self.namespace = client, name, namespace
        self.max_pending_s, self.log, self.now = max_pending_s, log, now
        self.pods: list = []
        self.lines: collections.deque[str] = collections.deque(maxlen=20)
        self.streams: dict[tuple[str, int], threading.Thread] = {}
        self.stopped = threading.Event()

    def check(self, _job) -> None:
        self.pods = self.client.get_job_pods(self.name, namespace=self.namespace)
        for pod in self.pods:
            self._follow_master(pod)
        for pod in self.pods:
            problem = _stuck_reason(pod, self.now(), self.max_pending_s)
            if problem:
                raise _Stuck(problem)

    def _follow_master(self, pod) -> None:
        labels = pod.metadata.labels or {}
        follow_log(self.streams, pod, labels.get("training.kubeflow.org/replica-type") == "master", self._stream)

    def _stream(self, pod_name: str) -> None:
        try:
            response = self.client.core_api.read_namespaced_pod_log(
                pod_name, self.namespace, container=CONTAINER, follow=True, _preload_content=False
            )
            buffer = b""
            for chunk in response.stream(4096):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    self._line(pod_name, raw)
                if self.stopped.is_set():
                    break
            if buffer:
                self._line(pod_name, buffer)
            response.release_conn()
        except Exception as exc:  # the log is a convenience: never fail the wait over it
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.log(f"[{pod_name}] log stream ended: {type(exc).__name__}: {first}")

    def _line(self, pod_name: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.lines.append(text)
        self.log(f"[{pod_name}] {text}")

    def reasons(self, refresh: bool = False) -> str:
        if refresh:
            try:
                self.pods = self.client.get_job_pods(self.name, namespace=self.namespace)
            except Exception:  # keep the last known pods; the job's own message still stands
                pass
        return "; ".join(filter(None, (_pod_reason(p) for p in self.pods)))

    def tail(self) -> str:
        for thread in list(self.streams.values()):
            thread.join(timeout=2)
        return ("\nlast lines of the master's log:\n" + "\n".join(self.lines)) if self.lines else ""

    def stop(self) -> None:
        self.stopped.set()
        for thread in list(self.streams.values()):
            thread.join(timeout=5)


def follow_log(streams: dict, pod, is_leader: bool, stream) -> None:
    """Start `stream(pod_name)` in a thread for the leader pod once it runs, once per container restart
    (a restarted container gets a new stream); `streams` remembers what was started."""
    if not is_leader or pod.status.phase == "Pending":
        return
    restarts = sum(s.restart_count or 0 for s in pod.status.container_statuses or [])
    key = (pod.metadata.name, restarts)
    if key in streams:
        return
    thread = threading.Thread(target=stream, args=(pod.metadata.name,), daemon=True)
    streams[key] = thread
    thread.start()


def _stuck_reason(pod, now: dt.datetime, max_pending_s: float) -> Optional[str]:
    name, status = pod.metadata.name, pod.status
    for cs in status.container_statuses or []:
        waiting = cs.state.waiting if cs.state else None
        if waiting and waiting.reason in FATAL_WAITING:
            return f"pod {name}: {waiting.reason} for image {cs.image}: {waiting.message or ''}".rstrip(": ")
    if status.phase == "Pending":
        for cond in status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                since = cond.last_transition_time or pod.metadata.creation_timestamp
                waited = (now - since).total_seconds() if since else 0.0
                if waited > max_pending_s:
                    return f"pod {name}: Unschedulable for {waited / 60:.0f} minutes: {cond.message}"
    return None


def _pod_reason(pod) -> str:
    """Why a pod is not running well, in a few words (empty when nothing is wrong)."""
    name, status = pod.metadata.name, pod.status
    found = []
    if status.reason:  # Evicted, DeadlineExceeded, ...
        found.append(f"{status.reason}: {status.message or ''}".rstrip(": "))
    for cs in status.container_statuses or []:
        for state in (cs.state, cs.last_state):
            if state is None:
                continue
            if state.terminated and state.terminated.exit_code:
                t = state.terminated
                found.append(f"{t.reason or 'Error'} (exit code {t.exit_code})")
            elif state.waiting and state.waiting.reason not in (None, "ContainerCreating", "PodInitializing"):
                found.append(f"{state.waiting.reason}: {state.waiting.message or ''}".rstrip(": "))
    if status.phase == "Pending":
        for cond in status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                found.append(f"{cond.reason}: {cond.message}")
    unique = list(dict.fromkeys(found))
    return f"pod {name}: {', '.join(unique)}" if unique else ""


def _failed_message(job) -> Optional[str]:
    """The Failed condition of a job, as `reason: message`; None when it has not failed."""
    for cond in reversed(job.status.conditions or []) if job.status else []:
        if cond.type == "Failed" and cond.status == "True":
            return f"{cond.reason}: {cond.message}" if cond.reason else str(cond.message)
    return None


def _delete(client, name: str, namespace: str) -> None:
    _ignore_errors(client.delete_job, name, namespace=namespace)


def _ignore_errors(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except Exception:  # a clean-up: the error being raised matters more
        pass


def wait_seconds(cfg) -> float:
    """How long the component waits: the job's own active deadline plus start-up."""
    training = cfg.cluster.training
    return training.max_hours * 3600 + training.startup_minutes * 60


"""The Kubeflow Trainer v2 TrainJob that runs the NeMo LoRA recipe: render it, submit it, wait.

Trainer v2 splits a job in two. The ClusterTrainingRuntime (`runtime(cfg)`, written by
`modelchain render infra`) is what every fine-tune on the training pool shares: the NeMo
image, the torch policy (the operator injects torchrun's PET_* rendezvous variables), the
EFA devices and NCCL/EFA environment, a memory-backed /dev/shm, the FSx claim, the Karpenter
pool's nodeSelector and tolerations, and the restart policy. The TrainJob (`build_job`,
written by `modelchain render training`) is one run: its runtimeRef, the node and process
counts, the GPUs it asks for, the command, the deadline, the Kueue queue, and a runtime
patch that mounts the run's ConfigMap (entrypoint + spec.json, the same as the PyTorchJob's).

`submit_and_wait` goes through the `kubeflow` SDK's TrainerClient: it checks that the runtime
is installed, creates the ConfigMap and the rendered TrainJob on the client's API
connection (the SDK's `train()` cannot express `numProcPerNode` or runtime patches of volumes,
and the job submitted must be the job rendered), waits with `wait_for_job_status`, streams
node 0's log with `get_job_logs`, and names the pods' reasons on failure, as the PyTorchJob
path does.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Optional

from modelchain.training import pytorchjob
from modelchain.training.pytorchjob import CODE_DIR, TrainingJobError, job_name, run_dir, stage_splits, wait_seconds

GROUP, VERSION, KIND = "trainer.kubeflow.org", "v1alpha1", "TrainJob"
RUNTIME_KIND = "ClusterTrainingRuntime"
PLURAL = "trainjobs"
CONTAINER = "node"  # the trainer container the torch plugin injects torchrun's settings into
REPLICATED_JOB = "node"
FRAMEWORK_LABEL = "trainer.kubeflow.org/framework"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"  # marks the trainer's replicated job
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
PATCH_MANAGER = "modelchain.io/finetune"
KUEUE_QUEUE_LABEL = pytorchjob.KUEUE_QUEUE_LABEL

__all__ = ["TrainingJobError", "build_job", "job_name", "render", "run_dir", "runtime", "stage_splits",
           "submit_and_wait", "wait_seconds"]


# --------------------------------------------------------------------------- manifests


def _env(values: dict) -> list[dict[str, str]]:
    return [{"name": str(k), "value": str(v)} for k, v in values.items()]


def _resources(training, gpus: int) -> dict[str, Any]:
    devices = {"nvidia.com/gpu": str(gpus)}
    if training.efa_per_node > 0:
        devices["vpc.amazonaws.com/efa"] = str(training.efa_per_node)
    # Extended resources must be requested and limited alike; cpu stays unlimited.
    return {"requests": {"cpu": str(training.cpu), "memory": str(training.memory), **devices},
            "limits": {"memory": str(training.memory), **devices}}


def runtime(cfg) -> dict[str, Any]:
    """The ClusterTrainingRuntime `cluster.training.runtime`: what every run on the training pool shares."""
    training, fsx = cfg.cluster.training, cfg.cluster.fsx
    env = {**dict(training.env), "NEMO_HOME": training.nemo_home,
           "HF_HUB_OFFLINE": "1"}  # the base model is read from FSx, never downloaded by a pod
    container = {
        "name": CONTAINER,
        "image": training.image,
        "env": _env(env),
        "resources": _resources(training, training.gpus_per_node),
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}, {"name": "fsx", "mountPath": fsx.mount_path}],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": training.shm_size}},
            {"name": "fsx", "persistentVolumeClaim": {"claimName": fsx.pvc}},
        ],
        # A pod restarts in place after a crash (NeMo resumes from the newest checkpoint on FSx);
        # ExitCode and Never leave restarts to the JobSet's failure policy.
        "restartPolicy": "OnFailure" if training.restart_policy == "OnFailure" else "Never",
        # Time for NeMo's preemption callback to write a checkpoint when a node is drained.
        "terminationGracePeriodSeconds": 120,
    }
    if training.node_selector:
        pod_spec["nodeSelector"] = dict(training.node_selector)
    if training.tolerations:
        pod_spec["tolerations"] = [
            {k: v for k, v in {"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect}.items()
             if v is not None}
            for t in training.tolerations
        ]
    if training.service_account:
        pod_spec["serviceAccountName"] = training.service_account
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": RUNTIME_KIND,
        "metadata": {
            "name": training.runtime,
            "labels": {FRAMEWORK_LABEL: "torch", "app.kubernetes.io/part-of": "modelchain"},
        },
        "spec": {
            # Static world size (no elastic policy): Megatron's tensor/pipeline layout is fixed.
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {
                "spec": {
                    # The whole gang restarts after a pod fails for good, up to backoff_limit times.
                    "failurePolicy": {"maxRestarts": training.backoff_limit},
                    "replicatedJobs": [{
                        "name": REPLICATED_JOB,
                        "template": {
                            "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                            "spec": {"backoffLimit": training.backoff_limit, "template": {"spec": pod_spec}},
                        },
                    }],
                },
            },
        },
    }


def build_job(cfg, name: str) -> dict[str, Any]:
    """The TrainJob of one run: `nodes` x `procs_per_node` torchrun processes on the runtime."""
    train, training = cfg.train, cfg.cluster.training
    labels = pytorchjob._labels(name)
    if training.kueue_queue:
        labels[KUEUE_QUEUE_LABEL] = training.kueue_queue
    code_patch = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
            "name": REPLICATED_JOB,
            "template": {"spec": {"template": {
                "metadata": {"labels": pytorchjob._labels(name)},
                "spec": {
                    "containers": [{"name": CONTAINER,
                                    "volumeMounts": [{"name": "code", "mountPath": CODE_DIR, "readOnly": True}]}],
                    "volumes": [{"name": "code", "configMap": {"name": f"{name}-code"}}],
                },
            }}},
        }]}}},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": cfg.cluster.namespace, "labels": labels},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": RUNTIME_KIND, "name": training.runtime},
            "trainer": {
                "numNodes": train.nodes,
                "numProcPerNode": train.procs_per_node,
                # torchrun takes nodes, processes, rank and rendezvous from the PET_* variables the
                # torch plugin sets; what it runs is the PyTorchJob's entrypoint and spec.
                "command": ["torchrun", *pytorchjob.entrypoint_args()],
                "resourcesPerNode": _resources(training, train.procs_per_node),
            },
            "runtimePatches": [code_patch],
            "activeDeadlineSeconds": int(training.max_hours * 3600),
        },
    }


def render(cfg, name: Optional[str] = None) -> list[dict[str, Any]]:
    """The ConfigMap and TrainJob manifests for one run of `cfg`, in creation order."""
    if cfg.cluster.kind != "eks":
        raise ValueError(f"cluster.kind is {cfg.cluster.kind!r}: the TrainJob needs cluster=eks")
    name = name or job_name(cfg)
    return [pytorchjob.to_manifest(pytorchjob.build_config_map(cfg, name)), build_job(cfg, name)]


# --------------------------------------------------------------------------- submit and wait


def trainer_client(namespace: str, client_configuration=None):
    """A TrainerClient on the pod's service account (or the given kubernetes Configuration)."""
    from kubeflow.trainer import KubernetesBackendConfig, TrainerClient

    return TrainerClient(KubernetesBackendConfig(namespace=namespace, client_configuration=client_configuration))


def submit_and_wait(
    job: dict[str, Any],
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
    """Create the TrainJob `job` (and its `config_map`), stream node 0's log, wait until it completes.

    Raises TrainingJobError when the runtime it names is not installed (nothing is created),
    when the job fails (with the pods' reasons), when a pod cannot start (image pull,
    unschedulable for longer than `max_pending_s`) or after `timeout_s`; in the last two
    cases the job is deleted so it holds no GPUs. Returns the job's name, uid, start and
    completion times and duration.
    """
    client = client or trainer_client(namespace)
    api = client.backend  # the SDK's KubernetesBackend: its core and custom-object API clients
    name, runtime_name = job["metadata"]["name"], job["spec"]["runtimeRef"]["name"]
    try:
        client.get_runtime(runtime_name)
    except RuntimeError as exc:
        status = getattr(exc.__cause__, "status", None)  # the API's answer, when there was one
        if status not in (None, 404):
            raise TrainingJobError(f"cluster.training.runtime: {RUNTIME_KIND} {runtime_name!r} cannot be read "
                                   f"(HTTP {status}: {getattr(exc.__cause__, 'reason', '')})") from None
        raise TrainingJobError(
            f"cluster.training.runtime: {RUNTIME_KIND} {runtime_name!r} is not installed on the cluster; "
            f"apply the manifests of `modelchain render infra cluster=eks` first"
        ) from None
    if config_map is not None:
        api.core_api.create_namespaced_config_map(namespace, config_map)
    try:
        created = api.custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    except Exception:
        if config_map is not None:  # no job will own it
            pytorchjob._ignore_errors(api.core_api.delete_namespaced_config_map, config_map.metadata.name, namespace)
        raise
    uid = created["metadata"]["uid"]
    if config_map is not None:
        # The ConfigMap goes when the job goes (a JSON Patch: kubernetes 30 sends that type).
        owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": uid}
        api.core_api.patch_namespaced_config_map(
            config_map.metadata.name, namespace, [{"op": "add", "path": "/metadata/ownerReferences", "value": [owner]}]
        )
    watcher = _Watcher(client, name, namespace, max_pending_s, log, now)
    try:
        client.wait_for_job_status(name, status={"Complete"}, timeout=timeout_s, polling_interval=poll_s,
                                   callbacks=[watcher.check])
    except pytorchjob._Stuck as stuck:
        _delete(client, name)
        raise TrainingJobError(f"{KIND} {namespace}/{name} cannot run: {stuck}; job deleted{watcher.tail()}") from None
    except TimeoutError:
        reasons = watcher.reasons()
        _delete(client, name)
        raise TrainingJobError(
            f"{KIND} {namespace}/{name} did not finish within {timeout_s:g} s"
            f"{'; ' + reasons if reasons else ''}; job deleted{watcher.tail()}"
        ) from None
    except RuntimeError:
        # The SDK raises RuntimeError for a Failed job and for API errors alike: look.
        failed = _condition(_read(api, name, namespace), "Failed")
        if failed is None:
            raise
        reasons = watcher.reasons(refresh=True)
        message = f"{failed.get('reason')}: {failed.get('message')}" if failed.get("reason") else failed.get("message")
        raise TrainingJobError(
            f"{KIND} {namespace}/{name} failed: {message}{'; ' + reasons if reasons else ''}{watcher.tail()}"
        ) from None
    finally:
        watcher.stop()
    complete = _condition(_read(api, name, namespace), "Complete") or {}
    end = _time(complete.get("lastTransitionTime"))
    starts = [p.status.start_time for p in watcher.pods if p.status and p.status.start_time]
    start = min(starts) if starts else None
    return {
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "start_time": start.isoformat() if start else None,
        "completion_time": end.isoformat() if end else None,
        "duration_s": (end - start).total_seconds() if start and end else None,
    }


def _read(api, name: str, namespace: str) -> dict[str, Any]:
    return api.custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def _condition(job: dict[str, Any], kind: str) -> Optional[dict[str, Any]]:
    for cond in reversed((job.get("status") or {}).get("conditions") or []):
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def _time(value: Optional[str]) -> Optional[dt.datetime]:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _delete(client, name: str) -> None:
    pytorchjob._ignore_errors(client.delete_job, name)


class _Watcher(pytorchjob._Watcher):
    """The PyTorchJob watcher on a TrainJob's pods; node 0's log through TrainerClient.get_job_logs."""

    def check(self, _job) -> None:
        self.pods = self._list_pods()
        for pod in self.pods:
            self._follow_node_0(pod)
        for pod in self.pods:
            problem = pytorchjob._stuck_reason(pod, self.now(), self.max_pending_s)
            if problem:
                raise pytorchjob._Stuck(problem)

    def _list_pods(self) -> list:
        selector = f"{JOBSET_LABEL}={self.name}"
        return self.client.backend.core_api.list_namespaced_pod(self.namespace, label_selector=selector).items

    def reasons(self, refresh: bool = False) -> str:
        if refresh:
            try:
                self.pods = self._list_pods()
            except Exception:  # keep the last known pods; the job's own message still stands
                pass
        return "; ".join(filter(None, (pytorchjob._pod_reason(p) for p in self.pods)))

    def _follow_node_0(self, pod) -> None:
        labels = pod.metadata.labels or {}
        pytorchjob.follow_log(self.streams, pod, labels.get(INDEX_LABEL) == "0", self._stream)

    def _stream(self, pod_name: str) -> None:
        try:
            for line in self.client.get_job_logs(self.name, follow=True, step=f"{REPLICATED_JOB}-0"):
                self._line(pod_name, line.encode() if isinstance(line, str) else line)
                if self.stopped.is_set():
                    break
        except Exception as exc:  # the log is a convenience: never fail the wait over it
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.log(f"[{pod_name}] log stream ended: {type(exc).__name__}: {first}")

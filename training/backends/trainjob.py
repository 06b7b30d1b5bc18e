"""Training on EKS with Kubeflow Trainer v2: the NeMo LoRA recipe as a TrainJob on a ClusterTrainingRuntime.

Everything but the job itself is the PyTorchJob backend's: the cost estimate and budget
refusal, the splits staged on FSx, the ConfigMap with the entrypoint and spec.json (so the
pods run the same command), the adapter check, `training_job.json` for the gate's lineage
and the MLflow run. The job is training/trainjob.py's: a TrainJob whose runtimeRef names the
ClusterTrainingRuntime that `modelchain render infra` writes, submitted and watched through
the `kubeflow` SDK's TrainerClient.
"""

from __future__ import annotations

import re

from modelchain.training.backends.pytorchjob import PyTorchJobBackend

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class TrainJobBackend(PyTorchJobBackend):
    name = "trainjob"
    jobs_module = "modelchain.training.trainjob"

    def check_config(self, cfg, need) -> None:
        """The PyTorchJob's checks, and a runtime name the API server accepts."""
        super().check_config(cfg, need)
        runtime = cfg.cluster.training.runtime
        need(bool(DNS_LABEL.match(runtime or "")), "cluster.training.runtime",
             f"must be a DNS label (lower case letters, digits, '-'), got {runtime!r}")

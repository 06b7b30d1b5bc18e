"""Finetune: train a LoRA adapter on the train split with the configured training backend.

`cluster.training.backend` picks the backend by name from modelchain.training.backends:
`local` trains here on the CPU (in process, or under torchrun with `train.procs_per_node`
processes), `trainjob` runs the NeMo recipe as a Kubeflow Trainer v2 TrainJob on the GPU pool,
`pytorchjob` as a legacy PyTorchJob.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run(model, train, cluster, experiment, splits_dir: str | Path, adapter_dir: str | Path, *, backend=None) -> dict[str, Any]:
    """Train and write the adapter into `adapter_dir`, with its manifest; returns the training metrics.

    The groups are typed configs with the run's values in `train`; `backend` replaces the
    configured one (tests hand in a backend aimed at a replayed API server). The manifest
    (size and sha256 of every file) is what registration requires and what every later
    download and the serving side check the adapter against.
    """
    from modelchain.core.artifacts import write_manifest
    from modelchain.training import backends

    chosen = backend or backends.get(cluster.training.backend)
    metrics = chosen.train(model=model, train=train, cluster=cluster, experiment=experiment,
                           splits_dir=splits_dir, adapter_dir=adapter_dir)
    if not Path(adapter_dir).is_dir():  # backends fail on their own; this guards the manifest's folder
        raise FileNotFoundError(f"{adapter_dir}: the training backend {chosen.name!r} left no adapter folder")
    write_manifest(adapter_dir)
    return metrics

"""The shape every training backend has (see training/backends/__init__.py for the registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Protocol, runtime_checkable

# Written beside the adapter by a backend that runs a job elsewhere: {"kind", "name",
# "namespace", "uid", "image"}. The gate copies it into the lineage of the model version.
TRAINING_JOB_RECORD = "training_job.json"


@runtime_checkable  # isinstance checks the methods: the seam test holds every backend to them
class TrainingBackend(Protocol):
    name: str

    def check_config(self, cfg, need: Callable[[bool, str, str], None]) -> None:
        """Checks of the settings this backend reads (a composed finetune config), each naming its key."""

    def train(
        self, *, model, train, cluster, experiment, splits_dir: str | Path, adapter_dir: str | Path
    ) -> dict[str, Any]:
        """Train on `splits_dir/train.jsonl`, write the HF PEFT adapter into `adapter_dir`; returns metrics.

        `model`, `train`, `cluster` and `experiment` are the typed config groups, with the
        run's values (max_steps, learning_rate, LoRA rank and alpha) already in `train`.
        """

    def job_record(self, cluster) -> dict[str, str]:
        """What lineage says of the training job when the adapter carries no TRAINING_JOB_RECORD."""

    def render(self, cfg, name: Optional[str] = None) -> list[dict[str, Any]]:
        """Manifests of one training run of a composed config (`modelchain render training`)."""

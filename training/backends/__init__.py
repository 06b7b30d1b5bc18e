"""Training backends: where the finetune step trains, chosen by `cluster.training.backend`.

Each backend is a class with the `TrainingBackend` shape (base.py) in its own module; the
registry below maps a config name to it. Modules are named as strings and imported when
asked for, so composing a config (which validates the name here) loads no backend code.
Adding a backend: one module with its class, one line in BACKENDS, the option in a
configs/cluster/*.yaml.
"""

from __future__ import annotations

import importlib

from modelchain.training.backends.base import TRAINING_JOB_RECORD, TrainingBackend

BACKENDS: dict[str, str] = {
    "local": "modelchain.training.backends.local:LocalBackend",
    "pytorchjob": "modelchain.training.backends.pytorchjob:PyTorchJobBackend",
    "trainjob": "modelchain.training.backends.trainjob:TrainJobBackend",
}


def get(name: str) -> TrainingBackend:
    """The backend registered as `name`."""
    if name not in BACKENDS:
        raise ValueError(f"cluster.training.backend: unknown backend {name!r}; registered: {', '.join(BACKENDS)}")
    module, _, attribute = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)()


def check_config(cfg, need) -> None:
    """Config validation (core.config.OWNER_CHECKS): a registered backend, and its own checks."""
    name = cfg.cluster.training.backend
    need(name in BACKENDS, "cluster.training.backend", f"unknown backend {name!r}; registered: {', '.join(BACKENDS)}")
    if "train" in cfg:  # the finetune pipeline; rag_ingest trains nothing
        get(name).check_config(cfg, need)


__all__ = ["BACKENDS", "TRAINING_JOB_RECORD", "TrainingBackend", "check_config", "get"]

"""Run a pipeline here with kfp.local, in this Python environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from modelchain.pipelines.registry import module

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAGAS_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def run_local(pipeline: str, cfg: DictConfig, params: dict[str, Any] | None = None) -> Path:
    """Run the whole pipeline; raises if a task fails. Returns the pipeline root of outputs."""
    if cfg.cluster.kind != "local":
        raise ValueError(f"`run` executes here and needs cluster=local, not cluster={cfg.cluster.kind}")
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import kfp.local

    root = Path(cfg.cluster.workdir) / "kfp-outputs"
    root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    func = module(pipeline).build(cfg)
    func(**(params or {}))
    return root

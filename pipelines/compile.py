"""Compile a pipeline to KFP IR YAML."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from modelchain.core.io import atomic_write_text
from modelchain.pipelines.registry import module


def compile_pipeline(pipeline: str, cfg: DictConfig, output: str | Path) -> Path:
    """Write the IR YAML to `output` (atomically) and return its path."""
    import tempfile

    from kfp import compiler

    func = module(pipeline).build(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(func, str(staged))
        return atomic_write_text(output, staged.read_text())

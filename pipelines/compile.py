"""Compile a pipeline to KFP IR YAML."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from modelchain.core.io import atomic_write_text
from modelchain.pipelines.registry import module


def import_kfp_without_client() -> None:
    """Import kfp without kfp.client, which compiling never uses.

    `import kfp` also imports kfp.client and, through it, the Kubernetes client: about a
    second, half the time of `modelchain compile`. kfp skips those imports when
    `_KFP_RUNTIME` is set (as it is inside its own executor containers), so import the
    package that way; kfp.dsl and kfp.compiler are then imported in full, and
    `from kfp.client import Client` still works when a verb needs it.
    """
    if "kfp" in sys.modules:
        return
    saved = os.environ.get("_KFP_RUNTIME")
    os.environ["_KFP_RUNTIME"] = "true"
    try:
        import kfp  # noqa: F401
    finally:
        if saved is None:
            del os.environ["_KFP_RUNTIME"]
        else:
            os.environ["_KFP_RUNTIME"] = saved


def compile_pipeline(pipeline: str, cfg: DictConfig, output: str | Path) -> Path:
    """Write the IR YAML to `output` (atomically) and return its path."""
    import tempfile

    import_kfp_without_client()
    from kfp import compiler

    func = module(pipeline).build(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(func, str(staged))
        return atomic_write_text(output, staged.read_text())

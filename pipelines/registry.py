"""The pipelines modelchain knows, by name."""

from __future__ import annotations

import importlib

PIPELINE_MODULES = {"finetune": "modelchain.pipelines.finetune", "rag_ingest": "modelchain.pipelines.rag_ingest"}


def module(pipeline: str):
    return importlib.import_module(PIPELINE_MODULES[pipeline])

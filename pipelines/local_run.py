"""Run a pipeline here with kfp.local, in this Python environment."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
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
    with _remember_output() as recent:
        try:
            func(**(params or {}))
        except RuntimeError as exc:
            # kfp.local only says which task failed; the task's own error is in its log.
            cause = _last_error(recent)
            raise LocalRunError(f"{_strip_ansi(str(exc)).splitlines()[0]} {cause}".strip()) from exc
    return root


class LocalRunError(RuntimeError):
    """A task of a local run failed; the message carries the task's own error line."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*: .+")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _last_error(lines) -> str:
    for line in reversed(lines):
        line = _strip_ansi(line).strip()
        if _ERROR_LINE.match(line):
            return f"Cause: {line}"
    return ""


class _Tee:
    """Passes writes through to the real stdout and keeps the last lines."""

    def __init__(self, stream, keep: int = 400):
        self.stream = stream
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines())
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def _remember_output():
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    try:
        yield tee.lines
    finally:
        sys.stdout = tee.stream

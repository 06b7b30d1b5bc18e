"""Run a pipeline here with kfp.local, in this Python environment."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from modelchain.pipelines.registry import module

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAGAS_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def log_path_for(pipeline: str, cfg: DictConfig) -> Path:
    """Where a local run's full log goes: <cluster.workdir>/logs/<pipeline>-<UTC time>.log."""
    import datetime

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(cfg.cluster.workdir) / "logs" / f"{pipeline}-{stamp}.log"


def run_local(
    pipeline: str,
    cfg: DictConfig,
    params: dict[str, Any] | None = None,
    *,
    log_path: Path | None = None,
    verbose: bool = False,
) -> Path:
    """Run the whole pipeline; raises if a task fails. Returns the pipeline root of outputs.

    The console shows each step's start, messages, progress, errors and end; everything
    kfp.local prints (the executors' JSON input and output among it) goes to ``log_path``
    (default: `log_path_for`), and to the console as well when ``verbose``.
    """
    if cfg.cluster.kind != "local":
        raise ValueError(f"`run` executes here and needs cluster=local, not cluster={cfg.cluster.kind}")
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import kfp.local

    root = Path(cfg.cluster.workdir) / "kfp-outputs"
    root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=_runner(cfg), pipeline_root=str(root.resolve()), raise_on_error=True)
    func = module(pipeline).build(cfg)
    with _console(log_path or log_path_for(pipeline, cfg), verbose) as recent:
        try:
            func(**(params or {}))
        except RuntimeError as exc:
            # kfp.local only says which task failed; the task's own error is in its log.
            cause = _last_error(recent)
            raise LocalRunError(f"{_strip_ansi(str(exc)).splitlines()[0]} {cause}".strip()) from exc
    return root


# Config keys that may hold local paths a step reads: mounted into the container (local_runner=docker).
PATH_KEYS = ("data.source.uri", "data.feedback.uri", "data.tokens.tokenizer", "model.path", "rag.source.uri",
             "rag.embedding.model", "eval.harness_task_dir", "train.local.checkpoint_dir")


def _runner(cfg: DictConfig):
    """kfp.local's runner of cluster.local_runner: this environment, or the components image."""
    import kfp.local

    if cfg.cluster.local_runner == "subprocess":
        return kfp.local.SubprocessRunner(use_venv=False)
    from docker.types import Mount

    # The image is each component's own (cluster.image, see core.config.component_image).
    workdir = Path(cfg.cluster.workdir).resolve()
    folders = {workdir, *(Path(p).resolve() for p in cfg.cluster.docker_mounts)}
    for key in PATH_KEYS:
        folders |= _local_folders(OmegaConf.select(cfg, key, default=None))
    return kfp.local.DockerRunner(
        mounts=[Mount(target=str(f), source=str(f), type="bind") for f in sorted(_outermost(folders))],
        # The host's user, so that files written to the mounted folders belong to whoever runs this.
        user=f"{os.getuid()}:{os.getgid()}",
        environment={**OFFLINE_ENV, "HOME": str(workdir / "container-home"), "MODELCHAIN_HOME": str(workdir)},
        network_mode="none",  # every local part (MLflow on sqlite, Milvus Lite) is a file
    )


def _local_folders(value: Any) -> set[Path]:
    """The existing local folders behind a path value (a file's folder; the fixed part of a glob)."""
    if not isinstance(value, str) or not value or "://" in value:
        return set()
    folders = set()
    for part in value.split(","):
        fixed = Path(re.split(r"[*?\[]", part.strip(), maxsplit=1)[0] or ".").resolve()
        while not fixed.exists() and fixed != fixed.parent:
            fixed = fixed.parent
        folders.add(fixed if fixed.is_dir() else fixed.parent)
    return folders


def _outermost(folders: set[Path]) -> set[Path]:
    """Drop folders inside another one of the set: one mount covers them."""
    return {f for f in folders if not any(other != f and other in f.parents for other in folders)}


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


class _Recorder:
    """Passes writes through to a stream and keeps the last lines (for the error message)."""

    def __init__(self, stream, keep: int = 400):
        self.stream = stream
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines())
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def _console(log_path: Path, verbose: bool):
    """stdout -> the log file, and the lines a person reads (all of them if verbose) -> the console."""
    from modelchain.pipelines.console import ConsoleFilter

    log_path.parent.mkdir(parents=True, exist_ok=True)
    real_stdout = sys.stdout
    with open(log_path, "a", encoding="utf-8") as log:
        shown = _Both(real_stdout, log) if verbose else ConsoleFilter(real_stdout, log)
        recorder = _Recorder(shown)
        sys.stdout = recorder
        try:
            yield recorder.lines
        finally:
            if isinstance(shown, ConsoleFilter):
                shown.close_pending()
            sys.stdout = real_stdout


class _Both:
    """Writes to the console and the log file alike (--verbose)."""

    def __init__(self, console, log):
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.console.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def __getattr__(self, name):
        return getattr(self.console, name)

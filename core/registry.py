"""MLflow access: runs that record every gate decision, adapter registration, aliases, loading.

Aliases of a registered model: `challenger` is the newest registered version (every one
passed the gate), `champion` is what serves, `previous` the champion before it, so a
rollback is one alias move. Every alias change happens under the registry lock of
modelchain.core.registry_lock, and only ever points an alias at a version whose
`gate.decision` tag is `passed`; versions are never deleted.

mlflow is imported inside the functions: the CLI stays fast without it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from modelchain.core import artifacts
from modelchain.core.registry_lock import Lease, LockLost, LockTimeout, registry_lock

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous"
GATE_TAG = "gate.decision"
GATE_PASSED = "passed"
ROLLBACK_TAG = "modelchain.last_rollback"  # "FROM->TO" of the last rollback, for idempotent retries
HISTORY_TAG = "modelchain.alias_history"  # JSON list of alias moves, see _append_history
HISTORY_MAX_CHARS = 4800  # MLflow's SQL schema stores a registered-model tag value in 5000 characters
TRACKED_ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)
ADAPTER_PATH = "adapter"  # where the adapter lives among the run's artifacts
DIGEST_TAG = "lineage.adapter_sha256"  # the adapter manifest's digest, checked on every download

# A tracking server that does not answer should fail in seconds: MLflow's defaults retry
# for minutes (7 retries, backoff factor 2, 120 s timeout). Users can still set their own.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
PROBE_TIMEOUT_S = 5.0


class RegistryError(RuntimeError):
    """A registry request that cannot be carried out; the message is one line."""


class NotRegistered(RegistryError):
    """The registry answered that a model, alias or version does not exist."""


class RegistryLockLost(RegistryError, LockLost):
    """The registry lock was lost before a write (see registry_lock.Lease.check); nothing was written."""


# --------------------------------------------------------------------------- connecting
def client(tracking_uri: str):
    """An MlflowClient for tracking and registry at `tracking_uri`; a server must answer first."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if tracking_uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        _probe(tracking_uri)
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _probe(tracking_uri: str) -> None:
    """One short request, so an unreachable server is one clear line instead of retries."""
    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # it answered (perhaps 401/404): reachable, let MLflow report the rest
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(f"MLflow tracking server {tracking_uri} is unreachable ({reason})") from exc


def default_tracking_uri(overrides: list[str] | tuple[str, ...] = ()) -> str:
    """Hydra overrides given: their finetune config's URI; else $MLFLOW_TRACKING_URI; else the default config's."""
    if not overrides and os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    from modelchain.core.config import compose

    return compose("finetune", list(overrides)).cluster.mlflow.tracking_uri


def _error_code(exc: BaseException) -> str:
    return getattr(exc, "error_code", "")


# --------------------------------------------------------------------------- runs
def ensure_experiment(mlflow_client, name: str, artifact_location: Optional[str] = None) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if artifact_location and "://" not in artifact_location:
        Path(artifact_location).mkdir(parents=True, exist_ok=True)
    return mlflow_client.create_experiment(name, artifact_location=artifact_location)


def log_run(
    mlflow_client,
    experiment_id: str,
    *,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: dict[str, Path] | None = None,
    failed: bool = False,
) -> str:
    """One finished run with params, metrics, tags and artifact folders/files; returns its id."""
    from mlflow.entities import Metric, Param

    run = mlflow_client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        mlflow_client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        )
        for artifact_path, local in (artifacts or {}).items():
            local = Path(local)
            if local.is_dir():
                mlflow_client.log_artifacts(run_id, str(local), artifact_path)
            else:
                mlflow_client.log_artifact(run_id, str(local), artifact_path)
    except BaseException:
        mlflow_client.set_terminated(run_id, "FAILED")
        raise
    mlflow_client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
    return run_id


# --------------------------------------------------------------------------- model references
_REF = re.compile(r"^(?:models:/)?(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))?$")


@dataclass(frozen=True)
class ModelRef:
    """`NAME`, `NAME@ALIAS` or `NAME/VERSION`, with or without the `models:/` prefix."""

    name: str
    alias: Optional[str] = None
    version: Optional[str] = None

    @classmethod
    def parse(cls, text: str, default_alias: Optional[str] = CHAMPION) -> "ModelRef":
        match = _REF.match(text.strip())
        if not match:
            raise RegistryError(f"{text!r} is not a model reference: use NAME, NAME@ALIAS or NAME/VERSION")
        alias, version = match["alias"], match["version"]
        return cls(match["name"], alias or (None if version else default_alias), version)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.version else f"models:/{self.name}@{self.alias}"


def get_registered_model(mlflow_client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise NotRegistered(f"no registered model {name!r}") from exc
        raise


def aliases(model) -> dict[str, str]:
    """alias -> version of a RegisteredModel, versions as strings (MLflow gives ints here)."""
    return {alias: str(version) for alias, version in model.aliases.items()}


def get_version(mlflow_client, ref: ModelRef):
    """The model version `ref` names; a missing model, alias or version is a RegistryError."""
    from mlflow.exceptions import MlflowException

    model = get_registered_model(mlflow_client, ref.name)
    version = ref.version
    if version is None:
        version = aliases(model).get(ref.alias)
        if version is None:
            known = ", ".join(f"{a}={v}" for a, v in sorted(aliases(model).items())) or "none"
            raise NotRegistered(f"model {ref.name!r} has no alias {ref.alias!r} (aliases: {known})")
    try:
        return mlflow_client.get_model_version(ref.name, str(version))
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise NotRegistered(f"model {ref.name!r} has no version {version}") from exc
        raise


def _require_gate_passed(mv) -> None:
    decision = mv.tags.get(GATE_TAG, "")
    if decision != GATE_PASSED:
        raise RegistryError(
            f"models:/{mv.name}/{mv.version} has {GATE_TAG}={decision or 'missing'}; "
            f"only versions that passed the gate get an alias"
        )


# --------------------------------------------------------------------------- registration
def register_adapter(
    mlflow_client,
    run_id: str,
    adapter_dir: str | Path,
    *,
    model_name: str,
    tags: dict[str, str],
    transfer=None,
) -> str:
    """Store the adapter (with its manifest) in the run, make it a model version, alias `challenger`.

    Checks and uploads come first, registry changes last and under the lock, so bad input
    leaves the registry as it was. Idempotent: registering the same run again returns the
    version it already has. Returns the version number.
    """
    from mlflow.exceptions import MlflowException

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise RegistryError(f"{adapter_dir}: not a LoRA adapter (no adapter_config.json)")
    try:
        manifest = artifacts.checked_manifest(adapter_dir)
    except artifacts.ArtifactError as exc:
        raise RegistryError(str(exc)) from exc
    try:
        run = mlflow_client.get_run(run_id)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RegistryError(f"no MLflow run {run_id!r}") from exc
    if run.data.tags.get(GATE_TAG) != GATE_PASSED:
        raise RegistryError(f"MLflow run {run_id} did not pass the gate; refusing to register")
    try:
        artifacts.upload_to_run(mlflow_client, run_id, adapter_dir, ADAPTER_PATH, manifest=manifest, transfer=transfer)
    except artifacts.ArtifactError as exc:
        raise RegistryError(str(exc)) from exc
    tags = {**tags, GATE_TAG: GATE_PASSED, DIGEST_TAG: artifacts.manifest_digest(manifest)}
    source = f"{run.info.artifact_uri.rstrip('/')}/{ADAPTER_PATH}"
    with _locked(mlflow_client, model_name, f"register run {run_id}") as lease:
        _ensure_registered_model(mlflow_client, model_name)
        before = aliases(mlflow_client.get_registered_model(model_name))
        existing = mlflow_client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
        if existing:
            version = str(min(int(v.version) for v in existing))
        else:
            lease.check()
            version = str(mlflow_client.create_model_version(model_name, source=source, run_id=run_id, tags=tags).version)
        # Racing registrations finish in any order: challenger only ever moves to a newer version.
        if before.get(CHALLENGER) is None or int(before[CHALLENGER]) < int(version):
            lease.check()
            mlflow_client.set_registered_model_alias(model_name, CHALLENGER, version)
        _append_history(mlflow_client, model_name, "register", version, before, fence=lease.check)
    return version


def _ensure_registered_model(mlflow_client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(name, description="LoRA adapters registered by modelchain")
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise


def alias_history(model) -> list[dict[str, Any]]:
    """The alias moves recorded on a RegisteredModel, oldest first."""
    try:
        return json.loads(model.tags.get(HISTORY_TAG, "[]"))
    except ValueError:
        return []


def _append_history(mlflow_client, name: str, op: str, version: str, before: dict[str, str], fence=None) -> None:
    """Record one alias move (before and after) on the model; called under the lock, last.

    MLflow keeps no history of aliases; this tag answers "what served before, and since
    when", and under the lock no entry is lost, so the moves chain (each `before` is the
    previous `after`). Oldest entries are dropped to fit the tag's 5000 characters.
    """
    model = mlflow_client.get_registered_model(name)
    after = {a: v for a, v in aliases(model).items() if a in TRACKED_ALIASES}
    before = {a: v for a, v in before.items() if a in TRACKED_ALIASES}
    if after == before:
        return
    at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    events = alias_history(model) + [{"at": at, "op": op, "version": version, "before": before, "after": after}]
    text = json.dumps(events, separators=(",", ":"), sort_keys=True)
    while len(text) > HISTORY_MAX_CHARS and len(events) > 1:
        events = events[1:]
        text = json.dumps(events, separators=(",", ":"), sort_keys=True)
    if fence is not None:
        fence()
    mlflow_client.set_registered_model_tag(name, HISTORY_TAG, text)


@contextlib.contextmanager
def _locked(mlflow_client, name: str, purpose: str) -> Iterator[Lease]:
    """registry_lock, with its failures as RegistryError (one line for the CLI).

    Call the lease's `check()` right before each registry write in the block (the fencing check).
    """
    try:
        with registry_lock(mlflow_client, name, purpose=purpose) as lease:
            yield lease
    except LockLost as exc:
        raise RegistryLockLost(str(exc)) from exc
    except LockTimeout as exc:
        raise RegistryError(str(exc)) from exc


# --------------------------------------------------------------------------- promotion
def promote(mlflow_client, name: str, version: str | int) -> dict[str, Any]:
    """Make `version` the champion; the champion it replaces keeps alias `previous`.

    Idempotent (promoting the champion changes nothing). Order: `previous` first, then
    `champion`, so a crash in between leaves champion unchanged and a retry finishes the move.
    """
    version = str(version)
    target = get_version(mlflow_client, ModelRef(name, version=version))
    _require_gate_passed(target)  # checked before the lock too: bad input touches nothing
    with _locked(mlflow_client, name, f"promote {version}") as lease:
        _require_gate_passed(get_version(mlflow_client, ModelRef(name, version=version)))
        before = aliases(get_registered_model(mlflow_client, name))
        current = before.get(CHAMPION)
        if current == version:
            return {"model": name, "champion": version, "previous": None, "changed": False}
        if current is not None:
            lease.check()
            mlflow_client.set_registered_model_alias(name, PREVIOUS, current)
        lease.check()
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
        _append_history(mlflow_client, name, "promote", version, before, fence=lease.check)
    return {"model": name, "champion": version, "previous": current, "changed": True}


def rollback(mlflow_client, name: str) -> dict[str, Any]:
    """Move `champion` back to `previous` (one alias move) and drop `previous`.

    Idempotent: a retry after a finished rollback changes nothing. Order: record the move,
    point champion at the previous version, then drop `previous`; each crash point leaves
    champion on a version that passed the gate, and a retry completes the rest.
    """
    get_registered_model(mlflow_client, name)
    with _locked(mlflow_client, name, "rollback") as lease:
        model = get_registered_model(mlflow_client, name)
        champion, previous = aliases(model).get(CHAMPION), aliases(model).get(PREVIOUS)
        if previous is None:
            done = model.tags.get(ROLLBACK_TAG, "")
            if champion is not None and done.endswith(f"->{champion}"):
                return {"model": name, "champion": champion, "rolled_back_from": done.split("->")[0], "changed": False}
            raise RegistryError(f"model {name!r} has no {PREVIOUS!r} version to roll back to")
        if previous != champion:
            _require_gate_passed(get_version(mlflow_client, ModelRef(name, version=previous)))
            record = f"{champion}->{previous}"
            lease.check()
            mlflow_client.set_registered_model_tag(name, ROLLBACK_TAG, record)
            lease.check()
            mlflow_client.set_registered_model_alias(name, CHAMPION, previous)
        else:  # an earlier rollback stopped after moving champion: only `previous` is left to drop
            record = model.tags.get(ROLLBACK_TAG, f"?->{previous}")
        lease.check()
        mlflow_client.delete_registered_model_alias(name, PREVIOUS)
        _append_history(mlflow_client, name, "rollback", previous, aliases(model), fence=lease.check)
    return {"model": name, "champion": previous, "rolled_back_from": record.split("->")[0], "changed": True}


# --------------------------------------------------------------------------- loading
def adapter_digests(mlflow_client, name: str, versions: list[str]) -> dict[str, str]:
    """version -> its `lineage.adapter_sha256`, for the serving side's last check before loading."""
    digests = {}
    for version in versions:
        mv = get_version(mlflow_client, ModelRef(name, version=str(version)))
        digest = mv.tags.get(DIGEST_TAG, "")
        if not digest:
            raise RegistryError(f"models:/{name}/{version} has no {DIGEST_TAG} tag: it cannot be verified, so it is not loaded")
        digests[str(version)] = digest
    return digests


def adapter_cache_dir() -> Path:
    return Path(os.environ.get("MODELCHAIN_HOME", ".modelchain")).resolve() / "adapters"


def resolve_adapter(
    model_uri: str,
    dest: str | Path | None = None,
    *,
    tracking_uri: Optional[str] = None,
    transfer=None,
) -> Path:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> a local adapter directory, proven.

    The directory is ready for vLLM (`--lora-modules name=DIR`) or peft
    (`PeftModel.from_pretrained(base, DIR)`). `dest` defaults to
    $MODELCHAIN_HOME/adapters/NAME/VERSION. Fresh or cached, the folder is checked before it
    is returned: its manifest's digest must be the version's `lineage.adapter_sha256` and every
    file must match the manifest (artifacts.verify_adapter). A cached copy that fails is
    refused, not fetched again behind the user's back: the error names the file and both
    digests, and removing the folder fetches it anew.
    """
    tracking_uri = tracking_uri or default_tracking_uri()
    mlflow_client = client(tracking_uri)
    mv = get_version(mlflow_client, ModelRef.parse(model_uri))
    label = f"models:/{mv.name}/{mv.version}"
    expected = mv.tags.get(DIGEST_TAG, "")
    if not expected:
        raise RegistryError(f"{label} has no {DIGEST_TAG} tag: it cannot be verified, so it is not loaded")
    dest = Path(dest) if dest else adapter_cache_dir() / mv.name / str(mv.version)
    if dest.exists():
        try:
            artifacts.verify_adapter(dest, expected, origin=f"{label} cached at {dest}")
        except artifacts.ChecksumError as exc:
            raise RegistryError(f"{exc}; remove {dest} to fetch it again") from exc
    else:
        try:
            artifacts.download_folder(mv.source, dest, expected_digest=expected, tracking_uri=tracking_uri,
                                      transfer=transfer)
        except artifacts.ArtifactError as exc:
            raise RegistryError(f"{label}: {exc}") from exc
    if not (dest / "adapter_config.json").is_file():
        raise RegistryError(f"{label} at {mv.source} is not a LoRA adapter (no adapter_config.json)")
    return dest

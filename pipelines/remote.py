"""Submit and schedule compiled pipelines on a remote KFP v2 API server.

Every run and recurring run references an uploaded pipeline version, so what ran
can always be found again in the KFP UI. The KFP v2beta1 API has no call that
updates a recurring run: `schedule` replaces one in place (disable the old one,
create the new one, delete the old one) so a name never exists twice.

kfp is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NoReturn

if TYPE_CHECKING:  # pragma: no cover
    import kfp

TOKEN_ENV = "KFP_TOKEN"
MAX_CONCURRENCY = 10  # the API accepts 1 to 10 concurrent runs per recurring run
PAGE_SIZE = 100

SUCCEEDED = "SUCCEEDED"
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})


class RemoteError(RuntimeError):
    """A call to the KFP API failed."""


class RunFailedError(RuntimeError):
    """A run finished in a state other than SUCCEEDED."""

    def __init__(self, run_id: str, state: str, message: str):
        super().__init__(message)
        self.run_id = run_id
        self.state = state


class ScheduleNotFoundError(LookupError):
    """No recurring run with the given name exists in the experiment."""


# --------------------------------------------------------------------------- connection


def connect(host: str, namespace: str | None = None, token: str | None = None) -> "kfp.Client":
    """Return a kfp.Client for the API server at `host`.

    The bearer token comes from `token`, else from $KFP_TOKEN, else kfp.Client
    finds credentials itself (kubeconfig, in-cluster service account). The token is
    never printed, logged or put into an error message.
    """
    from kfp.client import Client  # not kfp.Client: `compile` may have imported kfp without it

    token = token or os.environ.get(TOKEN_ENV) or None
    with warnings.catch_warnings():
        # kfp.Client always warns that it needs a KFP >= 2.0.0-beta.2 backend.
        warnings.filterwarnings("ignore", message="This client only works", category=FutureWarning)
        try:
            return Client(host=host, namespace=namespace or "kubeflow", existing_token=token)
        except Exception as exc:  # noqa: BLE001 - re-raised with a safe message
            _reraise(exc, f"connecting to the KFP API at {host}", token)


# --------------------------------------------------------------------------- cron


_CRON_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
_CRON_NAMES = {
    "month": {m: i + 1 for i, m in enumerate(
        "jan feb mar apr may jun jul aug sep oct nov dec".split())},
    "day of week": {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())},
}
_CRON_DESCRIPTORS = {
    "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_CRON_EVERY = re.compile(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")


def normalize_cron(expression: str) -> str:
    """Return `expression` as the 6-field cron (seconds first) that KFP expects.

    A standard 5-field expression gets "0 " prefixed; a 6-field one and the
    descriptors ("@daily", "@every 2h", ...) pass unchanged. Anything else raises
    ValueError naming the expression.
    """
    text = " ".join(str(expression).split())
    if text.lower() in _CRON_DESCRIPTORS or _CRON_EVERY.fullmatch(text):
        return text
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ValueError(
            f"invalid cron expression {expression!r}: expected 5 fields (minute hour "
            f"day-of-month month day-of-week) or 6 with seconds first, got {len(fields)}")
    for value, (label, low, high) in zip(fields, _CRON_FIELDS):
        problem = _cron_field_problem(value, label, low, high)
        if problem:
            raise ValueError(f"invalid cron expression {expression!r}: {problem}")
    return " ".join(fields)


def _cron_field_problem(value: str, label: str, low: int, high: int) -> str | None:
    """Say what is wrong with one cron field, or None if it is valid."""
    for item in value.split(","):
        base, slash, step = item.partition("/")
        if slash and not (step.isdigit() and int(step) > 0):
            return f"{label} step {step!r} must be a positive number"
        if base in ("*", "?"):
            if base == "?" and label not in ("day of month", "day of week"):
                return f"'?' is only allowed for day of month or day of week, not {label}"
            continue
        start, dash, end = base.partition("-")
        bounds = []
        for part in (start, end) if dash else (start,):
            number = _cron_value(part, label)
            if number is None or not low <= number <= high:
                return f"{label} value {part!r} is not in {low}-{high}"
            bounds.append(number)
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            return f"{label} range {base!r} runs backwards"
    return None


def _cron_value(text: str, label: str) -> int | None:
    if text.isdigit():
        return int(text)
    return _CRON_NAMES.get(label, {}).get(text.lower())


# --------------------------------------------------------------------------- pipelines


def upload_pipeline_version(client: "kfp.Client", package_path: str, pipeline_name: str) -> dict:
    """Upload the package as pipeline `pipeline_name`, or as a new version of it.

    New versions are named "<pipeline_name>-<UTC timestamp>-<sha256[:8]>". A new
    pipeline's first version is named by the server (after the pipeline).
    Returns pipeline_id, pipeline_version_id, version_name and whether the
    pipeline was created.
    """
    if not pipeline_name or not pipeline_name.strip():
        raise ValueError("pipeline_name must not be empty")
    path = _package(package_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    description = f"package sha256 {digest}"
    namespace = client.get_user_namespace() or None

    pipeline_id = _find_pipeline_id(client, pipeline_name, namespace)
    if pipeline_id is None:
        with _api(client, f"uploading pipeline {pipeline_name!r}"):
            pipeline = client.upload_pipeline(
                str(path), pipeline_name=pipeline_name, description=description,
                namespace=namespace)
            versions = client.list_pipeline_versions(
                pipeline.pipeline_id, page_size=1, sort_by="created_at desc")
        if not versions.pipeline_versions:
            raise RemoteError(f"pipeline {pipeline_name!r} was uploaded but has no version")
        version = versions.pipeline_versions[0]
        created = True
    else:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        with _api(client, f"uploading a new version of pipeline {pipeline_name!r}"):
            version = client.upload_pipeline_version(
                str(path), pipeline_version_name=f"{pipeline_name}-{stamp}-{digest}",
                pipeline_id=pipeline_id, description=description)
        created = False
    return {
        "pipeline_id": version.pipeline_id or pipeline_id,
        "pipeline_version_id": version.pipeline_version_id,
        "version_name": version.display_name or version.name,
        "pipeline_created": created,
    }


def _find_pipeline_id(client: "kfp.Client", name: str, namespace: str | None) -> str | None:
    with _api(client, f"looking up pipeline {name!r}"):
        response = client.list_pipelines(
            page_size=PAGE_SIZE, filter=_name_filter(name), namespace=namespace)
    found = [p for p in response.pipelines or [] if name in (p.display_name, p.name)]
    if len(found) > 1:
        raise RemoteError(f"{len(found)} pipelines are named {name!r}; names must be unique")
    return found[0].pipeline_id if found else None


# --------------------------------------------------------------------------- runs


def submit(
    client: "kfp.Client",
    package_path: str,
    *,
    pipeline_name: str,
    run_name: str,
    experiment: str,
    params: dict,
    wait: bool = False,
    timeout_s: int = 3600,
    poll_s: float = 10.0,
) -> dict:
    """Run a compiled pipeline once in `experiment` (created if missing).

    The package is uploaded as a pipeline version first. Returns run_id, url,
    state and the ids used. With `wait`, blocks until the run ends and raises
    RunFailedError unless it SUCCEEDED (TimeoutError after `timeout_s`).
    """
    _check_params(package_path, params)
    version = upload_pipeline_version(client, package_path, pipeline_name)
    experiment_id = _ensure_experiment(client, experiment)
    with _api(client, f"creating run {run_name!r}"):
        run = client.run_pipeline(
            experiment_id=experiment_id, job_name=run_name, params=dict(params),
            pipeline_id=version["pipeline_id"], version_id=version["pipeline_version_id"])
    result = {
        "run_id": run.run_id,
        "url": _ui_url(client, f"#/runs/details/{run.run_id}"),
        "state": run.state or "PENDING",
        "experiment_id": experiment_id,
        "pipeline_id": version["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    if wait:
        final = _wait_for_run(client, run.run_id, timeout_s, poll_s)
        result["state"] = final.state
        if final.state != SUCCEEDED:
            detail = f": {final.error.message}" if final.error and final.error.message else ""
            raise RunFailedError(
                run.run_id, final.state,
                f"run {run_name!r} ({run.run_id}) finished {final.state}{detail}; "
                f"see {result['url']}")
    return result


def _wait_for_run(client: "kfp.Client", run_id: str, timeout_s: float, poll_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        with _api(client, f"reading run {run_id}"):
            run = client.get_run(run_id)
        state = run.state or "PENDING"
        if state in FINAL_STATES:
            return run
        if time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} is still {state} after {timeout_s} s")
        time.sleep(poll_s)


# --------------------------------------------------------------------------- recurring runs


def schedule(
    client: "kfp.Client",
    package_path: str,
    *,
    name: str,
    cron: str,
    experiment: str,
    params: dict,
    max_concurrency: int = 1,
    no_catchup: bool = True,
    pipeline_name: str,
) -> dict:
    """Create the recurring run `name` in `experiment`, or replace the one there.

    Replacing (the API cannot update a recurring run): upload a new pipeline
    version, disable the old recurring run, create the new one (enabled), delete
    the old one; if creating fails the old one is enabled again. Returns action
    ("created" or "updated"), recurring_run_id, replaced_ids, cron and the ids used.
    """
    cron6 = normalize_cron(cron)
    if not isinstance(max_concurrency, int) or not 1 <= max_concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"max_concurrency must be 1 to {MAX_CONCURRENCY}, got {max_concurrency!r}")
    if not name or not name.strip():
        raise ValueError("the recurring run name must not be empty")
    _check_params(package_path, params)

    experiment_id = _ensure_experiment(client, experiment)
    existing = _find_schedules(client, experiment_id, name)
    version = upload_pipeline_version(client, package_path, pipeline_name)

    disabled = []
    try:
        for old in existing:
            if _is_enabled(old):
                with _api(client, f"disabling recurring run {name!r} ({old.recurring_run_id})"):
                    client.disable_recurring_run(old.recurring_run_id)
                disabled.append(old.recurring_run_id)
        with _api(client, f"creating recurring run {name!r}"):
            new = client.create_recurring_run(
                experiment_id=experiment_id, job_name=name, cron_expression=cron6,
                max_concurrency=max_concurrency, no_catchup=no_catchup, params=dict(params),
                pipeline_id=version["pipeline_id"], version_id=version["pipeline_version_id"],
                enabled=True)
    except Exception as exc:
        _enable_again(client, disabled, exc)
        raise

    replaced = []
    for old in existing:
        with _api(client, f"deleting the replaced recurring run {old.recurring_run_id} "
                          f"(now disabled; {new.recurring_run_id} replaces it)"):
            client.delete_recurring_run(old.recurring_run_id)
        replaced.append(old.recurring_run_id)
    return {
        "action": "updated" if existing else "created",
        "name": name,
        "recurring_run_id": new.recurring_run_id,
        "replaced_ids": replaced,
        "cron": cron6,
        "experiment_id": experiment_id,
        "pipeline_id": version["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }


def _enable_again(client: "kfp.Client", recurring_run_ids: list[str], error: Exception) -> None:
    """Enable recurring runs disabled for a replacement that failed."""
    for recurring_run_id in recurring_run_ids:
        try:
            with _api(client, f"enabling recurring run {recurring_run_id} again"):
                client.enable_recurring_run(recurring_run_id)
        except RemoteError as exc:
            error.add_note(f"{exc}; it stays disabled")


def list_schedules(client: "kfp.Client", experiment: str | None) -> list[dict]:
    """List recurring runs in `experiment` (all visible ones if None)."""
    experiment_id = _find_experiment_id(client, experiment) if experiment else None
    return [_describe(r) for r in _list_recurring_runs(client, experiment_id)]


def delete_schedule(client: "kfp.Client", name: str, experiment: str) -> bool:
    """Delete the recurring run(s) named `name` in `experiment`; True when done.

    Raises ScheduleNotFoundError, naming the recurring runs that do exist, if
    there is none of that name.
    """
    if not experiment:
        raise ValueError(f"deleting recurring run {name!r} needs the experiment it is in")
    experiment_id = _find_experiment_id(client, experiment)
    found = _find_schedules(client, experiment_id, name)
    if not found:
        names = sorted({r.display_name for r in _list_recurring_runs(client, experiment_id)})
        raise ScheduleNotFoundError(
            f"no recurring run named {name!r} in experiment {experiment!r}; "
            f"it has: {', '.join(names) if names else 'none'}")
    for recurring_run in found:
        with _api(client, f"deleting recurring run {name!r} ({recurring_run.recurring_run_id})"):
            client.delete_recurring_run(recurring_run.recurring_run_id)
    return True


def _find_schedules(client: "kfp.Client", experiment_id: str, name: str) -> list:
    runs = _list_recurring_runs(client, experiment_id, _name_filter(name))
    return [r for r in runs if r.display_name == name]


def _list_recurring_runs(client: "kfp.Client", experiment_id: str | None,
                         name_filter: str | None = None) -> list:
    found, page_token = [], ""
    namespace = None if experiment_id else client.get_user_namespace() or None
    while True:
        with _api(client, "listing recurring runs"):
            page = client.list_recurring_runs(
                page_token=page_token, page_size=PAGE_SIZE, experiment_id=experiment_id,
                namespace=namespace, filter=name_filter)
        found.extend(page.recurring_runs or [])
        page_token = page.next_page_token
        if not page_token:
            return found


def _is_enabled(recurring_run) -> bool:
    if recurring_run.status:
        return recurring_run.status == "ENABLED"
    return recurring_run.mode == "ENABLE"


def _describe(recurring_run) -> dict:
    trigger = recurring_run.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else None
    interval = (trigger.periodic_schedule.interval_second
                if trigger and trigger.periodic_schedule else None)
    reference = recurring_run.pipeline_version_reference
    return {
        "name": recurring_run.display_name,
        "id": recurring_run.recurring_run_id,
        "cron": cron,
        "interval_s": int(interval) if interval else None,
        "enabled": _is_enabled(recurring_run),
        "status": recurring_run.status or recurring_run.mode,
        "max_concurrency": int(recurring_run.max_concurrency or 0),
        "no_catchup": bool(recurring_run.no_catchup),
        "experiment_id": recurring_run.experiment_id,
        "pipeline_version_id": reference.pipeline_version_id if reference else None,
    }


# --------------------------------------------------------------------------- experiments


def _ensure_experiment(client: "kfp.Client", name: str) -> str:
    """Return the id of experiment `name`, creating it if missing."""
    with _api(client, f"resolving experiment {name!r}"), _experiment_errors(name):
        experiment = client.create_experiment(
            name=name, namespace=client.get_user_namespace() or None)
    return experiment.experiment_id


def _find_experiment_id(client: "kfp.Client", name: str) -> str:
    """Return the id of experiment `name`; LookupError if there is none."""
    with _api(client, f"looking up experiment {name!r}"), _experiment_errors(name):
        experiment = client.get_experiment(
            experiment_name=name, namespace=client.get_user_namespace() or None)
    return experiment.experiment_id


@contextlib.contextmanager
def _experiment_errors(name: str) -> Iterator[None]:
    """kfp.Client reports a missing or ambiguous experiment name as ValueError."""
    try:
        yield
    except ValueError as exc:
        if str(exc).startswith("No experiment is found"):
            raise LookupError(f"no experiment named {name!r} on the KFP server") from None
        raise RemoteError(f"experiment {name!r}: {exc}") from None


# --------------------------------------------------------------------------- helpers


def _name_filter(name: str) -> str:
    """A v2beta1 Filter selecting resources whose display_name equals `name`."""
    return json.dumps({"predicates": [
        {"operation": "EQUALS", "key": "display_name", "string_value": name}]})


def _package(package_path: str) -> Path:
    path = Path(package_path)
    if not path.is_file():
        raise FileNotFoundError(f"compiled pipeline package not found: {package_path}")
    return path


def _check_params(package_path: str, params: dict) -> None:
    """Raise ValueError for parameters the compiled pipeline does not declare."""
    path = _package(package_path)
    if path.suffix not in (".yaml", ".yml"):
        return  # archives: the server checks them
    import yaml

    with path.open() as f:
        spec = next(yaml.safe_load_all(f), None) or {}
    declared = (spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(
            f"{package_path}: unknown pipeline parameter(s) {', '.join(unknown)}; "
            f"the pipeline takes: {', '.join(sorted(declared)) or 'none'}")


def _ui_url(client: "kfp.Client", fragment: str) -> str:
    prefix = client._get_url_prefix() if hasattr(client, "_get_url_prefix") else ""
    return f"{prefix.rstrip('/')}/{fragment}"


def _client_token(client: "kfp.Client") -> str | None:
    config = getattr(client, "_existing_config", None)
    api_key = getattr(config, "api_key", None) or {}
    return api_key.get("authorization")


@contextlib.contextmanager
def _api(client: "kfp.Client", what: str) -> Iterator[None]:
    """Turn API and network errors into a RemoteError saying what failed."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        _reraise(exc, what, _client_token(client))


def _reraise(exc: Exception, what: str, token: str | None) -> NoReturn:
    """Raise RemoteError for `exc`, with the token (if any) kept out of it."""
    import kfp_server_api

    if isinstance(exc, kfp_server_api.ApiException):
        message = f"{what} failed: HTTP {exc.status} {exc.reason}{_server_message(exc.body)}"
    else:
        message = f"{what} failed: {type(exc).__name__}: {exc}"
    if token and token in message:
        message = message.replace(token, "***")
    leaks = token and (token in str(exc) or token in repr(exc.args))
    raise RemoteError(message) from (None if leaks else exc)


def _server_message(body: Any) -> str:
    """The error message of a v2beta1 error body, if there is one."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return ""
    if not isinstance(data, dict):
        return ""
    message = data.get("message") or data.get("error")
    return f": {message}" if message else ""

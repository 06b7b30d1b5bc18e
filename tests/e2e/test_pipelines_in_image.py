"""Both pipelines run inside the components image that `make image` built, with kfp.local's
DockerRunner talking to podman's Docker API (a `podman system service` this test starts on a
socket in a temporary folder, and stops by its pid).

They check the same outputs as the subprocess runs: the Milvus row count of rag_ingest
against the same corpus ingested in this environment, and the registered version and alias
of finetune. Skipped, with the reason, where podman or the image is missing (`make image`).
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from modelchain.core import registry
from modelchain.core.vectorstore import MilvusLiteStore

from .conftest import run_cli
from .test_rag_ingest_local import DOCS, QUESTIONS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
IMAGE_RECORD = REPO / "build" / "image.json"


@pytest.fixture(scope="module")
def image() -> str:
    if not shutil.which("podman"):
        pytest.skip("podman is not installed (make image installs it from Debian)")
    if not IMAGE_RECORD.exists():
        pytest.skip(f"{IMAGE_RECORD} is missing: build the components image with `make image`")
    reference = json.loads(IMAGE_RECORD.read_text())["reference"]
    if subprocess.run(["podman", "image", "exists", reference]).returncode != 0:
        pytest.skip(f"{reference} (from {IMAGE_RECORD}) is not in podman's store: run `make image`")
    return reference


@pytest.fixture(scope="module")
def docker_api(tmp_path_factory):
    """podman's Docker API on a socket of our own; DOCKER_HOST points there for the runs."""
    folder = tmp_path_factory.mktemp("podman")
    socket = folder / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL, stderr=open(folder / "service.log", "w"),
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if service.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"podman system service did not start: {(folder / 'service.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield {"DOCKER_HOST": f"unix://{socket}"}
    finally:
        os.kill(service.pid, signal.SIGTERM)
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(service.pid, signal.SIGKILL)
            service.wait()


def _in_image(image: str) -> list[str]:
    return ["cluster.local_runner=docker", f"cluster.image={image}"]


def _rows(home: Path) -> tuple[int, dict]:
    with MilvusLiteStore(str(home / "milvus.db"), "house", 384) as store:
        return store.count(), store.doc_hashes()


def test_rag_ingest_in_the_image_writes_what_the_subprocess_run_writes(tmp_path, image, docker_api, monkeypatch):
    corpus = tmp_path / "corpus"
    for name, text in DOCS.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text)
    args = ["run", "rag_ingest", f"rag.source.uri={corpus}", "rag.source.include=['**/*.md','**/*.txt']",
            "rag.milvus.collection=house", QUESTIONS]

    here = run_cli(*args, home=tmp_path / "here")
    assert here.returncode == 0, here.stdout[-3000:] + here.stderr[-3000:]
    for key, value in docker_api.items():
        monkeypatch.setenv(key, value)
    inside = run_cli(*args, *_in_image(image), home=tmp_path / "inside")
    assert inside.returncode == 0, inside.stdout[-3000:] + inside.stderr[-3000:]
    logs = "".join(log.read_text() for log in (tmp_path / "inside" / "logs").glob("*.log"))
    assert f"Found image '{image}'" in logs  # kfp.local's DockerRunner ran the steps in it
    assert _rows(tmp_path / "inside") == _rows(tmp_path / "here")
    # The verify report as an artifact: kfp.local may miss the last lines of a container's log.
    report = next((tmp_path / "inside").glob("kfp-outputs/*/verify/report")).read_text()
    assert "questions) | 1.000 |" in report


def test_finetune_in_the_image_registers_a_challenger(tmp_path, image, docker_api, monkeypatch, tiny_model, routing_dataset):
    for key, value in docker_api.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "home"
    out = run_cli(
        "run", "finetune", "model=local_dir", f"model.path={tiny_model}", f"data.source.uri={routing_dataset}",
        "train=quick", "eval=smoke", "serve.canary.enabled=false", *_in_image(image), home=home,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    name = "local-model-ticket-routing"
    assert f"registered: models:/{name}@challenger = version 1" in out.stdout
    version = registry.client(f"sqlite:///{home}/mlflow.db").get_model_version_by_alias(name, "challenger")
    assert str(version.version) == "1"

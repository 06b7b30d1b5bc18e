"""The local stack of an adapter-level canary: one vLLM CPU server holding every adapter version.

Parts, all on 127.0.0.1 free ports under one work folder:
- vLLM's OpenAI server with run-time LoRA loading (the base model once, as `<public>-base`);
- nginx with njs (adapter_router.py) splitting the public name between two versioned names;
- mtail turning the router's access log into per-version Prometheus series;
- Prometheus scraping mtail (job "router") and vLLM (job "vllm", `slot="pool"`).

A new version is loaded with `/v1/load_lora_adapter` under its immutable versioned name; it
takes traffic only once the server lists it and it answers (`load`). Unloading is by name.
The started processes are recorded outside the work folder (local_stack.ProcessRecord), so a
later run stops what a crashed one left.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from modelchain.core.io import atomic_write_text
from modelchain.serving.adapter_router import NJS_MODULE, ROUTER_MTAIL, AdapterRouter
from modelchain.serving.local_stack import (
    ProcessRecord, StackError, StackSpec, VllmSlot, _http, _tail, _terminate, free_port, start_prometheus,
    start_vllm, wait_healthy, warm_up,
)


def missing_adapter_tools(vllm_python: str) -> list[str]:
    """What the adapter stack needs beyond the pool stack's tools (empty: it can run)."""
    from modelchain.serving.local_stack import missing_tools

    missing = missing_tools(vllm_python)
    if shutil.which("mtail") is None:
        missing.append("mtail")
    if not Path(NJS_MODULE).exists():
        missing.append(f"nginx's njs module {NJS_MODULE} (libnginx-mod-http-js)")
    return missing


@dataclass
class AdapterStack:
    spec: StackSpec
    record: Optional[ProcessRecord] = None
    server: Optional[VllmSlot] = None
    router: Optional[AdapterRouter] = None
    mtail: Optional[subprocess.Popen] = None
    mtail_port: int = 0
    prometheus: Optional[subprocess.Popen] = None
    prometheus_port: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> "AdapterStack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lifecycle
    def start(self) -> None:
        missing = missing_adapter_tools(self.spec.vllm_python)
        if missing:
            raise StackError(f"the local adapter stack needs {', '.join(missing)}")
        work = self.spec.workdir
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o755)  # nginx workers run as an unprivileged user when started as root
        t0 = time.monotonic()
        self.server = VllmSlot("pool", free_port(), work / "vllm.log")
        start_vllm(self.spec, self.server)
        self._record("vllm", self.server.process.pid, self.server.process.args)
        base = f"{self.spec.public_name}-base"
        self.router = AdapterRouter(work / "nginx", self.server.address, self.spec.public_name, free_port(),
                                    {"stable": base, "canary": base})
        self.router.write_config(100, 0)
        self.router.start()
        self._record("nginx", self.router.pid())
        self._start_mtail()
        self.prometheus, self.prometheus_port = start_prometheus(
            work / "prometheus", {"pool": self.server.address}, self.spec.scrape_interval_s,
            extra_jobs={"router": f"127.0.0.1:{self.mtail_port}"},
        )
        self._record("prometheus", self.prometheus.pid, self.prometheus.args)
        self.timings["vllm_ready_s"] = wait_healthy(self.server, self.spec.start_timeout_s)
        warm_up(self.server, base)
        self.timings["start_s"] = round(time.monotonic() - t0, 1)

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        if self.server is not None:
            _terminate(self.server.process)
            self.server.process = None
        _terminate(self.mtail)
        _terminate(self.prometheus)
        self.mtail = self.prometheus = None
        if self.record is not None:
            self.record.clear()

    def _record(self, name: str, pid: Optional[int], argv: Optional[list] = None) -> None:
        if self.record is not None and pid is not None:
            self.record.add(name, pid, argv)

    def _start_mtail(self) -> None:
        self.mtail, self.mtail_port = start_mtail(self.spec.workdir / "mtail", self.router.access_log)
        self._record("mtail", self.mtail.pid, self.mtail.args)

    # -- adapters on the running server
    @property
    def url(self) -> str:
        assert self.router is not None
        return self.router.url

    @property
    def server_url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def listed(self) -> dict[str, Optional[str]]:
        """What the server serves: model name -> the adapter folder (None: the base model)."""
        status, body = _http(f"{self.server_url}/v1/models", timeout=10)
        if status != 200:
            raise StackError(f"vLLM {self.server_url}/v1/models answered {status}: {body[:200]}")
        return {m["id"]: (m.get("root") if m.get("parent") else None) for m in json.loads(body)["data"]}

    def load(self, name: str, adapter_dir: str | Path) -> float:
        """Load `adapter_dir` as `name` unless the server lists it already; returns the seconds it took.

        Versioned names are immutable: a name that is listed serves the same version, so it is
        never reloaded in place (vLLM has kept stale prefix caches across such reloads).
        """
        t0 = time.monotonic()
        if name not in self.listed():
            status, body = _http(f"{self.server_url}/v1/load_lora_adapter",
                                 {"lora_name": name, "lora_path": str(adapter_dir)}, timeout=120)
            if status != 200 and name not in self.listed():
                raise StackError(f"vLLM could not load {adapter_dir} as {name!r}: {status} {body.strip()[:300]}")
        return round(time.monotonic() - t0, 3)

    def unload(self, name: str) -> None:
        status, body = _http(f"{self.server_url}/v1/unload_lora_adapter", {"lora_name": name}, timeout=60)
        if status not in (200, 404) and name in self.listed():
            raise StackError(f"vLLM could not unload {name!r}: {status} {body.strip()[:300]}")

    def answers(self, name: str) -> bool:
        """Whether `name` answers one short chat completion, asked through the router by its
        versioned name (which the router passes through). That first request also starts the
        version's request and error series, so the analysis sees all of its traffic."""
        status, _ = _http(f"{self.url}/v1/chat/completions",
                          {"model": name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 2}, timeout=120)
        return status == 200


def start_mtail(workdir: Path, access_log: Path, timeout_s: float = 30.0) -> tuple[subprocess.Popen, int]:
    """mtail on a free 127.0.0.1 port, turning the router's access log into per-version series."""
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(workdir / "router.mtail", ROUTER_MTAIL)
    port = free_port()
    log = workdir / "mtail.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            ["mtail", "--progs", str(workdir), "--logs", str(access_log), "--address", "127.0.0.1",
             "--port", str(port), "--logtostderr", "--emit_prog_label=false"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"mtail exited with {process.returncode}: {_tail(log)}")
        try:
            if _http(f"http://127.0.0.1:{port}/metrics", timeout=2)[0] == 200:
                return process, port
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    _terminate(process)
    raise StackError(f"mtail not answering after {timeout_s:.0f} s ({log})")

"""The local serving stack of a canary: two vLLM CPU servers, nginx in front, Prometheus.

Everything binds 127.0.0.1 on free ports and lives under one work folder (its own nginx
prefix and config, Prometheus data, logs); no system configuration is touched, and leaving
the context manager stops every process it started.

The two vLLM servers are slots `a` and `b` that load the base model once each (served as
`<public>-base`) and LoRA adapters at run time under the public name. Roles move between
them: `stable` and `canary` are whichever slot nginx lists as such. Deploying the canary
loads its adapter into the canary slot; scaling it down unloads it; promoting makes the
canary slot the stable one (nginx entry swapped, weights 100/0), so no server restarts.
Prometheus labels each slot's metrics `slot="a"|"b"`; `selectors()` maps roles to them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from modelchain.serving.router import NginxRouter
from modelchain.core.io import atomic_write_text

# Drills injected into the candidate (serve.canary.fault): "" none; unknown_model: the candidate
# stops answering its name after it was checked (404: an adapter evicted or misnamed);
# wrong_answers: the candidate answers fast and wrong (its LoRA weights scrambled).
FAULTS = ("", "unknown_model", "wrong_answers")


class StackError(RuntimeError):
    """A part of the local stack did not start or answer; the message is one line."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_tools(vllm_python: str) -> list[str]:
    """What the local stack needs and this machine lacks (empty: it can run)."""
    missing = [tool for tool in ("nginx", "prometheus") if shutil.which(tool) is None]
    if not os.access(vllm_python, os.X_OK):
        missing.append(f"{vllm_python} (make setup-serve)")
    return missing


def _http(url: str, payload: Optional[dict] = None, timeout: float = 10.0) -> tuple[int, str]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@dataclass
class StackSpec:
    """What the stack runs; built from the typed serve group (`from_serve`)."""

    base_model: Path
    public_name: str
    workdir: Path
    vllm_python: str
    max_loras: int
    max_lora_rank: int
    max_model_len: int
    max_num_seqs: int
    dtype: str
    start_timeout_s: float
    scrape_interval_s: int

    @classmethod
    def from_serve(cls, serve, base_model: Path, workdir: Path) -> "StackSpec":
        canary = serve.canary
        return cls(
            base_model=Path(base_model),
            public_name=serve.served_model_name,
            workdir=Path(workdir),
            vllm_python=canary.vllm_python,
            max_loras=serve.max_loras,
            max_lora_rank=serve.max_lora_rank,
            max_model_len=canary.max_model_len,
            max_num_seqs=canary.max_num_seqs,
            dtype=canary.dtype,
            start_timeout_s=float(canary.start_timeout_s),
            scrape_interval_s=canary.scrape_interval_s,
        )


@dataclass
class VllmSlot:
    name: str
    port: int
    log: Path
    process: Optional[subprocess.Popen] = None
    adapter: Optional[str] = None  # the adapter folder served under the public name
    lora_name: Optional[str] = None  # the name it is loaded under (the public one unless a fault)
    started_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class LocalStack:
    spec: StackSpec
    slots: dict[str, VllmSlot] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=lambda: {"stable": "a", "canary": "b"})
    router: Optional[NginxRouter] = None
    prometheus: Optional[subprocess.Popen] = None
    prometheus_port: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    record: Optional["ProcessRecord"] = None  # where the started processes are recorded for a later run

    # -- lifecycle
    def __enter__(self) -> "LocalStack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        missing = missing_tools(self.spec.vllm_python)
        if missing:
            raise StackError(f"the local serving stack needs {', '.join(missing)}")
        work = self.spec.workdir
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o755)  # nginx workers run as an unprivileged user when started as root
        t0 = time.monotonic()
        for name in ("a", "b"):
            self.slots[name] = VllmSlot(name, free_port(), work / f"vllm-{name}.log")
            self._start_vllm(self.slots[name])
        self._start_prometheus()
        stable, canary = self.slot("stable"), self.slot("canary")
        self.router = NginxRouter(
            work / "nginx" / "nginx.conf",
            work / "nginx" / "upstream.conf",
            {"stable": stable.address, "canary": canary.address},
            listen_port=free_port(),
            prefix=work / "nginx",
        )
        self.router.write_config(100, 0)
        self.router.start()
        if self.record is not None:
            self.record.add("nginx", self.router.pid())
        for slot in self.slots.values():
            self._wait_healthy(slot)
            self._warm_up(slot)
        self.timings["start_s"] = round(time.monotonic() - t0, 1)

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        for slot in self.slots.values():
            _terminate(slot.process)
            slot.process = None
        _terminate(self.prometheus)
        self.prometheus = None
        if self.record is not None:
            self.record.clear()

    # -- roles and adapters
    def slot(self, role: str) -> VllmSlot:
        return self.slots[self.roles[role]]

    def selectors(self) -> dict[str, str]:
        return {role: f'slot="{name}"' for role, name in self.roles.items()}

    @property
    def url(self) -> str:
        assert self.router is not None
        return self.router.url

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def deploy(self, role: str, adapter_dir: str | Path, fault: str = "") -> None:
        """Serve `adapter_dir` on the `role` slot under the public name (or a wrong one: fault)."""
        if fault not in FAULTS:
            raise StackError(f"serve.canary.fault: unknown fault {fault!r} (choose from {', '.join(map(repr, FAULTS))})")
        slot = self.slot(role)
        name = self.spec.public_name if fault != "unknown_model" else f"{self.spec.public_name}-misnamed"
        if fault == "wrong_answers":
            adapter_dir = scrambled_adapter(adapter_dir, self.spec.workdir / f"scrambled-{role}")
        if slot.adapter == str(adapter_dir) and slot.lora_name == name:
            return
        self._unload(slot)
        status, body = _http(f"{slot.url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(adapter_dir)}, timeout=120)
        if status != 200:
            raise StackError(f"vLLM slot {slot.name} could not load {adapter_dir}: {status} {body.strip()[:300]}")
        slot.adapter, slot.lora_name = str(adapter_dir), name

    def scale_down_canary(self) -> None:
        """The canary side stops serving its adapter (the process stays for the next rollout)."""
        self._unload(self.slot("canary"))

    def promote_serving(self) -> None:
        """The canary slot becomes the stable one: nginx lists it as stable with all traffic."""
        assert self.router is not None
        self.roles = {"stable": self.roles["canary"], "canary": self.roles["stable"]}
        self.router.backends = {"stable": self.slot("stable").address, "canary": self.slot("canary").address}
        self.router.set_weights(100, 0)

    def served_adapters(self) -> dict[str, Optional[str]]:
        return {role: self.slot(role).adapter for role in self.roles}

    # -- internals
    def _start_vllm(self, slot: VllmSlot) -> None:
        start_vllm(self.spec, slot)
        if self.record is not None:
            self.record.add(f"vllm-{slot.name}", slot.process.pid, slot.process.args)

    def _wait_healthy(self, slot: VllmSlot) -> None:
        self.timings[f"vllm_{slot.name}_ready_s"] = wait_healthy(slot, self.spec.start_timeout_s)

    def _warm_up(self, slot: VllmSlot) -> None:
        warm_up(slot, f"{self.spec.public_name}-base")

    def _unload(self, slot: VllmSlot) -> None:
        if slot.lora_name is None:
            return
        status, body = _http(f"{slot.url}/v1/unload_lora_adapter", {"lora_name": slot.lora_name}, timeout=60)
        if status not in (200, 404):
            raise StackError(f"vLLM slot {slot.name} could not unload {slot.lora_name}: {status} {body.strip()[:300]}")
        slot.adapter, slot.lora_name = None, None

    def _start_prometheus(self) -> None:
        targets = {slot.name: slot.address for slot in self.slots.values()}
        self.prometheus, self.prometheus_port = start_prometheus(
            self.spec.workdir / "prometheus", targets, self.spec.scrape_interval_s
        )
        if self.record is not None:
            self.record.add("prometheus", self.prometheus.pid, self.prometheus.args)


def vllm_env() -> dict[str, str]:
    return {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: plenty for a few short sequences
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
        # Servers share few cores with other work: spinning OpenMP threads bound to every
        # core slow each other down by an order of magnitude, one thread does not.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def start_vllm(spec: StackSpec, slot: VllmSlot) -> None:
    """Start vLLM's OpenAI server for `slot`: the base model as `<public>-base`, LoRA adapters loadable at run time."""
    cmd = [
        spec.vllm_python, "-m", "vllm.entrypoints.openai.api_server",
        "--host", "127.0.0.1", "--port", str(slot.port),
        "--model", str(spec.base_model),
        "--served-model-name", f"{spec.public_name}-base",
        "--enable-lora", "--max-loras", str(spec.max_loras), "--max-lora-rank", str(spec.max_lora_rank),
        "--max-model-len", str(spec.max_model_len), "--max-num-seqs", str(spec.max_num_seqs),
        "--dtype", spec.dtype,
    ]
    with open(slot.log, "ab") as log:
        slot.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(), start_new_session=True)
    slot.started_s = time.monotonic()


def wait_healthy(slot: VllmSlot, timeout_s: float) -> float:
    """Until the slot's server answers /health; returns the seconds since it was started."""
    deadline = slot.started_s + timeout_s
    while time.monotonic() < deadline:
        if slot.process is not None and slot.process.poll() is not None:
            raise StackError(f"vLLM slot {slot.name} exited with {slot.process.returncode}: {_tail(slot.log)}")
        try:
            status, _ = _http(f"{slot.url}/health", timeout=2)
            if status == 200:
                return round(time.monotonic() - slot.started_s, 1)
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise StackError(f"vLLM slot {slot.name} not healthy after {timeout_s:.0f} s (log {slot.log})")


def warm_up(slot: VllmSlot, model: str) -> None:
    """One request on the base model: the first one is slow, and it creates the 2xx series."""
    status, body = _http(
        f"{slot.url}/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 2},
        timeout=300,
    )
    if status != 200:
        raise StackError(f"vLLM slot {slot.name} warm-up failed: {status} {body[:300]}")


class ProcessRecord:
    """The processes a local stack started, in a JSON file outside its work folder.

    The servers run in sessions of their own, so a crashed run leaves them behind; the next
    run reads the record and stops each one that still runs the same command line (a pid
    reused by another program is left alone).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _read(self) -> dict[str, dict]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def add(self, name: str, pid: int, argv: Optional[list] = None) -> None:
        """Record `pid` with the command line it runs: `argv` for a child just started (its
        /proc entry may still show the parent's until it has exec'd), else what /proc shows."""
        entries = self._read()
        entries[name] = {"pid": pid, "cmdline": " ".join(map(str, argv)) if argv else _cmdline(pid)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(entries, indent=2))

    def stop_leftovers(self) -> list[str]:
        """Stop the recorded processes that still run; returns what was stopped ("name pid")."""
        stopped = []
        for name, entry in self._read().items():
            pid = int(entry["pid"])
            if entry.get("cmdline") and _cmdline(pid) == entry["cmdline"]:
                _kill_group(pid)
                stopped.append(f"{name} {pid}")
        self.clear()
        return stopped

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _kill_group(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM to the process group led by `pid` (not a child of this process), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid):
                return
            time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return {"Z": "zombie"}.get(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0], "running")
    except (OSError, IndexError):
        return "gone"


def start_prometheus(workdir: Path, targets: dict[str, str], scrape_interval_s: int = 1,
                     extra_jobs: Optional[dict[str, str]] = None) -> tuple[subprocess.Popen, int]:
    """A Prometheus on a free 127.0.0.1 port scraping each `slot -> address` target's /metrics
    (job "vllm", labelled `slot`), and each `job -> address` of `extra_jobs`."""
    workdir.mkdir(parents=True, exist_ok=True)
    interval = f"{scrape_interval_s}s"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "vllm",
                "static_configs": [{"targets": [address], "labels": {"slot": slot}} for slot, address in targets.items()],
            },
            *({"job_name": job, "static_configs": [{"targets": [address]}]} for job, address in (extra_jobs or {}).items()),
        ],
    }
    config_path = workdir / "prometheus.yml"
    atomic_write_text(config_path, json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    log_path = workdir / "prometheus.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"prometheus exited with {process.returncode}: {_tail(log_path)}")
        try:
            if _http(f"http://127.0.0.1:{port}/-/ready", timeout=2)[0] == 200:
                return process, port
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    _terminate(process)
    raise StackError(f"prometheus not ready after 60 s ({log_path})")


def _terminate(process: Optional[subprocess.Popen], timeout_s: float = 20.0) -> None:
    """SIGTERM to the process group this stack started (vLLM forks its engine), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def zero_adapter(candidate_dir: str | Path, out_dir: str | Path) -> Path:
    """An adapter of the candidate's shape with all-zero weights: the base model's outputs.

    With no champion yet the stable side serves the base model through it, so both sides
    pay the same LoRA cost and their latencies compare like for like.
    """
    import torch
    from safetensors.torch import load_file, save_file

    candidate_dir, out_dir = Path(candidate_dir), Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(candidate_dir / "adapter_config.json", tmp / "adapter_config.json")
    weights = load_file(str(candidate_dir / "adapter_model.safetensors"))
    save_file({k: torch.zeros_like(v) for k, v in weights.items()}, str(tmp / "adapter_model.safetensors"))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def scrambled_adapter(candidate_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """The wrong_answers drill: an adapter of the candidate's shape whose B matrices are large
    random noise. It loads and answers as fast as the candidate, and what it says is garbage."""
    import torch
    from safetensors.torch import load_file, save_file

    candidate_dir, out_dir = Path(candidate_dir), Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(candidate_dir / "adapter_config.json", tmp / "adapter_config.json")
    weights = load_file(str(candidate_dir / "adapter_model.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    noisy = {}
    for key, tensor in weights.items():
        if "lora_B" in key:
            tensor = torch.randn(tensor.shape, generator=generator, dtype=torch.float32).to(tensor.dtype) * 2.0
        noisy[key] = tensor.contiguous()
    save_file(noisy, str(tmp / "adapter_model.safetensors"))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir

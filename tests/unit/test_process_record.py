"""A later run stops what a crashed run of the local stack left running, and nothing else."""

import subprocess
import sys
import time
from pathlib import Path

from modelchain.serving.local_stack import ProcessRecord


def leftover(seconds: int = 300) -> subprocess.Popen:
    """A process in a session of its own, as the stack starts vLLM, nginx and Prometheus
    (returned once it runs its own program, as a crashed run's servers long have)."""
    process = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"], start_new_session=True)
    deadline = time.monotonic() + 10
    while b"time.sleep" not in Path(f"/proc/{process.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    return process


def gone(process: subprocess.Popen, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return True
        time.sleep(0.05)
    return False


def test_a_recorded_process_that_still_runs_is_stopped_by_the_next_run(tmp_path):
    crashed_run = ProcessRecord(tmp_path / "m.processes.json")
    server = leftover()
    try:
        crashed_run.add("vllm", server.pid, server.args)  # ... and then the run died without stopping it
        next_run = ProcessRecord(tmp_path / "m.processes.json")
        assert next_run.stop_leftovers() == [f"vllm {server.pid}"]
        assert gone(server)
        assert not Path(tmp_path / "m.processes.json").exists()
    finally:
        server.kill()
        server.wait()


def test_a_pid_now_used_by_another_program_is_left_alone(tmp_path):
    record = ProcessRecord(tmp_path / "m.processes.json")
    other = leftover()
    try:
        record.add("vllm", other.pid, other.args)
        # the recorded command line no longer matches: the pid was reused by something else
        entries = __import__("json").loads(record.path.read_text())
        entries["vllm"]["cmdline"] = "python -m vllm.entrypoints.openai.api_server --port 1"
        record.path.write_text(__import__("json").dumps(entries))
        assert record.stop_leftovers() == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()

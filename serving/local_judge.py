"""A local LLM judge: an instruct model on vLLM's CPU build as an OpenAI-compatible endpoint.

For the tests, the judge benchmark and a laptop: `eval.judge.base_url` points at it the way
it would point at a production endpoint. vLLM's structured outputs constrain its answers to
the schema the request carries (`eval.judge.output=json_schema`).

    with LocalJudge(model_dir, vllm_python=".venv-vllm/bin/python") as judge:
        judge.base_url, judge.model  # http://127.0.0.1:PORT/v1, "judge"
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Optional

from modelchain.serving.local_stack import StackError, VllmSlot, _terminate, free_port, vllm_env, wait_healthy


class LocalJudge:
    """vLLM serving ``model_dir`` as ``model`` on 127.0.0.1; stopped (its process group, by pid) on exit."""

    def __init__(
        self,
        model_dir: str | Path,
        vllm_python: str,
        model: str = "judge",
        max_model_len: int = 4096,
        max_num_seqs: int = 8,
        log: Optional[str | Path] = None,
        start_timeout_s: float = 600.0,
    ):
        self.model_dir, self.vllm_python, self.model = Path(model_dir), vllm_python, model
        self.max_model_len, self.max_num_seqs = max_model_len, max_num_seqs
        self.log = Path(log) if log else Path(os.environ.get("TMPDIR", "/tmp")) / f"modelchain-judge-{os.getpid()}.log"
        self.start_timeout_s = start_timeout_s
        self.slot = VllmSlot(name="judge", port=0, log=self.log)
        self.started_in_s = 0.0

    @property
    def base_url(self) -> str:
        return f"{self.slot.url}/v1"

    def start(self) -> "LocalJudge":
        if not os.access(self.vllm_python, os.X_OK):
            raise StackError(f"no vLLM to serve the judge: {self.vllm_python} (make setup-serve)")
        if not (self.model_dir / "config.json").is_file():
            raise StackError(f"judge model {self.model_dir} is not a Hugging Face model folder (no config.json)")
        self.slot.port = free_port()
        cmd = [
            self.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
            "--port", str(self.slot.port), "--model", str(self.model_dir), "--served-model-name", self.model,
            "--max-model-len", str(self.max_model_len), "--max-num-seqs", str(self.max_num_seqs),
            "--dtype", "bfloat16", "--seed", "0",
        ]
        self.slot.started_s = time.monotonic()
        with open(self.log, "ab") as log:
            self.slot.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(),
                                                 start_new_session=True)
        try:
            self.started_in_s = wait_healthy(self.slot, self.start_timeout_s)  # the stacks' own health wait
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _terminate(self.slot.process)
        self.slot.process = None

    def __enter__(self) -> "LocalJudge":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

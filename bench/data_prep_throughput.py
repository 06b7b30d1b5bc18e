"""Data prep throughput and memory on a large JSONL file, against pandas read-filter-write.

    python -m modelchain.bench.data_prep_throughput [--size-mb 2048] [--keep] [--workdir DIR]

Generates a support-chat JSONL file of the given size (prompts and answers of a few hundred
words, some exact and near duplicates, some PII, some rows missing a field), then runs two sides
on it, each in its own subprocess so its peak RSS is its own:

- modelchain: `prepare()` with the default cleaning (normalisation, PII scrubbing, exact and
  MinHash dedup, length filters, token budget with the SmolLM2 tokenizer, hash splits) and
  all outputs (chat splits, quarantine, data card);
- pandas: the whole file into one DataFrame (`read_json(lines=True)` in chunks of 200,000
  lines, concatenated: read in one go its parser needs about ten times the file size), drop
  rows with a missing or empty prompt/response, drop exact duplicates, `to_json(lines=True)`.
  A watchdog stops a side when the machine's available memory falls under 1.5 GB, so on a
  small machine pandas fails here rather than the kernel's OOM killer picking a victim.

Prints rows/s of both sides, the ratio (target >= 1.0) and each side's peak RSS (target for
modelchain: under 1 GB on the 2 GB file), and for modelchain the CPU seconds of its main
process and of its workers. With `--repeats N` the sides alternate N times and the medians
are reported: the ratio is the median of the N side-by-side ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MB = 1 << 20
WORDS = (
    "order delivery refund invoice account password login shipping tracking parcel courier payment card charge "
    "subscription plan upgrade downgrade cancel return exchange warranty repair device app update version error "
    "screen battery network wifi bluetooth settings profile email address phone number support ticket agent "
    "customer manager week month today yesterday tomorrow morning evening quickly slowly please thanks help "
    "issue problem question answer reply message chat call store online website page button link form field "
    "the a an and or but if then when while because so to of in on at by for with from about into over after "
    "before under again further once here there why how all any both each few more most other some such only "
    "own same than too very can will just should now is are was were be been being have has had do does did"
).split()


def _sentences(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        out.append(" ".join(rng.choices(WORDS, k=rng.randint(8, 20))).capitalize() + ".")
    return out


def _pii(rng: random.Random) -> str:
    return rng.choice([
        f" You can reach me at user{rng.randint(1, 99999)}@example.com.",
        f" My number is +1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}.",
        " The card on file is 4111 1111 1111 1111.",
        f" The server at 10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)} is down.",
        " Our key is sk-proj-" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=32)) + ".",
    ])


def generate(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Write about `size_bytes` of JSONL; returns the number of lines.

    Texts are drawn from a pool of random sentences (fast to make, rarely shared by two
    rows). About 3% of rows repeat a recent row exactly, 1% repeat one with a word changed,
    5% of prompts carry PII, 0.5% lack a response or have an empty prompt. Every line is
    valid JSON, so pandas can read the file directly.
    """
    rng = random.Random(seed)
    pool = _sentences(rng, 200_000)
    categories = ["billing", "shipping", "technical", "account", "returns"]
    lines = written = 0
    recent: list[dict] = []
    with open(path, "w", encoding="utf-8") as out:
        while written < size_bytes:
            roll = rng.random()
            if roll < 0.03 and recent:
                row = rng.choice(recent)
            elif roll < 0.035:
                row = {"prompt": rng.choice(["", " "]), "response": " ".join(rng.choices(pool, k=3))}
            elif roll < 0.04:
                row = {"prompt": " ".join(rng.choices(pool, k=6)), "category": rng.choice(categories)}
            elif roll < 0.05 and recent:
                base = rng.choice(recent)
                words = base["prompt"].split()
                words[rng.randrange(len(words))] = rng.choice(WORDS)
                row = {**base, "prompt": " ".join(words)}
            else:
                prompt = " ".join(rng.choices(pool, k=rng.randint(4, 12)))
                if rng.random() < 0.05:
                    prompt += _pii(rng)
                row = {"prompt": prompt, "response": " ".join(rng.choices(pool, k=rng.randint(2, 8))),
                       "category": rng.choice(categories)}
                recent.append(row)
                if len(recent) > 1000:
                    recent.pop(0)
            line = json.dumps(row) + "\n"
            out.write(line)
            written += len(line)
            lines += 1
    return lines


MODELCHAIN_SIDE = """
import json, os, resource, sys, time
from modelchain.components.data_prep.logic import options_from_config
from modelchain.core.config import compose
from modelchain.data.prepare import prepare
cfg = compose("finetune", ["data=chat_jsonl", "data.fields.messages=null",
                           "data.fields.prompt=prompt", "data.fields.response=response"])
start, cpu = time.perf_counter(), os.times()
result = prepare(sys.argv[1], sys.argv[2], **options_from_config(cfg.data, cfg.model))
elapsed, cpu_end = time.perf_counter() - start, os.times()
main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
workers = result.stats["worker_peak_pss_mb"]
# The workers are forked: their RSS counts pages they share with the main process. Each
# process's peak PSS (shared pages split between their users), added up, counts every page
# once, and is more than was ever resident at one moment, never less. The main process is
# counted by its peak RSS, which includes its share of everything.
print(json.dumps({"seconds": elapsed, "rows_in": result.card["rows_in"], "rows_out": result.card["rows_out"],
                  "peak_rss_mb": main_rss + sum(workers.values()), "main_rss_mb": main_rss,
                  "worker_rss_mb": sorted(workers.values()),
                  "main_cpu_s": cpu_end.user + cpu_end.system - cpu.user - cpu.system,
                  "workers_cpu_s": cpu_end.children_user + cpu_end.children_system - cpu.children_user
                  - cpu.children_system}))
"""

PANDAS_SIDE = """
import json, resource, sys, time
import pandas as pd
start = time.perf_counter()
# All rows in one DataFrame, read in chunks of lines: the parser's transient copies of the
# whole text would otherwise need about ten times the file size.
frame = pd.concat(pd.read_json(sys.argv[1], lines=True, chunksize=200_000), ignore_index=True)
rows_in = len(frame)
frame = frame.dropna(subset=["prompt", "response"])
frame = frame[(frame["prompt"].str.strip() != "") & (frame["response"].str.strip() != "")]
frame = frame.drop_duplicates(subset=["prompt", "response"])
frame.to_json(sys.argv[2] + "/out.jsonl", orient="records", lines=True, force_ascii=False)
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "rows_in": rows_in, "rows_out": len(frame),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _available_bytes() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def run_side(code: str, source: Path, out: Path, min_available: int = 1536 * MB) -> dict:
    """One side in its own interpreter (and its workers); stopped if the machine runs short."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, str(source), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    stopped = threading.Event()

    def watch() -> None:
        while proc.poll() is None:
            if _available_bytes() < min_available:
                stopped.set()
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    stdout, stderr = proc.communicate()
    if stopped.is_set():
        raise RuntimeError(f"stopped: the machine had less than {min_available // MB} MB available")
    if proc.returncode != 0:
        raise RuntimeError(f"side failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048, help="size of the generated JSONL (default 2048)")
    parser.add_argument("--workdir", help="where to put the file and outputs (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file and outputs")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two sides this many times (default 1)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="modelchain-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"chat_{args.size_mb}mb.jsonl"
    try:
        if not source.exists() or source.stat().st_size < args.size_mb * MB:
            start = time.perf_counter()
            lines = generate(source, args.size_mb * MB)
            print(f"generated {source} ({source.stat().st_size / MB:.0f} MB, {lines} lines) "
                  f"in {time.perf_counter() - start:.0f} s", flush=True)
        rounds: list[dict[str, dict]] = []  # one per repeat: each side's result
        for repeat in range(args.repeats):
            rounds.append({})
            for name, code in (("modelchain", MODELCHAIN_SIDE), ("pandas", PANDAS_SIDE)):
                try:
                    r = run_side(code, source, work / f"out-{name}")
                except RuntimeError as exc:  # e.g. pandas out of memory: report it, keep the other side
                    print(f"{name}: FAILED: {str(exc).strip().splitlines()[-1]}", flush=True)
                    continue
                finally:  # the next side gets the disk and page cache
                    shutil.rmtree(work / f"out-{name}", ignore_errors=True)
                rounds[-1][name] = r
                detail = ""
                if "main_cpu_s" in r:
                    detail = (f" (main RSS {r['main_rss_mb']:,.0f} MB + workers' PSS "
                              f"{' + '.join(f'{w:,.0f}' for w in r['worker_rss_mb'])} MB; CPU main "
                              f"{r['main_cpu_s']:.0f} s, workers {r['workers_cpu_s']:.0f} s)")
                print(f"{name}{f' [{repeat + 1}/{args.repeats}]' if args.repeats > 1 else ''}: {r['rows_in']} rows in, "
                      f"{r['rows_out']} out, {r['seconds']:.1f} s, {r['rows_in'] / r['seconds']:,.0f} rows/s, "
                      f"peak RSS {r['peak_rss_mb']:,.0f} MB{detail}", flush=True)
        pairs = [(done["modelchain"], done["pandas"]) for done in rounds if len(done) == 2]
        if not pairs:
            return 1
        ratio = statistics.median((a["rows_in"] / a["seconds"]) / (b["rows_in"] / b["seconds"]) for a, b in pairs)
        ours = statistics.median(a["rows_in"] / a["seconds"] for a, _ in pairs)
        base = statistics.median(b["rows_in"] / b["seconds"] for _, b in pairs)
        ours_rss = max(a["peak_rss_mb"] for a, _ in pairs)
        base_rss = max(b["peak_rss_mb"] for _, b in pairs)
        verdict = "meets" if ratio >= 1.0 else "MISSES"
        memory = "under" if ours_rss < 1024 else "OVER"
        print(f"{'median of ' + str(len(pairs)) + ' runs: ' if len(pairs) > 1 else ''}modelchain {ours:,.0f} rows/s, "
              f"pandas {base:,.0f} rows/s; ratio modelchain/pandas: {ratio:.2f}x rows/s ({verdict} the 1.0 target); "
              f"modelchain peak RSS {ours_rss:,.0f} MB ({memory} 1 GB), pandas peak RSS {base_rss:,.0f} MB")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""rag_ingest with rag.shards=N against one shard: chunks/s of the whole pipeline through kfp.local.

    python -m modelchain.bench.rag_shards [--docs 300] [--shards 2] [--repeats 3]

Generates a Markdown corpus (bench/_rag_corpus.py) and runs `modelchain run rag_ingest` on it
with the shipped configuration, once with one shard and once with ``--shards``, each into a
fresh Milvus Lite folder, the sides alternated each round; prints the medians and their ratio.
Each run is timed from the command's start to its end (the steps' subprocesses, the
embedder's load in each shard and verify included), so the figure is what a user waits for.

kfp.local runs a ParallelFor's iterations as parallel processes on this one machine; the
ratio says what sharding gives where every shard shares the same cores. On a cluster each
shard is its own pod.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
    os.environ.setdefault(_key, _value)


def run_ingest(corpus: Path, home: Path, shards: int) -> tuple[float, int]:
    """Wall seconds of one `modelchain run rag_ingest`, and the chunks it wrote."""
    from modelchain.core.vectorstore import MilvusLiteStore

    env = {**os.environ, "MODELCHAIN_HOME": str(home)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "modelchain.pipelines.cli", "run", "rag_ingest", f"rag.source.uri={corpus}",
         f"rag.shards={shards}"],
        capture_output=True, text=True, env=env,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"rag_ingest with rag.shards={shards} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    with MilvusLiteStore(str(home / "milvus.db"), "docs", 384) as store:
        return seconds, store.count()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from modelchain.bench._rag_corpus import generate_corpus

    with tempfile.TemporaryDirectory(prefix="rag-shards-") as tmp:
        work = Path(tmp)
        generate_corpus(work / "corpus", args.docs, 0)
        print(f"corpus: {args.docs} Markdown documents; rag.shards=1 vs rag.shards={args.shards}, "
              f"{args.repeats} rounds, sides alternated", flush=True)
        times: dict[int, list[float]] = {1: [], args.shards: []}
        chunks: dict[int, int] = {}
        for round_ in range(args.repeats):
            sides = (1, args.shards) if round_ % 2 == 0 else (args.shards, 1)
            for shards in sides:
                seconds, chunks[shards] = run_ingest(work / "corpus", work / f"home-{round_}-{shards}", shards)
                times[shards].append(seconds)
                print(f"  round {round_ + 1}, rag.shards={shards}: {seconds:.1f} s, {chunks[shards]} chunks, "
                      f"{chunks[shards] / seconds:.1f} chunks/s", flush=True)
        if chunks[1] != chunks[args.shards]:
            print(f"FAIL: {chunks[1]} chunks with one shard, {chunks[args.shards]} with {args.shards}")
            return 1
        one, many = statistics.median(times[1]), statistics.median(times[args.shards])
        print(f"rag.shards=1: {chunks[1] / one:.1f} chunks/s (median {one:.1f} s); rag.shards={args.shards}: "
              f"{chunks[1] / many:.1f} chunks/s (median {many:.1f} s); ratio {one / many:.2f}x "
              f"on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())

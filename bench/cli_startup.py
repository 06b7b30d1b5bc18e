"""CLI start-up and compile time, against the bare interpreter and a bare `import kfp`.

    python -m modelchain.bench.cli_startup [--repeats 7]

Targets (issue 2): `modelchain --help` under 0.5 s, `modelchain compile finetune` under 2 s.
Medians of repeated runs, each side timed alternately in the same run, because the machine
is shared and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(pairs: dict[str, tuple[list[str], list[str]]], repeats: int) -> dict[str, dict[str, float]]:
    results = {}
    for name, (ours, baseline) in pairs.items():
        _time(ours), _time(baseline)  # warm the page cache
        ours_t, base_t = [], []
        for _ in range(repeats):
            ours_t.append(_time(ours))
            base_t.append(_time(baseline))
        results[name] = {"median_s": statistics.median(ours_t), "baseline_median_s": statistics.median(base_t)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    py = sys.executable
    out = Path(tempfile.mkdtemp()) / "finetune.yaml"
    cli = [py, "-m", "modelchain.pipelines.cli"]
    pairs = {
        "modelchain --help vs python -c pass": (cli + ["--help"], [py, "-c", "pass"]),
        "modelchain compile finetune vs python -c 'import kfp'": (
            cli + ["compile", "finetune", "-o", str(out)],
            [py, "-c", "import kfp"],
        ),
    }
    targets = {"modelchain --help vs python -c pass": 0.5, "modelchain compile finetune vs python -c 'import kfp'": 2.0}
    for name, r in measure(pairs, args.repeats).items():
        ratio = r["median_s"] / r["baseline_median_s"]
        verdict = "meets" if r["median_s"] < targets[name] else "MISSES"
        print(
            f"{name}: {r['median_s']:.3f} s vs {r['baseline_median_s']:.3f} s baseline "
            f"(ratio {ratio:.2f}x, median of {args.repeats}); {verdict} the {targets[name]} s target"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

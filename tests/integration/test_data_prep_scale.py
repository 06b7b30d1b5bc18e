"""Streaming with bounded memory: peak RSS does not grow with the input size."""

import json
import subprocess
import sys

import pytest

from modelchain.bench.data_prep_throughput import generate

RUN = """
import json, resource, sys
from modelchain.data.prepare import DedupOptions, prepare
result = prepare(sys.argv[1], sys.argv[2], dedup=DedupOptions(near=True))
print(json.dumps({"rows_in": result.card["rows_in"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak(source, out):
    proc = subprocess.run([sys.executable, "-c", RUN, str(source), str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_is_flat_in_the_input_size(tmp_path):
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    generate(small, 4 << 20)
    generate(large, 40 << 20)
    a, b = peak(small, tmp_path / "a"), peak(large, tmp_path / "b")
    assert b["rows_in"] > 9 * a["rows_in"]
    # Ten times the rows, a few MB more: dedup keys and the quarantine head, not the rows.
    assert b["rss_mb"] - a["rss_mb"] < 60, (a, b)

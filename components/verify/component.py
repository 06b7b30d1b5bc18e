"""KFP wrapper of verify: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output


def verify(
    rag: str, chunks: Input[Dataset], quarantine: Input[Dataset], report: Output[Markdown], checks: Output[Metrics]
):
    """Counts and keys agree with the corpus, sampled chunks find themselves, smoke questions their documents."""
    from pathlib import Path

    from modelchain.components.verify.logic import verify_ingest
    from modelchain.core.config import load_group
    from modelchain.core.io import read_jsonl

    result = verify_ingest(load_group("rag", rag), read_jsonl(chunks.path), read_jsonl(quarantine.path))
    Path(report.path).write_text(result["report"])
    for key, value in result.items():
        if isinstance(value, (int, float)):
            checks.log_metric(key, float(value))
    print(result["report"])
    if not result["passed"]:
        raise RuntimeError("verify failed: " + "; ".join(result["failures"]))

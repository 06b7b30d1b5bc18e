"""KFP wrapper of verify: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output


def verify(settings: str, chunks: Input[Dataset], report: Output[Markdown], checks: Output[Metrics]):
    """Counts agree with the corpus and the smoke questions retrieve their documents."""
    import json
    from pathlib import Path

    from modelchain.components.rag_settings import open_embedder, open_store
    from modelchain.components.verify.logic import verify as check_collection
    from modelchain.core.io import read_jsonl
    from modelchain.core.retriever import Retriever

    config = json.loads(settings)
    checks_cfg = config["rag"]["verify"]
    with open_store(config) as store:
        result = check_collection(
            store,
            Retriever(store, open_embedder(config)),
            read_jsonl(chunks.path),
            checks_cfg["questions"],
            k=checks_cfg["k"],
            min_recall=checks_cfg["min_recall"],
        )
    Path(report.path).write_text(result["report"])
    for key, value in result.items():
        if isinstance(value, (int, float)):
            checks.log_metric(key, float(value))
    print(result["report"])
    if not result["passed"]:
        raise RuntimeError("verify failed: the collection is not in step with the corpus (see the report above)")

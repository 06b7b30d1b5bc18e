"""KFP wrapper of upsert: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Metrics, Output


def upsert(rag: str, embeddings: Input[Dataset], stats: Output[Metrics]):
    """Delete the rows of changed and removed documents, then write the new chunks."""
    from modelchain.components.rag_changes import load_plan
    from modelchain.components.upsert.logic import write_changes
    from modelchain.core.config import load_group

    plan, vectors = load_plan(embeddings.path)
    counts = write_changes(load_group("rag", rag), plan, vectors)
    for key, value in counts.items():
        stats.log_metric(key, value)
    print(" ".join(f"{k}={v}" for k, v in counts.items()))

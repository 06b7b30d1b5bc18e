"""KFP wrapper of upsert: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Metrics, Output


def upsert(settings: str, embeddings: Input[Dataset], stats: Output[Metrics]):
    """Delete the rows of changed and removed documents, then write the new chunks."""
    import json
    from pathlib import Path

    import numpy as np

    from modelchain.components.rag_settings import open_store
    from modelchain.components.upsert.logic import ChangePlan, apply_changes
    from modelchain.core.io import read_jsonl

    folder = Path(embeddings.path)
    plan_file = json.loads((folder / "plan.json").read_text())
    plan = ChangePlan(read_jsonl(folder / "chunks.jsonl"), plan_file["sources_to_delete"], plan_file["unchanged_sources"])
    vectors = np.load(folder / "vectors.npy")
    if not plan.chunks_to_embed:
        vectors = vectors.reshape(0, 0)
    with open_store(json.loads(settings)) as store:
        counts = apply_changes(store, plan, vectors)
    for key, value in counts.items():
        stats.log_metric(key, value)
    print(" ".join(f"{k}={v}" for k, v in counts.items()))

"""KFP wrapper of embed: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Output


def embed(settings: str, chunks: Input[Dataset], embeddings: Output[Dataset]):
    """Embed only the chunks of new or changed documents; the plan and vectors are the output."""
    import json
    from pathlib import Path

    import numpy as np

    from modelchain.components.embed.logic import embed_chunks
    from modelchain.components.rag_settings import open_embedder, open_store
    from modelchain.components.upsert.logic import plan_changes
    from modelchain.core.io import atomic_dir, atomic_write_json, atomic_write_jsonl, read_jsonl

    config = json.loads(settings)
    with open_store(config) as store:
        plan = plan_changes(store, read_jsonl(chunks.path))
    vectors = embed_chunks(plan.chunks_to_embed, open_embedder(config)) if plan.chunks_to_embed else np.zeros((0, 0))
    with atomic_dir(embeddings.path) as out:
        atomic_write_jsonl(Path(out) / "chunks.jsonl", plan.chunks_to_embed)
        atomic_write_json(Path(out) / "plan.json", {"sources_to_delete": plan.sources_to_delete, "unchanged_sources": plan.unchanged_sources})
        np.save(Path(out) / "vectors.npy", np.asarray(vectors, dtype=np.float32))
    embeddings.metadata["embedded_chunks"] = len(plan.chunks_to_embed)
    embeddings.metadata["unchanged_documents"] = len(plan.unchanged_sources)
    print(f"embedded {len(plan.chunks_to_embed)} chunks; {len(plan.unchanged_sources)} documents unchanged")

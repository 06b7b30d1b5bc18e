"""KFP wrapper of embed: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Output


def embed(
    rag: str,
    chunks: Input[Dataset],
    quarantine: Input[Dataset],
    embeddings: Output[Dataset],
    shard: int = 0,
    shards: int = 1,
    run_id: str = "",
):
    """Embed only the chunks of new or changed documents; the plan and vectors are the output.

    Quarantined documents (unreadable this run) keep their rows: they are not treated as removed.
    A shard plans against its own documents' rows only; ``run_id`` (the pipeline run) lets the
    run's shards write one after another without taking each other for another run.
    """
    from modelchain.components.embed.logic import embed_changes
    from modelchain.components.rag_changes import save_plan
    from modelchain.core.config import load_group
    from modelchain.core.io import read_jsonl

    plan, vectors = embed_changes(
        load_group("rag", rag), read_jsonl(chunks.path), read_jsonl(quarantine.path), shard, shards, run_id
    )
    save_plan(embeddings.path, plan, vectors)
    embeddings.metadata["embedded_chunks"] = len(plan.chunks_to_embed)
    embeddings.metadata["unchanged_documents"] = len(plan.unchanged_sources)
    print(f"embedded {len(plan.chunks_to_embed)} chunks; {len(plan.unchanged_sources)} documents unchanged")

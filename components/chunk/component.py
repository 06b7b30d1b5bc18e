"""KFP wrapper of chunk: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Output


def chunk(
    rag: str,
    manifest: Input[Dataset],
    chunks: Output[Dataset],
    quarantine: Output[Dataset],
    shard: int = 0,
    shards: int = 1,
):
    """Parse and chunk every document of this shard (heading-aware, token-sized); unreadable or
    changed files are quarantined."""
    from modelchain.components.chunk.logic import chunk_corpus
    from modelchain.components.rag_changes import in_shard
    from modelchain.core.config import load_group
    from modelchain.core.io import atomic_write_jsonl, read_jsonl

    documents = in_shard(read_jsonl(manifest.path), shard, shards)
    if shards > 1:
        print(f"shard {shard} of {shards}: {len(documents)} documents")
    kept, refused = chunk_corpus(load_group("rag", rag), documents)
    atomic_write_jsonl(chunks.path, kept)
    atomic_write_jsonl(quarantine.path, refused)
    chunks.metadata["chunks"] = len(kept)
    quarantine.metadata["documents"] = len(refused)
    for item in refused:
        print(f"quarantined {item['source']}: {item['reason']}")

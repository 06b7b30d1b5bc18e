"""KFP wrapper of chunk: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Output


def chunk(rag: str, manifest: Input[Dataset], chunks: Output[Dataset], quarantine: Output[Dataset]):
    """Parse and chunk every document (heading-aware, token-sized); unreadable or changed files are quarantined."""
    from modelchain.components.chunk.logic import chunk_corpus
    from modelchain.core.config import load_group
    from modelchain.core.io import atomic_write_jsonl, read_jsonl

    kept, refused = chunk_corpus(load_group("rag", rag), read_jsonl(manifest.path))
    atomic_write_jsonl(chunks.path, kept)
    atomic_write_jsonl(quarantine.path, refused)
    chunks.metadata["chunks"] = len(kept)
    quarantine.metadata["documents"] = len(refused)
    for item in refused:
        print(f"quarantined {item['source']}: {item['reason']}")

"""KFP wrapper of chunk: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Output


def chunk(settings: str, manifest: Input[Dataset], chunks: Output[Dataset], quarantine: Output[Dataset]):
    """Parse and chunk every document (heading-aware, token-sized); unreadable files are quarantined."""
    import json

    from modelchain.components.chunk.logic import chunk_documents
    from modelchain.components.rag_settings import open_embedder
    from modelchain.core.io import atomic_write_jsonl, read_jsonl

    config = json.loads(settings)
    size = config["rag"]["chunk"]
    kept, refused = chunk_documents(
        read_jsonl(manifest.path), open_embedder(config).tokenizer, size["tokens"], size["overlap"]
    )
    atomic_write_jsonl(chunks.path, kept)
    atomic_write_jsonl(quarantine.path, refused)
    chunks.metadata["chunks"] = len(kept)
    quarantine.metadata["documents"] = len(refused)
    for item in refused:
        print(f"quarantined {item['source']}: {item['reason']}")

"""KFP wrapper of discover: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Output


def discover(rag: str, source_uri: str, manifest: Output[Dataset]):
    """List the corpus' documents with their content hashes (JSONL)."""
    from modelchain.components.discover.logic import discover_corpus
    from modelchain.core.config import load_group
    from modelchain.core.io import atomic_write_jsonl

    rag_cfg = load_group("rag", rag, source_uri=source_uri)
    documents = discover_corpus(rag_cfg.source)
    atomic_write_jsonl(manifest.path, documents)
    manifest.metadata["documents"] = len(documents)
    print(f"discovered {len(documents)} documents under {source_uri}")

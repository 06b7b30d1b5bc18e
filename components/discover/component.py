"""KFP wrapper of discover: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Output


def discover(settings: str, source_uri: str, manifest: Output[Dataset]):
    """List the corpus' documents with their content hashes (JSONL)."""
    import json

    from modelchain.components.discover.logic import discover as list_documents
    from modelchain.core.io import atomic_write_jsonl

    source = json.loads(settings)["rag"]["source"]
    documents = list_documents(source_uri, include=source["include"], exclude=source["exclude"])
    if not documents:
        raise ValueError(f"no documents under {source_uri} matching {source['include']}")
    atomic_write_jsonl(manifest.path, documents)
    manifest.metadata["documents"] = len(documents)
    print(f"discovered {len(documents)} documents under {source_uri}")

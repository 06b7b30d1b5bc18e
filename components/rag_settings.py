"""Opening the Milvus store and the embedder the rag_ingest steps share, from the baked settings."""

from __future__ import annotations

import os
from typing import Any


def open_store(settings: dict[str, Any]):
    """The configured collection; on a cluster the token comes from the env (a secret by name)."""
    from modelchain.core.vectorstore import MilvusStore

    rag = settings["rag"]
    milvus = rag["milvus"]
    return MilvusStore(
        milvus["uri"],
        milvus["collection"],
        rag["embedding"]["dim"],
        index_type=milvus["index_type"],
        metric=milvus["metric"],
        token=os.environ.get("MILVUS_TOKEN") or None,
    )


def open_embedder(settings: dict[str, Any]):
    from modelchain.core.embedder import Embedder

    embedding = settings["rag"]["embedding"]
    return Embedder(embedding["model"], batch_size=embedding["batch_size"])

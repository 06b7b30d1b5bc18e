"""Opening the Milvus store and the embedder the rag_ingest steps share, from the baked settings."""

from __future__ import annotations

from typing import Any


def open_store(settings: dict[str, Any]):
    """The configured collection; on a cluster the token comes from MILVUS_TOKEN (a secret by name)."""
    from modelchain.core.vectorstore import store_from_settings

    return store_from_settings(settings)


def open_embedder(settings: dict[str, Any]):
    """The embedder of ``rag.embedding``: runtime, model, batch size, endpoint."""
    from modelchain.core.embedder import embedder_from_settings

    return embedder_from_settings(settings)

"""Opening the vector store and the embedder the rag_ingest steps share, from the typed ``rag`` config."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig


def open_store(rag: "DictConfig"):
    """The collection the steps write, in the store ``rag.milvus.backend`` names: the index of
    this embedding and chunking behind the alias ``rag.milvus.collection`` (core.vectorstore.open_index).

    A server's token comes from MILVUS_TOKEN (on a cluster, a secret mapped by name).
    """
    from modelchain.core.vectorstore import open_index

    return open_index(rag)


def ingest_lock(rag: "DictConfig", purpose: str):
    """The collection's ingest lock (core.vectorstore.ingest_lock): hold it, then open the store."""
    from modelchain.core.vectorstore import ingest_lock as collection_lock

    return collection_lock(rag, purpose)


def open_embedder(rag: "DictConfig"):
    """The embedder of ``rag.embedding``: runtime, model, batch size, endpoint."""
    from modelchain.core.embedder import embedder_from_config

    return embedder_from_config(rag.embedding)

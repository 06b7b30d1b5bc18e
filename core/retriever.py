"""Question -> the most similar chunks in the Milvus collection (the API evaluation uses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from modelchain.core.embedder import BaseEmbedder, Embedder
from modelchain.core.vectorstore import MilvusStore


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. ``score`` is the collection metric's value (see MilvusStore.search)."""

    text: str
    source: str
    heading_path: str
    score: float
    metadata: dict = field(default_factory=dict)  # uri, format, document (front matter, ...)


class Retriever:
    """Embeds a question with the ingest model and searches the chunk collection."""

    def __init__(self, store: MilvusStore, embedder: BaseEmbedder, owns_store: bool = False) -> None:
        self.store = store
        self.embedder = embedder
        self._owns_store = owns_store

    @classmethod
    def from_config(
        cls,
        uri: str,
        collection: str,
        model_path: str | None = None,
        dim: int = 384,
        metric: str = "COSINE",
        index_type: str = "AUTOINDEX",
        token: str | None = None,
    ) -> "Retriever":
        """A retriever over an existing collection; ``close()`` it (or use ``with``) when done.

        ``model_path`` must name the model the collection was ingested with (None: the
        packaged all-MiniLM-L6-v2).
        """
        store = MilvusStore(uri, collection, dim, index_type=index_type, metric=metric, token=token)
        return cls(store, Embedder(model_path), owns_store=True)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "Retriever":
        """A retriever over the collection of a resolved rag_ingest config (``rag`` key).

        Opens the store and the embedder exactly as the ingest steps do (runtime, model,
        token from ``MILVUS_TOKEN``), so evaluation reads what ingestion wrote.
        """
        from modelchain.core.embedder import embedder_from_settings
        from modelchain.core.vectorstore import store_from_settings

        return cls(store_from_settings(settings), embedder_from_settings(settings), owns_store=True)

    def retrieve(self, question: str, k: int = 5) -> list[Hit]:
        """The ``k`` best chunks for ``question``, best first."""
        return self.retrieve_many([question], k)[0]

    def retrieve_many(self, questions: list[str], k: int = 5) -> list[list[Hit]]:
        """``retrieve`` for several questions, embedded in one batch."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not questions:
            return []
        results = self.store.search(self.embedder.encode(questions), k)
        return [
            [Hit(h["text"], h["source"], h["heading_path"], h["score"], h.get("metadata") or {}) for h in hits]
            for hits in results
        ]

    def close(self) -> None:
        """Close the store if this retriever opened it."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

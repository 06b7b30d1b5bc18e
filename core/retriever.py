"""Question -> the most similar chunks in the Milvus collection (the API evaluation uses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modelchain.core.embedder import BaseEmbedder
from modelchain.core.vectorstore import MilvusStore

if TYPE_CHECKING:
    from omegaconf import DictConfig


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
    def open(cls, rag: "DictConfig") -> "Retriever":
        """A retriever over the collection of a typed ``rag`` config; ``close()`` it (or use ``with``).

        Opens the vector store (``rag.milvus.backend``) and the embedder (``rag.embedding``:
        runtime, model) exactly as the ingest steps do, so evaluation reads what ingestion wrote.
        """
        from modelchain.core.embedder import embedder_from_config
        from modelchain.core.vectorstore import open_store

        return cls(open_store(rag), embedder_from_config(rag.embedding), owns_store=True)

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

"""Question -> the best chunks in the Milvus collection (the API verify and evaluation use).

Three modes (``rag.retrieval.mode``): ``dense`` searches the embedding vectors, ``bm25`` the
BM25 full-text field Milvus fills from each chunk's text, and ``hybrid`` runs both and fuses
the two rankings, by reciprocal rank (``rrf``) or by weighted normalised scores
(``weighted``). bench/rag_retrieval.py measures recall of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from modelchain.core.embedder import BaseEmbedder
from modelchain.core.vectorstore import MilvusStore

if TYPE_CHECKING:
    from omegaconf import DictConfig

MODES = ("dense", "bm25", "hybrid")
FUSIONS = ("rrf", "weighted")


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. ``score``: the collection metric's value in dense mode (see
    MilvusStore.search), Milvus' BM25 value in bm25 mode, the fused score in hybrid mode."""

    text: str
    source: str
    heading_path: str
    score: float
    metadata: dict = field(default_factory=dict)  # uri, format, document (front matter, ...)


@dataclass(frozen=True)
class RetrievalSettings:
    """How to search; the values of a typed ``rag.retrieval`` (defaults live in core/config.py)."""

    mode: str
    fusion: str = "rrf"
    rrf_k: int = 60
    dense_weight: float = 0.5
    bm25_weight: float = 0.5
    candidates: int = 50

    @classmethod
    def from_config(cls, retrieval: Any) -> "RetrievalSettings":
        return cls(retrieval.mode, retrieval.fusion, int(retrieval.rrf_k), float(retrieval.dense_weight),
                   float(retrieval.bm25_weight), int(retrieval.candidates))

    def ranker(self) -> Any:
        from pymilvus import RRFRanker, WeightedRanker

        if self.fusion == "weighted":
            return WeightedRanker(self.dense_weight, self.bm25_weight)
        return RRFRanker(self.rrf_k)


DENSE = RetrievalSettings("dense")


class Retriever:
    """Searches the chunk collection for questions, in the configured mode.

    ``Retriever(store, embedder)`` searches the vectors only; pass ``settings`` (or open it
    with ``open``/``from_config``) for the configured mode.
    """

    def __init__(
        self,
        store: MilvusStore,
        embedder: Optional[BaseEmbedder],
        owns_store: bool = False,
        settings: RetrievalSettings = DENSE,
    ) -> None:
        problem = settings_problem(settings)
        if problem:
            raise ValueError(problem)
        if settings.mode != "bm25" and embedder is None:
            raise ValueError(f"retrieval mode {settings.mode} needs an embedder")
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self._owns_store = owns_store

    @property
    def mode(self) -> str:
        return self.settings.mode

    @classmethod
    def open(cls, rag: "DictConfig") -> "Retriever":
        """A retriever over the collection of a typed ``rag`` config; ``close()`` it (or use ``with``).

        Opens the vector store (``rag.milvus.backend``) and the embedder (``rag.embedding``:
        runtime, model) exactly as the ingest steps do, so evaluation reads what ingestion
        wrote, and searches in ``rag.retrieval.mode``.
        """
        from modelchain.core.embedder import embedder_from_config
        from modelchain.core.vectorstore import open_store

        return cls.from_config(rag, open_store(rag), embedder_from_config(rag.embedding), owns_store=True)

    @classmethod
    def from_config(
        cls, rag: "DictConfig", store: MilvusStore, embedder: Optional[BaseEmbedder], owns_store: bool = False
    ) -> "Retriever":
        """A retriever over ``store`` with ``embedder``, in the mode of ``rag.retrieval``.

        A collection whose vectors another embedding wrote than ``rag.embedding`` is a ValueError.
        """
        from modelchain.core.vectorstore import embedding_identity

        if rag.retrieval.mode != "bm25":
            store.check_embedding(embedding_identity(rag.embedding), "rag.embedding")
        return cls(store, embedder, owns_store=owns_store, settings=RetrievalSettings.from_config(rag.retrieval))

    def retrieve(self, question: str, k: int = 5) -> list[Hit]:
        """The ``k`` best chunks for ``question``, best first."""
        return self.retrieve_many([question], k)[0]

    def retrieve_many(self, questions: list[str], k: int = 5) -> list[list[Hit]]:
        """``retrieve`` for several questions, embedded in one batch."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not questions:
            return []
        mode = self.settings.mode
        if mode == "bm25":
            results = self.store.search_text(questions, k)
        elif mode == "hybrid":
            assert self.embedder is not None
            results = self.store.hybrid_search(
                self.embedder.encode(questions), questions, k,
                ranker=self.settings.ranker(), candidates=self.settings.candidates,
            )
        else:
            assert self.embedder is not None
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


def settings_problem(settings: RetrievalSettings, prefix: str = "") -> Optional[str]:
    """What is wrong with ``settings`` (a sentence naming the key), or None."""
    problems = _problems(settings, prefix)
    return problems[0][1] if problems else None


def _problems(s: RetrievalSettings, prefix: str) -> list[tuple[str, str]]:
    checks: list[tuple[bool, str, str]] = [
        (s.mode in MODES, "mode", f"must be one of {', '.join(MODES)}, got {s.mode!r}"),
        (s.fusion in FUSIONS, "fusion", f"must be one of {', '.join(FUSIONS)}, got {s.fusion!r}"),
        (s.rrf_k >= 1, "rrf_k", f"must be >= 1, got {s.rrf_k}"),
        (0.0 <= s.dense_weight <= 1.0, "dense_weight", f"must be in [0, 1], got {s.dense_weight}"),
        (0.0 <= s.bm25_weight <= 1.0, "bm25_weight", f"must be in [0, 1], got {s.bm25_weight}"),
        (s.candidates >= 1, "candidates", f"must be >= 1, got {s.candidates}"),
    ]
    return [(f"{prefix}{key}", f"{prefix}{key}: {why}") for ok, key, why in checks if not ok]


def check_config(cfg: "DictConfig", need: Callable[[bool, str, str], None]) -> None:
    """The ``rag.retrieval`` checks (core.config.OWNER_CHECKS)."""
    for key, message in _problems(RetrievalSettings.from_config(cfg.rag.retrieval), "rag.retrieval."):
        need(False, key, message.split(": ", 1)[1])

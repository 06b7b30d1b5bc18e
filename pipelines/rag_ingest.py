"""The rag_ingest pipeline: discover -> chunk -> embed -> upsert -> verify."""

# No `from __future__ import annotations` here: KFP reads the real parameter types.

from omegaconf import DictConfig

from modelchain.components.chunk.component import chunk
from modelchain.components.discover.component import discover
from modelchain.components.embed.component import embed
from modelchain.components.kfp_factory import make_component
from modelchain.components.upsert.component import upsert
from modelchain.components.verify.component import verify
from modelchain.pipelines.build import place, settings_json


def build(cfg: DictConfig):
    """The pipeline function for `cfg`; the corpus URI is a run-time parameter."""
    from kfp import dsl

    settings = settings_json(cfg)
    discover_op, chunk_op, embed_op, upsert_op, verify_op = (
        make_component(fn, cfg.cluster.image) for fn in (discover, chunk, embed, upsert, verify)
    )
    cluster = cfg.cluster

    @dsl.pipeline(
        name="rag-ingest",
        description="Keep a Milvus collection in step with a document corpus: chunk, embed, upsert, verify.",
    )
    def rag_ingest_pipeline(source_uri: str = cfg.rag.source.uri):
        found = place(discover_op(settings=settings, source_uri=source_uri), cluster)
        parts = place(chunk_op(settings=settings, manifest=found.outputs["manifest"]), cluster)
        vectors = place(embed_op(settings=settings, chunks=parts.outputs["chunks"]), cluster)
        written = place(upsert_op(settings=settings, embeddings=vectors.outputs["embeddings"]), cluster)
        place(verify_op(settings=settings, chunks=parts.outputs["chunks"]), cluster).after(written)

    return rag_ingest_pipeline


def parameters(cfg: DictConfig) -> dict:
    return {"source_uri": cfg.rag.source.uri}

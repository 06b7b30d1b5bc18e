"""The rag_ingest pipeline: discover -> chunk -> embed -> upsert -> verify.

With ``rag.shards`` = N > 1, chunk -> embed -> upsert run once per shard in a KFP
``ParallelFor`` (each shard a stable hash range of document keys, writing disjoint rows), and
one verify checks the collected chunks of all shards after every shard has written.
"""

# No `from __future__ import annotations` here: KFP reads the real parameter types.

from typing import Optional

from omegaconf import DictConfig

from modelchain.components.chunk.component import chunk
from modelchain.components.discover.component import discover
from modelchain.components.embed.component import embed
from modelchain.components.kfp_factory import make_component
from modelchain.components.upsert.component import upsert
from modelchain.components.verify.component import verify, verify_shards
from modelchain.core.config import ConfigError, component_image, group_json, parameter_values
from modelchain.core.vectorstore import MILVUS_TOKEN_ENV, store_class
from modelchain.pipelines.build import place, run_parameters

MILVUS_TOKEN_SECRET_KEY = "token"  # the key in the secret named by rag.milvus.token_secret


def build(cfg: DictConfig):
    """The pipeline function for `cfg`; the corpus URI is a run-time parameter."""
    from kfp import dsl

    rag = group_json(cfg, "rag")
    shards = cfg.rag.shards
    token_secret = milvus_token_secret(cfg)
    discover_op, chunk_op, embed_op, upsert_op, verify_op, verify_shards_op = (
        make_component(fn, component_image(cfg.cluster))
        for fn in (discover, chunk, embed, upsert, verify, verify_shards)
    )
    cluster = cfg.cluster

    def ingest_shard(manifest, shard):
        """chunk -> embed -> upsert of one shard (the whole corpus when unsharded)."""
        # Cached (pipelines/build.py CACHED_STEPS): chunking is a pure function of the manifest,
        # which holds each document's content hash, and chunk refuses a document whose bytes
        # no longer match it.
        parts = place(chunk_op(rag=rag, manifest=manifest, shard=shard, shards=shards), cluster)
        # The steps that open the collection get the token from the secret, by name.
        # A quarantined document (unreadable this run) keeps its rows: embed plans with it.
        # The run's id lets its shards' writes follow one another (rag_changes.run_write_token).
        vectors = with_token(
            place(embed_op(rag=rag, chunks=parts.outputs["chunks"], quarantine=parts.outputs["quarantine"],
                           shard=shard, shards=shards, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), cluster),
            token_secret,
        )
        written = with_token(
            place(upsert_op(rag=rag, embeddings=vectors.outputs["embeddings"]), cluster), token_secret
        )
        return parts, written

    def body(params: dict):
        found = place(discover_op(rag=rag, source_uri=params["source_uri"]), cluster)
        if shards == 1:
            parts, written = ingest_shard(found.outputs["manifest"], 0)
            checked = verify_op(rag=rag, chunks=parts.outputs["chunks"], quarantine=parts.outputs["quarantine"])
            with_token(place(checked, cluster), token_secret).after(written)
            return
        # Each iteration is its own pod on a cluster (an `openai` embedding endpoint lets them
        # share one model server instead of each loading the model).
        with dsl.ParallelFor(items=list(range(shards)), parallelism=shards, name="shards") as shard:
            parts, written = ingest_shard(found.outputs["manifest"], shard)
        # The collected upsert reports make verify wait for every shard's writes.
        checked = verify_shards_op(
            rag=rag,
            chunks=dsl.Collected(parts.outputs["chunks"]),
            quarantine=dsl.Collected(parts.outputs["quarantine"]),
            changes=dsl.Collected(written.outputs["changes"]),
        )
        with_token(place(checked, cluster), token_secret)

    return dsl.pipeline(
        run_parameters("rag_ingest", cfg, body),
        name="rag-ingest",
        description="Keep a Milvus collection in step with a document corpus: chunk, embed, upsert, verify.",
    )


def parameters(cfg: DictConfig) -> dict:
    """The run-time parameters and their values under `cfg` (what a run or schedule sends)."""
    return parameter_values("rag_ingest", cfg)


def milvus_token_secret(cfg: DictConfig) -> Optional[str]:
    """The secret to add for MILVUS_TOKEN, or None when there is none, the configured vector
    store takes no token, or cluster.secret_env already maps it from that secret. (Secrets
    are Kubernetes placement: kfp.local ignores them.)

    A cluster.secret_env entry that fills MILVUS_TOKEN from another secret is a conflict:
    the pod would get the variable twice.
    """
    name = cfg.rag.milvus.token_secret
    if not name or store_class(cfg.rag.milvus.backend).token_env is None:
        return None  # a store served from inside the step (Milvus Lite) takes no token
    mapped = {item.secret_name for item in cfg.cluster.secret_env if item.env == MILVUS_TOKEN_ENV}
    if mapped - {name}:
        raise ConfigError(
            f"rag.milvus.token_secret: {name!r}, but cluster.secret_env fills {MILVUS_TOKEN_ENV} from "
            f"{sorted(mapped)}; name one secret"
        )
    return None if name in mapped else name


def with_token(task, secret_name: Optional[str]):
    """``task`` with MILVUS_TOKEN from key ``token`` of ``secret_name`` (nothing if None)."""
    if secret_name:
        from kfp import kubernetes

        kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env={MILVUS_TOKEN_SECRET_KEY: MILVUS_TOKEN_ENV})
    return task

"""The vector store that holds RAG chunks: one interface, one implementation per place.

``MilvusStore`` is the interface (and the code both implementations share, since both talk
to Milvus through ``pymilvus.MilvusClient``); ``VECTOR_STORES`` names the implementations:

- ``lite``: Milvus Lite, a local ``.db`` folder served from inside this process (a laptop, CI);
- ``server``: a Milvus server or cluster at an ``http(s)://`` URI, the token from ``MILVUS_TOKEN``.

The config picks one by name, ``rag.milvus.backend`` (filled from ``cluster.milvus_backend``,
beside ``cluster.milvus_uri``); ``open_store(rag)`` opens it. Adding a store is one class
here and one line in ``VECTOR_STORES`` (plus a cluster option that names it).

One row per chunk. The primary key is derived from the chunk's source and content, so
writing the same chunk twice is idempotent, and ``doc_hash`` lets an ingest run tell
which documents changed since the last one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

if TYPE_CHECKING:
    import numpy as np
    from omegaconf import DictConfig

# Field name -> (Milvus data type, max length in bytes for VARCHAR fields).
SCALAR_FIELDS: dict[str, tuple[str, int | None]] = {
    "id": ("VARCHAR", 64),
    "text": ("VARCHAR", 65535),
    "source": ("VARCHAR", 2048),
    "heading_path": ("VARCHAR", 2048),
    "position": ("INT64", None),
    "content_hash": ("VARCHAR", 64),
    "doc_hash": ("VARCHAR", 64),
    "ingested_at": ("INT64", None),
    # {"uri", "format", "document": front matter / HTML meta / PDF info}; optional in rows.
    "metadata": ("JSON", None),
}
MAX_JSON_BYTES = 65536  # Milvus' default limit for one JSON value
# Collection property: the chunking signature of the last ingest that finished, or "" once
# anything has written since (see MilvusStore.ingest_state).
INGEST_STATE_PROPERTY = "modelchain.ingest_state"
# Collection property: a new random token each time a store starts writing, so a run can
# tell whether anyone wrote since it planned (see MilvusStore.write_token).
WRITE_TOKEN_PROPERTY = "modelchain.write_token"
# Collection property: the embedding that wrote its vectors (embedding_identity); each row's
# metadata carries it too. Vectors of another model, runtime or size must not be mixed in.
EMBEDDING_PROPERTY = "modelchain.embedding"
VECTOR_FIELD = "vector"
# BM25 full text: Milvus analyses FULLTEXT_FIELD (the document's title, the chunk's heading
# path and its text, so a chunk is found by the words of the headings it sits under) and
# fills SPARSE_FIELD itself (a BM25 Function); rows carry neither. Collections written
# before they existed lack both: they still serve dense search (see MilvusStore.has_bm25).
FULLTEXT_FIELD = "fulltext"
SPARSE_FIELD = "text_sparse"
BM25_FUNCTION = "text_bm25"
MAX_FULLTEXT_BYTES = 65535
# Lower-case words, English stop words dropped, English stems ("installing" finds
# "install"); Milvus Lite knows only the standard and jieba tokenizers, so no "english" type.
BM25_ANALYZER: dict[str, Any] = {
    "tokenizer": "standard",
    "filter": ["lowercase", {"type": "stop", "stop_words": ["_english_"]}, {"type": "stemmer", "language": "english"}],
}
ROW_FIELDS = ("id", VECTOR_FIELD, *[f for f in SCALAR_FIELDS if f != "id"])
METRICS = ("COSINE", "IP", "L2")
SEARCH_OUTPUT_FIELDS = ["text", "source", "heading_path", "position", "metadata"]

# Build and search parameters for the index types that take them; the rest need none.
_INDEX_BUILD_PARAMS: dict[str, dict[str, int]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 128},
    "IVF_SQ8": {"nlist": 128},
}

# Milvus Lite serves a local .db folder from a server inside this process. Count the stores
# open on each folder so the last one to close stops that server, which also flushes it.
_lite_lock = threading.Lock()
_lite_open: dict[str, int] = {}


class _LiteIteratorNotice(logging.Filter):
    """Drops pymilvus' warning that Milvus Lite has no server-side iterator timestamp.

    Lite answers every query_iterator call without one; the client-side fallback is
    correct there, so the warning is noise in every ingest log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


def _now() -> int:
    return int(time.time())


def is_local_uri(uri: str) -> bool:
    """True for a Milvus Lite path; False for a server address (http(s)://, tcp://, unix:)."""
    has_scheme = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri) is not None
    return not (has_scheme or uri.startswith("unix:"))


# The env variable the Milvus token arrives in: on EKS from the secret named by
# rag.milvus.token_secret (or cluster.secret_env), never from the compiled pipeline.
MILVUS_TOKEN_ENV = "MILVUS_TOKEN"


def milvus_string(value: str) -> str:
    """``value`` as a quoted Milvus filter literal (JSON escaping matches Milvus' rules)."""
    return json.dumps(value, ensure_ascii=False)


class MilvusUnreachable(ConnectionError):
    """The store's Milvus cannot be opened (a server that does not answer, a path that cannot be made)."""


class MilvusStore(ABC):
    """A Milvus collection of chunk rows with the schema in ``SCALAR_FIELDS`` plus ``vector``.

    The interface every vector store implements; an implementation says how to reach its
    Milvus (``_connect``, ``_release``, ``uri_problem``, ``token_env``). Connecting is deferred to the first
    call that needs the server. Use it as a context manager, or call ``close()``.
    """

    local = False  # served from inside this process (no network)
    token_env: Optional[str] = None  # the environment variable its token arrives in, if it takes one
    waits_for_index = True  # create_index(sync=True) returns once the collection is searchable

    def __init__(
        self,
        uri: str,
        collection: str,
        dim: int,
        index_type: str = "AUTOINDEX",
        metric: str = "COSINE",
        token: str | None = None,
        batch_size: int = 500,
    ) -> None:
        metric = metric.upper()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        problem = self.uri_problem(uri)
        if problem:
            raise ValueError(problem)
        self.uri = self._normalized_uri(uri)
        self.collection = collection
        self.dim = dim
        self.index_type = index_type.upper()
        self.metric = metric
        self.token = token
        self.batch_size = batch_size
        self._client: Any = None
        self._ready = False
        self._marked_dirty = False
        self._has_bm25: Optional[bool] = None
        # The write token the next write records (MilvusStore.write_token); None: a new random one.
        self.next_write_token: Optional[str] = None
        # The embedding whose vectors this store writes (embedding_identity); None: not checked.
        self.embedding: Optional[str] = None
        # The alias that readers use for this collection (open_index); None: read by its own name.
        self.alias: Optional[str] = None

    # -- configuration and connection --------------------------------------------------

    @classmethod
    def from_config(cls, milvus: "DictConfig", dim: int) -> "MilvusStore":
        """The collection of a typed ``rag.milvus`` config, vectors of ``dim`` values."""
        return cls(milvus.uri, milvus.collection, dim, index_type=milvus.index_type, metric=milvus.metric,
                   token=cls.token_from_env())

    @classmethod
    def token_from_env(cls) -> Optional[str]:
        """The token in ``token_env`` (on a cluster, a secret mapped by name), or None."""
        return (os.environ.get(cls.token_env) or None) if cls.token_env else None

    @classmethod
    @abstractmethod
    def uri_problem(cls, uri: str) -> Optional[str]:
        """Why this store cannot open ``uri`` (a sentence naming it), or None."""

    def _normalized_uri(self, uri: str) -> str:
        return uri

    @abstractmethod
    def _connect(self) -> Any:
        """A new ``pymilvus.MilvusClient`` for ``self.uri``."""

    def _release(self) -> None:
        """What closing leaves to do once the client is closed."""

    @property
    def client(self) -> Any:
        """The connected ``pymilvus.MilvusClient``."""
        if self._client is None:
            try:
                self._client = self._connect()
            except Exception as exc:  # noqa: BLE001 - pymilvus raises its own and OS errors alike
                reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                raise MilvusUnreachable(
                    f"cannot open Milvus at {self.uri} (collection {self.collection!r}): {' '.join(str(reason).split())}"
                ) from None
        return self._client

    def close(self) -> None:
        """Disconnect (for Milvus Lite, stop the local server once no store uses it)."""
        if self._client is None:
            return
        client, self._client, self._ready = self._client, None, False
        self._marked_dirty = False  # the next session that writes takes a new write token
        client.close()
        self._release()

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ----------------------------------------------------------------------

    def exists(self) -> bool:
        return bool(self.client.has_collection(self.collection))

    def ensure_collection(self) -> bool:
        """Create the collection if it is missing, else check it; returns True if created."""
        if self.exists():
            self.check_collection()
            return False
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        for name, (type_name, max_length) in SCALAR_FIELDS.items():
            kwargs: dict[str, Any] = {"is_primary": True} if name == "id" else {}
            if max_length is not None:
                kwargs["max_length"] = max_length
            schema.add_field(name, getattr(DataType, type_name), **kwargs)
            if name == "id":
                schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field(FULLTEXT_FIELD, DataType.VARCHAR, max_length=MAX_FULLTEXT_BYTES, enable_analyzer=True,
                         analyzer_params=BM25_ANALYZER)
        schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(
            name=BM25_FUNCTION, function_type=FunctionType.BM25,
            input_field_names=[FULLTEXT_FIELD], output_field_names=[SPARSE_FIELD],
        ))
        index_params = MilvusClient.prepare_index_params()
        index_params.add_index(
            field_name=VECTOR_FIELD,
            index_type=self.index_type,
            metric_type=self.metric,
            params=_INDEX_BUILD_PARAMS.get(self.index_type, {}),
        )
        index_params.add_index(field_name=SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        # Strong consistency: verify reads right after upsert must see every write.
        self.client.create_collection(self.collection, schema=schema, consistency_level="Strong")
        # A store that can be waited on is, so the collection is searchable on return.
        self.client.create_index(self.collection, index_params, sync=self.waits_for_index)
        self.client.load_collection(self.collection)
        self._ready = True
        self._has_bm25 = True
        if self.alias and not self.client.has_collection(self.alias):
            # The first index behind this alias: there is no older one to keep serving.
            self.client.create_alias(self.collection, self.alias)
        return True

    def is_alias(self) -> bool:
        """True if this store's name is an alias of another collection."""
        try:
            return self.client.describe_alias(self.collection).get("collection_name") not in (None, self.collection)
        except Exception:  # noqa: BLE001 - not an alias
            return False

    def alias_target(self) -> str:
        """The collection ``self.alias`` points to ("" if none)."""
        if not self.alias:
            return ""
        try:
            return str(self.client.describe_alias(self.alias).get("collection_name") or "")
        except Exception:  # noqa: BLE001 - no such alias
            return ""

    def publish(self) -> Optional[str]:
        """Point ``self.alias`` at this collection, in one step; returns the collection it left (or None).

        Readers (the Retriever opens the alias) move from the old index to this one at once.
        """
        if not self.alias:
            return None
        previous = self.alias_target()
        if previous == self.collection:
            return None
        if previous:
            self.client.alter_alias(self.collection, self.alias)
        else:
            self.client.create_alias(self.collection, self.alias)
        return previous or None

    def check_collection(self) -> None:
        """Raise ``ValueError`` if the collection is missing or its schema differs; load it."""
        if self._ready:
            return
        if not self.exists():
            raise ValueError(
                f"Milvus collection {self.collection!r} does not exist at {self.uri}"
            )
        described = self.client.describe_collection(self.collection)
        actual = {f["name"]: f for f in described["fields"]}
        expected = {name: type_name for name, (type_name, _) in SCALAR_FIELDS.items()}
        expected[VECTOR_FIELD] = "FLOAT_VECTOR"
        # Written before full-text search: no sparse field, dense search only (has_bm25).
        has_bm25 = SPARSE_FIELD in actual or FULLTEXT_FIELD in actual
        if has_bm25:
            expected[SPARSE_FIELD] = "SPARSE_FLOAT_VECTOR"
            expected[FULLTEXT_FIELD] = "VARCHAR"
        problems = []
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        if missing:
            problems.append(f"missing fields {missing}")
        if extra:
            problems.append(f"unexpected fields {extra}")
        for name in sorted(set(expected) & set(actual)):
            type_name = getattr(actual[name]["type"], "name", str(actual[name]["type"]))
            if type_name != expected[name]:
                problems.append(f"field {name!r} is {type_name}, expected {expected[name]}")
        if VECTOR_FIELD in actual:
            dim = int(actual[VECTOR_FIELD].get("params", {}).get("dim", -1))
            if dim != self.dim:
                problems.append(f"vector dim is {dim}, expected {self.dim}")
        primary = [n for n, f in actual.items() if f.get("is_primary")]
        if primary != ["id"]:
            problems.append(f"primary key is {primary}, expected ['id']")
        if has_bm25 and not any(
            f.get("type") == _bm25_type() and list(f.get("output_field_names") or []) == [SPARSE_FIELD]
            for f in described.get("functions") or []
        ):
            problems.append(f"field {SPARSE_FIELD!r} is not filled by a BM25 function of {FULLTEXT_FIELD!r}")
        if not problems:
            metric = self._index_metric()
            if metric and metric != self.metric:
                problems.append(f"index metric is {metric}, expected {self.metric}")
        if problems:
            raise ValueError(
                f"Milvus collection {self.collection!r} at {self.uri} does not match the "
                f"chunk schema: {'; '.join(problems)}. Use another collection name or drop it."
            )
        self.client.load_collection(self.collection)
        self._ready = True
        self._has_bm25 = has_bm25

    @property
    def has_bm25(self) -> bool:
        """True if the collection has the BM25 full-text field (every one this version creates)."""
        self.check_collection()
        return bool(self._has_bm25)

    def require_bm25(self, why: str) -> None:
        """Raise ``ValueError`` (saying to reindex) if the collection has no BM25 field."""
        if not self.has_bm25:
            raise ValueError(
                f"Milvus collection {self.collection!r} at {self.uri} has no BM25 full-text field (it was "
                f"written before full-text search), so {why} cannot search it: reindex it (ingest into a new "
                f"rag.milvus.collection, or drop this one and ingest again), or set rag.retrieval.mode=dense"
            )

    def _index_metric(self) -> str | None:
        for index_name in self.client.list_indexes(self.collection, field_name=VECTOR_FIELD):
            info = self.client.describe_index(self.collection, index_name)
            if info.get("metric_type"):
                return str(info["metric_type"]).upper()
        return None

    # -- writes ----------------------------------------------------------------------

    def upsert(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert or replace ``rows`` (dicts with the ``ROW_FIELDS``); returns the row count.

        ``ingested_at`` defaults to now; vectors may be lists or numpy arrays.
        """
        self.check_collection()
        if rows and self.embedding:
            self.check_embedding(self.embedding, "rag.embedding")
        now = _now()
        prepared = [self._prepare_row(row, now) for row in rows]
        if prepared:
            self._mark_dirty()
        for start in range(0, len(prepared), self.batch_size):
            self.client.upsert(self.collection, prepared[start : start + self.batch_size])
        return len(prepared)

    def _prepare_row(self, row: dict[str, Any], now: int) -> dict[str, Any]:
        where = f"chunk {row.get('id')!r} of {row.get('source')!r}"
        missing = [f for f in ROW_FIELDS if f not in row and f not in ("ingested_at", "metadata")]
        if missing:
            raise ValueError(f"{where}: missing fields {missing}")
        vector = row[VECTOR_FIELD]
        vector = vector.tolist() if hasattr(vector, "tolist") else list(vector)
        if len(vector) != self.dim:
            raise ValueError(f"{where}: vector has {len(vector)} values, expected {self.dim}")
        out: dict[str, Any] = {VECTOR_FIELD: vector}
        if self.embedding:
            row = {**row, "metadata": {**(row.get("metadata") or {}), "embedding": self.embedding}}
        if self._has_bm25:
            out[FULLTEXT_FIELD] = fulltext(row)
        for name, (type_name, max_length) in SCALAR_FIELDS.items():
            value = row.get(name, now) if name == "ingested_at" else row.get(name)
            if type_name == "INT64":
                out[name] = int(value)
                continue
            if type_name == "JSON":
                value = dict(row.get(name) or {})
                size = len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8"))
                if size > MAX_JSON_BYTES:
                    raise ValueError(f"{where}: {name} is {size} bytes as JSON, more than {MAX_JSON_BYTES}")
                out[name] = json.loads(json.dumps(value, default=str))
                continue
            value = str(value)
            if max_length is not None and len(value.encode("utf-8")) > max_length:
                raise ValueError(f"{where}: {name} is longer than {max_length} bytes")
            out[name] = value
        return out

    def delete_sources(self, sources: Iterable[str]) -> int:
        """Delete every row of the given sources; returns the number of rows deleted."""
        self.check_collection()
        sources = sorted(set(sources))
        if sources:
            self._mark_dirty()
        deleted = 0
        # Filters are kept to a moderate length; one expression per 100 sources.
        for start in range(0, len(sources), 100):
            batch = sources[start : start + 100]
            expr = f"source in [{', '.join(milvus_string(s) for s in batch)}]"
            result = self.client.delete(self.collection, filter=expr)
            # Milvus Lite answers with the deleted keys, a server with a delete count.
            if isinstance(result, list):
                deleted += len(result)
            else:
                deleted += int(result.get("delete_count", 0))
        return deleted

    def recorded_embedding(self) -> str:
        """The embedding identity the collection's vectors were written with ("" if not recorded)."""
        return self._property(EMBEDDING_PROPERTY)

    def check_embedding(self, identity: str, where: str) -> None:
        """Raise ``ValueError`` if the collection's vectors come from another embedding than ``identity``."""
        recorded = self.recorded_embedding()
        if recorded and recorded != identity:
            raise ValueError(
                f"Milvus collection {self.collection!r} at {self.uri} holds vectors of embedding {recorded}, "
                f"but {where} is {identity}: its vectors cannot be compared; use the embedding it was written "
                f"with, or reindex into a new rag.milvus.collection"
            )

    def _property(self, name: str) -> str:
        if not self.exists():
            return ""
        try:
            properties = self.client.describe_collection(self.collection).get("properties") or {}
        except Exception:  # noqa: BLE001 - a server without collection properties
            return ""
        return str(properties.get(name, ""))

    def write_token(self) -> str:
        """The token of the last store that wrote ("" for a new collection or one that keeps no properties)."""
        return self._property(WRITE_TOKEN_PROPERTY)

    def ingest_state(self) -> str:
        """The chunking signature recorded by the last ingest that finished ("" if none).

        Every write first clears it, so a run that was stopped half-way leaves "": the
        next run then compares every chunk id instead of trusting document hashes.
        """
        try:
            properties = self.client.describe_collection(self.collection).get("properties") or {}
        except Exception:  # noqa: BLE001 - a server without collection properties: no state
            return ""
        return str(properties.get(INGEST_STATE_PROPERTY, ""))

    def set_ingest_state(self, state: str) -> bool:
        """Record ``state`` (see ``ingest_state``); False if the server keeps no properties."""
        try:
            self.client.alter_collection_properties(self.collection, properties={INGEST_STATE_PROPERTY: state})
        except Exception as exc:  # noqa: BLE001
            logging.getLogger(__name__).warning("cannot record the ingest state on %r: %s", self.collection, exc)
            return False
        # After a finished ingest the next write must clear the state again.
        self._marked_dirty = not state
        return True

    def _mark_dirty(self) -> None:
        if self._marked_dirty:
            return
        # A server without properties never had a state to trust; one that has a state
        # this write cannot clear must not be written, or the state would lie.
        import uuid

        properties = {INGEST_STATE_PROPERTY: "", WRITE_TOKEN_PROPERTY: self.next_write_token or uuid.uuid4().hex}
        if self.embedding:
            properties[EMBEDDING_PROPERTY] = self.embedding
        try:
            self.client.alter_collection_properties(self.collection, properties=properties)
        except Exception as exc:  # noqa: BLE001
            if self.ingest_state():
                raise RuntimeError(f"cannot clear the ingest state of {self.collection!r} before writing") from exc
            logging.getLogger(__name__).warning("cannot record the ingest state on %r: %s", self.collection, exc)
        self._marked_dirty = True

    # -- the ingest lock -------------------------------------------------------------

    def ingest_lock(self, purpose: str, wait_s: float, lease_s: float = 120.0) -> Any:
        """A context manager holding this collection's ingest lock (core/ingest_lock.py).

        Waits up to ``wait_s`` for another run to finish, then raises ``IngestBusy`` naming it.
        """
        from modelchain.core.ingest_lock import TicketLock

        what = f"Milvus collection {self.collection!r} at {self.uri}"
        return TicketLock(self._connect, self.collection, what, lease_s).hold(purpose, wait_s)

    # -- reads -----------------------------------------------------------------------

    def count(self) -> int:
        """Number of rows, deletes included (unlike the lazily updated collection stats)."""
        self.check_collection()
        rows = self.client.query(
            self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def iter_rows(
        self, output_fields: Sequence[str] = ("source", "doc_hash"), batch_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Yield every row (``id`` plus ``output_fields``) in pages, without loading all at once."""
        self.check_collection()
        fields = ["id", *[f for f in output_fields if f != "id"]]
        iterator = self.client.query_iterator(
            self.collection, batch_size=batch_size, output_fields=fields, consistency_level="Strong"
        )
        try:
            while True:
                page = iterator.next()
                if not page:
                    break
                yield from page
        finally:
            iterator.close()

    def doc_hashes(self) -> dict[str, str]:
        """``{source: doc_hash}`` of the stored documents.

        A source whose rows disagree on ``doc_hash`` (a run stopped half-way) maps to "",
        which matches no document, so the next run rewrites it.
        """
        hashes: dict[str, str] = {}
        for row in self.iter_rows(("source", "doc_hash")):
            source, doc_hash = row["source"], row["doc_hash"]
            hashes[source] = doc_hash if hashes.get(source, doc_hash) == doc_hash else ""
        return hashes

    def search(
        self, vectors: "np.ndarray | Sequence[Sequence[float]]", k: int = 5
    ) -> list[list[dict[str, Any]]]:
        """Top-``k`` rows for each query vector, best first.

        Each hit: ``id``, ``score`` (Milvus' distance: a similarity for COSINE and IP, where
        higher is better; a distance for L2, where lower is better), and the stored
        ``text``, ``source``, ``heading_path``, ``position``.
        """
        self.check_collection()
        data = [v.tolist() if hasattr(v, "tolist") else list(v) for v in vectors]
        if not data:
            return []
        results = self.client.search(
            self.collection,
            data=data,
            anns_field=VECTOR_FIELD,
            limit=k,
            output_fields=SEARCH_OUTPUT_FIELDS,
            search_params=self._dense_params(k),
            consistency_level="Strong",
        )
        return [[_hit_dict(hit) for hit in hits] for hits in results]

    def _dense_params(self, k: int) -> dict[str, Any]:
        params: dict[str, Any] = {"metric_type": self.metric}
        if self.index_type == "HNSW":
            params["params"] = {"ef": max(64, k)}
        elif self.index_type.startswith("IVF"):
            params["params"] = {"nprobe": 16}
        return params

    def search_text(self, queries: Sequence[str], k: int = 5) -> list[list[dict[str, Any]]]:
        """Top-``k`` rows for each query by BM25 over ``text``, best first (hits as ``search``).

        ``score`` is Milvus' BM25 value. A collection without the BM25 field is a ValueError.
        """
        self.require_bm25("BM25 search")
        if not queries:
            return []
        results = self.client.search(
            self.collection,
            data=list(queries),
            anns_field=SPARSE_FIELD,
            limit=k,
            output_fields=SEARCH_OUTPUT_FIELDS,
            search_params={"metric_type": "BM25"},
            consistency_level="Strong",
        )
        return [[_hit_dict(hit) for hit in hits] for hits in results]

    def hybrid_search(
        self,
        vectors: "np.ndarray | Sequence[Sequence[float]]",
        queries: Sequence[str],
        k: int = 5,
        ranker: Any = None,
        candidates: int = 50,
    ) -> list[list[dict[str, Any]]]:
        """Top-``k`` rows for each (vector, query text) pair: the dense and BM25 results fused.

        Each side fetches ``max(k, candidates)`` rows; ``ranker`` is a pymilvus ``RRFRanker``
        or ``WeightedRanker`` (dense first, BM25 second); ``score`` is the fused score.
        """
        from pymilvus import AnnSearchRequest, RRFRanker

        self.require_bm25("hybrid search")
        data = [v.tolist() if hasattr(v, "tolist") else list(v) for v in vectors]
        if len(data) != len(queries):
            raise ValueError(f"{len(data)} vectors for {len(queries)} query texts")
        depth = max(k, candidates)
        out: list[list[dict[str, Any]]] = []
        # Milvus fuses per query; a hundred queries per call keeps each request moderate.
        for start in range(0, len(data), 100):
            vectors_part, queries_part = data[start : start + 100], list(queries[start : start + 100])
            requests = [
                AnnSearchRequest(data=vectors_part, anns_field=VECTOR_FIELD, param=self._dense_params(depth),
                                 limit=depth),
                AnnSearchRequest(data=queries_part, anns_field=SPARSE_FIELD, param={"metric_type": "BM25"},
                                 limit=depth),
            ]
            results = self.client.hybrid_search(
                self.collection, requests, ranker=ranker or RRFRanker(), limit=k,
                output_fields=SEARCH_OUTPUT_FIELDS, consistency_level="Strong",
            )
            out.extend([_hit_dict(hit) for hit in hits] for hits in results)
        return out


class MilvusLiteStore(MilvusStore):
    """Milvus Lite: a local ``.db`` folder, served by a Milvus inside this process."""

    local = True
    # Milvus Lite builds indexes at once and cannot be waited on (the wait logs a server error).
    waits_for_index = False

    @classmethod
    def uri_problem(cls, uri: str) -> Optional[str]:
        if not is_local_uri(uri) or not uri.endswith(".db"):
            return f"a Milvus Lite path must end with .db, got {uri!r}"
        return None

    def _normalized_uri(self, uri: str) -> str:
        return os.path.abspath(uri)

    def _connect(self) -> Any:
        from pymilvus import MilvusClient

        Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        iterator_log = logging.getLogger("pymilvus.client.iterator.query_iterator")
        if not any(isinstance(f, _LiteIteratorNotice) for f in iterator_log.filters):
            iterator_log.addFilter(_LiteIteratorNotice())
        with _lite_lock:
            client = MilvusClient(self.uri)
            _lite_open[self.uri] = _lite_open.get(self.uri, 0) + 1
        return client

    def ingest_lock(self, purpose: str, wait_s: float, lease_s: float = 120.0) -> Any:
        """The lock file beside the ``.db`` folder (one process serves a folder at a time):
        the store is closed before the lock is let go, so the next run can open the folder."""
        from modelchain.core.ingest_lock import FileLock

        what = f"Milvus Lite {self.uri} (collection {self.collection!r})"
        return FileLock(f"{self.uri}.lock", what).hold(purpose, wait_s, on_release=self.close)

    def _release(self) -> None:
        with _lite_lock:
            remaining = _lite_open.get(self.uri, 1) - 1
            if remaining > 0:
                _lite_open[self.uri] = remaining
                return
            _lite_open.pop(self.uri, None)
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)


class MilvusServerStore(MilvusStore):
    """A Milvus server or cluster at a URI (``http(s)://``, ``tcp://``, ``unix:``), with a token."""

    token_env = MILVUS_TOKEN_ENV

    @classmethod
    def uri_problem(cls, uri: str) -> Optional[str]:
        if is_local_uri(uri):
            return f"a Milvus server URI starts with http://, https://, tcp:// or unix:, got {uri!r}"
        return None

    def _connect(self) -> Any:
        from pymilvus import MilvusClient

        return MilvusClient(self.uri, token=self.token or "")


# The vector stores by the name `rag.milvus.backend` gives.
VECTOR_STORES: dict[str, type[MilvusStore]] = {"lite": MilvusLiteStore, "server": MilvusServerStore}


def store_class(backend: str) -> type[MilvusStore]:
    """The implementation registered as ``backend``; a ConfigError naming the key if none is."""
    try:
        return VECTOR_STORES[backend]
    except KeyError:
        from modelchain.core.config import ConfigError

        raise ConfigError(
            f"rag.milvus.backend: unknown vector store {backend!r}; registered: {', '.join(VECTOR_STORES)}"
        ) from None


def open_store(rag: "DictConfig") -> MilvusStore:
    """The collection of a typed ``rag`` config: ``rag.milvus`` picks the store, ``rag.embedding.dim`` the size.

    Its writes record ``rag.embedding``'s identity and refuse a collection written by another.
    """
    store = store_class(rag.milvus.backend).from_config(rag.milvus, rag.embedding.dim)
    store.embedding = embedding_identity(rag.embedding)
    return store


def ingest_lock(rag: "DictConfig", purpose: str) -> Any:
    """The ingest lock of the collection of a typed ``rag`` config (``rag.lock``), as a context manager.

    Take it before opening the store: Milvus Lite serves a folder to one process at a time,
    so a run must not even connect while another holds it.
    """
    store = open_store(rag)  # never connected: neither lock needs this store's client
    return store.ingest_lock(purpose, rag.lock.wait_s, rag.lock.lease_s)


def open_index(rag: "DictConfig") -> MilvusStore:
    """The collection the ingest steps of a typed ``rag`` config write, behind the alias readers use.

    ``rag.milvus.collection`` is an alias; the index behind it is ``<alias>__<key>``, the key
    a hash of the embedding identity and the chunking. A change of either makes a new index,
    built while the alias keeps pointing at the old one, and moved to by ``publish()`` once
    verified. A collection written before aliases, under the very name, is written in place.
    """
    import hashlib

    store = open_store(rag)
    if store.exists() and not store.is_alias():
        return store
    key = json.dumps({"embedding": store.embedding, "chunk": [rag.chunk.tokens, rag.chunk.overlap]}, sort_keys=True)
    index = store_class(rag.milvus.backend)(
        rag.milvus.uri, f"{rag.milvus.collection}__{hashlib.sha256(key.encode()).hexdigest()[:10]}",
        rag.embedding.dim, index_type=rag.milvus.index_type, metric=rag.milvus.metric, token=store.token,
    )
    store.close()
    index.embedding, index.alias = store.embedding, rag.milvus.collection
    return index


def embedding_identity(embedding: Any) -> str:
    """What makes vectors comparable: model name and weights, runtime (and dtype), size, normalisation."""
    model = embedding.model or "packaged"
    runtime = f"{embedding.runtime}/{embedding.dtype}" if embedding.runtime == "torch" else embedding.runtime
    return (f"{embedding.name} (model {model}, runtime {runtime}, dim {embedding.dim}"
            f"{', normalized' if embedding.normalize else ''})")


def check_config(cfg: "DictConfig", need: Callable[[bool, str, str], None]) -> None:
    """The ``rag.milvus`` checks (core.config.OWNER_CHECKS): a registered store that can open the URI."""
    milvus = cfg.rag.milvus
    need(milvus.backend in VECTOR_STORES, "rag.milvus.backend",
         f"unknown vector store {milvus.backend!r}; registered: {', '.join(VECTOR_STORES)}")
    if milvus.backend in VECTOR_STORES:
        problem = VECTOR_STORES[milvus.backend].uri_problem(milvus.uri)
        need(problem is None, "rag.milvus.uri", f"{problem} (rag.milvus.backend is {milvus.backend})")
    need(milvus.metric in METRICS, "rag.milvus.metric", f"must be COSINE, IP or L2, got {milvus.metric!r}")


def fulltext(row: dict[str, Any]) -> str:
    """What BM25 indexes for a row: its document's title, its heading path and its text."""
    document = (row.get("metadata") or {}).get("document") or {}
    title = document.get("title") if isinstance(document, dict) else None
    head = " ".join(str(part) for part in (title, row.get("heading_path")) if part)
    text = f"{head}\n{row['text']}" if head else str(row["text"])
    encoded = text.encode("utf-8")
    # The text alone fits (its own limit is the same); only a long title or path can push it over.
    return encoded[:MAX_FULLTEXT_BYTES].decode("utf-8", "ignore") if len(encoded) > MAX_FULLTEXT_BYTES else text


def _bm25_type() -> Any:
    from pymilvus import FunctionType

    return FunctionType.BM25


def _hit_dict(hit: Any) -> dict[str, Any]:
    entity = hit["entity"]
    return {
        "id": hit["id"],
        "score": float(hit["distance"]),
        **{field: entity.get(field) for field in SEARCH_OUTPUT_FIELDS},
    }

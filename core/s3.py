"""The one S3 client factory and S3 URI parser: adapters, training data and RAG corpora alike.

Endpoint rule, first set wins:

1. ``AWS_ENDPOINT_URL_S3``: boto3's own variable for S3 alone;
2. ``AWS_ENDPOINT_URL``: boto3's own variable for every AWS service;
3. ``MLFLOW_S3_ENDPOINT_URL``: the variable MLflow's S3 artifact code reads, so a deployment
   that configured MLflow for an S3-compatible server reaches the same server everywhere;
4. none: AWS S3 itself.

A custom endpoint (an S3-compatible server such as SeaweedFS or MinIO) gets path-style
addressing. ``MLFLOW_S3_IGNORE_TLS=true`` turns off certificate checks, as in MLflow.
Credentials come from the usual AWS chain (keys in the environment, a profile, or the pod's
IAM role); the region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else us-east-1.

boto3 is imported inside the functions: the CLI stays fast without it.
"""

from __future__ import annotations

import os
from typing import Any, Optional

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


class S3UriError(ValueError):
    """A string that is not an ``s3://bucket/key`` URI."""


def endpoint_url() -> Optional[str]:
    """The S3 endpoint by the rule above, or None for AWS S3."""
    for name in ENDPOINT_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def client() -> Any:
    """A boto3 S3 client for the endpoint of `endpoint_url`.

    A fresh session each call: boto3's default session caches the credentials it first
    found, and these must follow the environment. Few retries and short connect timeouts:
    a wrong endpoint fails in seconds, not minutes.
    """
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url()
    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint else {},
    )
    verify = os.environ.get("MLFLOW_S3_IGNORE_TLS", "").lower() not in ("1", "true")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, config=config, verify=verify, region_name=region
    )


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; the key without outer slashes."""
    if not uri.startswith("s3://"):
        raise S3UriError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise S3UriError(f"{uri}: no bucket in the S3 URI")
    return bucket, key.strip("/")


class UnsafeKeyError(ValueError):
    """An S3 key that would land outside the folder it is downloaded into; the message names it."""


def relative_key(bucket: str, prefix: str, key: str) -> str:
    """The part of `key` below the folder of the listing `prefix`, refused unless it stays inside.

    Every download of adapters, checkpoints, training data and corpora passes its keys through
    this rule before a key becomes a local path or a document's name: below the prefix's
    folder (`prefix` up to its last `/`; the whole key for a prefix without one) a key may not
    be absolute (`/tmp/x`), hold `.` or `..`, or have empty parts (`a//b`, as in
    `adapter//tmp/x`, which a plain path join turns into `/tmp/x`). One trailing `/` marks a
    folder (what S3 consoles create): returned as is, and callers skip it; so is "", the
    prefix's own folder marker. Raises UnsafeKeyError naming the key.
    """
    folder = prefix[: prefix.rfind("/") + 1]
    if not key.startswith(prefix):
        raise UnsafeKeyError(f"s3://{bucket}/{key}: refused, the listing of {prefix!r} returned a key outside it")
    rel = key[len(folder):]
    body = rel[:-1] if rel.endswith("/") else rel
    if not body:
        return rel
    parts = body.split("/")
    if "\x00" in body or any(part in ("", ".", "..") for part in parts):
        why = ("it is absolute" if body.startswith("/") else
               "it holds '..'" if ".." in parts else "it holds '.'" if "." in parts else
               "it holds a NUL byte" if "\x00" in body else "it has an empty part ('//')")
        where = f"s3://{bucket}/{folder}" if folder else f"s3://{bucket}"
        raise UnsafeKeyError(f"s3://{bucket}/{key}: refused, the key would leave its folder {where} ({why})")
    return rel

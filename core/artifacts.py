"""Artifact store for adapters: local disk or MLflow's server by default, S3 through boto3.

Every uploaded folder gets a manifest (`modelchain_manifest.json`: size and sha256 of each
file), uploaded last, so a folder with a manifest is complete; downloads are verified against
it. On S3 the files go up with boto3's managed transfer (multipart above a threshold, parts in
parallel), so multi-GB adapters and checkpoints do not need to fit one PUT.

boto3 and mlflow are imported inside the functions: the CLI stays fast without them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from modelchain.core import s3
from modelchain.core.io import atomic_write_json, sha256_file, sha256_text

MANIFEST = "modelchain_manifest.json"
MANIFEST_FORMAT = "modelchain.manifest/1"

# Multipart settings; S3 needs parts of at least 5 MiB (except the last one).
MIB = 1024 * 1024
MIN_PART_BYTES = 5 * MIB
DEFAULT_MULTIPART_THRESHOLD_MB = 64
DEFAULT_MULTIPART_CHUNK_MB = 64
DEFAULT_MAX_CONCURRENCY = 4

# S3 error codes that mean "these credentials are wrong or not allowed here".
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
                     "ExpiredToken", "AuthorizationHeaderMalformed"}


class ArtifactError(RuntimeError):
    """An artifact that cannot be stored or fetched; the message is one line and names the URI."""


class ChecksumError(ArtifactError):
    """A downloaded file does not match the manifest recorded at upload."""


# --------------------------------------------------------------------------- manifest
def build_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Size and sha256 of every file under `folder` (except an older manifest)."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return {
        "format": MANIFEST_FORMAT,
        "algorithm": "sha256",
        "files": files,
        "total_bytes": sum(f["size"] for f in files.values()),
    }


def manifest_digest(manifest: dict[str, Any]) -> str:
    """One hash for the whole folder: recorded on the model version as lineage."""
    return sha256_text(json.dumps(manifest["files"], sort_keys=True))


def read_manifest(folder: str | os.PathLike) -> Optional[dict[str, Any]]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ChecksumError(f"{path}: manifest is not valid JSON ({exc.msg})") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ChecksumError(f"{path}: unknown manifest format {manifest.get('format')!r}")
    return manifest


def verify_folder(folder: str | os.PathLike, manifest: dict[str, Any], *, origin: str = "") -> None:
    """Raise ChecksumError naming the first file that is missing or differs from `manifest`."""
    folder = Path(folder)
    where = origin or str(folder)
    for rel, expected in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            raise ChecksumError(f"{where}: {rel} is listed in the manifest but missing")
        if path.stat().st_size != expected["size"]:
            raise ChecksumError(f"{where}: {rel} has {path.stat().st_size} bytes, manifest says {expected['size']}")
        actual = sha256_file(path)
        if actual != expected["sha256"]:
            raise ChecksumError(
                f"{where}: {rel} sha256 {actual[:12]}... does not match the manifest's {expected['sha256'][:12]}..."
            )


# --------------------------------------------------------------------------- S3
def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key") (core.s3's parser, as an ArtifactError)."""
    try:
        return s3.split_uri(uri)
    except s3.S3UriError as exc:
        raise ArtifactError(str(exc)) from None


def transfer_config(
    threshold_mb: Optional[float] = None, chunk_mb: Optional[float] = None, max_concurrency: Optional[int] = None
):
    """boto3 TransferConfig: multipart above `threshold_mb`, parts of `chunk_mb`.

    Defaults come from MODELCHAIN_S3_MULTIPART_THRESHOLD_MB, MODELCHAIN_S3_MULTIPART_CHUNK_MB
    and MODELCHAIN_S3_MAX_CONCURRENCY, else 64 MB, 64 MB and 4.
    """
    from boto3.s3.transfer import TransferConfig

    def setting(given: Optional[float], name: str, default: float) -> float:
        return float(given) if given is not None else float(os.environ.get(name, default))

    threshold = setting(threshold_mb, "MODELCHAIN_S3_MULTIPART_THRESHOLD_MB", DEFAULT_MULTIPART_THRESHOLD_MB)
    chunk = setting(chunk_mb, "MODELCHAIN_S3_MULTIPART_CHUNK_MB", DEFAULT_MULTIPART_CHUNK_MB)
    workers = int(setting(max_concurrency, "MODELCHAIN_S3_MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY))
    return TransferConfig(
        multipart_threshold=int(threshold * MIB),
        multipart_chunksize=max(MIN_PART_BYTES, int(chunk * MIB)),
        max_concurrency=workers,
        use_threads=workers > 1,
    )


def s3_client():
    """The S3 client of core.s3 (its endpoint rule covers MLFLOW_S3_ENDPOINT_URL)."""
    return s3.client()


def _s3_error(exc: BaseException, uri: str) -> ArtifactError:
    """botocore's many exception kinds, as one line that says what to fix."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    cause = exc
    # boto3's transfer wraps the ClientError (S3UploadFailedError); look for the original.
    while cause is not None and not isinstance(cause, (ClientError, NoCredentialsError, EndpointConnectionError)):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, NoCredentialsError):
        return ArtifactError(f"{uri}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if isinstance(cause, EndpointConnectionError):
        return ArtifactError(f"{uri}: cannot reach the S3 endpoint ({cause.kwargs.get('endpoint_url', '')})")
    if isinstance(cause, ClientError):
        code = str(cause.response.get("Error", {}).get("Code", ""))
        if code in _CREDENTIAL_CODES:
            return ArtifactError(
                f"{uri}: S3 refused the credentials ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )
        if code in ("NoSuchBucket", "404"):
            return ArtifactError(f"{uri}: no such S3 bucket or key ({code})")
        return ArtifactError(f"{uri}: S3 error {code}: {cause.response.get('Error', {}).get('Message', '')}".strip())
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ArtifactError(f"{uri}: S3 transfer failed: {first}")


def s3_upload_folder(folder: Path, files: list[str], dest_uri: str, *, transfer=None) -> None:
    """Upload `files` (relative to `folder`) under `dest_uri`, in order."""
    bucket, prefix = split_s3_uri(dest_uri)
    s3 = s3_client()
    config = transfer or transfer_config()
    for rel in files:
        key = f"{prefix}/{rel}" if prefix else rel
        try:
            s3.upload_file(str(folder / rel), bucket, key, Config=config)
        except Exception as exc:  # botocore/boto3 raise several kinds; one line each
            raise _s3_error(exc, f"s3://{bucket}/{key}") from exc


def s3_download_folder(source_uri: str, dest: Path, *, transfer=None) -> int:
    """Download every object under `source_uri` into `dest`; returns the number of files."""
    bucket, prefix = split_s3_uri(source_uri)
    s3 = s3_client()
    config = transfer or transfer_config()
    count = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
            for item in page.get("Contents", []):
                rel = item["Key"][len(prefix) + 1:]
                if not rel or rel.endswith("/") or ".." in Path(rel).parts:
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, item["Key"], str(target), Config=config)
                count += 1
    except Exception as exc:  # botocore/boto3 raise several kinds; one line each
        raise _s3_error(exc, source_uri) from exc
    if count == 0:
        raise ArtifactError(f"{source_uri}: no files there")
    return count


# --------------------------------------------------------------------------- runs
def upload_to_run(mlflow_client, run_id: str, folder: str | os.PathLike, artifact_path: str, *, transfer=None) -> dict:
    """Store `folder` as `artifact_path` of the run, manifest last; returns the manifest.

    s3:// artifact locations are written with boto3 directly (multipart, our TransferConfig);
    anything else (a local folder, mlflow-artifacts:/ through the server) goes through MLflow.
    """
    folder = Path(folder)
    manifest = build_manifest(folder)
    artifact_uri = mlflow_client.get_run(run_id).info.artifact_uri
    with tempfile.TemporaryDirectory(prefix="modelchain-manifest-") as tmp:
        atomic_write_json(Path(tmp) / MANIFEST, manifest)
        if artifact_uri.startswith("s3://"):
            dest = f"{artifact_uri.rstrip('/')}/{artifact_path}"
            s3_upload_folder(folder, list(manifest["files"]), dest, transfer=transfer)
            s3_upload_folder(Path(tmp), [MANIFEST], dest, transfer=transfer)
        else:
            for rel in manifest["files"]:
                parent = Path(artifact_path, rel).parent.as_posix()
                mlflow_client.log_artifact(run_id, str(folder / rel), parent)
            mlflow_client.log_artifact(run_id, str(Path(tmp) / MANIFEST), artifact_path)
    return manifest


def download_folder(source_uri: str, dest: str | os.PathLike, *, tracking_uri: Optional[str] = None, transfer=None) -> Path:
    """Fetch the folder at `source_uri` to `dest`, verified against its manifest when it has one.

    Downloads into a temporary folder beside `dest` and renames it into place only when every
    checksum matches, so `dest` is never half-written or corrupt.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        if source_uri.startswith("s3://"):
            s3_download_folder(source_uri, tmp, transfer=transfer)
            fetched = tmp
        else:
            fetched = _mlflow_download(source_uri, tmp, tracking_uri)
        manifest = read_manifest(fetched)
        if manifest is not None:
            verify_folder(fetched, manifest, origin=source_uri)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(fetched, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _mlflow_download(source_uri: str, into: Path, tracking_uri: Optional[str]) -> Path:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        return Path(download_artifacts(artifact_uri=source_uri, dst_path=str(into), tracking_uri=tracking_uri))
    except (MlflowException, OSError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise ArtifactError(f"{source_uri}: download failed: {text}") from exc

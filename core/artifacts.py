"""Artifact store for adapters: local disk or MLflow's server by default, S3 through boto3.

Every adapter carries a manifest (`modelchain_manifest.json`: size and sha256 of each file),
written by the finetune step, required to register, uploaded last (a stored folder with a
manifest is complete). Its digest is the model version's `lineage.adapter_sha256`; every
download and the serving side check the folder against both (verify_adapter). Downloaded
S3 keys pass core.s3.relative_key, so no key is written outside its folder. On S3 the files go up with boto3's managed transfer (multipart above a threshold, parts in
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


def write_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Build the manifest of `folder` and store it there (atomically); returns it.

    The finetune step calls this on every adapter it writes: registration refuses a folder
    without one, so what is registered is exactly what training wrote.
    """
    manifest = build_manifest(folder)
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike) -> Optional[dict[str, Any]]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChecksumError(f"{path}: manifest is not valid JSON ({getattr(exc, 'msg', exc)})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ChecksumError(f"{path}: unknown manifest format {found!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str) for v in files.values()
    ):
        raise ChecksumError(f"{path}: manifest has no valid 'files' table (path -> size and sha256)")
    for rel in files:
        _check_relative_path(rel, f"{path}")
    return manifest


def _check_relative_path(rel: str, where: str) -> None:
    """A manifest entry is a plain relative path: no absolute paths, '..', '.' or empty parts."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise ChecksumError(f"{where}: manifest entry {rel!r} is not a path inside the folder")


def verify_folder(folder: str | os.PathLike, manifest: dict[str, Any], *, origin: str = "") -> None:
    """Raise ChecksumError naming the first file that is missing, differs from `manifest` or is not in it.

    The message gives the file and both digests, the manifest's (expected) and the file's (found).
    A file the manifest does not list is refused too: an adapter is exactly what was registered.
    """
    folder = Path(folder)
    where = origin or str(folder)
    for rel, expected in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            raise ChecksumError(f"{where}: {rel} is missing: expected sha256 {expected['sha256']}, found no file")
        size = path.stat().st_size
        actual = sha256_file(path)
        if size != expected["size"] or actual != expected["sha256"]:
            raise ChecksumError(
                f"{where}: {rel} differs from the manifest: expected sha256 {expected['sha256']} "
                f"({expected['size']} bytes), found sha256 {actual} ({size} bytes)"
            )
    listed = set(manifest["files"]) | {MANIFEST}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if (path.is_file() or path.is_symlink()) and rel not in listed:
            found = sha256_file(path) if path.is_file() else "a symlink"
            raise ChecksumError(f"{where}: {rel} is not in the manifest: expected no such file, found sha256 {found}")


def verify_adapter(folder: str | os.PathLike, expected_digest: str, *, origin: str = "") -> dict[str, Any]:
    """Check a whole adapter folder: its manifest's digest is `expected_digest`, every file matches.

    `expected_digest` is the model version's `lineage.adapter_sha256` (manifest_digest at
    registration). Raises ChecksumError with one line naming the file and both digests;
    returns the manifest.
    """
    folder = Path(folder)
    where = origin or str(folder)
    if not expected_digest:
        raise ChecksumError(f"{where}: no expected manifest digest (lineage.adapter_sha256) to check the adapter against")
    if not folder.is_dir():
        raise ChecksumError(f"{where}: no such adapter folder: expected manifest digest {expected_digest}, found nothing")
    manifest = read_manifest(folder)
    if manifest is None:
        raise ChecksumError(
            f"{where}: {MANIFEST} is missing: expected manifest digest {expected_digest}, found no manifest"
        )
    found = manifest_digest(manifest)
    if found != expected_digest:
        raise ChecksumError(
            f"{where}: {MANIFEST} is not the registered one: expected manifest digest {expected_digest}, found {found}"
        )
    verify_folder(folder, manifest, origin=where)
    return manifest


def local_path(dest: str | os.PathLike, rel: str) -> Path:
    """`dest / rel` for a relative path already checked by core.s3.relative_key, proven inside `dest`."""
    dest = Path(dest).resolve()
    target = (dest / rel).resolve()
    if target == dest or not target.is_relative_to(dest):
        raise ArtifactError(f"{rel}: refused, it would be written outside {dest}")
    return target


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
    """Download every object under `source_uri` into `dest`; returns the number of files.

    Every key is checked (core.s3.relative_key) before anything is written: a key that is
    absolute, holds `..` or has empty parts below the prefix is refused, naming the key.
    """
    bucket, prefix = split_s3_uri(source_uri)
    client = s3_client()
    config = transfer or transfer_config()
    listing = f"{prefix}/" if prefix else ""
    wanted: list[tuple[str, Path]] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listing):
            for item in page.get("Contents", []):
                rel = s3.relative_key(bucket, listing, item["Key"])
                if rel and not rel.endswith("/"):
                    wanted.append((item["Key"], local_path(dest, rel)))
        for key, target in wanted:
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target), Config=config)
    except (s3.UnsafeKeyError, ArtifactError) as exc:
        raise ArtifactError(str(exc)) from None
    except Exception as exc:  # botocore/boto3 raise several kinds; one line each
        raise _s3_error(exc, source_uri) from exc
    if not wanted:
        raise ArtifactError(f"{source_uri}: no files there")
    return len(wanted)


# --------------------------------------------------------------------------- runs
def checked_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest `folder` carries, after checking every file against it.

    A folder without one, or with a file that is missing, differs or is not listed, is
    refused (ChecksumError, one line naming the folder or file).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise ChecksumError(
            f"{folder}: no {MANIFEST}; an adapter is registered only with the manifest the finetune step "
            f"writes (size and sha256 of every file)"
        )
    verify_folder(folder, manifest)
    return manifest


def upload_to_run(
    mlflow_client, run_id: str, folder: str | os.PathLike, artifact_path: str, *, manifest=None, transfer=None
) -> dict:
    """Store `folder` as `artifact_path` of the run, manifest last; returns the manifest.

    The folder must carry its manifest and match it (checked_manifest; `manifest` given: the
    caller checked it already): nothing is uploaded otherwise.
    s3:// artifact locations are written with boto3 directly (multipart, our TransferConfig);
    anything else (a local folder, mlflow-artifacts:/ through the server) goes through MLflow.
    """
    folder = Path(folder)
    manifest = manifest or checked_manifest(folder)
    artifact_uri = mlflow_client.get_run(run_id).info.artifact_uri
    if artifact_uri.startswith("s3://"):
        dest = f"{artifact_uri.rstrip('/')}/{artifact_path}"
        s3_upload_folder(folder, list(manifest["files"]), dest, transfer=transfer)
        s3_upload_folder(folder, [MANIFEST], dest, transfer=transfer)
    else:
        for rel in manifest["files"]:
            parent = Path(artifact_path, rel).parent.as_posix()
            mlflow_client.log_artifact(run_id, str(folder / rel), parent)
        mlflow_client.log_artifact(run_id, str(folder / MANIFEST), artifact_path)
    return manifest


def download_folder(
    source_uri: str,
    dest: str | os.PathLike,
    *,
    expected_digest: str,
    tracking_uri: Optional[str] = None,
    transfer=None,
) -> Path:
    """Fetch the adapter folder at `source_uri` to `dest`, proven by verify_adapter.

    `expected_digest` is the manifest digest recorded at registration. Downloads into a
    temporary folder beside `dest` and renames it into place only when the manifest and every
    file match, so `dest` is never half-written, corrupt or holding a file nobody registered.
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
        verify_adapter(fetched, expected_digest, origin=source_uri)
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

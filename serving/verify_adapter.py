"""Prove an adapter folder before vLLM loads it: `python -m modelchain.serving.verify_adapter DIR --sha256 DIGEST`.

The serving side's half of "adapters proven from registry to server": the init container of
the rendered Deployments runs it after its S3 sync, and the local stack calls `verify` before
it loads an adapter. DIGEST is the model version's `lineage.adapter_sha256`; the folder's
manifest must have that digest and every file must match the manifest, with no file missing
or added (core.artifacts.verify_adapter). Exit 0 and one line on success; otherwise exit 1
and one line naming the file and both digests, so the pod does not start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from modelchain.core import artifacts


def verify(folder: str | Path, sha256: str, *, origin: str = "") -> dict:
    """Raise artifacts.ChecksumError unless `folder` is exactly the adapter with manifest digest `sha256`."""
    return artifacts.verify_adapter(folder, sha256, origin=origin)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelchain.serving.verify_adapter",
        description="Check an adapter folder against its manifest and the model version's manifest digest.",
    )
    parser.add_argument("folder", help="the adapter folder (as synced from the registry's artifact store)")
    parser.add_argument("--sha256", required=True, metavar="DIGEST",
                        help="the model version's lineage.adapter_sha256 (`modelchain lineage MODEL/N` shows it)")
    args = parser.parse_args(argv)
    try:
        manifest = verify(args.folder, args.sha256)
    except artifacts.ChecksumError as exc:
        print(f"verify_adapter: refused: {exc}", file=sys.stderr)
        return 1
    total = sum(entry["size"] for entry in manifest["files"].values())
    print(f"verify_adapter: {args.folder}: {len(manifest['files'])} files, {total} bytes "
          f"match manifest digest {args.sha256}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

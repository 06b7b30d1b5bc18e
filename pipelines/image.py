"""Build the components image (the Dockerfile at the top of the repository): `make image`.

    python -m modelchain.pipelines.image [--engine podman|docker] [--base IMAGE]

1. The wheels: every wheel the components need goes into ``.wheels/`` (pip takes them from
   its cache, which the venv setup filled; torch from the local CPU wheel).
2. The base: ``--base``, else the Dockerfile's public Python 3.11 slim image when the engine
   has it or can pull it, else one made here from Debian bookworm with debootstrap (its
   python3 is 3.11) and imported into the engine as ``localhost/modelchain-base:bookworm``.
3. The build, tagged ``localhost/modelchain:<version>`` and ``localhost/modelchain:<content>``,
   where <content> is a digest of the Dockerfile, the sources and the wheel set: the same
   inputs give the same tag. The image's ID and tags go to ``build/image.json``.

The last line printed is the image reference (the content tag).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PUBLIC_BASE = "docker.io/library/python:3.11-slim"
DEBIAN_BASE = "localhost/modelchain-base:bookworm"
IMAGE_NAME = "localhost/modelchain"
EXTRAS = "train,eval,registry,data,rag,cluster"
BUILD_TOOLS = ("setuptools==84.2.1", "wheel==0.48.0")


class ImageError(RuntimeError):
    """Something the user can fix; printed as one line."""


def engine(choice: str | None = None) -> str:
    """podman, else docker: the first that is installed (or the one asked for)."""
    for name in [choice] if choice else ["podman", "docker"]:
        if name and shutil.which(name):
            return name
    raise ImageError(
        f"no container engine: {choice or 'podman or docker'} is not installed "
        "(on Debian: apt-get install podman runc; `make image` does this when it can)"
    )


def version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def fill_wheels(wheels: Path) -> None:
    """Every wheel the image installs, built or copied from pip's cache (no index in the build)."""
    wheels.mkdir(exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), "-c", str(REPO / "constraints.txt"),
        "torch==2.13.0", *BUILD_TOOLS, f"{REPO}[{EXTRAS}]",
    ]
    print(f"image: wheels into {wheels}", flush=True)
    _run(command)
    for own in wheels.glob("modelchain-*.whl"):  # the builder stage builds modelchain's own wheel
        own.unlink()


def content_tag(wheels: Path) -> str:
    """A digest of what goes into the image: Dockerfile, tracked sources and the wheel names."""
    digest = hashlib.sha256()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in sorted(f for f in files if f):
        path = REPO / name.decode()
        if path.is_file() and not name.startswith(b"tests/"):
            digest.update(name + b"\0" + path.read_bytes() + b"\0")
    for wheel in sorted(p.name for p in wheels.glob("*.whl")):
        digest.update(wheel.encode() + b"\0")
    return digest.hexdigest()[:12]


def has_image(tool: str, reference: str) -> bool:
    return subprocess.run([tool, "image", "inspect", reference], capture_output=True).returncode == 0


def choose_base(tool: str, base: str | None) -> str:
    if base:
        if not has_image(tool, base) and subprocess.run([tool, "pull", base], capture_output=True).returncode != 0:
            raise ImageError(f"--base {base}: the image is not there and cannot be pulled")
        return base
    if has_image(tool, PUBLIC_BASE):
        return PUBLIC_BASE
    try:
        pulled = subprocess.run([tool, "pull", "--quiet", PUBLIC_BASE], capture_output=True, timeout=120)
        if pulled.returncode == 0:
            return PUBLIC_BASE
    except subprocess.TimeoutExpired:
        pass
    print(f"image: {PUBLIC_BASE} cannot be pulled; making {DEBIAN_BASE} with debootstrap", flush=True)
    if not has_image(tool, DEBIAN_BASE):
        debian_base(tool)
    return DEBIAN_BASE


def debian_base(tool: str) -> None:
    """Debian bookworm (python3 3.11) with venv and CA certificates, imported as DEBIAN_BASE."""
    if not shutil.which("debootstrap"):
        raise ImageError("debootstrap is not installed (apt-get install debootstrap), and no base image can be pulled")
    with tempfile.TemporaryDirectory(prefix="modelchain-rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates,passwd",
              "bookworm", str(rootfs)], quiet=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        _run([tool, "import", "-", DEBIAN_BASE], stdin=tar.stdout, quiet=True)
        if tar.wait() != 0:
            raise ImageError("packing the debootstrap root file system failed")


def build(tool: str, base: str, wheels: Path) -> str:
    tag = content_tag(wheels)
    reference = f"{IMAGE_NAME}:{tag}"
    command = [tool, "build", "--build-arg", f"BASE={base}", "--build-context", f"wheels={wheels}", "--tag", reference, "--tag", f"{IMAGE_NAME}:{version()}",
               "--file", str(REPO / "Dockerfile"), str(REPO)]
    if tool == "podman":
        command[2:2] = ["--network=none", "--layers"]
    print(f"image: building {reference} on {base}", flush=True)
    _run(command)
    inspect = json.loads(subprocess.run([tool, "image", "inspect", reference], capture_output=True, text=True,
                                        check=True).stdout)[0]
    record = {"reference": reference, "tags": [reference, f"{IMAGE_NAME}:{version()}"], "id": inspect["Id"],
              "digest": inspect.get("Digest", ""), "base": base, "size_bytes": inspect.get("Size")}
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build" / "image.json").write_text(json.dumps(record, indent=2) + "\n")
    return reference


def _run(command: list[str], *, quiet: bool = False, **kwargs) -> None:
    done = subprocess.run(command, capture_output=quiet, text=True, **kwargs)
    if done.returncode != 0:
        detail = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
        raise ImageError(f"{' '.join(command[:3])} ... failed with exit code {done.returncode} {' '.join(detail)}".strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make image", description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("podman", "docker"), help="default: podman, else docker")
    parser.add_argument("--base", help=f"base image (default: {PUBLIC_BASE}, else one made with debootstrap)")
    parser.add_argument("--wheels", default=str(REPO / ".wheels"), help="wheel folder (default: .wheels)")
    args = parser.parse_args(argv)
    try:
        tool = engine(args.engine)
        wheels = Path(args.wheels)
        fill_wheels(wheels)
        reference = build(tool, choose_base(tool, args.base), wheels)
    except ImageError as exc:
        print(f"make image: {exc}", file=sys.stderr)
        return 2
    print(reference)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    sys.exit(main())

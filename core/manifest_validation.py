"""Validate rendered manifests offline, strictly (every `modelchain render`: training, infra,
serving, and the tests): custom kinds against their CRDs, core kinds
against the Kubernetes OpenAPI schemas of `kubernetes-validate`.

A CRD's `openAPIV3Schema` is applied with jsonschema after making it strict: an object that
lists properties gets `additionalProperties: false` unless the CRD marks it
`x-kubernetes-preserve-unknown-fields` (the API server would silently prune an unknown field;
here it is an error). `metadata` of a custom resource is checked against the core ObjectMeta
schema. CEL rules (`x-kubernetes-validations`) are not evaluated.

Errors name the manifest and the field path, e.g.
`nodepool-gpu-training.yaml (NodePool gpu-training): spec.disruption.budgets[0].nodes: ...`.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

# Where the upstream CRDs are looked for, in order, when no directory is given.
CRD_DIR_ENV = "MODELCHAIN_CRD_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
CORE_GROUPS = {"", "apps", "batch", "storage.k8s.io", "rbac.authorization.k8s.io", "networking.k8s.io", "policy"}
KUBERNETES_VERSION = "1.33"  # the EKS version the manifests target; kubernetes-validate picks its schemas
# The PyTorchJob CRD is large: libyaml reads it in well under a second, pure Python does not.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(ValueError):
    """One or more manifests are invalid; the message lists each with its field path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid manifest(s):\n" + "\n".join(f"  {p}" for p in problems))


def default_crd_dir() -> Optional[Path]:
    """$MODELCHAIN_CRD_DIR, else ../shared/crds beside the repository; None if neither exists."""
    candidates = [os.environ.get(CRD_DIR_ENV), REPO_ROOT.parent / "shared" / "crds"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def file_name(manifest: dict[str, Any]) -> str:
    """`<kind>-<name>.yaml`, lower case: the file a manifest is written to."""
    return f"{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"


@dataclass
class CrdSchemas:
    """The strict schema of every served version of every CRD in a folder."""

    schemas: dict[tuple[str, str, str], dict]  # (group, version, kind) -> JSON schema
    source: Path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "CrdSchemas":
        folder = Path(folder)
        schemas = {}
        for path in sorted(folder.glob("*.y*ml")):
            for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=_LOADER):
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec.get("versions", []):
                    schema = (version.get("schema") or {}).get("openAPIV3Schema")
                    if schema and version.get("served", True):
                        key = (spec["group"], version["name"], spec["names"]["kind"])
                        schemas[key] = strict(schema)
        if not schemas:
            raise FileNotFoundError(f"{folder}: no CustomResourceDefinition with an openAPIV3Schema")
        return cls(schemas, folder)

    def find(self, api_version: str, kind: str) -> Optional[dict]:
        group, _, version = api_version.rpartition("/")
        return self.schemas.get((group, version, kind))


def strict(schema: Any) -> Any:
    """A copy of a CRD schema in which unknown fields are errors."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key, value in node.items():
            if key in ("properties", "patternProperties", "definitions"):
                for sub in value.values():
                    walk(sub)
            elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
                walk(value)

    walk(schema)
    return schema


def _path(error, prefix: str = "") -> str:
    """`spec.template.spec.taints[0].effect`: where in the manifest an error is."""
    out = prefix
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _errors_against(schema: dict, document: Any, prefix: str = "") -> list[str]:
    import jsonschema

    errors = jsonschema.Draft202012Validator(schema).iter_errors(document)
    return [f"{_path(e, prefix)}: {e.message}" for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))]


@functools.lru_cache(maxsize=1)
def _object_meta_schema() -> dict:
    """The core ObjectMeta schema (strict) from kubernetes-validate, for custom resources."""
    from kubernetes_validate import utils as kv

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(x) for x in kv.major_minor(version).split("."))

    version = [v for v in kv.all_versions() if key(v) <= key(KUBERNETES_VERSION)][-1]
    definitions = kv.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    return {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "$defs": definitions["$defs"]}


def _core_errors(manifest: dict) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{_path(error)}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"apiVersion/kind: {error.message}"]
    return []


def problems(manifest: dict, crds: Optional[CrdSchemas]) -> list[str]:
    """What is wrong with one manifest (empty when it is valid)."""
    api_version, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
    group = api_version.rpartition("/")[0]
    if group in CORE_GROUPS:
        return _core_errors(manifest)
    if crds is None:
        return [f"apiVersion/kind: {api_version} {kind} is a custom resource and no CRD folder was given"]
    schema = crds.find(api_version, kind)
    if schema is None:
        return [f"apiVersion/kind: no CRD for {api_version} {kind} in {crds.source}"]
    found = _errors_against(schema, manifest)
    if isinstance(manifest.get("metadata"), dict):
        # CRD schemas leave metadata open; the API server checks it as ObjectMeta.
        found += _errors_against(_object_meta_schema(), manifest["metadata"], prefix="metadata")
    return found


def validate_all(manifests: Iterable[dict], crd_dir: str | os.PathLike | None = None) -> None:
    """Raise ManifestError listing every invalid manifest, or return if all are valid."""
    manifests = list(manifests)
    crd_dir = crd_dir or default_crd_dir()
    crds = CrdSchemas.load(crd_dir) if crd_dir else None
    found = []
    for manifest in manifests:
        label = f"{file_name(manifest)} ({manifest.get('kind')} {manifest.get('metadata', {}).get('name')})"
        found += [f"{label}: {p}" for p in problems(manifest, crds)]
    if found:
        raise ManifestError(found)


def write_manifests(manifests: list[dict], out_dir: str | os.PathLike, crd_dir: str | os.PathLike | None = None) -> list[Path]:
    """Validate every manifest, then write each to `out_dir/<kind>-<name>.yaml`.

    Nothing is written when any manifest is invalid.
    """
    from modelchain.core.io import atomic_write_text

    validate_all(manifests, crd_dir)
    out = Path(out_dir)
    return [
        atomic_write_text(out / file_name(m), yaml.safe_dump(m, sort_keys=False, default_flow_style=False))
        for m in manifests
    ]

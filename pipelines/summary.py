"""After a local run: where the results are and how to look at them."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def describe(pipeline: str, cfg: DictConfig, outputs: str | Path | None = None) -> str:
    """`outputs`: the kfp.local pipeline root, read when the registry cannot be."""
    return _finetune(cfg, outputs) if pipeline == "finetune" else _rag_ingest(cfg)


def _finetune(cfg: DictConfig, outputs: str | Path | None = None) -> str:
    from modelchain.core import registry
    from modelchain.core.config import registered_model_name

    tracking_uri = cfg.cluster.mlflow.tracking_uri
    try:
        client = registry.client(tracking_uri)
    except registry.RegistryError as exc:
        return _from_gate_report(exc, outputs)
    name = registered_model_name(cfg)
    lines = [f"finetune: MLflow at {tracking_uri}"]
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments() if e.name == cfg.experiment.name],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs:
        run = runs[0]
        lines.append(f"  last gate: {run.data.tags.get('gate.decision')} (run {run.info.run_id})")
        for reason in run.data.tags.get("gate.reasons", "").split(" | "):
            lines.append(f"    {reason}")
        lines.append(f"  reports: {run.info.artifact_uri}/reports, data card: {run.info.artifact_uri}/data")
    try:
        aliases = client.get_registered_model(name).aliases
    except Exception:  # no model registered yet (e.g. the gate refused the first adapter)
        aliases = {}
    for alias, version in sorted(aliases.items()):
        source = client.get_model_version(name, version).source
        lines.append(f"  registered: models:/{name}@{alias} = version {version} ({source})")
    if not aliases:
        lines.append(f"  registered: nothing under {name!r} yet")
    else:
        lines.extend(_canary(client, name))
    lines.append(f"  look: mlflow ui --backend-store-uri {tracking_uri} --port 5000  (then http://127.0.0.1:5000)")
    return "\n".join(lines)


def _from_gate_report(error: Exception, outputs: str | Path | None) -> str:
    """The registry cannot be read: the last gate's decision from its own report artifact."""
    lines = [f"finetune: {error}"]
    reports = sorted(Path(outputs).glob("finetune-*/gate/report"), key=lambda p: p.stat().st_mtime) if outputs else []
    if not reports:
        return "\n".join([*lines, "  no gate report under the task outputs: the run stopped before the gate"])
    text = reports[-1].read_text().splitlines()
    verdict = "passed" if text and text[0].startswith("# Gate PASSED") else "refused"
    lines.append(f"  last gate: {verdict} (report {reports[-1]})")
    if "## Reasons" in text:
        lines += [f"    {line[2:]}" for line in text[text.index("## Reasons") + 1:] if line.startswith("- ")]
    lines.append("  registered: nothing can be read or written while the registry is unreachable")
    return "\n".join(lines)


def _canary(client, name: str) -> list[str]:
    """The newest version's canary outcome and where its rollout report is."""
    newest = max(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    outcome = newest.tags.get("canary.outcome")
    if outcome is None:
        return [f"  canary: version {newest.version} not rolled out (serve.canary.enabled, or `make setup-serve`)"]
    run = client.get_run(newest.run_id) if newest.run_id else None
    where = f"{run.info.artifact_uri}/canary/rollout.md" if run else "its MLflow run"
    return [f"  canary: version {newest.version} {outcome}; rollout report: {where}"]


def _rag_ingest(cfg: DictConfig) -> str:
    from modelchain.core.vectorstore import open_store

    milvus = cfg.rag.milvus
    store = open_store(cfg.rag)
    try:
        count = store.count()
    finally:
        store.close()
    return "\n".join(
        [
            f"rag_ingest: Milvus collection {milvus.collection!r} at {milvus.uri}: {count} chunks",
            "  look: python -c \"from modelchain.core.config import compose; from modelchain.core.retriever import Retriever; "
            "r = Retriever.open(compose('rag_ingest').rag); "
            "print(r.retrieve('How do I run the tests?', k=3))\"",
        ]
    )

"""KFP wrapper of upsert: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output


def upsert(rag: str, embeddings: Input[Dataset], stats: Output[Metrics], changes: Output[Markdown]):
    """Delete the rows of changed and removed documents, then write the new chunks; report what changed."""
    from pathlib import Path

    from modelchain.components.rag_changes import change_line, change_report, load_plan
    from modelchain.components.upsert.logic import write_changes
    from modelchain.core.config import load_group

    plan, vectors = load_plan(embeddings.path)
    counts = write_changes(load_group("rag", rag), plan, vectors)
    for key, value in counts.items():
        stats.log_metric(key, value)
    report_counts, markdown = change_report(plan, counts["deleted"], counts["total_rows"])
    Path(changes.path).write_text(markdown)
    changes.metadata.update(report_counts)  # verify_shards adds up the shards' counts
    print(change_line(report_counts))

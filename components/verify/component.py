"""KFP wrappers of verify: move parameters and artifacts in and out of logic.py.

``verify`` checks one chunk step's output; ``verify_shards`` the outputs of every shard of a
sharded run (rag.shards > 1), collected from the ParallelFor, once all shards have written.
"""

from typing import List

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output


def verify(
    rag: str, chunks: Input[Dataset], quarantine: Input[Dataset], report: Output[Markdown], checks: Output[Metrics]
):
    """Counts and keys agree with the corpus, sampled chunks find themselves, smoke questions their documents."""
    from modelchain.components.verify.logic import verify_step

    verify_step(rag, [chunks.path], [quarantine.path], report, checks)


def verify_shards(
    rag: str,
    chunks: Input[List[Dataset]],
    quarantine: Input[List[Dataset]],
    changes: Input[List[Markdown]],
    report: Output[Markdown],
    checks: Output[Metrics],
):
    """``verify`` over the chunks of all shards, after every shard's upsert (``changes``), and the
    run's change counts added up over the shards."""
    from modelchain.components.verify.logic import verify_step

    verify_step(rag, [a.path for a in chunks], [a.path for a in quarantine], report, checks,
                shard_changes=[a.metadata for a in changes])

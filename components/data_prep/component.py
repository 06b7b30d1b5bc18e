"""KFP wrapper of data_prep: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Markdown, Output


def data_prep(
    settings: str,
    data_uri: str,
    splits: Output[Dataset],
    card: Output[Markdown],
    feedback_since: str = "",
    feedback_until: str = "",
):
    """Read, validate, clean and split the dataset at data_uri into train/val/test (a folder).

    feedback_since/feedback_until bound the production traces taken (data.feedback), e.g.
    "7d" in a weekly recurring run; "" = no bound.
    """
    import json
    import shutil

    from modelchain.components.data_prep.logic import options_from_settings, prepare, with_feedback_window

    config = with_feedback_window(json.loads(settings), feedback_since, feedback_until)
    result = prepare(data_uri, splits.path, **options_from_settings(config))
    shutil.copyfile(result.out_dir / "data_card.md", card.path)
    for name, info in result.card["splits"].items():
        splits.metadata[f"{name}_rows"] = info["count"]
        splits.metadata[f"{name}_sha256"] = info["sha256"]
    splits.metadata["rows_quarantined"] = result.card["rows_quarantined"]
    splits.metadata["rows_deduplicated"] = result.card["rows_deduplicated"]
    splits.metadata["pii_replaced"] = sum(result.card["pii"]["counts"].values())

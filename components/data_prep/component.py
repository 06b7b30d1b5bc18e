"""KFP wrapper of data_prep: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Markdown, Output


def data_prep(
    data: str,
    model: str,
    data_uri: str,
    splits: Output[Dataset],
    card: Output[Markdown],
    feedback_since: str = "",
    feedback_until: str = "",
    workspace: str = "",
):
    """Read, validate, clean and split the dataset at data_uri into train/val/test (a folder).

    `data` and `model` are the config groups (core.config.group_json); feedback_since and
    feedback_until bound the production traces taken (data.feedback), e.g. "7d" in a weekly
    recurring run; "" = no bound. `workspace`: the run's workspace path (cluster.workspace), where
    the splits go instead of into the artifact (components/workspace.py); "" = none.
    """
    import shutil

    from modelchain.components.data_prep.logic import prepare_from_config
    from modelchain.components.workspace import output_folder
    from modelchain.core.config import load_group

    data_config = load_group("data", data, data_uri=data_uri, feedback_since=feedback_since,
                             feedback_until=feedback_until)
    result = prepare_from_config(data_config, load_group("model", model), output_folder(splits, workspace, "splits"))
    shutil.copyfile(result.out_dir / "data_card.md", card.path)
    for name, info in result.card["splits"].items():
        splits.metadata[f"{name}_rows"] = info["count"]
        splits.metadata[f"{name}_sha256"] = info["sha256"]
    splits.metadata["rows_quarantined"] = result.card["rows_quarantined"]
    splits.metadata["rows_deduplicated"] = result.card["rows_deduplicated"]
    splits.metadata["pii_replaced"] = sum(result.card["pii"]["counts"].values())

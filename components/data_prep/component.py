"""KFP wrapper of data_prep: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Dataset, Markdown, Output


def data_prep(settings: str, data_uri: str, splits: Output[Dataset], card: Output[Markdown]):
    """Validate the dataset at data_uri and split it into train/val/test (a folder)."""
    import json
    import shutil

    from modelchain.components.data_prep.logic import FieldMap, prepare

    config = json.loads(settings)
    data = config["data"]
    result = prepare(
        data_uri,
        splits.path,
        fields=FieldMap(**data["fields"]),
        system_prompt=data["system_prompt"],
        val_fraction=data["val_fraction"],
        test_fraction=data["test_fraction"],
        seed=data["seed"],
        max_bad_fraction=data["max_bad_fraction"],
        min_response_chars=data["min_response_chars"],
    )
    shutil.copyfile(result.out_dir / "data_card.md", card.path)
    for name, info in result.card["splits"].items():
        splits.metadata[f"{name}_rows"] = info["count"]
        splits.metadata[f"{name}_sha256"] = info["sha256"]
    splits.metadata["rows_quarantined"] = result.card["rows_quarantined"]

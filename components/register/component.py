"""KFP wrapper of register: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Artifact, Input, Model


def register(settings: str, mlflow_run: Input[Artifact], adapter: Input[Model]) -> str:
    """Register the adapter as a model version with alias challenger; returns models:/NAME/VERSION."""
    import json

    from modelchain.components.register.logic import run

    with open(mlflow_run.path) as handle:
        mlflow_run_id = json.load(handle)["run_id"]
    uri = run(json.loads(settings), mlflow_run_id, adapter.path)
    print(f"registered {uri} (alias challenger)")
    return uri

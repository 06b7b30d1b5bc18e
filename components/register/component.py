"""KFP wrapper of register: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Artifact, Input, Model


def register(model: str, data: str, cluster: str, experiment: str, mlflow_run: Input[Artifact], adapter: Input[Model]) -> str:
    """Register the adapter as a model version with alias challenger; returns models:/NAME/VERSION."""
    from modelchain.components.workspace import input_folder
    import json

    from modelchain.components.register.logic import run
    from modelchain.core.config import load_group

    with open(mlflow_run.path) as handle:
        mlflow_run_id = json.load(handle)["run_id"]
    uri = run(load_group("model", model), load_group("data", data), load_group("cluster", cluster),
              load_group("experiment", experiment), mlflow_run_id, input_folder(adapter))
    print(f"registered {uri} (alias challenger)")
    return uri

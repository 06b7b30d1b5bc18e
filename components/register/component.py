"""KFP wrapper of register: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Input, Model


def register(settings: str, mlflow_run_id: str, adapter: Input[Model]) -> str:
    """Register the adapter as a model version with alias challenger; returns models:/NAME/VERSION."""
    import json

    from modelchain.components.register.logic import run

    uri = run(json.loads(settings), mlflow_run_id, adapter.path)
    print(f"registered {uri} (alias challenger)")
    return uri

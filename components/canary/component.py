"""KFP wrapper of the canary: moves parameters and artifacts in and out of logic.py."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output


def canary(
    serve: str,
    model: str,
    cluster: str,
    eval: str,  # noqa: A002 (named after its config group, as every group parameter is)
    model_uri: str,
    splits: Input[Dataset],
    rollout: Output[Artifact],
    rollout_report: Output[Markdown],
) -> str:
    """Roll the registered version out as a canary; returns promoted, rolled_back or skipped."""
    from modelchain.components.workspace import input_folder
    import shutil
    from pathlib import Path

    from modelchain.components.canary.logic import run
    from modelchain.core.config import load_group

    result = run(load_group("serve", serve), load_group("model", model), load_group("cluster", cluster),
                 model_uri, input_folder(splits), rollout.path, eval_cfg=load_group("eval", eval))
    markdown = Path(rollout.path) / "rollout.md"
    if markdown.exists():
        shutil.copy2(markdown, rollout_report.path)
    else:
        Path(rollout_report.path).write_text(f"# Canary of {model_uri}: {result['outcome']}\n\n{result['reason']}\n")
    rollout_report.metadata["outcome"] = result["outcome"]
    print(f"canary: {model_uri} {result['outcome']} ({result['reason']})")
    return result["outcome"]

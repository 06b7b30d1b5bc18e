"""Large folders on the run's workspace (KFP 2.15+ `dsl.PipelineConfig` workspace) instead of artifacts.

With `cluster.workspace.size` set (cluster=eks), the pipeline asks KFP for a workspace PVC that
lives as long as the run and is mounted in every step. A step that makes a large folder
(data_prep's splits, finetune's adapter) writes it there and its output artifact holds only a
pointer: the folder's path in `metadata["workspace_path"]` and a small text file naming it, so
nothing large is copied to the object store and back between steps. Without a workspace
(`workspace` is ""), the folder is the artifact itself, as before.

A folder on the workspace is gone when the run ends: what must outlive it (an adapter that
passed the gate) is copied to MLflow by register.
"""

from __future__ import annotations

import os

WORKSPACE_PATH = "workspace_path"  # the artifact metadata key that points into the workspace


def output_folder(artifact, workspace: str, name: str) -> str:
    """Where a step writes the folder for `artifact`: `<workspace>/<name>`, or the artifact's own path."""
    if not workspace:
        return artifact.path
    folder = os.path.join(workspace, name)
    artifact.metadata[WORKSPACE_PATH] = folder
    os.makedirs(os.path.dirname(artifact.path) or ".", exist_ok=True)
    with open(artifact.path, "w") as pointer:
        pointer.write(f"{folder}\n")  # a person browsing the artifact store sees where the folder is
    return folder


def input_folder(artifact) -> str:
    """The folder an upstream step made for `artifact`, on the workspace or in the artifact."""
    folder = artifact.metadata.get(WORKSPACE_PATH)
    if not folder:
        return artifact.path
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{artifact.name}: {folder} is not on this step's workspace (is the workspace mounted?)")
    return folder

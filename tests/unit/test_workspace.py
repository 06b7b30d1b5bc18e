"""The run's workspace PVC on EKS (KFP 2.15+ `dsl.PipelineConfig` workspace), checked in the compiled IR."""

import pytest
import yaml
from google.protobuf import json_format

from modelchain.core.config import ConfigError, compose
from modelchain.pipelines.compile import compile_pipeline

WRITERS = {"data-prep", "finetune"}  # the steps that make the large folders (splits, adapter)


def compiled(tmp_path, *overrides):
    path = tmp_path / "finetune.yaml"
    compile_pipeline("finetune", compose("finetune", list(overrides)), path)
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = next(doc for doc in docs if "root" in doc)
    platform = next((doc for doc in docs if "platforms" in doc), {})
    return spec, platform


def tasks(spec):
    found = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        found.update(component.get("dag", {}).get("tasks", {}))
    return {name: task for name, task in found.items() if "componentRef" in task and not name.startswith("condition")}


def test_eks_asks_for_a_workspace_and_hands_it_to_the_writers(tmp_path):
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec, platform = compiled(tmp_path, "cluster=eks")
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # still a valid PipelineSpec
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    assert platform["platforms"]["kubernetes"]["pipelineConfig"]["workspace"] == {
        "size": "200Gi",
        "kubernetes": {"pvcSpecPatch": {"storageClassName": "efs-sc", "accessModes": ["ReadWriteMany"]}},
    }
    for name, task in tasks(spec).items():
        workspace = task["inputs"].get("parameters", {}).get("workspace")
        if name in WRITERS:
            assert workspace == {"runtimeValue": {"constant": "{{$.workspace_path}}"}}, name
        else:
            assert workspace is None, name


def test_without_a_size_there_is_no_workspace(tmp_path):
    spec, platform = compiled(tmp_path, "cluster=eks", "cluster.workspace.size=")
    assert "pipelineConfig" not in platform["platforms"]["kubernetes"]
    assert all("workspace" not in t["inputs"].get("parameters", {}) for t in tasks(spec).values())
    spec, platform = compiled(tmp_path, "cluster=local")
    assert platform == {} and "{{$.workspace_path}}" not in yaml.safe_dump(spec)


@pytest.mark.parametrize("override, message", [
    ("cluster.workspace.size=lots", "cluster.workspace.size: not a Kubernetes quantity: 'lots'"),
    ("cluster.workspace.access_modes=[ReadWriteSometimes]", "cluster.workspace.access_modes: each must be one of"),
])
def test_a_bad_workspace_setting_names_its_key(override, message):
    with pytest.raises(ConfigError, match=message):
        compose("finetune", ["cluster=eks", override])


def test_a_folder_on_the_workspace_travels_as_a_pointer(tmp_path):
    from kfp import dsl

    from modelchain.components.workspace import input_folder, output_folder

    made = dsl.Dataset(name="splits", uri=str(tmp_path / "outputs" / "splits"))
    folder = output_folder(made, str(tmp_path / "workspace"), "splits")
    assert folder == str(tmp_path / "workspace" / "splits")
    assert (tmp_path / "outputs" / "splits").read_text() == f"{folder}\n"  # the artifact is a pointer
    read = dsl.Dataset(name="splits", uri=made.uri, metadata=dict(made.metadata))
    with pytest.raises(FileNotFoundError, match="is not on this step's workspace"):
        input_folder(read)
    (tmp_path / "workspace" / "splits").mkdir(parents=True)
    assert input_folder(read) == folder
    # No workspace: the artifact is the folder, as before.
    plain = dsl.Dataset(name="splits", uri=str(tmp_path / "plain"))
    assert output_folder(plain, "", "splits") == plain.path == input_folder(plain)

"""Karpenter NodePools, the EFA EC2NodeClass and FSx for Lustre, and their strict validation."""

import copy

import pytest
import yaml

from modelchain.core.config import compose
from modelchain.core import manifest_validation
from modelchain.training import infra

from ..crds import crd_dir


@pytest.fixture(scope="module")
def cfg():
    return compose("finetune", ["cluster=eks"])


@pytest.fixture(scope="module")
def manifests(cfg):
    return {manifest_validation.file_name(m): m for m in infra.render(cfg)}


def requirement(pool, key):
    return next(r for r in pool["spec"]["template"]["spec"]["requirements"] if r["key"] == key)["values"]


def test_renders_node_class_pools_and_fsx(manifests):
    assert list(manifests) == [
        "ec2nodeclass-gpu-efa.yaml",
        "nodepool-gpu-training.yaml",
        "nodepool-gpu-experiment.yaml",
        "nodepool-gpu-inference.yaml",
        "storageclass-fsx-lustre.yaml",
        "persistentvolumeclaim-fsx-modelchain.yaml",
        "clustertrainingruntime-modelchain-nemo.yaml",  # cluster.training.backend=trainjob, the default
    ]


def test_the_legacy_backend_needs_no_training_runtime():
    cfg = compose("finetune", ["cluster=eks", "cluster.training.backend=pytorchjob"])
    assert "ClusterTrainingRuntime" not in [m["kind"] for m in infra.render(cfg)]


def test_training_pool_on_demand_p5_p4d_never_disrupted(manifests):
    pool = manifests["nodepool-gpu-training.yaml"]
    assert requirement(pool, "karpenter.sh/capacity-type") == ["on-demand"]
    assert requirement(pool, "node.kubernetes.io/instance-type") == ["p5.48xlarge", "p4d.24xlarge"]
    spec = pool["spec"]
    assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"} in spec["template"]["spec"]["taints"]
    disruption = spec["disruption"]
    assert disruption["consolidationPolicy"] == "WhenEmpty" and disruption["consolidateAfter"] == "1h"
    assert {"nodes": "0", "reasons": ["Drifted", "Underutilized"]} in disruption["budgets"]
    assert spec["template"]["spec"]["expireAfter"] == "Never"
    assert spec["template"]["spec"]["nodeClassRef"] == {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu-efa"}
    assert spec["limits"] == {"nvidia.com/gpu": 64}


def test_experiment_pool_is_spot(manifests):
    pool = manifests["nodepool-gpu-experiment.yaml"]
    assert requirement(pool, "karpenter.sh/capacity-type") == ["spot"]


def test_inference_pool_spot_and_on_demand_g5_g6_consolidated(manifests):
    pool = manifests["nodepool-gpu-inference.yaml"]
    assert requirement(pool, "karpenter.sh/capacity-type") == ["spot", "on-demand"]
    families = {t.split(".")[0] for t in requirement(pool, "node.kubernetes.io/instance-type")}
    assert families == {"g5", "g6"}
    assert pool["spec"]["disruption"]["consolidationPolicy"] == "WhenEmptyOrUnderutilized"


def test_node_class_for_efa(manifests):
    spec = manifests["ec2nodeclass-gpu-efa.yaml"]["spec"]
    assert spec["amiSelectorTerms"] == [{"alias": "al2023@latest"}]
    assert spec["subnetSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": "modelchain", "network-type": "efa-enabled"}}]
    assert "modprobe efa" in spec["userData"] and spec["instanceStorePolicy"] == "RAID0"
    assert spec["blockDeviceMappings"][0]["ebs"]["volumeSize"] == "1000Gi"


def test_fsx_storage_class_links_s3(manifests):
    sc = manifests["storageclass-fsx-lustre.yaml"]
    assert sc["provisioner"] == "fsx.csi.aws.com" and sc["reclaimPolicy"] == "Retain"
    params = sc["parameters"]
    assert params["deploymentType"] == "PERSISTENT_2" and params["perUnitStorageThroughput"] == "250"
    assert params["securityGroupIds"] == "sg-0123456789abcdef0"
    (association,) = yaml.safe_load(params["dataRepositoryAssociations"])
    assert association["dataRepositoryPath"] == "s3://modelchain-fsx/modelchain"
    assert association["fileSystemPath"] == "/modelchain"
    assert association["s3"]["autoExportPolicy"]["events"] == ["NEW", "CHANGED", "DELETED"]
    pvc = manifests["persistentvolumeclaim-fsx-modelchain.yaml"]
    assert pvc["metadata"]["namespace"] == "kubeflow-user"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"] == "fsx-lustre"
    assert "volumeName" not in pvc["spec"]


def test_existing_file_system_gets_a_static_volume():
    cfg = compose("finetune", ["cluster=eks", "cluster.fsx.file_system_id=fs-0199e5a63bd90f796",
                               "cluster.fsx.dns_name=fs-0199e5a63bd90f796.fsx.us-east-1.amazonaws.com",
                               "cluster.fsx.mount_name=abcdefgh"])
    by_name = {manifest_validation.file_name(m): m for m in infra.render(cfg)}
    pv = by_name["persistentvolume-fsx-modelchain-pv.yaml"]
    assert pv["spec"]["csi"] == {"driver": "fsx.csi.aws.com", "volumeHandle": "fs-0199e5a63bd90f796",
                                 "volumeAttributes": {"dnsname": "fs-0199e5a63bd90f796.fsx.us-east-1.amazonaws.com",
                                                      "mountname": "abcdefgh"}}
    assert by_name["persistentvolumeclaim-fsx-modelchain.yaml"]["spec"]["volumeName"] == "fsx-modelchain-pv"
    manifest_validation.validate_all(by_name.values(), crd_dir())


def test_training_pods_land_on_a_rendered_pool(cfg):
    selector = cfg.cluster.training.node_selector["karpenter.sh/nodepool"]
    assert selector in {pool.name for pool in cfg.cluster.karpenter.node_pools.values()}


def test_every_infra_manifest_validates(manifests):
    manifest_validation.validate_all(manifests.values(), crd_dir())


def test_invalid_manifests_are_named_with_their_field_path(manifests):
    bad = copy.deepcopy(list(manifests.values()))
    bad[1]["spec"]["disruption"]["budgets"][0]["nodes"] = "none"
    bad[1]["spec"]["template"]["spec"]["taintz"] = []
    bad[0]["spec"]["instanceStorePolicy"] = "RAID5"
    bad[5]["spec"]["accessMode"] = ["ReadWriteMany"]
    with pytest.raises(manifest_validation.ManifestError) as err:
        manifest_validation.validate_all(bad, crd_dir())
    problems = err.value.problems
    assert any(p.startswith("nodepool-gpu-training.yaml (NodePool gpu-training): spec.disruption.budgets[0].nodes:")
               for p in problems)
    assert any("spec.template.spec: Additional properties are not allowed ('taintz'" in p for p in problems)
    assert any(p.startswith("ec2nodeclass-gpu-efa.yaml (EC2NodeClass gpu-efa): spec.instanceStorePolicy:") for p in problems)
    assert any(p.startswith("persistentvolumeclaim-fsx-modelchain.yaml") and "accessMode" in p for p in problems)
    assert len(problems) == 4


def test_unknown_metadata_field_on_a_custom_resource_is_an_error(manifests):
    pool = copy.deepcopy(manifests["nodepool-gpu-experiment.yaml"])
    pool["metadata"]["label"] = {"a": "b"}
    with pytest.raises(manifest_validation.ManifestError, match=r"nodepool-gpu-experiment.yaml .*metadata: Additional properties"):
        manifest_validation.validate_all([pool], crd_dir())


def test_strict_keeps_preserve_unknown_fields_open():
    schema = manifest_validation.strict({
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"a": {"type": "string"}}},
            "blob": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"x": {"type": "string"}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    })
    assert schema["additionalProperties"] is False and schema["properties"]["spec"]["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["blob"]
    assert schema["properties"]["labels"]["additionalProperties"] == {"type": "string"}


def test_custom_kind_without_its_crd_is_rejected(tmp_path, manifests):
    (tmp_path / "only.yaml").write_text(
        (crd_dir() / "kubeflow.org_pytorchjobs.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    with pytest.raises(manifest_validation.ManifestError, match="no CRD for karpenter.sh/v1 NodePool"):
        manifest_validation.validate_all([manifests["nodepool-gpu-training.yaml"]], tmp_path)


def test_write_writes_nothing_when_one_manifest_is_invalid(tmp_path, manifests):
    bad = copy.deepcopy(list(manifests.values()))
    claim = next(m for m in bad if m["kind"] == "PersistentVolumeClaim")
    claim["spec"]["accessModes"] = "ReadWriteMany"  # a list in the API
    out = tmp_path / "out"
    with pytest.raises(manifest_validation.ManifestError, match="persistentvolumeclaim-fsx-modelchain.yaml"):
        manifest_validation.write_manifests(bad, out, crd_dir())
    assert not out.exists() or not any(out.iterdir())
    written = manifest_validation.write_manifests(list(manifests.values()), out, crd_dir())
    assert sorted(p.name for p in written) == sorted(manifests)
    assert yaml.safe_load(written[0].read_text()) == list(manifests.values())[0]

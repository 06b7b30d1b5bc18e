"""The EKS infrastructure a cluster fine-tune runs on, as manifests built from `cluster.*`.

- Karpenter v1 NodePools (`cluster.karpenter.node_pools`: training, experiment, inference) and
  the EC2NodeClass they share, set up for EFA.
- With `cluster.training.backend=trainjob`, the Kubeflow Trainer v2 ClusterTrainingRuntime
  (`cluster.training.runtime`) the TrainJobs run on (built in training/trainjob.py).
- FSx for Lustre (`cluster.fsx`): a StorageClass for the FSx CSI driver with an S3 data
  repository association, and the PVC the components and training pods mount; with
  `file_system_id` set, a static PersistentVolume for that existing file system instead of
  dynamic provisioning.

Plain dicts: `modelchain render infra` validates them (core/manifest_validation.py) and writes YAML.
"""

from __future__ import annotations

from typing import Any

import yaml

PART_OF = {"app.kubernetes.io/part-of": "modelchain"}
FSX_DRIVER = "fsx.csi.aws.com"


def node_pool(pool, node_class_name: str) -> dict[str, Any]:
    """A Karpenter v1 NodePool for GPU nodes of `pool` (a NodePoolConfig)."""
    requirements = [
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": list(pool.capacity_types)},
    ]
    if pool.instance_types:
        requirements.append(
            {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(pool.instance_types)}
        )
    requirements.append({"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "Gt", "values": ["0"]})
    taints = []
    for taint in pool.taints:
        item = {"key": taint.key, "effect": taint.effect}
        if taint.value is not None:
            item["value"] = taint.value
        taints.append(item)
    disruption: dict[str, Any] = {
        "consolidationPolicy": pool.consolidation_policy,
        "consolidateAfter": pool.consolidate_after,
    }
    if pool.disruption_budgets:
        budgets = []
        for budget in pool.disruption_budgets:
            item = {"nodes": str(budget.nodes)}
            if budget.reasons:
                item["reasons"] = list(budget.reasons)
            budgets.append(item)
        disruption["budgets"] = budgets
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"labels": dict(pool.labels)} if pool.labels else {},
            "spec": {
                "requirements": requirements,
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": node_class_name},
                "taints": taints,
                "expireAfter": pool.expire_after,
            },
        },
        "limits": {"nvidia.com/gpu": pool.gpu_limit},
        "disruption": disruption,
    }
    if not taints:
        del spec["template"]["spec"]["taints"]
    if pool.weight is not None:
        spec["weight"] = pool.weight
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": pool.name, "labels": dict(PART_OF)}, "spec": spec}


def ec2_node_class(node_class) -> dict[str, Any]:
    """The EC2NodeClass of the GPU pools: EFA-capable subnets, a large root volume, RAID0 NVMe.

    Karpenter attaches the EFA interfaces an instance type offers when its pods request
    `vpc.amazonaws.com/efa`; the security group must allow all traffic within itself (EFA
    needs that). NCCL/EFA variables are set on the training pods, not here.
    """
    user_data = "\n".join(
        [
            "#!/bin/bash",
            "# GPUs in persistence mode; the EFA kernel module (shipped by the EKS GPU AMI) loaded.",
            "nvidia-smi -pm 1 || true",
            "modprobe efa || true",
            "",
        ]
    )
    spec: dict[str, Any] = {
        "role": node_class.role,
        "amiSelectorTerms": [{"alias": node_class.ami_alias}],
        "subnetSelectorTerms": [{"tags": dict(node_class.subnet_tags)}],
        "securityGroupSelectorTerms": [{"tags": dict(node_class.security_group_tags)}],
        "blockDeviceMappings": [
            {
                "deviceName": "/dev/xvda",
                "rootVolume": True,
                "ebs": {
                    "volumeSize": node_class.root_volume_size,
                    "volumeType": "gp3",
                    "iops": 16000,
                    "throughput": 1000,
                    "encrypted": True,
                    "deleteOnTermination": True,
                },
            }
        ],
        "instanceStorePolicy": "RAID0",  # p4d/p5 NVMe as one volume for images and scratch
        "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1},
        "userData": user_data,
    }
    if node_class.placement_group:
        spec["placementGroupSelector"] = {"name": node_class.placement_group}
    if node_class.tags:
        spec["tags"] = dict(node_class.tags)
    return {
        "apiVersion": "karpenter.k8s.aws/v1",
        "kind": "EC2NodeClass",
        "metadata": {"name": node_class.name, "labels": dict(PART_OF)},
        "spec": spec,
    }


def fsx_storage_class(fsx) -> dict[str, Any]:
    """The FSx for Lustre StorageClass; its data repository association links S3 to a folder."""
    if not fsx.subnet_id or not fsx.security_group_ids:
        raise ValueError("cluster.fsx.subnet_id and cluster.fsx.security_group_ids are needed for the FSx StorageClass")
    parameters = {
        "subnetId": fsx.subnet_id,
        "securityGroupIds": ",".join(fsx.security_group_ids),
        "deploymentType": fsx.deployment_type,
        "perUnitStorageThroughput": str(fsx.per_unit_storage_throughput),
        "fileSystemTypeVersion": fsx.lustre_version,
    }
    repo = fsx.data_repository
    if repo.s3_path:
        association = {
            "batchImportMetaDataOnCreate": True,
            "dataRepositoryPath": repo.s3_path,
            "fileSystemPath": repo.file_system_path,
            "s3": {
                "autoImportPolicy": {"events": list(repo.auto_import)},
                "autoExportPolicy": {"events": list(repo.auto_export)},
            },
        }
        # The driver reads this parameter as a YAML list.
        parameters["dataRepositoryAssociations"] = yaml.safe_dump([association], sort_keys=False)
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": fsx.storage_class, "labels": dict(PART_OF)},
        "provisioner": FSX_DRIVER,
        "parameters": parameters,
        "mountOptions": ["flock"],
        "reclaimPolicy": "Retain",  # checkpoints and adapters outlive a deleted claim
        "volumeBindingMode": "Immediate",
    }


def fsx_persistent_volume(fsx) -> dict[str, Any]:
    """A static PersistentVolume for an existing file system (`cluster.fsx.file_system_id`)."""
    if not (fsx.dns_name and fsx.mount_name):
        raise ValueError("cluster.fsx.dns_name and cluster.fsx.mount_name are needed with cluster.fsx.file_system_id")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{fsx.pvc}-pv", "labels": dict(PART_OF)},
        "spec": {
            "capacity": {"storage": fsx.capacity},
            "volumeMode": "Filesystem",
            "accessModes": ["ReadWriteMany"],
            "mountOptions": ["flock"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": fsx.storage_class,
            "csi": {
                "driver": FSX_DRIVER,
                "volumeHandle": fsx.file_system_id,
                "volumeAttributes": {"dnsname": fsx.dns_name, "mountname": fsx.mount_name},
            },
        },
    }


def fsx_claim(fsx, namespace: str) -> dict[str, Any]:
    """The PVC the components and training pods mount (`cluster.fsx.pvc`)."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": fsx.storage_class,
        "resources": {"requests": {"storage": fsx.capacity}},
    }
    if fsx.file_system_id:
        spec["volumeName"] = f"{fsx.pvc}-pv"
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": fsx.pvc, "namespace": namespace, "labels": dict(PART_OF)},
        "spec": spec,
    }


def render(cfg) -> list[dict[str, Any]]:
    """Every infra manifest of `cfg` (cluster=eks), in the order to apply them."""
    cluster = cfg.cluster
    if cluster.kind != "eks":
        raise ValueError(f"cluster.kind is {cluster.kind!r}: the infra manifests need cluster=eks")
    karpenter, fsx = cluster.karpenter, cluster.fsx
    if not karpenter.node_pools:
        raise ValueError("cluster.karpenter.node_pools is empty: no NodePool to render")
    manifests = [ec2_node_class(karpenter.node_class)]
    manifests += [node_pool(pool, karpenter.node_class.name) for pool in karpenter.node_pools.values()]
    manifests.append(fsx_storage_class(fsx))
    if fsx.file_system_id:
        manifests.append(fsx_persistent_volume(fsx))
    manifests.append(fsx_claim(fsx, cluster.namespace))
    if cluster.training.backend == "trainjob":
        from modelchain.training.trainjob import runtime

        manifests.append(runtime(cfg))
    return manifests

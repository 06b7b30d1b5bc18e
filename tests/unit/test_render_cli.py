"""`modelchain render training|infra`: validated manifests written, invalid ones refused."""

import os
import subprocess
import sys

import yaml

from modelchain.core import manifest_validation

from ..crds import crd_dir

HEAVY = ["torch", "transformers", "kfp", "mlflow", "kubernetes", "kubeflow", "jsonschema", "nemo"]


def modelchain(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "modelchain.pipelines.cli", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300,
    )


def test_render_help_imports_nothing_heavy():
    code = (
        "import sys\nfrom modelchain.pipelines.cli import main\n"
        "try:\n    main(['render', '--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout and "--crd-dir" in out.stdout


def test_render_training_writes_a_valid_trainjob(tmp_path):
    out = modelchain("render", "training", "model=llama3_8b", "train=cluster_8gpu", "--name", "ft-1",
                     "--out", str(tmp_path), "--crd-dir", str(crd_dir()))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configmap-ft-1-code.yaml", "trainjob-ft-1.yaml"]
    job = yaml.safe_load((tmp_path / "trainjob-ft-1.yaml").read_text())
    assert job["spec"]["trainer"]["numNodes"] == 2 and job["spec"]["trainer"]["numProcPerNode"] == 8
    assert job["spec"]["runtimeRef"]["name"] == "modelchain-nemo"
    manifest_validation.validate_all([job, yaml.safe_load((tmp_path / "configmap-ft-1-code.yaml").read_text())], crd_dir())


def test_render_training_writes_a_valid_pytorchjob(tmp_path):
    out = modelchain("render", "training", "model=llama3_8b", "train=cluster_8gpu", "cluster.training.backend=pytorchjob",
                     "--name", "ft-1", "--out", str(tmp_path), "--crd-dir", str(crd_dir()))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configmap-ft-1-code.yaml", "pytorchjob-ft-1.yaml"]
    job = yaml.safe_load((tmp_path / "pytorchjob-ft-1.yaml").read_text())
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    manifest_validation.validate_all([job, yaml.safe_load((tmp_path / "configmap-ft-1-code.yaml").read_text())], crd_dir())


def test_render_infra_writes_every_manifest(tmp_path):
    out = modelchain("render", "infra", "--out", str(tmp_path), env={manifest_validation.CRD_DIR_ENV: str(crd_dir())})
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([
        "ec2nodeclass-gpu-efa.yaml", "nodepool-gpu-training.yaml", "nodepool-gpu-experiment.yaml",
        "nodepool-gpu-inference.yaml", "storageclass-fsx-lustre.yaml", "persistentvolumeclaim-fsx-modelchain.yaml",
        "clustertrainingruntime-modelchain-nemo.yaml",
    ])
    assert out.stdout.split() == [str(tmp_path / n) for n in [
        "ec2nodeclass-gpu-efa.yaml", "nodepool-gpu-training.yaml", "nodepool-gpu-experiment.yaml",
        "nodepool-gpu-inference.yaml", "storageclass-fsx-lustre.yaml", "persistentvolumeclaim-fsx-modelchain.yaml",
        "clustertrainingruntime-modelchain-nemo.yaml"]]
    manifest_validation.validate_all([yaml.safe_load(p.read_text()) for p in tmp_path.iterdir()], crd_dir())


def test_invalid_manifest_is_refused_with_its_path_and_nothing_written(tmp_path):
    out_dir = tmp_path / "out"
    out = modelchain("render", "infra", "cluster.karpenter.node_pools.training.consolidate_after=soon",
                     "--out", str(out_dir), "--crd-dir", str(crd_dir()))
    assert out.returncode == 1
    assert "nothing written" in out.stderr
    assert "nodepool-gpu-training.yaml (NodePool gpu-training): spec.disruption.consolidateAfter: 'soon' does not match" \
        in out.stderr
    assert not out_dir.exists()


def test_render_refuses_a_local_cluster_and_a_missing_crd_dir(tmp_path):
    out = modelchain("render", "training", "cluster=local", "--out", str(tmp_path / "a"))
    assert out.returncode == 2 and "cluster=eks" in out.stderr
    out = modelchain("render", "infra", "--out", str(tmp_path / "b"), "--crd-dir", str(tmp_path / "none"))
    assert out.returncode != 0 and not (tmp_path / "b").exists()


def test_bad_override_names_the_key(tmp_path):
    out = modelchain("render", "infra", "cluster.fsx.capacty=2400Gi", "--out", str(tmp_path / "c"))
    assert out.returncode == 2 and "cluster.fsx.capacty" in out.stderr
    assert not (tmp_path / "c").exists()

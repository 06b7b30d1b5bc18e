"""The training backend seam: chosen by `cluster.training.backend` through the registry."""

import subprocess
import sys

import pytest

from modelchain.core.config import ConfigError, compose
from modelchain.training import backends
from modelchain.training.backends.local import LocalBackend
from modelchain.training.backends.pytorchjob import PyTorchJobBackend
from modelchain.training.backends.trainjob import TrainJobBackend


@pytest.mark.parametrize("overrides,kind", [
    ([], LocalBackend),
    (["cluster=eks", "model=llama3_8b"], TrainJobBackend),
    (["cluster=eks", "model=llama3_8b", "cluster.training.backend=pytorchjob"], PyTorchJobBackend),
])
def test_each_cluster_names_its_backend(overrides, kind):
    cfg = compose("finetune", overrides)
    backend = backends.get(cfg.cluster.training.backend)
    assert isinstance(backend, kind) and backend.name == cfg.cluster.training.backend


def test_an_unknown_backend_fails_validation_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError) as err:
        compose("finetune", ["cluster.training.backend=slurm"])
    assert str(err.value) == "cluster.training.backend: unknown backend 'slurm'; registered: local, pytorchjob, trainjob"
    with pytest.raises(ConfigError, match="cluster.training.backend: unknown backend 'slurm'"):
        compose("rag_ingest", ["cluster.training.backend=slurm"])
    with pytest.raises(ValueError, match="registered: local, pytorchjob, trainjob"):
        backends.get("slurm")


def test_checks_follow_the_backend_not_the_cluster_kind():
    # The PyTorchJob's shape is checked only where a PyTorchJob runs...
    with pytest.raises(ConfigError, match="cluster.training.restart_policy"):
        compose("finetune", ["cluster=eks", "model=llama3_8b", "cluster.training.restart_policy=Always"])
    compose("finetune", ["cluster.training.restart_policy=Always"])
    # ... and the local trainer's where it runs.
    with pytest.raises(ConfigError, match="train.local.keep_checkpoints"):
        compose("finetune", ["cluster=eks", "model=llama3_8b", "cluster.training.backend=local",
                             "train.local.keep_checkpoints=0"])


def test_lineage_defaults_and_render():
    cfg = compose("finetune", ["cluster=eks", "model=llama3_8b", "train=cluster_8gpu"])
    assert LocalBackend().job_record(cfg.cluster) == {"kind": "local", "name": "local", "image": "local"}
    assert PyTorchJobBackend().job_record(cfg.cluster)["image"] == "nvcr.io/nvidia/nemo:25.07"
    kinds = [m["kind"] for m in PyTorchJobBackend().render(cfg, "job-1")]
    assert kinds == ["ConfigMap", "PyTorchJob"]
    with pytest.raises(ValueError, match="backend is local"):
        LocalBackend().render(cfg)


def test_composing_a_config_loads_only_the_chosen_backend_and_nothing_heavy():
    code = ("import sys\nfrom modelchain.core.config import compose\ncompose('finetune', ['cluster=eks', 'model=llama3_8b'])\n"
            "print(sorted(m for m in sys.modules if m.startswith(('modelchain.training.backends.', 'kubernetes', 'torch', 'kfp'))"
            " and m != 'modelchain.training.backends.base'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # The TrainJob backend is the PyTorchJob's with another job module: both are light.
    assert out.stdout.strip() == "['modelchain.training.backends.pytorchjob', 'modelchain.training.backends.trainjob']"

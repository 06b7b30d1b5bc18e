"""Every backend seam resolves from every shipped config option, and every registered
implementation is picked by at least one option.

The seams are registries by name (no Hydra `_target_`): the training backend
(`cluster.training.backend`), the serving engine (`serve.engine`), the vector store
(`rag.milvus.backend`) and the judge endpoint (`eval.judge.base_url`). Opening one here
builds the object without starting or connecting anything.
"""

from __future__ import annotations

import itertools

import pytest

from modelchain.core import vectorstore
from modelchain.core.config import compose, list_options
from modelchain.eval import rag as eval_rag
from modelchain.serving import backend as serving
from modelchain.training import backends as training

SEAM_GROUPS = ("cluster", "serve", "eval", "rag")
# Backends no shipped option picks, with the override the READMEs document for them.
DOCUMENTED_OVERRIDES = {
    "training": [["cluster=eks", "cluster.training.backend=pytorchjob"]],  # the legacy PyTorchJob
    "serving": [["serve.rollout=pool"], ["cluster=eks", "serve.rollout=pool"]],  # a change of base model
}
COMBINATIONS = list(itertools.product(*(list_options(group) for group in SEAM_GROUPS)))


def _open_seams(cfg) -> dict[str, object]:
    return {
        "training": training.get(cfg.cluster.training.backend),
        "serving": serving.make_backend(cfg.serve, cfg.cluster, cfg.model),
        "vector store": vectorstore.store_class(cfg.rag.milvus.backend),
        "judge": eval_rag.open_judge(cfg.eval),
    }


@pytest.mark.parametrize("options", COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def test_every_option_opens_its_backends(options):
    cfg = compose("finetune", [f"{group}={option}" for group, option in zip(SEAM_GROUPS, options)])
    seams = _open_seams(cfg)
    assert isinstance(seams["training"], training.TrainingBackend)
    assert isinstance(seams["serving"], serving.ServingBackend) and seams["serving"].name == cfg.serve.engine
    assert issubclass(seams["vector store"], vectorstore.MilvusStore)
    assert isinstance(seams["judge"], eval_rag.JudgeEndpoint)


def test_every_registered_backend_is_picked_by_some_option():
    picked: dict[str, set[str]] = {"training": set(), "serving": set(), "vector store": set()}
    for cluster, serve in itertools.product(list_options("cluster"), list_options("serve")):
        cfg = compose("finetune", [f"cluster={cluster}", f"serve={serve}"])
        picked["training"].add(cfg.cluster.training.backend)
        picked["serving"].add((cfg.serve.engine, cfg.serve.rollout))
        picked["vector store"].add(cfg.rag.milvus.backend)
    for overrides in DOCUMENTED_OVERRIDES["training"]:
        picked["training"].add(compose("finetune", overrides).cluster.training.backend)
    for overrides in DOCUMENTED_OVERRIDES["serving"]:
        serve = compose("finetune", overrides).serve
        picked["serving"].add((serve.engine, serve.rollout))
    assert picked["training"] == set(training.BACKENDS)
    assert picked["serving"] == {(engine, rollout) for engine, rollouts in serving.ENGINES.items() for rollout in rollouts}
    assert picked["vector store"] == set(vectorstore.VECTOR_STORES)


def test_the_judge_is_picked_by_its_endpoint():
    offline = compose("finetune", ["eval.judge.base_url="])
    online = compose("finetune", ["eval.judge.base_url=http://127.0.0.1:9/v1", "eval.judge.model=judge"])
    assert type(eval_rag.open_judge(offline.eval)) is eval_rag.JUDGES["offline"]
    assert type(eval_rag.open_judge(online.eval)) is eval_rag.JUDGES["openai"]


@pytest.mark.parametrize(
    ("override", "key"),
    [("cluster.training.backend=slurm", "cluster.training.backend"), ("serve.engine=triton", "serve.engine"),
     ("rag.milvus.backend=qdrant", "rag.milvus.backend")],
)
def test_an_unknown_backend_name_fails_naming_the_key(override, key):
    from modelchain.core.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose("finetune", [override])

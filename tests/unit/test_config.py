"""The Hydra config tree: every option composes, and bad input fails naming the key."""

import json

import pytest

from modelchain.core.config import GROUP_SCHEMAS, PRIMARY_SCHEMAS, ConfigError, compose, list_options

FINETUNE_GROUPS = ["model", "data", "train", "eval", "serve", "rag", "cluster", "schedule", "experiment"]
RAG_GROUPS = ["rag", "cluster", "schedule", "experiment"]


def test_every_group_has_a_schema_and_options():
    assert set(FINETUNE_GROUPS) == set(GROUP_SCHEMAS)
    for group in FINETUNE_GROUPS:
        assert list_options(group), f"configs/{group}/ has no options"


@pytest.mark.parametrize(
    "pipeline,group,option",
    [("finetune", g, o) for g in FINETUNE_GROUPS for o in list_options(g)]
    + [("rag_ingest", g, o) for g in RAG_GROUPS for o in list_options(g)],
)
def test_every_option_of_every_group_composes(pipeline, group, option):
    cfg = compose(pipeline, [f"{group}={option}"])
    assert cfg.pipeline == pipeline
    assert group in cfg
    schema = GROUP_SCHEMAS[group]
    assert set(cfg[group].keys()) == set(schema.__dataclass_fields__), f"{group}={option} keys differ from its schema"


def test_defaults_resolve_local_paths(modelchain_home):
    cfg = compose("finetune")
    assert cfg.cluster.workdir == str(modelchain_home)
    assert cfg.cluster.mlflow.tracking_uri == f"sqlite:///{modelchain_home}/mlflow.db"
    assert cfg.rag.milvus.uri == f"{modelchain_home}/milvus.db"
    assert cfg.data.source.uri.endswith("data/demo/support_tickets.jsonl")


def test_overrides_apply():
    cfg = compose("finetune", ["train.lora.rank=32", "train.max_steps=7", "+eval.thresholds.rouge_l=0.2"])
    assert cfg.train.lora.rank == 32 and cfg.train.max_steps == 7
    assert cfg.eval.thresholds["rouge_l"] == 0.2


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["train.lora.rnak=3"], "train.lora.rnak"),
        (["train.max_steps=many"], "train.max_steps"),
        (["+train.extra=1"], "train.extra"),
        (["cluster=mars"], "cluster/mars"),
        (["data.val_fraction=1.5"], "data.val_fraction"),
        (["train.lora.target_modules=[q_proj]"], "train.lora.target_modules"),
        (["+eval.thresholds.bleu=0.3"], "eval.thresholds.bleu"),
        (["schedule.cron=weekly"], "schedule.cron"),
        (["rag.chunk.overlap=500"], "rag.chunk.overlap"),
    ],
)
def test_bad_input_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        compose("finetune", overrides)
    message = str(err.value)
    assert key in message
    assert "\n" not in message


def test_unknown_pipeline():
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        compose("nope")


def test_composed_config_is_read_only():
    cfg = compose("rag_ingest")
    with pytest.raises(Exception):
        cfg.rag.chunk.tokens = 1


def test_eks_secrets_are_names_only():
    cfg = compose("finetune", ["cluster=eks"])
    names = {s.secret_name for s in cfg.cluster.secret_env}
    assert names == {"mlflow-s3", "milvus-token"}
    assert set(PRIMARY_SCHEMAS) == {"finetune", "rag_ingest"}
    text = json.dumps(dict(cfg.cluster.secret_env[0]))
    assert "secret_name" in text and "value" not in text


DIGEST_A, DIGEST_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


@pytest.mark.parametrize(
    "overrides,image",
    [
        (["cluster=eks"], "ghcr.io/modelchain/modelchain:0.1.0"),
        (["cluster=eks", f"cluster.image_digest={DIGEST_A}"], f"ghcr.io/modelchain/modelchain:0.1.0@{DIGEST_A}"),
        ([f"cluster.image=localhost:5000/team/modelchain@{DIGEST_B}"], f"localhost:5000/team/modelchain@{DIGEST_B}"),
        ([f"cluster.image=localhost/modelchain:x@{DIGEST_B}", f"cluster.image_digest={DIGEST_B}"],
         f"localhost/modelchain:x@{DIGEST_B}"),
    ],
)
def test_the_components_image_can_be_pinned_by_digest(overrides, image):
    from modelchain.core.config import component_image

    assert component_image(compose("finetune", overrides).cluster) == image


@pytest.mark.parametrize(
    "override,message",
    [
        ("cluster.image=Not An Image", "cluster.image: not a valid image reference"),
        ("cluster.image=repo/UPPER:1", "cluster.image: not a valid image reference"),
        ("cluster.image_digest=sha256:abc", "cluster.image_digest: must be sha256: and 64 hex digits"),
    ],
)
def test_bad_image_references_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        compose("finetune", [override])


def test_a_digest_that_does_not_match_the_pinned_image_fails():
    with pytest.raises(ConfigError, match="cluster.image_digest: .* does not match the digest in cluster.image"):
        compose("finetune", [f"cluster.image=localhost/modelchain@{DIGEST_B}", f"cluster.image_digest={DIGEST_A}"])

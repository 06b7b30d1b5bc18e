"""Typed step configs: one JSON string per group, rebuilt with the group's schema; run-time
parameters declared once in core.config.RUN_PARAMETERS."""

import inspect
import json

import pytest
from omegaconf.errors import MissingMandatoryValue

from modelchain.core.config import (
    RUN_PARAMETERS,
    ConfigError,
    compose,
    group_json,
    load_group,
    parameter_values,
)


@pytest.fixture(scope="module")
def cfg():
    return compose("finetune", ["train=quick"])


def test_run_time_keys_travel_only_as_parameters(cfg):
    baked = json.loads(group_json(cfg, "train"))
    assert baked["max_steps"] == "???" and baked["lora"]["rank"] == "???"
    assert baked["batch_size"] == cfg.train.batch_size  # compile-time values stay
    train = load_group("train", group_json(cfg, "train"), max_steps=7, learning_rate=0.01, lora_rank=4, lora_alpha=8)
    assert (train.max_steps, train.learning_rate, train.lora.rank, train.lora.alpha) == (7, 0.01, 4, 8)
    assert train.lora.dropout == cfg.train.lora.dropout


def test_a_run_time_key_not_given_fails_naming_it(cfg):
    evaluation = load_group("eval", group_json(cfg, "eval"))
    with pytest.raises(MissingMandatoryValue, match="thresholds"):
        evaluation.thresholds
    assert evaluation.max_examples == cfg.eval.max_examples  # the rest reads as usual


def test_types_are_checked_and_defaults_come_from_the_schema(cfg):
    with pytest.raises(ConfigError, match="train"):
        load_group("train", json.dumps({"batch_size": "many"}))
    assert load_group("train", json.dumps({"name": "x"})).local.keep_checkpoints == 2


def test_parameters_are_refused_outside_their_group(cfg):
    with pytest.raises(ConfigError, match="'max_steps' is not a run-time parameter of the eval group"):
        load_group("eval", group_json(cfg, "eval"), max_steps=3)


def test_empty_string_parameter_is_none_for_optional_keys(cfg):
    data = load_group("data", group_json(cfg, "data"), data_uri="/x", feedback_since="", feedback_until="7d")
    assert data.feedback.since is None and data.feedback.until == "7d"


def test_one_table_drives_the_pipeline_parameters(cfg):
    from modelchain.pipelines.registry import module

    for pipeline, table in RUN_PARAMETERS.items():
        one = cfg if pipeline == "finetune" else compose("rag_ingest")
        built = module(pipeline).build(one)
        inputs = built.component_spec.inputs
        assert list(inputs) == [p.name for p in table]
        assert module(pipeline).parameters(one) == parameter_values(pipeline, one)
        for p in table:
            default = inputs[p.name].default
            assert default == parameter_values(pipeline, one)[p.name] or (default is None and not p.value(one))
    assert inspect.signature(module("finetune").build(cfg).pipeline_func).parameters["max_steps"].default == cfg.train.max_steps

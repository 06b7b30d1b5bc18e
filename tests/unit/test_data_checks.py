"""The data group's config checks live with data prep (modelchain.data.checks) and read its format lists."""

import subprocess
import sys

import pytest

from modelchain.core.config import OWNER_CHECKS, ConfigError, compose
from modelchain.data.formats import EXTENSIONS, FAMILIES, FEEDBACK_FORMATS, SOURCE_FORMATS, TITLES


def test_core_asks_the_data_room():
    assert "modelchain.data.checks" in OWNER_CHECKS


@pytest.mark.parametrize("fmt", ("auto", *SOURCE_FORMATS))
def test_every_source_format_is_accepted(fmt):
    assert compose("finetune", [f"data.source.format={fmt}"]).data.source.format == fmt


@pytest.mark.parametrize("fmt", ("auto", *FEEDBACK_FORMATS))
def test_every_feedback_format_is_accepted(fmt):
    assert compose("finetune", [f"data.feedback.format={fmt}"]).data.feedback.format == fmt


@pytest.mark.parametrize("overrides,message", [
    (["data.source.format=xml"], "data.source.format: must be one of auto, jsonl, json, parquet, csv, got 'xml'"),
    (["data.feedback.format=csv"], "data.feedback.format: must be auto, langfuse or otel, got 'csv'"),
    (["data.test_fraction=1.0"], "data.test_fraction: must be in [0, 1), got 1.0"),
    (["data.val_fraction=0.5", "data.test_fraction=0.5"], "data.val_fraction: val + test must leave rows to train on"),
    (["data.dedup.num_perm=4"], "data.dedup.num_perm: must be >= 8"),
    (["data.tokens.action=cut"], "data.tokens.action: must be drop or truncate, got 'cut'"),
    (["data.workers=-1"], "data.workers: must be >= 0"),
])
def test_bad_data_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose("finetune", overrides)
    assert str(err.value) == message


def test_every_format_is_described_once():
    assert set(TITLES) == set(FAMILIES) == set(SOURCE_FORMATS)
    assert set(EXTENSIONS.values()) <= set(SOURCE_FORMATS)


def test_the_checks_load_light():
    code = ("import sys, modelchain.data.checks\n"
            "print(sorted(m for m in ('torch', 'transformers', 'pymilvus', 'kfp', 'boto3', 'numpy', 'orjson',"
            " 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

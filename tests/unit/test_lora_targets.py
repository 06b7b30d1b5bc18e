import json

import pytest

from modelchain.training.lora_targets import check_adapter, hf_to_nemo, nemo_to_hf

ALL_NEMO = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
ALL_HF = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_nemo_to_hf_expands_fused_modules_in_order():
    assert nemo_to_hf(ALL_NEMO) == ALL_HF
    assert nemo_to_hf(["linear_qkv"]) == ["q_proj", "k_proj", "v_proj"]
    assert nemo_to_hf(("linear_fc2", "linear_proj")) == ["down_proj", "o_proj"]


def test_comma_separated_string_and_duplicates():
    assert nemo_to_hf("linear_fc1, linear_fc1,linear_fc2") == ["gate_proj", "up_proj", "down_proj"]


def test_round_trip():
    assert hf_to_nemo(nemo_to_hf(ALL_NEMO)) == ALL_NEMO
    assert nemo_to_hf(hf_to_nemo(["o_proj", "down_proj"])) == ["o_proj", "down_proj"]


def test_unknown_names_are_named_in_the_error():
    with pytest.raises(ValueError, match="linear_qkvv"):
        nemo_to_hf(["linear_qkv", "linear_qkvv"])
    with pytest.raises(ValueError, match="qkv_proj"):
        hf_to_nemo(["qkv_proj"])


def test_partial_fused_group_is_rejected():
    with pytest.raises(ValueError, match="missing \\['k_proj', 'v_proj'\\]"):
        hf_to_nemo(["q_proj"])


def test_exported_adapter_must_match_the_targets(tmp_path):
    spec = {"lora": {"dim": 16, "target_modules": ALL_NEMO}}
    config = {"r": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert check_adapter(tmp_path, spec)["r"] == 16
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "v_proj"]}))
    with pytest.raises(ValueError, match="expected"):
        check_adapter(tmp_path, spec)

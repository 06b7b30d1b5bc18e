"""LoRA target module names: NeMo (cluster recipe) <-> Hugging Face (local trainer, vLLM).

The configs speak NeMo's names, because the production recipe is NeMo's. NeMo fuses the
attention input projections into ``linear_qkv`` and the gated MLP input into ``linear_fc1``,
so one NeMo name can stand for several Hugging Face modules of a Llama-style model.

This module is the owner of the target list: config validation asks `check_config`, and
`check_adapter` checks an exported adapter against it. It uses the standard library only:
the training pod imports it beside the NeMo entrypoint (training/pytorchjob.py ships both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

NEMO_TO_HF: dict[str, tuple[str, ...]] = {
    "linear_qkv": ("q_proj", "k_proj", "v_proj"),
    "linear_proj": ("o_proj",),
    "linear_fc1": ("gate_proj", "up_proj"),
    "linear_fc2": ("down_proj",),
}

HF_TO_NEMO: dict[str, str] = {hf: nemo for nemo, hfs in NEMO_TO_HF.items() for hf in hfs}


def _names(names: str | Iterable[str]) -> list[str]:
    # Accept "a,b" from a command line as well as a list from a config.
    if isinstance(names, str):
        names = names.split(",")
    return [n.strip() for n in names if n.strip()]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def nemo_to_hf(names: str | Iterable[str]) -> list[str]:
    """Hugging Face module names for NeMo LoRA targets, in order, without duplicates."""
    names = _names(names)
    unknown = [n for n in names if n not in NEMO_TO_HF]
    if unknown:
        raise ValueError(
            f"unknown NeMo LoRA target(s) {unknown}; known: {sorted(NEMO_TO_HF)}"
        )
    return _unique(hf for n in names for hf in NEMO_TO_HF[n])


def hf_to_nemo(names: str | Iterable[str]) -> list[str]:
    """NeMo LoRA targets that cover the given Hugging Face module names.

    NeMo cannot adapt ``q_proj`` without ``k_proj`` and ``v_proj``, so a partial group is
    rejected rather than silently widened.
    """
    names = _names(names)
    unknown = [n for n in names if n not in HF_TO_NEMO]
    if unknown:
        raise ValueError(
            f"unknown Hugging Face LoRA target(s) {unknown}; known: {sorted(HF_TO_NEMO)}"
        )
    nemo = _unique(HF_TO_NEMO[n] for n in names)
    for target in nemo:
        missing = [hf for hf in NEMO_TO_HF[target] if hf not in names]
        if missing:
            raise ValueError(
                f"NeMo target {target!r} needs all of {list(NEMO_TO_HF[target])}; "
                f"missing {missing}"
            )
    return nemo


def check_adapter(folder: str | os.PathLike, spec: dict[str, Any]) -> dict[str, Any]:
    """The exported adapter must adapt exactly the HF modules our NeMo targets stand for.

    ``spec`` is the NeMo entrypoint's run spec (its ``lora.target_modules`` and ``lora.dim``).
    """
    config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    want = set(nemo_to_hf(spec["lora"]["target_modules"]))
    # NeMo AutoModel lists full module paths (model.layers.0.self_attn.q_proj): compare leaves.
    got = {name.rsplit(".", 1)[-1] for name in config.get("target_modules") or []}
    if got != want:
        raise ValueError(f"exported adapter targets {sorted(got)}, expected {sorted(want)}")
    if config.get("r") != spec["lora"]["dim"]:
        raise ValueError(f"exported adapter has rank {config.get('r')}, expected {spec['lora']['dim']}")
    return config


def check_config(cfg, need) -> None:
    """Config validation (core.config.OWNER_CHECKS): LoRA targets are NeMo names we can map."""
    if "train" not in cfg:
        return
    known = list(NEMO_TO_HF)
    unknown = sorted(set(cfg.train.lora.target_modules) - set(known))
    need(not unknown, "train.lora.target_modules", f"unknown NeMo targets {unknown}; use {known}")

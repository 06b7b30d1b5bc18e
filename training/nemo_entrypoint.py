"""NeMo 2.x LoRA fine-tuning inside the training job (TrainJob or PyTorchJob): build the recipe, run it, export the adapter.

Every training pod runs `torchrun ... nemo_entrypoint.py --spec spec.json` (see
training/pytorchjob.py and training/trainjob.py, which mount this file, lora_targets.py and
spec.json from a ConfigMap). The base model is read from a path on FSx (`hf_model`), never
from the hub. Global rank 0 first prepares what all ranks share on FSx (chat rows as NeMo
input/output pairs, the base checkpoint imported from Hugging Face, packed sequences); the
other ranks wait for its marker. All ranks then run the recipe; NeMo resumes from the newest
checkpoint in the run folder when a pod restarts. Rank 0 finally exports the adapter to
Hugging Face PEFT format, which vLLM loads as it is.

Targets nemo-toolkit[llm]==2.7.3 with nemo-run 0.11.1 (nemo-toolkit 3 has no LLM
fine-tuning). nemo and nemo_run are imported inside the functions: this module loads with
the standard library only, so the CPU side of modelchain can import it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

try:
    from modelchain.training.lora_targets import check_adapter
except ImportError:  # in the training pod this file and lora_targets.py sit side by side
    from lora_targets import check_adapter

PREPARED = ".prepared.json"
# The prompt ends where the chat template opens the assistant's turn: no separator between.
DATASET_KWARGS = {"prompt_template": "{input}{output}", "add_bos": False, "add_eos": True}


def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the recipe

# NeMo recipes that fix an architecture, and the Hugging Face models each one builds: a recipe
# names its model's shape (layers, widths, heads, vocabulary), so it fits only these.
RECIPES: dict[str, tuple[str, ...]] = {
    "llama3_8b": ("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct"),
    "llama31_8b": ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct"),
    "llama32_1b": ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct"),
    "llama32_3b": ("meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.2-3B-Instruct"),
    "qwen25_500m": ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct"),
    "qwen25_1p5b": ("Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-1.5B-Instruct"),
    "mistral_7b": ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.3"),
}
# Recipe families that take the architecture from the model's own config.json (on FSx):
# name -> (the recipe whose training settings they start from, model.family, HF model_type).
FAMILIES: dict[str, tuple[str, str, str]] = {
    "hf_llama": ("llama32_1b", "llama", "llama"),  # any Llama-architecture model: SmolLM2, TinyLlama, ...
}


def supported() -> str:
    fixed = ", ".join(f"{name} ({' | '.join(ids)})" for name, ids in RECIPES.items())
    families = ", ".join(f"{name} (any model.family={family} model, shaped by its config.json)"
                         for name, (_, family, _) in FAMILIES.items())
    return f"{fixed}; {families}"


def recipe_problem(recipe: Optional[str], hf_id: str, family: str) -> Optional[str]:
    """Why `recipe` cannot build the model `hf_id` of `family` (None when it can): for config checks."""
    if not recipe:
        return f"model {hf_id!r} names no NeMo recipe to fine-tune on the cluster; supported: {supported()}"
    if recipe in FAMILIES:
        wanted = FAMILIES[recipe][1]
        return None if family == wanted else f"{recipe} builds model.family={wanted} models, not {family!r}"
    if recipe not in RECIPES:
        return f"unknown NeMo recipe {recipe!r}; supported: {supported()}"
    if hf_id not in RECIPES[recipe]:
        families = ", ".join(n for n, (_, fam, _) in FAMILIES.items() if fam == family)
        hint = f"; {families} takes a {family} model's own config" if families else ""
        return f"{recipe} builds {' | '.join(RECIPES[recipe])}, not {hf_id}{hint}"
    return None


def llama_config_from_hf(hf_dir: str | os.PathLike, seq_length: int) -> dict[str, Any]:
    """NeMo LlamaConfig settings from a Hugging Face config.json, mapped as NeMo's HF Llama importer does.

    Read from the file itself (the importer's own `config` instantiates the Megatron config,
    which needs Transformer Engine), so the recipe stays configuration until it runs.
    """
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no Hugging Face config.json for model.cluster_path {hf_dir}")
    source = json.loads(path.read_text(encoding="utf-8"))
    if source.get("model_type") != "llama":
        raise ValueError(f"{path}: model_type is {source.get('model_type')!r}; the hf_llama recipe builds llama models")
    if (source.get("rope_scaling") or {}).get("rope_type") == "llama3":
        raise ValueError(f"{path}: llama3 rope scaling; use the llama31_*/llama32_* recipe of that model")
    vocab = source["vocab_size"]
    divisible = 128
    while vocab % divisible:
        divisible //= 2
    settings = {
        "num_layers": source["num_hidden_layers"],
        "hidden_size": source["hidden_size"],
        "ffn_hidden_size": source["intermediate_size"],
        "num_attention_heads": source["num_attention_heads"],
        "num_query_groups": source.get("num_key_value_heads", source["num_attention_heads"]),
        "init_method_std": source.get("initializer_range", 0.02),
        "layernorm_epsilon": source.get("rms_norm_eps", 1e-5),
        "rotary_base": source.get("rope_theta", 10000),
        "gated_linear_unit": True,
        "share_embeddings_and_output_weights": bool(source.get("tie_word_embeddings", False)),
        "vocab_size": vocab,
        "make_vocab_size_divisible_by": divisible,
        "seq_length": seq_length,
    }
    if source.get("head_dim"):
        settings["kv_channels"] = source["head_dim"]
    return settings


def build_recipe(spec: dict[str, Any]):
    """The NeMo fine-tuning recipe (`llm.<recipe>.finetune_recipe(..., peft_scheme="lora")`) for `spec`.

    A family recipe (FAMILIES) starts from its base recipe's training settings and replaces
    the model with the one the base model's config.json describes.
    """
    import nemo_run as run
    from nemo import lightning as nl
    from nemo.collections import llm
    from nemo.collections.llm.gpt.data.packed_sequence import PackedSequenceSpecs
    from nemo.lightning.pytorch.callbacks import PreemptionCallback

    name = spec["recipe"]
    if name not in RECIPES and name not in FAMILIES:
        raise ValueError(f"model.nemo_recipe: unknown NeMo recipe {name!r}; supported: {supported()}")
    base = FAMILIES[name][0] if name in FAMILIES else name
    module = getattr(llm, base, None)
    if module is None or not hasattr(module, "finetune_recipe"):
        raise ValueError(f"model.nemo_recipe: NeMo has no recipe llm.{base}.finetune_recipe")
    seq = spec["seq_length"]
    recipe = module.finetune_recipe(
        dir=spec["log_dir"],
        name=spec["name"],
        num_nodes=spec["nodes"],
        num_gpus_per_node=spec["gpus_per_node"],
        peft_scheme="lora",
        seq_length=seq,
        packed_sequence=spec["packed_sequences"],
    )
    if name in FAMILIES:
        from nemo.collections.llm.gpt.model.llama import LlamaConfig

        recipe.model = run.Config(llm.LlamaModel, config=run.Config(LlamaConfig, **llama_config_from_hf(spec["hf_model"], seq)))

    lora = spec["lora"]
    recipe.peft.dim = lora["dim"]
    recipe.peft.alpha = lora["alpha"]
    recipe.peft.dropout = lora["dropout"]
    recipe.peft.target_modules = list(lora["target_modules"])
    recipe.peft.dropout_position = "pre"  # what HF PEFT does; NeMo's exporter requires it

    strategy = recipe.trainer.strategy
    strategy.tensor_model_parallel_size = spec["tensor_parallel"]
    strategy.pipeline_model_parallel_size = spec["pipeline_parallel"]
    recipe.trainer.max_steps = spec["max_steps"]
    every = min(spec["checkpoint_every"], spec["max_steps"])
    recipe.trainer.val_check_interval = every
    recipe.trainer.callbacks = list(recipe.trainer.callbacks or []) + [run.Config(PreemptionCallback)]

    packed = None
    if spec["packed_sequences"]:
        files = packed_files(spec)
        packed = run.Config(
            PackedSequenceSpecs,
            packed_sequence_size=seq,
            packed_train_data_path=str(files["train"]),
            packed_val_data_path=str(files["val"]),
            packed_metadata_path=str(files["metadata"]),
        )
    recipe.data = run.Config(
        llm.FineTuningDataModule,
        dataset_root=spec["dataset_root"],
        seq_length=seq,
        micro_batch_size=spec["micro_batch_size"],
        global_batch_size=spec["global_batch_size"],
        seed=spec["seed"],
        packed_sequence_specs=packed,
        dataset_kwargs={**DATASET_KWARGS, "pad_to_max_length": bool(packed)},
    )

    recipe.optim.config.lr = spec["learning_rate"]
    recipe.optim.lr_scheduler.warmup_steps = min(50, max(1, spec["max_steps"] // 10))

    # Checkpoints go straight into the run folder on FSx (no dated version folders), so a
    # restarted pod finds them.
    recipe.log.log_dir = None
    recipe.log.explicit_log_dir = spec["log_dir"]
    recipe.log.ckpt.every_n_train_steps = every
    recipe.log.ckpt.save_top_k = spec["keep_checkpoints"]
    recipe.resume = run.Config(
        nl.AutoResume,
        restore_config=run.Config(nl.RestoreConfig, path=str(base_checkpoint(spec))),
        resume_if_exists=spec["resume"],
        resume_ignore_no_checkpoint=True,
        resume_from_directory=str(Path(spec["log_dir"]) / "checkpoints"),
    )
    return recipe


def base_checkpoint(spec: dict[str, Any]) -> Path:
    """Where the base model, imported from Hugging Face once, lives in NeMo format."""
    return Path(spec["nemo_home"]) / "models" / spec["model_name"]


def packed_files(spec: dict[str, Any]) -> dict[str, Path]:
    folder = Path(spec["dataset_root"]) / "packed" / str(spec["seq_length"])
    return {"train": folder / "training.npy", "val": folder / "validation.npy", "metadata": folder / "metadata.jsonl"}


# --------------------------------------------------------------------------- data


def to_nemo_rows(rows: Iterable[dict], render_prompt: Callable[[list[dict]], str]) -> list[dict]:
    """modelchain chat rows (`{"messages": [...]}`) as NeMo's `{"input", "output"}` pairs.

    The input is every message before the last assistant answer, rendered by `render_prompt`
    (the base model's chat template, opened for the assistant's turn); the output is that answer.
    """
    out = []
    for i, row in enumerate(rows):
        messages = row.get("messages") or []
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"row {i}: the last message must be the assistant's answer")
        out.append({"input": render_prompt(messages[:-1]), "output": messages[-1]["content"]})
    return out


def plain_prompt(messages: list[dict]) -> str:
    """A readable prompt for models without a chat template."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- rank 0 preparation


def prepare(spec: dict[str, Any], recipe) -> None:
    """What every rank needs before training, done once by global rank 0 and marked done."""
    root = Path(spec["dataset_root"])
    marker = root / PREPARED
    if marker.exists():
        return
    from transformers import AutoTokenizer as HFTokenizer

    hf = HFTokenizer.from_pretrained(spec["hf_model"])

    def render(messages: list[dict]) -> str:
        if getattr(hf, "chat_template", None):
            return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return plain_prompt(messages)

    train = _read_jsonl(root / "train.jsonl")
    val = _read_jsonl(root / "val.jsonl") or train[: max(1, len(train) // 20)]  # a tiny set may have no val rows
    if not train:
        raise FileNotFoundError(f"{root / 'train.jsonl'}: no training rows staged")
    _write_jsonl(root / "training.jsonl", to_nemo_rows(train, render))
    _write_jsonl(root / "validation.jsonl", to_nemo_rows(val, render))

    from nemo.collections import llm

    target = base_checkpoint(spec)
    if not (target / "context").exists():
        import fiddle as fdl

        llm.import_ckpt(model=fdl.build(recipe.model), source=f"hf://{spec['hf_model']}", output_path=target)

    if spec["packed_sequences"]:
        from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer
        from nemo.collections.llm.gpt.data.packed_sequence import prepare_packed_sequence_data

        tokenizer = AutoTokenizer(spec["hf_model"])
        files = packed_files(spec)
        files["train"].parent.mkdir(parents=True, exist_ok=True)
        for split, source in (("train", "training.jsonl"), ("val", "validation.jsonl")):
            prepare_packed_sequence_data(
                input_path=root / source,
                output_path=files[split],
                output_metadata_path=files["metadata"],
                packed_sequence_size=spec["seq_length"],
                tokenizer=tokenizer,
                max_seq_length=spec["seq_length"],
                seed=spec["seed"],
                dataset_kwargs={**DATASET_KWARGS, "pad_to_max_length": True},
            )
    _write_jsonl(marker, [{"name": spec["name"], "time": time.time()}])


def wait_prepared(spec: dict[str, Any], timeout_s: float = 4 * 3600, poll_s: float = 10.0) -> None:
    marker = Path(spec["dataset_root"]) / PREPARED
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 did not prepare {marker} within {timeout_s:.0f} s")
        time.sleep(poll_s)


# --------------------------------------------------------------------------- the adapter


def newest_checkpoint(log_dir: str | os.PathLike) -> Path:
    """The newest finished NeMo checkpoint (NeMo marks unfinished ones with `-unfinished`)."""
    folder = Path(log_dir) / "checkpoints"
    candidates = [
        d for d in folder.glob("*") if d.is_dir() and not Path(f"{d}-unfinished").exists()
    ] if folder.exists() else []
    if not candidates:
        raise FileNotFoundError(f"{folder}: no finished checkpoint to export")

    def step(path: Path) -> tuple[int, int]:
        found = re.search(r"step=(\d+)", path.name)
        return (int(found.group(1)) if found else -1, path.name.endswith("-last"))

    return max(candidates, key=step)


def export_adapter(spec: dict[str, Any]) -> Path:
    """Export the newest LoRA checkpoint to Hugging Face PEFT format in `adapter_dir`."""
    from nemo.collections import llm

    checkpoint = newest_checkpoint(spec["log_dir"])
    target = Path(spec["adapter_dir"])
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    llm.peft.export_lora(lora_checkpoint_path=str(checkpoint), output_path=str(tmp))
    check_adapter(tmp, spec)
    (tmp / "modelchain.json").write_text(
        json.dumps({"base_model": spec.get("hf_id", spec["hf_model"]), "base_model_path": spec["hf_model"],
                    "recipe": spec["recipe"], "checkpoint": checkpoint.name}, indent=2),
        encoding="utf-8",
    )
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


# --------------------------------------------------------------------------- main


def dry_run(recipe, ntasks_per_node: int = 8) -> None:
    """Resolve and package the recipe for torchrun without running it (works without GPUs)."""
    import nemo_run as run

    run.run(recipe, executor=run.LocalExecutor(ntasks_per_node=ntasks_per_node, launcher="torchrun"), dryrun=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="spec.json written by modelchain.training.pytorchjob")
    parser.add_argument("--dry-run", action="store_true", help="build and dry-run the recipe; train nothing")
    args = parser.parse_args(argv)

    spec = load_spec(args.spec)
    if spec.get("recipe_family") == "automodel":
        return run_automodel(spec, dry_run=args.dry_run)
    recipe = build_recipe(spec)
    if args.dry_run:
        dry_run(recipe, spec["gpus_per_node"])
        return 0
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        prepare(spec, recipe)
    else:
        wait_prepared(spec)

    import nemo_run as run

    run.run(recipe, direct=True)
    if rank == 0:
        print(f"adapter exported to {export_adapter(spec)}", flush=True)
    return 0


def run_automodel(spec: dict[str, Any], dry_run: bool = False) -> int:
    """The NeMo AutoModel family: write its recipe config, train, and hand over the PEFT adapter.

    It reads the staged chat splits and the weights on FSx as they are (no import, no packing
    step of ours) and saves Hugging Face PEFT, so rank 0 only copies the newest adapter to
    adapter_dir and checks it against the configured targets.
    """
    import yaml

    try:
        from modelchain.training.automodel_recipe import automodel_recipe, newest_adapter
    except ImportError:  # in the training pod
        from automodel_recipe import automodel_recipe, newest_adapter

    config_path = Path(spec["log_dir"]) / "automodel.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(automodel_recipe(spec), sort_keys=False), encoding="utf-8")
    from nemo_automodel.components.config.loader import load_yaml_config
    from nemo_automodel.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    recipe = TrainFinetuneRecipeForNextTokenPrediction(load_yaml_config(str(config_path)))
    if dry_run:
        print(f"AutoModel recipe config: {config_path}", flush=True)
        return 0
    recipe.setup()
    recipe.run_train_validation_loop()
    if int(os.environ.get("RANK", "0")) == 0:
        target = Path(spec["adapter_dir"])
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(newest_adapter(spec), tmp)
        check_adapter(tmp, spec)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        print(f"adapter saved to {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Finetune: train a LoRA adapter on the train split.

`cluster.kind=local` trains here on the CPU (transformers + peft): in this process, or
under torchrun with `train.procs_per_node` processes (DDP over gloo). `cluster.kind=eks` is
the PyTorchJob running the NeMo recipe, which lives in modelchain.training.

Locally, with `train.checkpoint_every` > 0, checkpoints go to a folder named after the
settings and the data (`train.local.checkpoint_dir` to choose another), so the same
pipeline run again after a crash resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run(
    settings: dict[str, Any],
    splits_dir: str | Path,
    adapter_dir: str | Path,
    *,
    max_steps: int,
    learning_rate: float,
    lora_rank: int,
    lora_alpha: int,
) -> dict[str, Any]:
    """Train and write the adapter into `adapter_dir`; returns the training metrics."""
    if settings["cluster"]["kind"] == "eks":
        from modelchain.components.finetune.cluster import run_on_cluster

        return run_on_cluster(
            settings,
            splits_dir,
            adapter_dir,
            max_steps=max_steps,
            learning_rate=learning_rate,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
        )
    return _run_local(
        settings, splits_dir, adapter_dir, max_steps=max_steps, learning_rate=learning_rate,
        lora_rank=lora_rank, lora_alpha=lora_alpha,
    )


def _run_local(settings, splits_dir, adapter_dir, *, max_steps, learning_rate, lora_rank, lora_alpha) -> dict[str, Any]:
    from modelchain.core.models import base_model_from_settings

    train = settings["train"]
    local = train.get("local", {})
    base_dir = base_model_from_settings(settings["model"])
    train_path = Path(splits_dir) / "train.jsonl"
    options = dict(
        rank=lora_rank,
        alpha=lora_alpha,
        dropout=train["lora"]["dropout"],
        target_modules=tuple(train["lora"]["target_modules"]),
        max_steps=max_steps,
        learning_rate=learning_rate,
        batch_size=train["batch_size"],
        grad_accum=train["grad_accum"],
        max_seq_len=train["max_seq_len"],
        seed=train["seed"],
        packing=local.get("packing", True),
        checkpoint_every=train.get("checkpoint_every", 0),
        keep_checkpoints=local.get("keep_checkpoints", 2),
        checkpoint_dir=_checkpoint_dir(settings, train_path, options_key=(max_steps, learning_rate, lora_rank, lora_alpha)),
    )
    procs = int(train.get("procs_per_node", 1))
    if procs <= 1:
        from modelchain.training.local_trainer import train_lora

        return train_lora(base_dir, train_path, adapter_dir, **options)
    return _torchrun(procs, base_dir, train_path, adapter_dir, options)


def _checkpoint_dir(settings, train_path: Path, options_key) -> str | None:
    """A folder that outlives this step's outputs, the same for the same settings and data."""
    train = settings["train"]
    chosen = train.get("local", {}).get("checkpoint_dir")
    if chosen:
        return chosen
    if not train.get("checkpoint_every"):
        return None
    from modelchain.training.checkpoint import fingerprint

    key = fingerprint({"model": settings["model"], "train": train, "run": list(options_key)}, train_path)
    return str(Path(settings["cluster"]["workdir"]) / "checkpoints" / f"finetune-{key[:16]}")


def _torchrun(procs: int, base_dir, train_path: Path, adapter_dir, options: dict) -> dict[str, Any]:
    """Run the local trainer in `procs` CPU processes (DDP over gloo) and read its metrics."""
    import json
    import os
    import subprocess
    import sys

    args = [
        "--base-model", str(base_dir), "--train", str(train_path), "--out", str(adapter_dir),
        "--rank", str(options["rank"]), "--alpha", str(options["alpha"]), "--dropout", str(options["dropout"]),
        "--target-modules", ",".join(options["target_modules"]),
        "--max-steps", str(options["max_steps"]), "--learning-rate", repr(options["learning_rate"]),
        "--batch-size", str(options["batch_size"]), "--grad-accum", str(options["grad_accum"]),
        "--max-seq-len", str(options["max_seq_len"]), "--seed", str(options["seed"]),
        "--checkpoint-every", str(options["checkpoint_every"]), "--keep-checkpoints", str(options["keep_checkpoints"]),
    ]
    if not options["packing"]:
        args.append("--no-packing")
    if options["checkpoint_dir"]:
        args += ["--checkpoint-dir", str(options["checkpoint_dir"])]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
        "-m", "modelchain.training.local_trainer", *args,
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # the trainer sets its threads per process itself
    print(f"finetune: torchrun with {procs} processes", flush=True)
    done = subprocess.run(command, env=env)
    if done.returncode != 0:
        hint = "; run it again to resume from the newest checkpoint" if options["checkpoint_every"] else ""
        raise RuntimeError(
            f"local training under torchrun ({procs} processes) failed with exit code {done.returncode} "
            f"(its log is above){hint}"
        )
    return json.loads((Path(adapter_dir) / "train_metrics.json").read_text())

"""Training here on the CPU (transformers + peft): in this process, or under torchrun.

With `train.procs_per_node` > 1 the local trainer runs under torchrun with that many CPU
processes (DDP over gloo). With `train.checkpoint_every` > 0, checkpoints go to a folder
named after the settings and the data (`train.local.checkpoint_dir` to choose another), so
the same pipeline run again after a crash resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


class LocalBackend:
    name = "local"

    def check_config(self, cfg, need) -> None:
        train = cfg.train
        need(cfg.model.path or cfg.model.gguf_package, "model.path", "a local run needs model.path or model.gguf_package")
        need(train.batch_size * train.grad_accum >= train.procs_per_node, "train.procs_per_node",
             f"{train.procs_per_node} processes need at least as many conversations a step "
             f"(batch_size x grad_accum = {train.batch_size * train.grad_accum})")
        need(train.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        need(train.local.keep_checkpoints >= 1, "train.local.keep_checkpoints", "must be >= 1")

    def train(self, *, model, train, cluster, experiment, splits_dir, adapter_dir) -> dict[str, Any]:
        from modelchain.core.models import base_model_from_settings

        base_dir = base_model_from_settings(model)
        train_path = Path(splits_dir) / "train.jsonl"
        options = dict(
            rank=train.lora.rank,
            alpha=train.lora.alpha,
            dropout=train.lora.dropout,
            target_modules=tuple(train.lora.target_modules),
            max_steps=train.max_steps,
            learning_rate=train.learning_rate,
            batch_size=train.batch_size,
            grad_accum=train.grad_accum,
            max_seq_len=train.max_seq_len,
            seed=train.seed,
            packing=train.local.packing,
            checkpoint_every=train.checkpoint_every,
            keep_checkpoints=train.local.keep_checkpoints,
            checkpoint_dir=checkpoint_dir(model, train, cluster, train_path),
        )
        if train.procs_per_node <= 1:
            from modelchain.training.local_trainer import train_lora

            return train_lora(base_dir, train_path, adapter_dir, **options)
        return _torchrun(train.procs_per_node, base_dir, train_path, adapter_dir, options)

    def job_record(self, cluster) -> dict[str, str]:
        return {"kind": "local", "name": "local", "image": "local"}

    def render(self, cfg, name: Optional[str] = None) -> list[dict[str, Any]]:
        raise ValueError("cluster.training.backend is local: training runs inside the finetune step, "
                         "there is no job to render (use cluster=eks)")


def checkpoint_dir(model, train, cluster, train_path: Path) -> Optional[str]:
    """A folder that outlives the step's outputs, the same for the same settings and data."""
    if train.local.checkpoint_dir:
        return train.local.checkpoint_dir
    if not train.checkpoint_every:
        return None
    from omegaconf import OmegaConf

    from modelchain.training.checkpoint import fingerprint

    settings = {"model": OmegaConf.to_container(model, resolve=True), "train": OmegaConf.to_container(train, resolve=True)}
    key = fingerprint(settings, train_path)
    return str(Path(cluster.workdir) / "checkpoints" / f"finetune-{key[:16]}")


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

"""LoRA fine-tuning on the CPU: the local stand-in for the NeMo recipe run on the cluster.

Input is JSONL in chat format, one conversation per line, whose last message is the
assistant's answer::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

The loss covers only the answer (and the end-of-turn token that teaches the model to stop).
The output directory holds a peft adapter that peft and vLLM load as it is, plus
``train_metrics.json`` and ``loss_curve.png``. It appears whole or not at all.

One process, or several under torchrun (DDP over gloo, each rank a distinct share of every
global batch; see ``packing.py`` for the data order and the packing)::

    python -m modelchain.training.local_trainer --base-model DIR --train FILE --out DIR
    torchrun --standalone --nproc-per-node 2 -m modelchain.training.local_trainer ...

With ``--checkpoint-every N`` rank 0 writes a checkpoint every N steps into
``<out>.checkpoints/`` (see ``checkpoint.py``); the same command run again resumes from the
newest complete one. The checkpoints are removed once the adapter is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelchain.core.io import atomic_dir
from modelchain.core.models import cpu_threads
from modelchain.training import checkpoint as ckpt
from modelchain.training import segment_attention
from modelchain.training.lora_targets import nemo_to_hf
from modelchain.training.packing import (
    IGNORE_INDEX,
    Example,
    build_batch,
    global_batch,
    micro_batches,
    shard,
)

ROLES = ("system", "user", "assistant")

DEFAULT_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


# ---------------------------------------------------------------------------- data


def load_chat_rows(path: str | os.PathLike) -> list[list[dict]]:
    """Read and check a chat JSONL file; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"training data {path} does not exist or is not a file")
    rows: list[list[dict]] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise ValueError(f"{where}: expected an object with a non-empty 'messages' list")
            for i, message in enumerate(messages):
                if (
                    not isinstance(message, dict)
                    or message.get("role") not in ROLES
                    or not isinstance(message.get("content"), str)
                ):
                    raise ValueError(
                        f"{where}: messages[{i}] needs a role in {list(ROLES)} and a string content"
                    )
            if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
                raise ValueError(f"{where}: the last message must be a non-empty assistant answer")
            if len(messages) < 2:
                raise ValueError(f"{where}: an assistant answer needs a prompt before it")
            rows.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if not rows:
        raise ValueError(f"training data {path} has no rows")
    return rows


def encode_example(tokenizer, messages: list[dict], max_seq_len: int) -> Example:
    """Tokenise one conversation; only the final assistant turn is supervised.

    The prompt is rendered with ``add_generation_prompt=True`` exactly as at inference, and
    the answer is tokenised on its own after it, so the boundary between prompt and answer
    tokens is exact.
    """
    prompt_text = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently inside the conversation")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    # Stop supervising at the end-of-turn token: what the template adds after it
    # (a newline) is never generated, because generation stops at that token.
    eos = tokenizer.eos_token_id
    if eos in answer_ids:
        answer_ids = answer_ids[: answer_ids.index(eos) + 1]

    truncated = len(prompt_ids) + len(answer_ids) > max_seq_len
    if truncated:
        # Keep the answer and the end of the prompt (the question nearest to it).
        answer_ids = answer_ids[:max_seq_len]
        keep = max_seq_len - len(answer_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep else []
    return Example(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        truncated=truncated,
    )


# ---------------------------------------------------------------------------- training


@dataclass
class _World:
    rank: int = 0
    size: int = 1
    local_size: int = 1
    owns_group: bool = False  # this call started the process group, so it ends it

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _join_world() -> _World:
    """The torchrun world this process belongs to (one process without torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        size = dist.get_world_size()
        return _World(dist.get_rank(), size, int(os.environ.get("LOCAL_WORLD_SIZE", size)))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _World()
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    if local_size == size and sys.platform.startswith("linux"):
        # All ranks on this machine: keep gloo on the loopback, whatever the hostname resolves to.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo")
    return _World(dist.get_rank(), size, local_size, owns_group=True)


def _lr_factor(step: int, max_steps: int, warmup: int) -> float:
    """Linear warmup to the full rate, then linear decay towards zero."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def _plot_losses(losses: list[float], path: Path) -> None:
    # Figure + savefig uses the Agg canvas without touching pyplot's global backend.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(range(1, len(losses) + 1), losses, marker="." if len(losses) < 60 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title("LoRA fine-tune")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def default_checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    """Where checkpoints go unless told otherwise: ``<out>.checkpoints`` beside the output."""
    out = Path(out_dir)
    return out.with_name(f"{out.name}.checkpoints")


def _log(world: _World, message: str) -> None:
    if world.rank == 0:
        print(f"local_trainer: {message}", file=sys.stderr, flush=True)


def train_lora(
    base_model_dir: str | os.PathLike,
    train_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] | str = DEFAULT_TARGETS,
    max_steps: int = 30,
    learning_rate: float = 2e-4,
    batch_size: int = 8,
    grad_accum: int = 1,
    max_seq_len: int = 256,
    seed: int = 0,
    packing: bool = True,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 2,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Fine-tune a LoRA adapter on chat JSONL and write it to ``out_dir``; return the metrics.

    ``target_modules`` are NeMo names (as in the cluster recipe). One step consumes a global
    batch of ``batch_size * grad_accum`` conversations, shared by the ranks when run under
    torchrun; each rank runs micro-batches of at most ``batch_size`` rows. With ``packing``
    a row holds several conversations (up to ``max_seq_len`` tokens), without it one.
    Packing changes how the step's tokens are laid out, not which tokens the step trains on.
    """
    sizes = dict(max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, rank=rank,
                 max_seq_len=max_seq_len, keep_checkpoints=keep_checkpoints)
    for name, value in sizes.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    if isinstance(target_modules, str):
        target_modules = target_modules.split(",")
    nemo_targets = [t.strip() for t in target_modules if t.strip()]
    hf_targets = nemo_to_hf(nemo_targets)
    rows = load_chat_rows(train_path)
    base_model_dir = Path(base_model_dir)
    if not (base_model_dir / "config.json").is_file():
        raise ValueError(f"base model {base_model_dir} has no config.json")
    out = Path(out_dir)
    global_size = batch_size * grad_accum
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if global_size < world_size:
        raise ValueError(
            f"batch_size x grad_accum = {global_size} conversations a step cannot be shared by "
            f"{world_size} processes: give every process at least one"
        )
    checkpoint_root = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(out)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelchain.core.progress import progress_bar

    started = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = []
    for i, messages in enumerate(rows, start=1):
        try:
            examples.append(encode_example(tokenizer, messages, max_seq_len))
        except ValueError as err:
            raise ValueError(f"{train_path}: row {i}: {err}") from None
    targets_per_example = [sum(t != IGNORE_INDEX for t in e.targets()) for e in examples]

    settings = {
        "base_model": str(base_model_dir),
        "rank": rank,
        "alpha": alpha,
        "dropout": dropout,
        "target_modules": nemo_targets,
        "hf_target_modules": hf_targets,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "warmup_steps": max(1, round(0.1 * max_steps)),
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "max_seq_len": max_seq_len,
        "seed": seed,
        "packing": packing,
    }
    run_fingerprint = ckpt.fingerprint(settings, train_path)

    world = _join_world()
    try:
        import torch.distributed as dist

        # Attention within each packed conversation only, with no mask to build or apply.
        model = AutoModelForCausalLM.from_pretrained(
            base_model_dir, dtype=torch.float32, attn_implementation=segment_attention.register()
        )
        model.config.use_cache = False
        # The cores are shared by the ranks on this machine.
        torch.set_num_threads(max(1, cpu_threads(model) // world.local_size))
        lora = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=hf_targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(seed)  # the same LoRA initialisation on every rank
        model = get_peft_model(model, lora)
        # Then a stream of its own per rank, for dropout.
        _seed_everything(seed * 1000 + 1 + world.rank)
        lora_params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(lora_params, lr=learning_rate, weight_decay=0.0)
        warmup = settings["warmup_steps"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _lr_factor(step, max_steps, warmup)
        )

        # Rank 0 chooses the checkpoint to resume from and tells the others, so that all
        # ranks agree even while files change under them.
        choice = [None]
        if world.rank == 0:
            for path in ckpt.clear_foreign(checkpoint_root, run_fingerprint):
                _log(world, f"removed {path}: unfinished, or from other settings or data")
            found = ckpt.latest(checkpoint_root, run_fingerprint)
            choice = [(str(found.path), found.step) if found else None]
        if world.distributed:
            dist.broadcast_object_list(choice, src=0)
        state: dict = {"losses": [], "train_tokens": 0, "answer_tokens": 0, "slots": 0}
        start_step = 0
        if choice[0] is not None:
            path, start_step = Path(choice[0][0]), choice[0][1]
            found = ckpt.Checkpoint(start_step, path, json.loads((path / ckpt.STATE_FILE).read_text()))
            if not ckpt.load(found, model=model, optimizer=optimizer, scheduler=scheduler, rank=world.rank):
                _seed_everything(seed * 1000 + 1 + world.rank + 7919 * start_step)
                _log(world, f"{path} was written by {found.state.get('world_size')} processes: "
                            "random states reseeded")
            state.update({k: found.state[k] for k in state if k in found.state})
            _log(world, f"resumed from step {start_step} ({path})")

        net = model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model)
        losses: list[float] = list(state["losses"])
        session_tokens = session_slots = 0
        checkpoints_written = 0
        model.train()
        loop_started = time.perf_counter()
        cpu_started = time.process_time()
        bar = progress_bar(max_steps, "LoRA fine-tune", "step", enabled=progress and world.rank == 0)
        bar.update(start_step)
        for step in range(start_step, max_steps):
            indices = global_batch(step, len(examples), global_size, seed)
            # Normalise by the answer tokens of the whole global step, so that gradient
            # accumulation and the ranks together give the gradient of one big batch.
            step_targets = max(1, sum(targets_per_example[i] for i in indices))
            mine = [examples[i] for i in shard(indices, world.rank, world.size)]
            groups = micro_batches(mine, packing=packing, max_seq_len=max_seq_len, rows_per_batch=batch_size)
            local = torch.zeros(3, dtype=torch.float64)  # loss sum, real tokens, slots
            for k, rows_of_batch in enumerate(groups):
                # Packed: the micro-batch's conversations end to end in one row, no padding.
                batch = build_batch(mine, rows_of_batch, pad_id, one_row=packing)
                keep = batch["targets"] != IGNORE_INDEX
                # DDP averages gradients when the last micro-batch of this rank runs backward.
                last = k == len(groups) - 1
                sync = contextlib.nullcontext() if last or not world.distributed else net.no_sync()
                with sync:
                    # A boolean logits_to_keep projects onto the vocabulary only the positions
                    # that predict an answer token: most of a row is prompt.
                    # cu_seq_lens_q tells segment attention where each conversation starts.
                    logits = net(
                        input_ids=batch["input_ids"],
                        position_ids=batch["position_ids"],
                        cu_seq_lens_q=batch.get("cu_seq_lens"),
                        logits_to_keep=keep,
                        use_cache=False,
                    ).logits
                    loss_sum = torch.nn.functional.cross_entropy(
                        logits.float(), batch["targets"][keep], ignore_index=IGNORE_INDEX, reduction="sum"
                    )
                    (loss_sum * world.size / step_targets).backward()
                local += torch.tensor([loss_sum.item(), batch["real_tokens"], batch["slots"]], dtype=torch.float64)
            if world.distributed:
                dist.all_reduce(local)
            torch.nn.utils.clip_grad_norm_(lora_params, max_norm=1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss = float(local[0]) / step_targets
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} at step {step + 1}")
            losses.append(loss)
            session_tokens += int(local[1])
            session_slots += int(local[2])
            state["train_tokens"] += int(local[1])
            state["slots"] += int(local[2])
            state["answer_tokens"] += step_targets
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            done = step + 1
            if checkpoint_every and done % checkpoint_every == 0 and done < max_steps:
                _save_checkpoint(world, checkpoint_root, done, model, optimizer, scheduler, keep_checkpoints,
                                 {**state, "losses": losses, "fingerprint": run_fingerprint})
                checkpoints_written += 1
        bar.close()
        loop_seconds = time.perf_counter() - loop_started
        cpu_seconds = time.process_time() - cpu_started

        metrics = {
            "steps": max_steps,
            "final_loss": losses[-1],
            "mean_loss_last_5": sum(losses[-5:]) / len(losses[-5:]),
            "losses": losses,
            "train_rows": len(examples),
            "truncated_rows": sum(e.truncated for e in examples),
            # Tokens are real (non-padding) tokens, over the whole run including resumed steps.
            "train_tokens": state["train_tokens"],
            "answer_tokens": state["answer_tokens"],
            "padding_fraction": round(1 - state["train_tokens"] / state["slots"], 4) if state["slots"] else 0.0,
            "seconds": round(loop_seconds, 3),
            # This process's steps only: a resumed run did not time the steps before it.
            "tokens_per_second": round(session_tokens / loop_seconds, 1) if loop_seconds else None,
            "total_seconds": None,  # filled in below, once the files are written
            # CPU time is steadier than wall time on a shared machine (rank 0's process).
            "cpu_seconds": round(cpu_seconds, 3),
            "trainable_parameters": sum(p.numel() for p in lora_params),
            "total_parameters": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads(),
            "world_size": world.size,
            "resumed_from_step": start_step,
            "checkpoints_written": checkpoints_written,
            "settings": {**settings, "checkpoint_every": checkpoint_every},
        }
        if world.rank == 0:
            _write_output(model, losses, metrics, out, started)
            # The run is finished: its checkpoints could only mislead a later run into this folder.
            ckpt.remove_run(checkpoint_root, run_fingerprint)
        if world.distributed:
            dist.barrier()  # the others return only once the adapter is in place
        return metrics
    finally:
        if world.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _seed_everything(value: int) -> None:
    import numpy as np
    import torch

    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def _save_checkpoint(world, root, step, model, optimizer, scheduler, keep, state) -> None:
    """Every rank hands its random state to rank 0, which writes the checkpoint."""
    rng = ckpt.rng_state()
    if world.distributed:
        import torch.distributed as dist

        gathered = [None] * world.size if world.rank == 0 else None
        dist.gather_object(rng, gathered, dst=0)
    else:
        gathered = [rng]
    if world.rank == 0:
        path = ckpt.save(root, step, model=model, optimizer=optimizer, scheduler=scheduler,
                         rng_states=gathered, state=state, keep=keep)
        _log(world, f"checkpoint {path}")


def _write_output(model, losses: list[float], metrics: dict, out: Path, started: float) -> None:
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        _plot_losses(losses, tmp / "loss_curve.png")
        metrics["total_seconds"] = round(time.perf_counter() - started, 3)
        (tmp / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)  # some writers create private files; the adapter is shared


# ---------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelchain.training.local_trainer",
        description="Fine-tune a LoRA adapter on chat JSONL on the CPU.",
    )
    parser.add_argument("--base-model", required=True, help="Hugging Face model directory")
    parser.add_argument("--train", required=True, help="chat JSONL ({'messages': [...]} per line)")
    parser.add_argument("--out", required=True, help="adapter output directory")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument(
        "--target-modules", default=",".join(DEFAULT_TARGETS), help="NeMo names, comma separated"
    )
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--learning-rate", "--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-packing", action="store_true", help="one conversation per row, padded")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="steps; 0 = no checkpoints")
    parser.add_argument("--keep-checkpoints", type=int, default=2)
    parser.add_argument("--checkpoint-dir", default=None, help="default: <out>.checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        metrics = train_lora(
            args.base_model,
            args.train,
            args.out,
            rank=args.rank,
            alpha=args.alpha,
            dropout=args.dropout,
            target_modules=args.target_modules,
            max_steps=args.max_steps,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            max_seq_len=args.max_seq_len,
            seed=args.seed,
            packing=not args.no_packing,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints,
            checkpoint_dir=args.checkpoint_dir,
            progress=not args.no_progress,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        resumed = f", resumed from step {metrics['resumed_from_step']}" if metrics["resumed_from_step"] else ""
        print(
            f"wrote {args.out}: {metrics['steps']} steps{resumed}, final loss {metrics['final_loss']:.4f}, "
            f"{metrics['seconds']:.1f} s, {metrics['tokens_per_second']} tokens/s, "
            f"{metrics['world_size']} process(es)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

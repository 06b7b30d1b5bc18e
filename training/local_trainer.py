"""LoRA fine-tuning on the CPU: the local stand-in for the NeMo recipe run on the cluster.

Input is JSONL in chat format, one conversation per line, whose last message is the
assistant's answer::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

The loss covers only the answer (and the end-of-turn token that teaches the model to stop).
The output directory holds a peft adapter that peft and vLLM load as it is, plus
``train_metrics.json`` and ``loss_curve.png``. It appears whole or not at all.

    python -m modelchain.training.local_trainer --base-model DIR --train FILE --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelchain.core.models import cpu_threads
from modelchain.training.lora_targets import nemo_to_hf

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # label value that torch's cross entropy skips

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


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX except on the answer tokens
    truncated: bool


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


def collate(examples: Sequence[Example], pad_id: int):
    """Left-pad a batch, so that every answer sits at the right end of its row.

    Returns tensors and ``keep``: how many trailing positions hold all the logits the loss
    needs, which lets the model skip the vocabulary projection on the prompt tokens.
    """
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids, labels, mask = [], [], []
    for e in examples:
        pad = width - len(e.input_ids)
        ids.append([pad_id] * pad + e.input_ids)
        labels.append([IGNORE_INDEX] * pad + e.labels)
        mask.append([0] * pad + [1] * len(e.input_ids))
    ids_t = torch.tensor(ids)
    labels_t = torch.tensor(labels)
    mask_t = torch.tensor(mask)
    # Positions count real tokens only, as generate() does for left-padded prompts.
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
    supervised = labels_t != IGNORE_INDEX
    first = int(supervised.float().argmax(-1).min()) if supervised.any() else width - 1
    keep = width - first + 1  # one more: the logit before the first answer token predicts it
    return {
        "input_ids": ids_t,
        "attention_mask": mask_t,
        "position_ids": positions,
        "labels": labels_t,
        "keep": min(keep, width),
    }


# ---------------------------------------------------------------------------- training


def _batches(n_rows: int, size: int, seed: int):
    """Endless shuffled mini-batches of row indices; a new permutation every epoch."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        batch = []
        while len(batch) < size:
            if not order:
                order = list(range(n_rows))
                rng.shuffle(order)
            batch.append(order.pop())
        yield batch


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


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished directory into place, replacing an older one only at the end."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    progress: bool = True,
) -> dict:
    """Fine-tune a LoRA adapter on chat JSONL and write it to ``out_dir``; return the metrics.

    ``target_modules`` are NeMo names (as in the cluster recipe); one step consumes
    ``batch_size * grad_accum`` conversations.
    """
    sizes = dict(max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, rank=rank,
                 max_seq_len=max_seq_len)
    for name, value in sizes.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if isinstance(target_modules, str):
        target_modules = target_modules.split(",")
    nemo_targets = [t.strip() for t in target_modules if t.strip()]
    hf_targets = nemo_to_hf(nemo_targets)
    rows = load_chat_rows(train_path)
    base_model_dir = Path(base_model_dir)
    if not (base_model_dir / "config.json").is_file():
        raise ValueError(f"base model {base_model_dir} has no config.json")
    out = Path(out_dir)

    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = []
    for i, messages in enumerate(rows, start=1):
        try:
            examples.append(encode_example(tokenizer, messages, max_seq_len))
        except ValueError as err:
            raise ValueError(f"{train_path}: row {i}: {err}") from None

    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    torch.set_num_threads(cpu_threads(model))
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=hf_targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)  # for the LoRA A initialisation and dropout
    model = get_peft_model(model, lora)
    lora_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_params, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, round(0.1 * max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, max_steps, warmup)
    )

    batches = _batches(len(examples), batch_size * grad_accum, seed)
    losses: list[float] = []
    train_tokens = 0
    answer_tokens = 0
    model.train()
    loop_started = time.perf_counter()
    cpu_started = time.process_time()
    bar = tqdm(range(max_steps), desc="LoRA fine-tune", unit="step", disable=not progress)
    for step in bar:
        indices = next(batches)
        micro = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        encoded = [collate([examples[j] for j in chunk], pad_id) for chunk in micro]
        # Normalise by the answer tokens of the whole step, so gradient accumulation
        # gives the same gradient as one big batch.
        step_targets = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in encoded)
        step_loss = 0.0
        for batch in encoded:
            keep = batch["keep"]
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"],
                logits_to_keep=keep,
            ).logits
            targets = batch["labels"][:, -keep:][:, 1:]
            loss_sum = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            (loss_sum / step_targets).backward()
            step_loss += loss_sum.item()
            train_tokens += int(batch["attention_mask"].sum())
        answer_tokens += step_targets
        torch.nn.utils.clip_grad_norm_(lora_params, max_norm=1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss / step_targets
        if not math.isfinite(loss):
            bar.close()
            raise FloatingPointError(f"training loss became {loss} at step {step + 1}")
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}")
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
        "train_tokens": train_tokens,
        "answer_tokens": answer_tokens,
        "seconds": round(loop_seconds, 3),
        "tokens_per_second": round(train_tokens / loop_seconds, 1) if loop_seconds else None,
        "total_seconds": None,  # filled in below, once the files are written
        # CPU time is steadier than wall time on a shared machine.
        "cpu_seconds": round(cpu_seconds, 3),
        "trainable_parameters": sum(p.numel() for p in lora_params),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "settings": {
            "base_model": str(base_model_dir),
            "rank": rank,
            "alpha": alpha,
            "dropout": dropout,
            "target_modules": nemo_targets,
            "hf_target_modules": hf_targets,
            "max_steps": max_steps,
            "learning_rate": learning_rate,
            "warmup_steps": warmup,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "max_seq_len": max_seq_len,
            "seed": seed,
        },
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        model.save_pretrained(tmp)
        _plot_losses(losses, tmp / "loss_curve.png")
        metrics["total_seconds"] = round(time.perf_counter() - started, 3)
        (tmp / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)  # some writers create private files; the adapter is shared
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics


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
            progress=not args.no_progress,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {metrics['steps']} steps, final loss {metrics['final_loss']:.4f}, "
        f"{metrics['seconds']:.1f} s, {metrics['tokens_per_second']} tokens/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The smallest check of an AutoModel recipe a CPU allows, with the real nemo-automodel.

    python -m modelchain.training.automodel_check --spec spec.json --out DIR [--steps 4]

Runs in an environment with nemo-automodel (`make setup-automodel`: .venv-automodel). It
renders the recipe config from spec.json (training/automodel_recipe.py), loads it with
AutoModel's own config loader, and builds each part from its `_target_` the way the recipe
does: the LoRA `PeftConfig`, applied by `apply_lora_to_linear_modules`; the `ChatDataset`
over the staged chat splits; the dataloader, `MaskedCrossEntropy` and the optimizer. It
trains `--steps` steps on the CPU and saves the adapter with AutoModel's `Checkpointer` (HF
PEFT), then prints a JSON summary. Two parts need a GPU and are left to the cluster: the
recipe class itself (it resets CUDA memory statistics in `setup`) and
`NeMoAutoModelForCausalLM.from_pretrained` (it places the model on CUDA), so the check loads
the same model folder with transformers and checks that the config's model target resolves.
Run it under `torchrun --nproc-per-node=1` (the checkpointer wants a process group).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="spec.json (training/pytorchjob.py nemo_spec)")
    parser.add_argument("--out", required=True, help="where the rendered config and the adapter go")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist
    import yaml
    from nemo_automodel.components._peft.lora import apply_lora_to_linear_modules
    from nemo_automodel.components.checkpoint.config import CheckpointingConfig
    from nemo_automodel.components.config.loader import _resolve_target, load_yaml_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelchain.training.automodel_recipe import automodel_recipe

    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "automodel.yaml"
    config_path.write_text(yaml.safe_dump(automodel_recipe(spec, backend="gloo"), sort_keys=False), encoding="utf-8")
    cfg = load_yaml_config(str(config_path))
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    torch.manual_seed(spec["seed"])

    model_target = _resolve_target(cfg.model._target_)  # the GPU-only loader: resolved, not called
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.pretrained_model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.pretrained_model_name_or_path, dtype=torch.float32)
    peft_config = cfg.peft.instantiate()
    adapted = apply_lora_to_linear_modules(model, peft_config)
    dataset = cfg.dataset.instantiate(tokenizer=tokenizer)
    loader = cfg.dataloader.instantiate(dataset=dataset, batch_size=cfg.step_scheduler.local_batch_size)
    loss_fn = cfg.loss_fn.instantiate()
    optimizer = cfg.optimizer.instantiate(params=[p for p in model.parameters() if p.requires_grad])
    losses = []
    batches = iter(loader)
    for _ in range(args.steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        labels = batch.pop("labels")
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = loss_fn(logits, labels) / max(1, int((labels != -100).sum()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(float(loss), 4))

    section = {k: v for k, v in cfg.checkpoint.to_dict().items() if not k.startswith("_")}
    section["checkpoint_dir"] = str(out / "checkpoints")
    checkpointer = CheckpointingConfig(**section, is_peft=True, model_repo_id=spec["hf_model"],
                                       original_model_root_dir=spec["hf_model"]).build(dp_rank=0, tp_rank=0, pp_rank=0)
    checkpointer.save_model(model, str(out / "final"), peft_config=peft_config, tokenizer=tokenizer)
    print(json.dumps({
        "config": str(config_path),
        "model_target": f"{model_target.__module__}.{model_target.__qualname__}",
        "lora_modules": adapted,
        "dataset_rows": len(dataset),
        "losses": losses,
        "adapter": str(out / "final" / "model"),
    }), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The NeMo AutoModel recipe family with the real nemo-automodel 0.7.0 (.venv-automodel, built by
`make setup-automodel`, which `make test` runs first): the recipe rendered from our config is
loaded by AutoModel's own config loader, its LoRA, chat dataset, loss and optimizer train a
tiny random Llama for a few steps on the CPU, and AutoModel's checkpointer saves the adapter.
That adapter must pass the contract the local trainer's adapters pass: it loads in peft on
the base model, adapts every configured module in every layer, and check_adapter accepts it.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from modelchain.core.config import compose
from modelchain.training import pytorchjob
from modelchain.training.lora_targets import check_adapter, nemo_to_hf

from ..tiny_model import tiny_model  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
AUTOMODEL_VENV = REPO / ".venv-automodel" / "bin"

pytestmark = pytest.mark.slow


def test_the_rendered_recipe_trains_with_the_real_automodel_and_saves_a_peft_adapter(tmp_path, tiny_model):  # noqa: F811
    if not (AUTOMODEL_VENV / "torchrun").exists():
        pytest.skip(f"{AUTOMODEL_VENV.parent} is missing: `make setup-automodel` builds it; `make test` does so first")
    data = tmp_path / "data"
    data.mkdir()
    teams = ["billing", "shipping", "returns"]
    for split, n in (("train", 32), ("val", 8)):
        rows = [{"messages": [{"role": "user", "content": f"Ticket {i}: a {teams[i % 3]} problem"},
                              {"role": "assistant", "content": teams[i % 3]}]} for i in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose("finetune", ["cluster=eks", "model=smollm2_135m", "train.nemo.recipe_family=automodel",
                               "train.max_steps=6", "train.batch_size=4", "train.grad_accum=1", "train.max_seq_len=128",
                               "train.lora.rank=8", "train.lora.alpha=16", "train.learning_rate=1e-3"])
    spec = {**pytorchjob.nemo_spec(cfg, "tiny-automodel"), "hf_model": str(tiny_model), "dataset_root": str(data),
            "log_dir": str(tmp_path / "log"), "nodes": 1, "gpus_per_node": 1, "tensor_parallel": 1,
            "micro_batch_size": 4, "packed_sequences": False}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("VIRTUAL_ENV", None)
    run = subprocess.run(
        [str(AUTOMODEL_VENV / "torchrun"), "--standalone", "--nproc-per-node=1",
         "-m", "modelchain.training.automodel_check", "--spec", str(tmp_path / "spec.json"),
         "--out", str(tmp_path / "out"), "--steps", "6"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["model_target"].endswith("from_pretrained") and summary["dataset_rows"] == 32
    losses = summary["losses"]
    assert len(losses) == 6 and all(loss == loss for loss in losses) and losses[-1] < losses[0], losses

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = Path(summary["adapter"])
    config = check_adapter(adapter, spec)
    assert config["r"] == 8 and config["lora_alpha"] == 16
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    layers = base.config.num_hidden_layers
    model = PeftModel.from_pretrained(base, adapter)
    adapted = {name.rsplit(".", 1)[0] for name, _ in model.named_parameters() if "lora_B" in name}
    assert len(adapted) == layers * len(nemo_to_hf(spec["lora"]["target_modules"])), sorted(adapted)
    # Trained, not fresh: LoRA's B matrices start at zero.
    assert any(float(p.abs().max()) > 0 for name, p in model.named_parameters() if "lora_B" in name)

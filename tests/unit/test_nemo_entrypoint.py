"""The parts of the NeMo entrypoint that need no NeMo: data, checkpoints, the exported adapter.

The recipe itself is built and dry-run with the real NeMo in tests/nemo (.venv-nemo).
"""

import subprocess
import sys

import pytest

from modelchain.training import nemo_entrypoint as ep

def test_module_loads_without_nemo():
    code = ("import sys, modelchain.training.nemo_entrypoint as m\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('nemo', 'nemo_run', 'torch', 'megatron')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_runs_as_a_script_beside_lora_targets(tmp_path):
    """In the pod the ConfigMap mounts the entrypoint and lora_targets.py side by side."""
    from pathlib import Path

    here = Path(ep.__file__).parent
    for name in ("nemo_entrypoint.py", "lora_targets.py"):
        (tmp_path / name).write_text((here / name).read_text())
    out = subprocess.run([sys.executable, "-I", str(tmp_path / "nemo_entrypoint.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--spec" in out.stdout and "--dry-run" in out.stdout


def test_chat_rows_become_input_output_pairs():
    rows = [{"messages": [{"role": "system", "content": "Route tickets."},
                          {"role": "user", "content": "Printer on fire"},
                          {"role": "assistant", "content": "facilities"}]}]
    (pair,) = ep.to_nemo_rows(rows, ep.plain_prompt)
    assert pair == {"input": "system: Route tickets.\nuser: Printer on fire\nassistant: ", "output": "facilities"}
    with pytest.raises(ValueError, match="row 0"):
        ep.to_nemo_rows([{"messages": [{"role": "user", "content": "x"}]}], ep.plain_prompt)


def test_newest_finished_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    for name in ("m--val_loss=0.90-step=99-consumed_samples=6400.0",
                 "m--val_loss=0.50-step=199-consumed_samples=12800.0",
                 "m--val_loss=0.40-step=299-consumed_samples=19200.0"):
        (folder / name).mkdir(parents=True)
    # NeMo marks a checkpoint still being written; it must not be exported.
    (folder / "m--val_loss=0.40-step=299-consumed_samples=19200.0-unfinished").touch()
    assert ep.newest_checkpoint(tmp_path).name.startswith("m--val_loss=0.50-step=199")
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        ep.newest_checkpoint(tmp_path / "empty")


def test_checks_the_exported_adapter_with_the_lora_target_owner():
    from modelchain.training.lora_targets import check_adapter

    assert ep.check_adapter is check_adapter  # one check, shared with the launcher


def test_packed_files_and_base_checkpoint_paths():
    spec = {"dataset_root": "/fsx/r/data", "seq_length": 4096, "nemo_home": "/fsx/nemo", "model_name": "m"}
    files = ep.packed_files(spec)
    assert str(files["train"]) == "/fsx/r/data/packed/4096/training.npy"
    assert str(ep.base_checkpoint(spec)) == "/fsx/nemo/models/m"

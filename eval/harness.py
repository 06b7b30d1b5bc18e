"""lm-evaluation-harness tasks from local files (never the hub), for the base model and an adapter.

Tasks are YAML files in `task_dir` (lm-eval's task format with `dataset_path: json` and
`dataset_kwargs.data_files` naming local files). The built-in task `modelchain_test_split`
is written from the held-out test split: the last user message is the question, the
reference answer the target, scored by exact match ignoring case and punctuation.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

TEST_SPLIT_TASK = "modelchain_test_split"

_TEST_SPLIT_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_new_tokens}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""


def write_test_split_task(rows: Sequence[dict], folder: Path, max_new_tokens: int = 16) -> Path:
    """The built-in task over `rows` (chat rows of the test split), written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{TEST_SPLIT_TASK}.jsonl"
    with open(data, "w") as handle:
        for row in rows:
            handle.write(json.dumps({"question": row["messages"][-2]["content"],
                                     "answer": row["messages"][-1]["content"]}) + "\n")
    (folder / f"{TEST_SPLIT_TASK}.yaml").write_text(
        _TEST_SPLIT_YAML.format(task=TEST_SPLIT_TASK, data=json.dumps(str(data)), max_new_tokens=max_new_tokens)
    )
    return folder


def run_tasks(
    base_model_dir: str | os.PathLike,
    tasks: Sequence[str],
    task_dirs: Sequence[str | os.PathLike],
    adapter_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """{"TASK.METRIC": value} for each task, from lm-eval's `simple_evaluate` on the CPU."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    model_args = f"pretrained={base_model_dir},dtype=float32,device=cpu"
    if adapter_dir is not None:
        model_args += f",peft={adapter_dir}"
    manager = TaskManager(include_path=[str(d) for d in task_dirs])
    out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks), task_manager=manager,
                                  batch_size=batch_size, limit=limit, log_samples=False)
    scores = {}
    for task, metrics in out["results"].items():
        for key, value in metrics.items():
            name, _, _filter = key.partition(",")
            if isinstance(value, (int, float)) and not name.endswith("_stderr") and math.isfinite(float(value)):
                scores[f"{task}.{name}"] = float(value)
    return scores


def run_for_sides(base_model_dir, sides: dict, tasks: Sequence[str], task_dir: str, test_rows: Sequence[dict],
                  max_new_tokens: int, limit: int | None = None) -> dict[str, dict[str, float]]:
    """`run_tasks` for each side ({"base": None, "challenger": DIR, ...}); keys "harness.TASK.METRIC"."""
    with tempfile.TemporaryDirectory(prefix="modelchain-harness-") as tmp:
        dirs = [write_test_split_task(test_rows, Path(tmp), max_new_tokens)] + ([task_dir] if task_dir else [])
        return {
            side: {f"harness.{k}": v for k, v in run_tasks(base_model_dir, tasks, dirs, adapter, limit).items()}
            for side, adapter in sides.items()
        }

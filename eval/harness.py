"""lm-evaluation-harness tasks from local files (never the hub), for the base model and an adapter.

Tasks are YAML files in `task_dir` (lm-eval's task format with `dataset_path: json` and
`dataset_kwargs.data_files` naming local files). Two tasks are built in:

- `modelchain_test_split`, written from the held-out test split: the last user message is
  the question, the reference answer the target, scored by exact match ignoring case and
  punctuation;
- `modelchain_arithmetic`, a public-benchmark-style generative task with numeric answers
  (GSM8K's shape: a short word problem, free-form generation, the last number of the answer
  extracted and compared with the target), generated from a fixed seed so every run and
  every side sees the same problems.

Per-example scores come back beside the means, so the gate report pairs the sides on the
same problems (a paired bootstrap interval per task metric).
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

TEST_SPLIT_TASK = "modelchain_test_split"
ARITHMETIC_TASK = "modelchain_arithmetic"
ARITHMETIC_PROBLEMS = 200
ARITHMETIC_SEED = 1234

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


_ARITHMETIC_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n", "Question:"]
  max_gen_toks: {max_new_tokens}
  do_sample: false
filter_list:
  - name: last-number
    filter:
      - function: regex
        regex_pattern: "(-?[0-9][0-9,]*)"
        group_select: -1
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_punctuation: true
    regexes_to_ignore: [","]
"""

# (question template, answer) over integers a, b, c and a name: each answer is a whole number >= 0.
_PROBLEMS = (
    ("A shop has {a} boxes with {b} pencils in each box. It sells {c} pencils. How many pencils are left?",
     lambda a, b, c: a * b - c),
    ("{name} reads {a} pages a day for {b} days, then {c} more pages. How many pages does {name} read in all?",
     lambda a, b, c: a * b + c),
    ("A train travels {a} kilometres every hour for {b} hours, then {c} kilometres more. How far does it go?",
     lambda a, b, c: a * b + c),
    ("There are {a} rows of {b} chairs in a hall and {c} chairs are taken. How many chairs are free?",
     lambda a, b, c: a * b - c),
    ("{name} buys {a} bags of {b} oranges and eats {c} of them. How many oranges are left?",
     lambda a, b, c: a * b - c),
)
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun")


def arithmetic_problems(n: int = ARITHMETIC_PROBLEMS, seed: int = ARITHMETIC_SEED) -> list[dict]:
    """`n` word problems with whole-number answers, the same for the same seed."""
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        template, solve = rng.choice(_PROBLEMS)
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        c = rng.randint(2, a * b)  # keeps every "left" or "free" answer >= 0
        question = template.format(a=a, b=b, c=c, name=rng.choice(_NAMES))
        problems.append({"question": question, "answer": str(solve(a, b, c))})
    return problems


def write_arithmetic_task(folder: Path, max_new_tokens: int = 16) -> Path:
    """The built-in numeric task, its problems and YAML written into `folder`."""
    return _write_task(folder, ARITHMETIC_TASK, _ARITHMETIC_YAML, arithmetic_problems(), max_new_tokens)


def write_test_split_task(rows: Sequence[dict], folder: Path, max_new_tokens: int = 16) -> Path:
    """The built-in task over `rows` (chat rows of the test split), written into `folder`."""
    documents = [{"question": row["messages"][-2]["content"], "answer": row["messages"][-1]["content"]}
                 for row in rows]
    return _write_task(folder, TEST_SPLIT_TASK, _TEST_SPLIT_YAML, documents, max_new_tokens)


def _write_task(folder: Path, task: str, template: str, documents: Sequence[dict], max_new_tokens: int) -> Path:
    """`documents` as TASK.jsonl and the task's YAML (`template`, naming that file) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{task}.jsonl"
    data.write_text("".join(json.dumps(document) + "\n" for document in documents))
    (folder / f"{task}.yaml").write_text(
        template.format(task=task, data=json.dumps(str(data)), max_new_tokens=max_new_tokens)
    )
    return folder


def run_tasks(
    base_model_dir: str | os.PathLike,
    tasks: Sequence[str],
    task_dirs: Sequence[str | os.PathLike],
    adapter_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """({"TASK.METRIC": mean}, {"TASK.METRIC": per-example scores in document order}) for each
    task, from lm-eval's `simple_evaluate` on the CPU. A task with several filters is read
    through its first."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    model_args = f"pretrained={base_model_dir},dtype=float32,device=cpu"
    if adapter_dir is not None:
        model_args += f",peft={adapter_dir}"
    manager = TaskManager(include_path=[str(d) for d in task_dirs])
    out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks), task_manager=manager,
                                  batch_size=batch_size, limit=limit, log_samples=True)
    means, per_example = {}, {}
    for task, samples in out.get("samples", {}).items():
        first = samples[0]["filter"] if samples else None
        kept = sorted((x for x in samples if x["filter"] == first), key=lambda x: x["doc_id"])
        for metric in (kept[0]["metrics"] if kept else []):
            per_example[f"{task}.{metric}"] = [float(x[metric]) for x in kept]
    for task, metrics in out["results"].items():
        first = next((x["filter"] for x in out.get("samples", {}).get(task, [])), None)
        for key, value in metrics.items():
            name, _, filter_name = key.partition(",")
            if first is not None and filter_name != first:
                continue
            if isinstance(value, (int, float)) and not name.endswith("_stderr") and math.isfinite(float(value)):
                means[f"{task}.{name}"] = float(value)
    return means, per_example


def run_for_sides(base_model_dir, sides: dict, tasks: Sequence[str], task_dir: str, test_rows: Sequence[dict],
                  max_new_tokens: int, limit: int | None = None
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[float]]]]:
    """`run_tasks` for each side ({"base": None, "challenger": DIR, ...}): (means, per-example
    scores) by side, keys "harness.TASK.METRIC"; every side answers the same documents."""
    means, per_example = {}, {}
    with tempfile.TemporaryDirectory(prefix="modelchain-harness-") as tmp:
        dirs = [write_test_split_task(test_rows, Path(tmp) / "test_split", max_new_tokens),
                write_arithmetic_task(Path(tmp) / "arithmetic", max_new_tokens)] + ([task_dir] if task_dir else [])
        for side, adapter in sides.items():
            side_means, side_scores = run_tasks(base_model_dir, tasks, dirs, adapter, limit)
            means[side] = {f"harness.{k}": v for k, v in side_means.items()}
            per_example[side] = {f"harness.{k}": v for k, v in side_scores.items()}
    return means, per_example

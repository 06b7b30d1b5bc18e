"""The built-in numeric benchmark: seeded word problems with whole-number answers, in lm-eval's task format."""

import re

import yaml

from modelchain.eval.harness import ARITHMETIC_TASK, arithmetic_problems, write_arithmetic_task


def test_the_problems_are_the_same_for_a_seed_and_their_answers_are_right():
    problems = arithmetic_problems()
    assert problems == arithmetic_problems() and problems != arithmetic_problems(seed=7)
    assert len(problems) == 200 and len({p["question"] for p in problems}) > 150
    for problem in problems:
        a, b, c = (int(x) for x in re.findall(r"\d+", problem["question"]))
        taken = any(word in problem["question"] for word in ("left?", "free?"))
        assert int(problem["answer"]) == (a * b - c if taken else a * b + c), problem
        assert int(problem["answer"]) >= 0


def test_the_task_reads_its_local_problems_and_scores_the_last_number(tmp_path):
    write_arithmetic_task(tmp_path, max_new_tokens=24)
    task = yaml.safe_load((tmp_path / f"{ARITHMETIC_TASK}.yaml").read_text())
    assert task["dataset_path"] == "json"
    assert task["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / f"{ARITHMETIC_TASK}.jsonl")
    assert task["doc_to_text"] == "Question: {{question}}\nAnswer:" and task["generation_kwargs"]["max_gen_toks"] == 24
    regex = task["filter_list"][0]["filter"][0]
    assert regex["group_select"] == -1
    assert re.findall(regex["regex_pattern"], "3 boxes of 4 is 12, minus 5 gives 7.")[-1] == "7"
    assert (tmp_path / f"{ARITHMETIC_TASK}.jsonl").read_text().count("\n") == 200

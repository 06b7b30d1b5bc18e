"""Data prep logic without KFP: validation, quarantine, deterministic splits, no partial output."""

import json

import pytest

from modelchain.data.prepare import DataError, FieldMap, prepare, split_of
from modelchain.core.io import sha256_file


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def good_rows(n):
    return [{"prompt": f"Ticket {i}: my card was charged twice", "response": "billing"} for i in range(n)]


def test_splits_are_deterministic_and_disjoint(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", good_rows(200))
    first = prepare(str(source), tmp_path / "a", seed=3, system_prompt="Route it.")
    second = prepare(str(source), tmp_path / "b", seed=3, system_prompt="Route it.")
    assert first.card["splits"] == second.card["splits"]
    ids = {}
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in (tmp_path / "a" / f"{split}.jsonl").read_text().splitlines()]
        ids[split] = {r["id"] for r in rows}
        assert rows and rows[0]["messages"][0] == {"role": "system", "content": "Route it."}
        assert rows[0]["messages"][-1]["role"] == "assistant"
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"] and not ids["val"] & ids["test"]
    assert sum(len(v) for v in ids.values()) == 200
    assert 5 <= len(ids["test"]) <= 40  # ~10% of 200
    other_seed = prepare(str(source), tmp_path / "c", seed=4)
    assert other_seed.card["splits"]["test"]["sha256"] != first.card["splits"]["test"]["sha256"]


def test_split_of_is_stable():
    assert split_of("abc", 0, 0.1, 0.1) == split_of("abc", 0, 0.1, 0.1)
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(2000):
        counts[split_of(f"row{i}", 0, 0.2, 0.1)] += 1
    assert 140 < counts["test"] < 260 and 320 < counts["val"] < 480


def test_bad_rows_are_quarantined_with_line_and_reason(tmp_path):
    rows = good_rows(60) + ["{not json", {"prompt": "no answer"}, {"prompt": "", "response": "x"}, [1, 2]]
    source = write_rows(tmp_path / "d.jsonl", rows)
    result = prepare(str(source), tmp_path / "out", max_bad_fraction=0.1)
    quarantine = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantine] == [61, 62, 63, 64]
    assert "malformed JSON" in quarantine[0]["reason"]
    assert "'response' missing" in quarantine[1]["reason"]
    assert "empty" in quarantine[2]["reason"]
    assert result.card["rows_in"] == 64 and result.card["rows_quarantined"] == 4
    assert "line 61" in (tmp_path / "out" / "data_card.md").read_text()


def test_too_many_bad_rows_fails_and_writes_nothing(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", good_rows(10) + ["oops"] * 5)
    with pytest.raises(DataError, match=r"5 of 15 rows are bad .* line 11"):
        prepare(str(source), tmp_path / "out", max_bad_fraction=0.05)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [source]


def test_duplicates_dropped(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", good_rows(30) + good_rows(30))
    result = prepare(str(source), tmp_path / "out")
    assert result.card["rows_deduplicated"] == 30 and result.card["rows_out"] == 30


def test_chat_format_rows(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(30)
    ] + [{"messages": [{"role": "user", "content": "no answer"}]}]
    source = write_rows(tmp_path / "d.jsonl", rows)
    result = prepare(str(source), tmp_path / "out", fields=FieldMap(messages="messages"), max_bad_fraction=0.1)
    assert result.card["rows_quarantined"] == 1
    line = (tmp_path / "out" / "quarantine.jsonl").read_text()
    assert "not the assistant" in line


@pytest.mark.parametrize(
    "content,message",
    [(b"", "is empty"), (b"\n\n", "is empty"), (b'{"prompt": "caf\xe9"}\n', "not UTF-8")],
)
def test_unusable_files(tmp_path, content, message):
    source = tmp_path / "d.jsonl"
    source.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        prepare(str(source), tmp_path / "out")
    assert str(source) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such dataset file"):
        prepare(str(tmp_path / "missing.jsonl"), tmp_path / "out")


# --------------------------------------------------------------------------- the extended step
from modelchain.components.data_prep.logic import options_from_config  # noqa: E402
from modelchain.data.prepare import DedupOptions, TokenOptions  # noqa: E402
from tests.data_prep_support import smollm2_tokenizer_dir  # noqa: E402,F401 (fixture)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stratified_splits_keep_each_label_in_proportion(tmp_path):
    labels = ["billing"] * 150 + ["returns"] * 40 + ["account"] * 10
    rows = [{"prompt": f"ticket {i} about something", "response": label} for i, label in enumerate(labels)]
    source = write_rows(tmp_path / "d.jsonl", rows)
    result = prepare(str(source), tmp_path / "out", stratify_by="response", val_fraction=0.1, test_fraction=0.2)
    test = [r["messages"][-1]["content"] for r in read_jsonl(tmp_path / "out" / "test.jsonl")]
    assert test.count("billing") == 30 and test.count("returns") == 8 and test.count("account") == 2
    assert result.card["strata"] == {"billing": 150, "returns": 40, "account": 10}
    again = prepare(str(source), tmp_path / "again", stratify_by="response", val_fraction=0.1, test_fraction=0.2)
    assert again.card["splits"] == result.card["splits"]


def test_every_output_file_is_written(tmp_path, smollm2_tokenizer_dir):  # noqa: F811
    source = write_rows(tmp_path / "d.jsonl", good_rows(50))
    result = prepare(str(source), tmp_path / "out", system_prompt="Route it.",
                     tokens=TokenOptions(max_tokens=256, tokenizer_dir=str(smollm2_tokenizer_dir)))
    out = tmp_path / "out"
    for split in ("train", "val", "test"):
        chat = read_jsonl(out / f"{split}.jsonl")
        assert len(chat) == result.card["splits"][split]["count"]
        for c in chat:
            assert c["messages"][0] == {"role": "system", "content": "Route it."}
            assert c["messages"][-1]["role"] == "assistant"
        assert result.card["splits"][split]["sha256"] == sha256_file(out / f"{split}.jsonl")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == []  # the chat splits are the only format
    card = json.loads((out / "data_card.json").read_text())
    for key in ("rows_in", "rows_quarantined", "rows_deduplicated", "rows_out", "stages", "pii", "tokens", "source_uris"):
        assert key in card
    assert card["tokens"]["lengths"]["sample_rows"] == 50 and card["tokens"]["histogram"] == "token_lengths.png"
    assert (out / "token_lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![token lengths](token_lengths.png)" in (out / "data_card.md").read_text()


def test_filters_are_counted_stage_by_stage(tmp_path, smollm2_tokenizer_dir):  # noqa: F811
    base = " ".join(f"word{i}" for i in range(60))
    rows = (good_rows(40)
            + [{"prompt": "hi", "response": "a long enough answer"}]  # prompt too short
            + [{"prompt": base, "response": "billing"}, {"prompt": base.replace("word30", "other"), "response": "billing"}]
            + [{"prompt": "tell me " * 400, "response": "too long"}]
            + [{"prompt": "Reach me at ana@example.com or 4111 1111 1111 1111", "response": "billing"}])
    source = write_rows(tmp_path / "d.jsonl", rows + rows[:5])
    result = prepare(str(source), tmp_path / "out", min_prompt_chars=5, dedup=DedupOptions(threshold=0.8),
                     tokens=TokenOptions(max_tokens=400, tokenizer_dir=str(smollm2_tokenizer_dir)))
    card = result.card
    stages = {s["name"]: s["rows_in"] - s["rows_out"] for s in card["stages"]}
    assert stages == {"read": 0, "valid (quarantine)": 0, "length filter": 1, "exact dedup": 5, "near dedup": 1,
                      "token budget": 1}
    assert card["rows_in"] == 50 and card["rows_out"] == 42 and card["rows_deduplicated"] == 6
    assert card["pii"]["counts"] == {"card": 1, "email": 1} and card["pii"]["rows_with_pii"] == 1
    assert card["tokens"]["dropped"] == 1


def test_a_failure_leaves_the_previous_output_untouched(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", good_rows(30))
    prepare(str(source), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    write_rows(source, good_rows(10) + ["{broken"] * 10)
    with pytest.raises(DataError, match="10 of 20 rows are bad"):
        prepare(str(source), tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "out"]  # no temporary folders left


def test_quarantine_reasons_name_the_source_and_encoding(tmp_path):
    source = tmp_path / "d.jsonl"
    source.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in good_rows(40)) + b'{"prompt": "caf\xe9"}\n')
    prepare(str(source), tmp_path / "out")
    (entry,) = read_jsonl(tmp_path / "out" / "quarantine.jsonl")
    assert entry == {"source": str(source), "line": 41, "reason": "not UTF-8 text (byte 0xe9 at column 16)"}


def test_options_from_the_config(smollm2_tokenizer_dir):  # noqa: F811
    from modelchain.core.config import compose

    cfg = compose("finetune", ["data.dedup.near=true", "data.tokens.action=truncate",
                               f"data.tokens.tokenizer={smollm2_tokenizer_dir}",
                               "data.feedback.uri=/traces", "data.feedback.since=7d"])
    opts = options_from_config(cfg.data, cfg.model)
    assert opts["dedup"].near and opts["tokens"].action == "truncate" and opts["stratify_by"] == "response"
    assert opts["tokens"].tokenizer_dir == str(smollm2_tokenizer_dir)
    assert opts["feedback"].uri == "/traces" and opts["feedback"].since == "7d"
    no_tokenizer = ["data.tokens.tokenizer=null", "model=local_dir", "model.name=m", "model.path=/nowhere"]
    cfg = compose("finetune", no_tokenizer)
    with pytest.raises(DataError, match="data.tokens: no tokenizer"):
        options_from_config(cfg.data, cfg.model)
    cfg = compose("finetune", no_tokenizer + ["data.tokens.max_tokens=0"])
    assert options_from_config(cfg.data, cfg.model)["tokens"].tokenizer_dir is None


def test_the_step_reads_its_typed_groups_and_run_parameters(tmp_path):
    """The data_prep step gets the data and model groups as baked JSON and the data URI and
    feedback window as run parameters; the parameter, not the baked config, picks the data."""
    from kfp.dsl import Dataset, Markdown

    from modelchain.components.data_prep.component import data_prep
    from modelchain.core.config import compose, group_json

    baked = write_rows(tmp_path / "baked.jsonl", good_rows(10))
    given = write_rows(tmp_path / "given.jsonl", good_rows(60))
    cfg = compose("finetune", [f"data.source.uri={baked}", "data.tokens.max_tokens=0", "data.stratify_by=null"])
    splits, card = Dataset(uri=str(tmp_path / "splits")), Markdown(uri=str(tmp_path / "card.md"))
    data_prep(data=group_json(cfg, "data"), model=group_json(cfg, "model"), data_uri=str(given), splits=splits,
              card=card, feedback_since="", feedback_until="")
    assert sum(splits.metadata[f"{s}_rows"] for s in ("train", "val", "test")) == 60
    assert json.loads((tmp_path / "splits" / "data_card.json").read_text())["source_uris"] == [str(given)]
    assert (tmp_path / "card.md").read_text() == (tmp_path / "splits" / "data_card.md").read_text()


def test_cli_data_prep(tmp_path, smollm2_tokenizer_dir):  # noqa: F811
    import os
    import subprocess
    import sys

    source = write_rows(tmp_path / "d.jsonl", good_rows(60) + ["{bad"])
    cmd = [sys.executable, "-m", "modelchain.pipelines.cli", "data", "prep", f"data.source.uri={source}",
           f"data.tokens.tokenizer={smollm2_tokenizer_dir}", "--out", str(tmp_path / "out")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "read 61 rows: 1 quarantined, 0 duplicates, 60 kept" in out.stdout
    assert (tmp_path / "out" / "train.jsonl").is_file() and not (tmp_path / "out" / "nemo_sft").exists()
    bad = subprocess.run(cmd[:-2] + ["data.max_bad_fraction=0.0", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "1 of 61 rows are bad" in bad.stderr and not (tmp_path / "bad").exists()


def test_worker_processes_give_the_same_output(tmp_path):
    rows = good_rows(300) + ["{bad"] + good_rows(20) + [{"prompt": "mail me at a@b.io", "response": "account"}]
    source = write_rows(tmp_path / "d.jsonl", rows)
    one = prepare(str(source), tmp_path / "one", workers=1, dedup=DedupOptions(near=True))
    two = prepare(str(source), tmp_path / "two", workers=2, dedup=DedupOptions(near=True))
    assert one.card == {**two.card, "source_uris": one.card["source_uris"]}
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "quarantine.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert len(two.stats["worker_peak_pss_mb"]) >= 1 and two.stats["main_peak_pss_mb"] > 0


def test_a_batch_of_lines_gives_back_any_rows_in_order():
    """Rows cross from the workers as one bytes object per format, grouped by split; taking
    any ascending set of rows gives exactly their lines, whatever the grouping."""
    import random

    import numpy as np

    from modelchain.data.rows import Lines

    rng = random.Random(0)
    lines = [f'{{"row": {i}, "text": "{"x" * rng.randint(0, 30)}"}}\n'.encode() for i in range(300)]
    codes = np.array([rng.choice([0, 0, 0, 1, 2]) for _ in lines], dtype=np.int8)
    block = Lines(lines, codes)
    assert len(block) == 300 and [block.line(i) for i in range(300)] == lines
    for _ in range(50):
        rows = np.array(sorted(rng.sample(range(300), rng.randint(0, 300))), dtype=np.int64)
        for code in range(3):
            picked = rows[codes[rows] == code]
            assert block.take(picked) == b"".join(lines[i] for i in picked.tolist())



def _tree(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_out_refuses_a_folder_that_is_not_an_earlier_output(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", good_rows(30))
    home = tmp_path / "home"
    (home / "src").mkdir(parents=True)
    (home / "notes.md").write_text("mine")
    (home / "src" / "main.py").write_text("print()")
    before = _tree(tmp_path)
    with pytest.raises(DataError, match=rf"^{home}: not an earlier data-prep output \(holds notes.md, src\); "
                                        r"refusing to replace it; choose a new or empty folder$"):
        prepare(str(source), home)
    # An earlier output with a file of the user's added is not replaced either, nor a folder without a card.
    prepare(str(source), tmp_path / "out")
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match=r"\(holds keep.txt\)"):
        prepare(str(source), tmp_path / "out")
    (tmp_path / "cardless").mkdir()
    (tmp_path / "cardless" / "train.jsonl").write_text("")
    with pytest.raises(DataError, match=r"\(has no data_card.json\)"):
        prepare(str(source), tmp_path / "cardless")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DataError, match=r"a-file: not a folder; the output of data prep is a folder$"):
        prepare(str(source), tmp_path / "a-file")
    (tmp_path / "link").symlink_to(tmp_path / "out")
    with pytest.raises(DataError, match=r"link: a symbolic link; give the folder it points to"):
        prepare(str(source), tmp_path / "link")
    (tmp_path / "out" / "keep.txt").unlink()
    assert {k: v for k, v in _tree(tmp_path).items() if not k.startswith(("out", "cardless", "a-file", "link"))} == before


def test_out_replaces_an_earlier_output_and_fills_an_empty_folder(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", good_rows(30))
    (tmp_path / "out").mkdir()
    prepare(str(source), tmp_path / "out", seed=1)
    first = (tmp_path / "out" / "test.jsonl").read_bytes()
    prepare(str(source), tmp_path / "out", seed=2)
    assert (tmp_path / "out" / "test.jsonl").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "out"]


def test_cli_data_prep_refuses_to_replace_a_work_folder(tmp_path):
    import os
    import subprocess
    import sys

    source = write_rows(tmp_path / "d.jsonl", good_rows(30))
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of it")
    before = _tree(tmp_path)
    cmd = [sys.executable, "-m", "modelchain.pipelines.cli", "data", "prep", f"data.source.uri={source}",
           "data.tokens.max_tokens=0", "--out", str(work)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"{work}: not an earlier data-prep output (holds thesis.tex)" in out.stderr
    assert _tree(tmp_path) == before

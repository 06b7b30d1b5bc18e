"""Data prep logic without KFP: validation, quarantine, deterministic splits, no partial output."""

import json

import pytest

from modelchain.components.data_prep.logic import DataError, FieldMap, prepare, split_of


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

"""Atomic writes: all or nothing, and published with the modes a plain write would give."""

import os
import stat

import pytest

from modelchain.core.io import _UMASK, atomic_dir, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_text_has_the_umask_mode_not_mkstemp_private(tmp_path):
    target = atomic_write_text(tmp_path / "report.md", "# report\n")
    assert target.read_text() == "# report\n"
    assert _mode(target) == 0o666 & ~_UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_atomic_dir_publishes_with_the_umask_mode_and_replaces_the_old(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with atomic_dir(tmp_path / "out") as staged:
        (staged / "new.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]
    assert _mode(tmp_path / "out") == 0o777 & ~_UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "card.json", "{}\n")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_dir(tmp_path / "splits") as staged:
            (staged / "train.jsonl").write_text("half")
            raise Boom
    assert not (tmp_path / "splits").exists()
    assert target.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]

"""Atomic writes: all or nothing, and published with the modes a plain write would give."""

import os
import stat

import pytest

from modelchain.core.io import _UMASK, atomic_dir, atomic_write_text, recover_dir


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


class _Crash(BaseException):
    """The process dying: nothing after it runs (not even recovery, whose renames fail too)."""


def _die_at_publish(monkeypatch, target):
    """os.replace works until the rename that publishes `target`; from then on every rename fails."""
    real_replace, dead = os.replace, []

    def replace(src, dst):
        if dead or os.fspath(dst) == os.fspath(target):
            dead.append((os.fspath(src), os.fspath(dst)))
            raise _Crash(f"died renaming {src} -> {dst}")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return dead


def test_a_crash_between_the_renames_is_completed_by_the_next_call(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with atomic_dir(out) as staged:
        (staged / "v1.txt").write_text("one")
    dead = _die_at_publish(monkeypatch, out)
    with pytest.raises(_Crash):
        with atomic_dir(out) as staged:
            (staged / "v2.txt").write_text("two")
    # The state a dead process leaves: the folder gone, the old one backed up, the new one staged.
    assert not out.exists() and dead[0] == (str(tmp_path / ".out.new"), str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.new", ".out.old"]
    assert (tmp_path / ".out.old" / "v1.txt").read_text() == "one"
    monkeypatch.undo()
    # The next writer of the folder first completes the interrupted swap, then does its own.
    seen = []
    with atomic_dir(out) as staged:
        seen = sorted(p.name for p in out.iterdir())
        (staged / "v3.txt").write_text("three")
    assert seen == ["v2.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["v3.txt"]


def test_recovery_restores_the_old_folder_when_nothing_complete_was_staged(tmp_path):
    out = tmp_path / "out"
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "v1.txt").write_text("one")
    recover_dir(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "v1.txt").read_text() == "one"
    recover_dir(out)  # nothing left to do
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_recovery_keeps_a_whole_folder_and_drops_the_leftovers(tmp_path):
    out = tmp_path / "out"
    for name in ("out", ".out.new", ".out.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    recover_dir(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "f").read_text() == "out"


def test_atomic_dir_fsyncs_every_file_and_folder_it_publishes(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_dir(tmp_path / "out") as staged:
        (staged / "sub").mkdir()
        (staged / "a.txt").write_text("a")
        (staged / "sub" / "b.txt").write_text("b")
        staged_name = staged.name
    staged_root = str(tmp_path / staged_name)
    # Contents before the folder that holds them, all before the renames; then the parent.
    assert synced == [f"{staged_root}/sub/b.txt", f"{staged_root}/sub", f"{staged_root}/a.txt", staged_root,
                      str(tmp_path)]
    assert (tmp_path / "out" / "sub" / "b.txt").read_text() == "b"

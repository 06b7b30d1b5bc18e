"""Every `modelchain ...` line the README and `modelchain --help` show is accepted as written, and
those that need no server, registry or cluster (config, compile, render) run.

Lines that talk to a KFP server (submit, schedule) are run against the recorded exchange in
tests/integration/test_remote_kfp.py; here they are parsed.
"""

import re
import shlex
from pathlib import Path

import pytest

from modelchain.pipelines.cli import EXAMPLES, build_parser, main, parse_args

REPO = Path(__file__).resolve().parents[2]
RUNNABLE = {"config", "compile", "render"}


def _code_block_lines(markdown: str) -> list[str]:
    """`modelchain ...` lines inside fenced code blocks, continuation lines joined."""
    lines, in_block, pending = [], False, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text.startswith("modelchain "):
            lines.append(text)
    return lines


def documented_commands() -> list[str]:
    found = _code_block_lines((REPO / "README.md").read_text())
    found += [line.strip() for line in EXAMPLES.splitlines() if line.strip().startswith("modelchain ")]
    return sorted(set(found))


def _argv(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    assert words[0] == "modelchain"
    return words[1:]


def test_the_readme_and_help_show_commands():
    verbs = {_argv(line)[0] for line in documented_commands()}
    assert {"config", "compile", "run", "submit", "schedule", "render", "data", "eval", "lineage"} <= verbs


@pytest.mark.parametrize("line", documented_commands())
def test_every_documented_command_parses(line):
    args = parse_args(build_parser(), _argv(line))
    assert args.handler is not None


@pytest.mark.parametrize("line", [line for line in documented_commands() if _argv(line)[0] in RUNNABLE])
def test_documented_commands_that_need_no_server_run(line, tmp_path, monkeypatch, capsys):
    from tests.crds import crd_dir

    monkeypatch.chdir(tmp_path)  # relative outputs (ft.yaml, k8s/) land here
    monkeypatch.setenv("MODELCHAIN_HOME", str(tmp_path / "home"))
    argv = _argv(line)
    if argv[0] == "render":
        monkeypatch.setenv("MODELCHAIN_CRD_DIR", str(crd_dir()))
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    if argv[0] == "compile":
        target = argv[argv.index("-o") + 1] if "-o" in argv else f"{argv[1]}.yaml"
        assert (tmp_path / target).read_text().startswith("# PIPELINE DEFINITION")
    if argv[0] == "render":
        written = list((tmp_path / argv[argv.index("--out") + 1]).glob("*.yaml"))
        assert written, out
    if argv[0] == "config":
        assert re.search(r"^# steps run in ", out, re.M)

"""What a person reads during a local run: each step's start and end, its own messages and
progress, the errors; everything else kfp.local prints goes to a log file only.

kfp.local prints, for every task, the executor's input as pretty JSON, its own INFO logging
(and that of every library the step imports), the executor output path and a dump of the
task's output artifacts. `ConsoleFilter` passes all of it to the log file and, to the
console, only:

- kfp.local's own lines (pipeline and task start, end and status), without "Streamed logs:"
  and the artifact dump after "Task ... outputs:";
- the step's own output (its prints, progress bars, a traceback), indented as kfp.local
  indents it;
- executor log lines of level WARNING or above.

An executor INFO line ending in ":" introduces a block (the JSON input, a library's
explanation) that runs to the next blank line: dropped with it.
"""

from __future__ import annotations

import re
from typing import TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KFP_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - [A-Z]+ - (?P<message>.*)$")
_EXECUTOR_LINE = re.compile(r"^\[KFP Executor [^\]]* (?P<level>[A-Z]+)\]: ")
_SEPARATOR = re.compile(r"^-{20,}$")
_TASK_INDENT = "    "


class ConsoleFilter:
    """A text stream: every write goes to ``log``; the lines a person wants also to ``console``."""

    def __init__(self, console: TextIO, log: TextIO):
        self.console = console
        self.log = log
        self._pending = ""
        self._in_outputs = False  # inside kfp.local's "Task ... outputs:" dump
        self._in_block = False  # inside the block an executor INFO line introduced

    # -- the stream interface that print() and logging use
    def write(self, text: str) -> int:
        self.log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if self.keep(line):
                self.console.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def close_pending(self) -> None:
        """Decide on a last line that had no newline."""
        if self._pending:
            self.write("\n")

    def __getattr__(self, name):  # isatty, encoding, fileno ...: those of the console
        return getattr(self.console, name)

    # -- the decision, one line at a time
    def keep(self, line: str) -> bool:
        plain = _ANSI.sub("", line).rstrip("\r")
        kfp = _KFP_LINE.match(plain)
        if kfp:
            message = kfp.group("message")
            self._in_outputs = message.endswith("outputs:")
            self._in_block = False
            return not (self._in_outputs or message == "Streamed logs:")
        if _SEPARATOR.match(plain):
            self._in_outputs = False
            return False
        if self._in_outputs:
            return False
        if not plain.startswith(_TASK_INDENT):
            return True  # modelchain's own lines, outside any task
        content = plain[len(_TASK_INDENT):]
        if not content.strip():
            self._in_block = False
            return False
        executor = _EXECUTOR_LINE.match(content)
        if executor:
            wanted = executor.group("level") in ("WARNING", "ERROR", "CRITICAL")
            self._in_block = not wanted and content.endswith(":")
            return wanted
        return not self._in_block

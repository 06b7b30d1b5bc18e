"""The local-run console: a person reads the steps, their messages and errors; the executor
dumps go to the log file only.

data/kfp_local_rag_ingest.log was captured from a real `modelchain run rag_ingest` with
kfp.local 2.17 (a verify failure included), with the home folder's path replaced.
"""

import io
from pathlib import Path

from modelchain.pipelines.console import ConsoleFilter

CAPTURED = (Path(__file__).parent / "data" / "kfp_local_rag_ingest.log").read_text()


def _filter(text: str, piece: int = 777) -> tuple[str, str]:
    console, log = io.StringIO(), io.StringIO()
    stream = ConsoleFilter(console, log)
    for start in range(0, len(text), piece):  # writes do not arrive line by line
        stream.write(text[start:start + piece])
    stream.close_pending()
    return console.getvalue(), log.getvalue()


def test_the_log_file_gets_everything_verbatim():
    _, log = _filter(CAPTURED)
    assert log == CAPTURED


def test_the_console_keeps_steps_messages_progress_and_errors():
    console, _ = _filter(CAPTURED)
    for wanted in (
        "Executing task \x1b[96m'discover'\x1b[0m",
        "discovered 2 documents under /home/user/docs",
        "Embedding: 100%",
        "inserted=60 deleted=0",
        "| recall@5 | 0.250 | >= 0.6 | **FAIL** |",
        "Traceback (most recent call last):",
        "RuntimeError: verify failed",
        "Task \x1b[96m'verify'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m",
        "WARNING]: Please consider to run pre-processing",  # a library warning stays visible
    ):
        assert wanted in console, wanted


def test_the_console_drops_executor_dumps_and_library_info():
    console, _ = _filter(CAPTURED)
    for unwanted in (
        "parameterValues",  # the executor input JSON
        '"settings"',
        "Got executor_input",
        "Wrote executor output file",
        "Streamed logs:",
        "outputs:",
        "Dataset( name=",  # kfp.local's dump of the output artifacts
        "swigfaiss",  # the explanation block under a library's INFO line
        "Quantization parameters for tensor",
    ):
        assert unwanted not in console, unwanted
    assert len(console.splitlines()) < len(CAPTURED.splitlines()) / 4


def test_lines_written_outside_a_task_are_kept():
    console, _ = _filter("modelchain: summary line\n    {\n        \"k\": 1\n    }\n")
    assert console.startswith("modelchain: summary line\n")

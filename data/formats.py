"""What data prep reads: the one list of source formats and of trace formats.

The config check (checks.py) and the readers (sources.py, feedback.py) take them from here.
Standard library only: core.config imports this module when it validates a config.
"""

from __future__ import annotations

AUTO = "auto"  # data.source.format / data.feedback.format: decide per file or record

# Source files (data.source.format): each format, the name shown in errors, and the family
# the content sniffer (sources.sniff) sees. Formats of one family are told apart by content:
# many .json files hold one object a line.
SOURCE_FORMATS = ("jsonl", "json", "parquet", "csv")
TITLES = {"jsonl": "JSON Lines", "json": "JSON", "parquet": "Parquet", "csv": "CSV"}
FAMILIES = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}
# File endings (before an optional .gz) and the format each claims; folders and prefixes
# take the files with these endings.
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
              ".csv": "csv", ".tsv": "csv"}

# Production traces (data.feedback.format): Langfuse exports and OpenTelemetry GenAI spans.
FEEDBACK_FORMATS = ("langfuse", "otel")

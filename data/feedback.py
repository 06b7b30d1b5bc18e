"""The feedback loop: production traces with good feedback become training rows.

Two export shapes are read (JSON or JSONL, local or S3, gzip or not, any mix of files):

- Langfuse: trace rows (`id`, `timestamp`, `input`, `output`, optionally embedded `scores`)
  as exported from the UI, the public API (`{"data": [...]}`) or blob storage, where scores
  come as separate rows (`traceId`/`trace_id`, `name`, `value`, `stringValue`);
- OpenTelemetry GenAI spans: OTLP/JSON lines (`{"resourceSpans": ...}`, the collector's
  file exporter) or one span object a line (the SDK's `span.to_json()`), with the content in
  `gen_ai.input.messages` / `gen_ai.output.messages` / `gen_ai.system_instructions` (or the
  older `gen_ai.prompt.N.*` / `gen_ai.completion.N.*` attributes) and feedback as
  `gen_ai.evaluation.result` events (`gen_ai.evaluation.name`, `.score.value`,
  `.score.label`) on the span or as separate records pointing at it.

A trace is kept when one of its scores (of the configured names, or any) has a positive
label or a value of at least `min_score`, and it started within [since, until). Scores kept
apart from their traces are gathered in a first pass over the files, then traces in a
second, so only the per-trace verdicts are held in memory, never the traces.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Optional

import orjson

from modelchain.core.config import DataFeedbackConfig
from modelchain.data.formats import AUTO, FEEDBACK_FORMATS
from modelchain.data.sources import Batch, BadItem, SourceFile, expand, read_batches

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# The options are the schema of data.feedback itself (uri, format, min_score, score_names,
# positive_labels, since, until), so their defaults are written once (core/config.py).
FeedbackOptions = DataFeedbackConfig


def parse_time(value: Optional[str], now: datetime) -> Optional[datetime]:
    """An ISO-8601 time (UTC when no zone is given), or a duration before `now` (7d, 36h, 90m)."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    match = _DURATION.match(text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 time or a duration like 7d: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _timestamp(value: Any) -> Optional[datetime]:
    """Langfuse ISO strings, OTLP nanoseconds (string or int)."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        return datetime.fromtimestamp(int(value) / 1e9, tz=timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------- content
def _text(value: Any) -> Optional[str]:
    """Text of a content value: a string, OpenAI/OTel parts, or {"content"|"text": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [_text(p) for p in value]
        parts = [p for p in parts if p]
        return "\n".join(parts) if parts else None
    if isinstance(value, dict):
        if value.get("type") not in (None, "text", "output_text", "input_text"):
            return None  # images, tool calls
        for key in ("content", "text", "value"):
            if key in value:
                return _text(value[key])
    return None


def _messages(value: Any) -> list[dict]:
    """Chat messages from a trace input: a string, a message list, or {"messages": [...]}."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):
        if isinstance(value.get("messages"), list):
            return _messages(value["messages"])
        for key in ("prompt", "input", "query", "question"):
            if isinstance(value.get(key), str):
                return [{"role": "user", "content": value[key]}]
        return []
    out = []
    if isinstance(value, list):
        for message in value:
            if not isinstance(message, dict):
                continue
            role = {"human": "user", "ai": "assistant", "model": "assistant", "developer": "system"}.get(
                message.get("role"), message.get("role"))
            text = _text(message.get("parts", message.get("content")))
            if role in ("system", "user", "assistant") and text:
                out.append({"role": role, "content": text})
    return out


def _answer(value: Any) -> Optional[str]:
    """The model's answer from a trace output: string, message, choices, or message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("choices"), list) and value["choices"]:
            return _answer(value["choices"][0])
        if isinstance(value.get("message"), dict):
            return _answer(value["message"])
        return _text(value.get("parts", value.get("content", value.get("text", value.get("output")))))
    if isinstance(value, list):
        answers = [m for m in _messages(value) if m["role"] == "assistant"]
        return answers[0]["content"] if answers else _text(value)
    return None


def conversation(input_value: Any, output_value: Any, system: Optional[str] = None) -> Optional[list[dict]]:
    messages = _messages(input_value)
    answer = _answer(output_value)
    if not messages or not answer or not answer.strip() or messages[-1]["role"] == "assistant":
        return None
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}] + messages
    return messages + [{"role": "assistant", "content": answer}]


# --------------------------------------------------------------------------- scores
@dataclass
class Score:
    name: str
    value: Optional[float]
    label: Optional[str]


def _score_from(name: Any, value: Any, label: Any) -> Score:
    number = None
    if isinstance(value, bool):
        number = float(value)
    elif isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            label = label or value
    return Score(str(name or ""), number, str(label) if label not in (None, "") else None)


def _langfuse_score(row: dict) -> Score:
    return _score_from(row.get("name"), row.get("value"), row.get("stringValue", row.get("string_value")))


class Verdict:
    def __init__(self, options: FeedbackOptions):
        self.names = set(options.score_names)
        self.labels = {label.lower() for label in options.positive_labels}
        self.min_score = options.min_score

    def __call__(self, scores: list[Score]) -> Optional[bool]:
        """True (positive), False (scored, not positive) or None (no relevant score)."""
        relevant = [s for s in scores if not self.names or s.name in self.names]
        if not relevant:
            return None
        for score in relevant:
            if score.label is not None and score.label.lower() in self.labels:
                return True
            if score.value is not None and self.min_score is not None and score.value >= self.min_score:
                return True
        return False


# --------------------------------------------------------------------------- OpenTelemetry
def _otlp_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return {kv["key"]: _otlp_value(kv.get("value")) for kv in value["kvlistValue"].get("values", [])}
    return None


def _attributes(raw: Any) -> dict:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, list):
        return {kv.get("key"): _otlp_value(kv.get("value")) for kv in raw if isinstance(kv, dict)}
    return {}


@dataclass
class Span:
    span_id: str
    parent_id: str
    start: Optional[datetime]
    name: str
    attributes: dict
    events: list[tuple[str, dict]]


def otel_spans(record: dict) -> Iterator[Span]:
    """Spans of one JSONL record: OTLP/JSON (resourceSpans) or one SDK span object."""
    if "resourceSpans" in record:
        for resource in record.get("resourceSpans") or []:
            for scope in resource.get("scopeSpans") or resource.get("instrumentationLibrarySpans") or []:
                for span in scope.get("spans") or []:
                    yield Span(
                        str(span.get("spanId", "")), str(span.get("parentSpanId", "")),
                        _timestamp(span.get("startTimeUnixNano")), str(span.get("name", "")),
                        _attributes(span.get("attributes")),
                        [(str(e.get("name", "")), _attributes(e.get("attributes"))) for e in span.get("events") or []],
                    )
        return
    context = record.get("context") or {}
    yield Span(
        str(context.get("span_id", record.get("span_id", record.get("spanId", "")))),
        str(record.get("parent_id") or record.get("parentSpanId") or ""),
        _timestamp(record.get("start_time", record.get("startTimeUnixNano"))), str(record.get("name", "")),
        _attributes(record.get("attributes")),
        [(str(e.get("name", "")), _attributes(e.get("attributes"))) for e in record.get("events") or []],
    )


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _evaluation(attributes: dict) -> Optional[Score]:
    if "gen_ai.evaluation.name" not in attributes and "gen_ai.evaluation.score.value" not in attributes \
            and "gen_ai.evaluation.score.label" not in attributes:
        return None
    return _score_from(attributes.get("gen_ai.evaluation.name"), attributes.get("gen_ai.evaluation.score.value"),
                       attributes.get("gen_ai.evaluation.score.label"))


def span_conversation(span: Span, system: Optional[str]) -> Optional[list[dict]]:
    attrs = span.attributes
    if "gen_ai.input.messages" in attrs or "gen_ai.output.messages" in attrs:
        messages = _messages(_maybe_json(attrs.get("gen_ai.input.messages")))
        instructions = _text(_maybe_json(attrs.get("gen_ai.system_instructions")))
        if instructions and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": instructions}] + messages
        return conversation(messages, _maybe_json(attrs.get("gen_ai.output.messages")), system)
    # The older indexed attributes: gen_ai.prompt.0.role / .content, gen_ai.completion.0.content.
    prompts = []
    i = 0
    while f"gen_ai.prompt.{i}.content" in attrs:
        prompts.append({"role": attrs.get(f"gen_ai.prompt.{i}.role", "user"), "content": attrs[f"gen_ai.prompt.{i}.content"]})
        i += 1
    if prompts and "gen_ai.completion.0.content" in attrs:
        return conversation(prompts, attrs["gen_ai.completion.0.content"], system)
    return None


# --------------------------------------------------------------------------- reading
def _records(files: list[SourceFile]) -> Iterator[tuple[str, int, Any]]:
    for source in files:
        for batch in read_batches(source):
            for number, item in zip(batch.numbers, batch.items):
                if isinstance(item, bytes):
                    try:
                        item = orjson.loads(item)
                    except orjson.JSONDecodeError as exc:
                        item = BadItem(f"malformed JSON: {exc}")
                yield batch.source, number, item


def _kind(record: dict, declared: str) -> str:
    if declared != AUTO:
        return declared
    if "resourceSpans" in record or ("attributes" in record and ("context" in record or "spanId" in record)):
        return "otel"
    return "langfuse"


def _trace_id(row: dict) -> str:
    return str(row.get("traceId") or row.get("trace_id") or "")


def _is_langfuse_score(row: dict) -> bool:
    return "input" not in row and _trace_id(row) != "" and ("value" in row or "stringValue" in row
                                                           or "string_value" in row)


class TraceReader:
    """Streams the kept traces as batches of `{"messages": [...]}` rows; counts the rest."""

    def __init__(self, options: FeedbackOptions, system_prompt: Optional[str] = None,
                 now: Optional[datetime] = None, batch_rows: int = 1024):
        if options.format not in (AUTO, *FEEDBACK_FORMATS):
            raise ValueError(f"format must be {AUTO} or one of {', '.join(FEEDBACK_FORMATS)}, got {options.format!r}")
        self.options = options
        self.system = system_prompt
        now = now or datetime.now(timezone.utc)
        self.since = parse_time(options.since, now)
        self.until = parse_time(options.until, now)
        self.verdict = Verdict(options)
        self.batch_rows = batch_rows
        self.counts: Counter = Counter()
        self.files = expand(options.uri)

    def _separate_scores(self) -> dict[str, list[Score]]:
        """Pass 1: scores kept apart from their traces (Langfuse score rows, OTel evaluation records)."""
        scores: dict[str, list[Score]] = {}
        for _, _, record in _records(self.files):
            if not isinstance(record, dict):
                continue
            if _kind(record, self.options.format) == "langfuse":
                if _is_langfuse_score(record):
                    key = str(record.get("observationId") or record.get("observation_id") or _trace_id(record))
                    scores.setdefault(key, []).append(_langfuse_score(record))
                    if key != _trace_id(record):
                        scores.setdefault(_trace_id(record), []).append(_langfuse_score(record))
                continue
            for span in otel_spans(record):
                score = _evaluation(span.attributes) if span.name == "gen_ai.evaluation.result" or \
                    "gen_ai.evaluation.name" in span.attributes else None
                if score is not None:
                    target = span.parent_id or str(span.attributes.get("gen_ai.response.id", ""))
                    if target:
                        scores.setdefault(target, []).append(score)
        return scores

    def _keep(self, start: Optional[datetime], scores: list[Score]) -> bool:
        if (self.since and (start is None or start < self.since)) or (self.until and start is not None and start >= self.until):
            self.counts["outside_window"] += 1
            return False
        verdict = self.verdict(scores)
        if verdict is None:
            self.counts["no_feedback"] += 1
        elif not verdict:
            self.counts["not_positive"] += 1
        return bool(verdict)

    def batches(self) -> Iterator[Batch]:
        """Pass 2: the traces, filtered and turned into rows."""
        separate = self._separate_scores()
        batch: Optional[Batch] = None
        for source, number, record in _records(self.files):
            if batch is None or batch.source != source or len(batch.items) >= self.batch_rows:
                if batch is not None and batch.items:
                    yield batch
                batch = Batch(source, "line")
            if isinstance(record, BadItem):
                self.counts["unreadable"] += 1
                continue
            if not isinstance(record, dict):
                continue
            for messages in self._conversations(record, separate):
                batch.numbers.append(number)
                batch.items.append({"messages": messages})
        if batch is not None and batch.items:
            yield batch

    def _conversations(self, record: dict, separate: dict[str, list[Score]]) -> Iterator[list[dict]]:
        if _kind(record, self.options.format) == "langfuse":
            rows = record["data"] if isinstance(record.get("data"), list) else [record]
            for row in rows:
                if not isinstance(row, dict) or _is_langfuse_score(row) or "input" not in row:
                    continue
                self.counts["traces_read"] += 1
                scores = [_langfuse_score(s) for s in row.get("scores") or [] if isinstance(s, dict)]
                scores += separate.get(str(row.get("id", "")), []) + separate.get(_trace_id(row), [])
                if not self._keep(_timestamp(row.get("timestamp") or row.get("startTime") or row.get("start_time")), scores):
                    continue
                messages = conversation(row.get("input"), row.get("output"), self.system)
                if messages is None:
                    self.counts["unusable"] += 1
                    continue
                self.counts["kept"] += 1
                yield messages
            return
        for span in otel_spans(record):
            if span.name == "gen_ai.evaluation.result":
                continue
            messages = span_conversation(span, self.system)
            if messages is None:
                continue  # not a model call: tool, retrieval or framework spans
            self.counts["traces_read"] += 1
            scores = [s for s in (_evaluation(attrs) for _, attrs in span.events) if s is not None]
            scores += separate.get(span.span_id, []) + separate.get(str(span.attributes.get("gen_ai.response.id", "")), [])
            if not self._keep(span.start, scores):
                continue
            self.counts["kept"] += 1
            yield messages

    def summary(self) -> dict:
        keys = ("traces_read", "kept", "no_feedback", "not_positive", "outside_window", "unusable", "unreadable")
        out: dict[str, Any] = {key: self.counts.get(key, 0) for key in keys}
        out["since"] = self.since.isoformat() if self.since else None
        out["until"] = self.until.isoformat() if self.until else None
        out["uris"] = [f.uri for f in self.files]
        return out

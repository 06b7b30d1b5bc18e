"""The feedback loop: Langfuse exports and OpenTelemetry GenAI spans with good feedback become rows."""

import json
from datetime import datetime, timezone

import pytest

from modelchain.data.feedback import FeedbackOptions, TraceReader, parse_time
from modelchain.components.data_prep.logic import options_from_config
from modelchain.data.prepare import DataError, prepare

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def rows_of(reader):
    return [item["messages"] for batch in reader.batches() for item in batch.items]


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def langfuse_trace(i, day, scores=None, **extra):
    trace = {"id": f"t{i}", "timestamp": f"2026-11-{day:02d}T10:00:00.000Z", "name": "support-chat",
             "input": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": f"question {i}"}],
             "output": {"role": "assistant", "content": f"answer {i}"}, **extra}
    if scores is not None:
        trace["scores"] = scores
    return trace


def test_langfuse_traces_with_positive_feedback(tmp_path):
    path = write_lines(tmp_path / "traces.jsonl", [
        langfuse_trace(1, 18, [{"name": "user-feedback", "value": 1, "dataType": "BOOLEAN"}]),
        langfuse_trace(2, 18, [{"name": "user-feedback", "value": 0, "dataType": "BOOLEAN"}]),
        langfuse_trace(3, 18, [{"name": "sentiment", "value": 0, "stringValue": "positive", "dataType": "CATEGORICAL"}]),
        langfuse_trace(4, 18),  # no feedback
        langfuse_trace(5, 1, [{"name": "user-feedback", "value": 1}]),  # before `since`
        {"id": "t6", "timestamp": "2026-11-18 10:00:00.000000", "input": "plain question 6", "output": "plain answer 6"},
        {"traceId": "t6", "name": "user-feedback", "value": 0.9, "dataType": "NUMERIC"},  # a separate score row
        langfuse_trace(7, 18, [{"name": "user-feedback", "value": 1}], output=None),  # no answer: unusable
    ])
    reader = TraceReader(FeedbackOptions(uri=str(path), since="7d"), now=NOW)
    rows = rows_of(reader)
    assert [r[-2]["content"] for r in rows] == ["question 1", "question 3", "plain question 6"]
    assert rows[0] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "question 1"},
                       {"role": "assistant", "content": "answer 1"}]
    summary = reader.summary()
    assert summary["kept"] == 3 and summary["not_positive"] == 1 and summary["no_feedback"] == 1
    assert summary["outside_window"] == 1 and summary["unusable"] == 1
    assert summary["since"] == "2026-11-13T12:00:00+00:00"


def test_langfuse_score_names_threshold_and_api_shape(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"data": [
        langfuse_trace(1, 18, [{"name": "quality", "value": 0.7}, {"name": "user-feedback", "value": 0}]),
        langfuse_trace(2, 18, [{"name": "quality", "value": 0.95}]),
    ], "meta": {"page": 1}}))
    only_feedback = TraceReader(FeedbackOptions(uri=str(path), score_names=["user-feedback"]), now=NOW)
    assert rows_of(only_feedback) == []
    high = TraceReader(FeedbackOptions(uri=str(path), min_score=0.9), now=NOW)
    assert [r[-1]["content"] for r in rows_of(high)] == ["answer 2"]


def otlp_line(span_id, start, attributes, events=(), name="chat smollm2"):
    kv = [{"key": k, "value": {"stringValue": v} if isinstance(v, str) else {"doubleValue": v}}
          for k, v in attributes.items()]
    span = {"traceId": "ab" * 16, "spanId": span_id, "name": name,
            "startTimeUnixNano": str(int(start.timestamp() * 1e9)), "attributes": kv,
            "events": [{"name": n, "attributes": [{"key": k, "value": {"stringValue": v} if isinstance(v, str)
                                                   else {"doubleValue": v}} for k, v in a.items()]}
                       for n, a in events]}
    return {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": "x"}, "spans": [span]}]}]}


def genai(user, answer):
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "You help."}]),
        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": user}]}]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": answer}],
                                               "finish_reason": "stop"}]),
    }


def test_otel_genai_spans(tmp_path):
    day = datetime(2026, 11, 19, tzinfo=timezone.utc)
    thumbs_up = ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "user_feedback",
                                              "gen_ai.evaluation.score.label": "thumbs_up"})
    path = write_lines(tmp_path / "spans.jsonl", [
        otlp_line("01", day, genai("hi", "hello!"), events=[thumbs_up]),
        otlp_line("02", day, genai("bad q", "bad a"), events=[("gen_ai.evaluation.result", {
            "gen_ai.evaluation.name": "user_feedback", "gen_ai.evaluation.score.value": 0.0})]),
        otlp_line("03", day, genai("scored later", "fine")),
        # An evaluation recorded as its own span, pointing at span 03 as its parent.
        {"name": "gen_ai.evaluation.result", "context": {"span_id": "09"}, "parent_id": "03",
         "start_time": "2026-11-19T01:00:00Z",
         "attributes": {"gen_ai.evaluation.name": "judge", "gen_ai.evaluation.score.value": 0.8}},
        otlp_line("04", day, {"db.system": "milvus"}, name="retrieve"),  # not a model call
        # The SDK's span.to_json() shape, with the older indexed attributes.
        {"name": "chat", "context": {"span_id": "05"}, "start_time": "2026-11-19T02:00:00Z",
         "attributes": {"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "legacy q",
                        "gen_ai.completion.0.content": "legacy a"},
         "events": [{"name": "gen_ai.evaluation.result", "attributes": {"gen_ai.evaluation.score.value": 1}}]},
    ])
    reader = TraceReader(FeedbackOptions(uri=str(path), until="2026-11-20"), system_prompt="Default.", now=NOW)
    rows = rows_of(reader)
    assert rows[0] == [{"role": "system", "content": "You help."}, {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": "hello!"}]
    assert [r[-1]["content"] for r in rows] == ["hello!", "fine", "legacy a"]
    assert rows[2][0] == {"role": "system", "content": "Default."}
    assert reader.summary()["traces_read"] == 4 and reader.summary()["not_positive"] == 1


def test_parse_time():
    assert parse_time("36h", NOW) == datetime(2026, 11, 19, 0, 0, tzinfo=timezone.utc)
    assert parse_time("2026-01-02", NOW) == datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert parse_time(None, NOW) is None
    with pytest.raises(ValueError, match="duration like 7d"):
        parse_time("last week", NOW)


def test_prepare_merges_traces_with_the_dataset(tmp_path):
    data = write_lines(tmp_path / "d.jsonl", [{"prompt": f"curated question {i}", "response": f"r{i}"} for i in range(30)])
    traces = write_lines(tmp_path / "t.jsonl", [
        langfuse_trace(i, 18, [{"name": "user-feedback", "value": 1}],
                       input=f"my email is user{i}@example.com, help {i}") for i in range(10)])
    result = prepare(str(data), tmp_path / "out", feedback=FeedbackOptions(uri=str(traces)))
    card = result.card
    assert card["rows_in"] == 40 and card["rows_out"] == 40
    assert card["feedback"]["kept"] == 10 and str(traces) in card["source_uris"]
    assert card["pii"]["counts"] == {"email": 10}
    text = "".join((tmp_path / "out" / f"{s}.jsonl").read_text() for s in ("train", "val", "test"))
    assert "[EMAIL]" in text and "@example.com" not in text
    only = prepare("", tmp_path / "only", feedback=FeedbackOptions(uri=str(traces)))
    assert only.card["rows_in"] == 10
    with pytest.raises(DataError, match="data.feedback"):
        prepare("", tmp_path / "bad", feedback=FeedbackOptions(uri=str(traces), since="yesterday"))
    with pytest.raises(DataError, match="data.feedback: format must be auto or one of langfuse, otel, got 'xml'"):
        prepare("", tmp_path / "bad", feedback=FeedbackOptions(uri=str(traces), format="xml"))


def test_a_runs_feedback_window_overrides_the_config():
    from omegaconf.errors import MissingMandatoryValue

    from modelchain.core.config import compose, group_json, load_group, parameter_values

    cfg = compose("finetune", ["data.feedback.uri=/traces.jsonl", "data.feedback.since=30d", "data.tokens.max_tokens=0"])
    data = group_json(cfg, "data")  # what the pipeline bakes into the data_prep step
    defaults = parameter_values("finetune", cfg)  # the config's window is the parameters' default
    assert (defaults["feedback_since"], defaults["feedback_until"]) == ("30d", "")

    def window(since, until):
        group = load_group("data", data, data_uri="", feedback_since=since, feedback_until=until)
        return options_from_config(group, cfg.model)["feedback"]

    assert window(defaults["feedback_since"], defaults["feedback_until"]).since == "30d"
    weekly = window("7d", "")
    assert weekly.since == "7d" and weekly.until is None
    with pytest.raises(MissingMandatoryValue, match="feedback.since"):  # the window travels only as a parameter
        options_from_config(load_group("data", data, data_uri=""), cfg.model)

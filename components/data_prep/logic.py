"""Data prep: read an instruction dataset, validate every row, split it deterministically.

Plain Python, callable without KFP. Rows become the chat format the trainers use
(`{"messages": [...]}`); a bad row goes to the quarantine file with its line number and
reason; the splits are decided by each row's content hash and the seed, so the same data
always lands in the same split and the test split stays held out from training.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from modelchain.core.io import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, sha256_text

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """The dataset cannot be used; the message names the file (and row, where there is one)."""


@dataclass
class FieldMap:
    prompt: str = "prompt"
    response: str = "response"
    system: Optional[str] = None
    context: Optional[str] = None
    messages: Optional[str] = None


@dataclass
class PrepResult:
    out_dir: Path
    card: dict[str, Any]
    split_paths: dict[str, Path] = field(default_factory=dict)


def _clean(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def row_to_messages(row: Any, fields: FieldMap, system_prompt: Optional[str], min_response_chars: int) -> list[dict]:
    """One source row as chat messages; raises ValueError with the reason a row is bad."""
    if not isinstance(row, dict):
        raise ValueError(f"row is a {type(row).__name__}, not an object")
    if fields.messages:
        messages = row.get(fields.messages)
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"field {fields.messages!r} missing or not a non-empty list")
        out = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise ValueError(f"message {i} has no string 'content'")
            if message.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"message {i} has role {message.get('role')!r}")
            out.append({"role": message["role"], "content": _clean(message["content"])})
        if out[-1]["role"] != "assistant":
            raise ValueError("the last message is not the assistant's answer")
    else:
        values = {}
        for name in ("prompt", "response"):
            key = getattr(fields, name)
            value = row.get(key)
            if not isinstance(value, str):
                raise ValueError(f"field {key!r} missing or not a string")
            values[name] = _clean(value)
        if not values["prompt"]:
            raise ValueError(f"field {fields.prompt!r} is empty")
        prompt = values["prompt"]
        if fields.context and isinstance(row.get(fields.context), str) and row[fields.context].strip():
            prompt = f"Context:\n{_clean(row[fields.context])}\n\n{prompt}"
        system = row.get(fields.system) if fields.system else None
        system = _clean(system) if isinstance(system, str) and system.strip() else system_prompt
        out = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": values["response"]},
        ]
    if len(out[-1]["content"]) < min_response_chars:
        raise ValueError(f"response shorter than {min_response_chars} characters")
    return out


def split_of(content_hash: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the content hash and seed: stable across runs and machines."""
    point = int(sha256_text(f"{seed}:{content_hash}")[:15], 16) / float(16**15)
    if point < test_fraction:
        return "test"
    if point < test_fraction + val_fraction:
        return "val"
    return "train"


def prepare(
    source_uri: str,
    out_dir: str | Path,
    *,
    fields: FieldMap | None = None,
    system_prompt: Optional[str] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_bad_fraction: float = 0.05,
    min_response_chars: int = 1,
) -> PrepResult:
    """Validate and split `source_uri` (a local JSONL file) into `out_dir`.

    Writes train/val/test.jsonl, quarantine.jsonl, data_card.json and data_card.md; the
    folder appears only when everything succeeded.
    """
    fields = fields or FieldMap()
    source = Path(source_uri.removeprefix("file://"))
    if not source.is_file():
        raise DataError(f"{source_uri}: no such dataset file")
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    quarantine: list[dict] = []
    seen: set[str] = set()
    rows_in = duplicates = 0
    with open(source, encoding="utf-8", errors="strict") as handle:
        try:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                rows_in += 1
                try:
                    messages = row_to_messages(json.loads(line), fields, system_prompt, min_response_chars)
                except json.JSONDecodeError as exc:
                    quarantine.append({"source": source_uri, "line": line_no, "reason": f"malformed JSON: {exc.msg}"})
                    continue
                except ValueError as exc:
                    quarantine.append({"source": source_uri, "line": line_no, "reason": str(exc)})
                    continue
                content_hash = sha256_text(json.dumps(messages, sort_keys=True, ensure_ascii=False))
                if content_hash in seen:
                    duplicates += 1
                    continue
                seen.add(content_hash)
                split = split_of(content_hash, seed, val_fraction, test_fraction)
                splits[split].append({"messages": messages, "id": content_hash[:16]})
        except UnicodeDecodeError as exc:
            raise DataError(f"{source_uri}: not UTF-8 text near byte {exc.start} (line {rows_in + 1})") from exc
    if rows_in == 0:
        raise DataError(f"{source_uri}: the dataset is empty")
    bad_fraction = len(quarantine) / rows_in
    if bad_fraction > max_bad_fraction:
        first = quarantine[0]
        raise DataError(
            f"{source_uri}: {len(quarantine)} of {rows_in} rows are bad ({bad_fraction:.1%} > "
            f"data.max_bad_fraction {max_bad_fraction:.1%}); first: line {first['line']}: {first['reason']}"
        )
    if not splits["train"]:
        raise DataError(f"{source_uri}: no rows left to train on")

    card = {
        "source_uris": [source_uri],
        "rows_in": rows_in,
        "rows_quarantined": len(quarantine),
        "rows_deduplicated": duplicates,
        "rows_out": sum(len(rows) for rows in splits.values()),
        "seed": seed,
        "splits": {},
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for name, rows in splits.items():
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            atomic_write_text(tmp / f"{name}.jsonl", text)
            card["splits"][name] = {"count": len(rows), "sha256": sha256_text(text)}
        atomic_write_jsonl(tmp / "quarantine.jsonl", quarantine)
        atomic_write_json(tmp / "data_card.json", card)
        atomic_write_text(tmp / "data_card.md", render_card(card, quarantine))
    return PrepResult(out_dir, card, {name: out_dir / f"{name}.jsonl" for name in SPLITS})


def render_card(card: dict, quarantine: list[dict]) -> str:
    lines = [
        "# Data card",
        "",
        f"Sources: {', '.join(card['source_uris'])}",
        "",
        "| stage | rows |",
        "| --- | ---: |",
        f"| read | {card['rows_in']} |",
        f"| quarantined | {card['rows_quarantined']} |",
        f"| exact duplicates dropped | {card['rows_deduplicated']} |",
        f"| kept | {card['rows_out']} |",
        "",
        "| split | rows | sha256 |",
        "| --- | ---: | --- |",
    ]
    lines += [f"| {name} | {s['count']} | `{s['sha256'][:16]}` |" for name, s in card["splits"].items()]
    if quarantine:
        lines += ["", "## Quarantined rows (first 20)", ""]
        lines += [f"- line {q['line']}: {q['reason']}" for q in quarantine[:20]]
    return "\n".join(lines) + "\n"

"""Data prep: read instruction data from anywhere, validate, clean, budget, split and describe it.

Plain Python, callable without KFP; `prepare()` is what the data_prep step (through
components/data_prep/logic.py) and `modelchain data prep` call. The rows stream through in
batches, so memory stays bounded whatever the input size:

    sources (sources.py, feedback.py) -> per row, in worker processes (rows.py): parse,
    field mapping and validation (bad rows to the quarantine with source, line/row and
    reason), Unicode normalisation, PII scrubbing (pii.py), length filters, token budget
    (tokens.py), output lines, MinHash signatures -> in order, in this process: exact and
    near dedup (cleaning.py), split by content hash and seed (optionally stratified), the
    files (outputs.py), the data card (card.py)

Everything is written inside a temporary folder that replaces `out_dir` only at the end,
so a failure never leaves outputs that look complete.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import orjson

from modelchain.data.rows import PssSampler, pss_kb
from modelchain.data.sources import Batch, DataError, expand, read_batches
# The field map, dedup and PII options are the data group's schema dataclasses themselves, so
# their defaults are written once (core/config.py).
from modelchain.core.config import DataDedupConfig as DedupOptions
from modelchain.core.config import DataFieldsConfig as FieldMap
from modelchain.core.config import DataPiiConfig as PiiOptions
from modelchain.core.io import atomic_dir, atomic_write_json, atomic_write_text, sha256_text

SPLITS = ("train", "val", "test")
QUARANTINE_IN_CARD = 20
CARD_JSON = "data_card.json"
# Everything a run writes; a folder holding anything else is not ours to replace.
OUTPUT_NAMES = frozenset({*(f"{s}.jsonl" for s in SPLITS), "quarantine.jsonl", CARD_JSON, "data_card.md",
                          "token_lengths.png"})
__all__ = ["DataError", "FieldMap", "PrepResult", "DedupOptions", "PiiOptions", "TokenOptions", "check_out_dir", "prepare",
           "row_to_messages", "split_of"]


@dataclass
class TokenOptions:
    max_tokens: int = 0  # 0 = no budget
    action: str = "drop"  # drop | truncate
    tokenizer_dir: Optional[str] = None  # a Hugging Face model or tokenizer folder with a chat template
    sample_rows: int = 2000  # rows whose exact lengths make the histogram


@dataclass
class PrepResult:
    out_dir: Path
    card: dict[str, Any]
    split_paths: dict[str, Path] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # how the run went (worker memory), not in the card


# --------------------------------------------------------------------------- one row
def row_to_messages(row: Any, fields: FieldMap, system_prompt: Optional[str], min_response_chars: int = 0,
                    normalization: str = "NFC") -> list[dict]:
    """One source row as normalised chat messages; raises ValueError with the reason a row is bad."""
    from modelchain.data.cleaning import normalize

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
            out.append({"role": message["role"], "content": normalize(message["content"], normalization)})
        if out[-1]["role"] != "assistant":
            raise ValueError("the last message is not the assistant's answer")
        if not any(m["role"] == "user" for m in out):
            raise ValueError("no user message")
        if system_prompt and out[0]["role"] != "system":
            out.insert(0, {"role": "system", "content": system_prompt})
    else:
        values = {}
        for name in ("prompt", "response"):
            key = getattr(fields, name)
            value = row.get(key)
            if not isinstance(value, str):
                raise ValueError(f"field {key!r} missing or not a string")
            values[name] = normalize(value, normalization)
        if not values["prompt"]:
            raise ValueError(f"field {fields.prompt!r} is empty")
        if not values["response"]:
            raise ValueError(f"field {fields.response!r} is empty")
        prompt = values["prompt"]
        if fields.context and isinstance(row.get(fields.context), str) and row[fields.context].strip():
            prompt = f"Context:\n{normalize(row[fields.context], normalization)}\n\n{prompt}"
        system = row.get(fields.system) if fields.system else None
        system = normalize(system, normalization) if isinstance(system, str) and system.strip() else system_prompt
        out = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": values["response"]},
        ]
    if len(out[-1]["content"]) < min_response_chars:
        raise ValueError(f"response shorter than {min_response_chars} characters")
    return out


def split_point(content_hash: str, seed: int) -> float:
    """A row's place in [0, 1), from its content hash and the seed: where the splits cut."""
    return int(sha256_text(f"{seed}:{content_hash}")[:15], 16) / float(16**15)


def split_of(content_hash: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the content hash and seed: stable across runs and machines."""
    return SPLITS[int(split_codes([split_point(content_hash, seed)], val_fraction, test_fraction)[0])]


def split_codes(points, val_fraction: float, test_fraction: float):
    """Each split point's split as an index into SPLITS (0 train, 1 val, 2 test)."""
    import numpy as np

    points = np.asarray(points, dtype=np.float64)
    return np.where(points < test_fraction, 2, np.where(points < test_fraction + val_fraction, 1, 0)).astype(np.int8)


# --------------------------------------------------------------------------- the run
class _Run:
    """The main process's side of one prepare() call: dedup indexes, splits, files, counters."""

    def __init__(self, out: Path, work: Path, opts: dict):
        from modelchain.data.cleaning import ExactDuplicates, NearDuplicates
        from modelchain.data.outputs import SplitWriters
        from modelchain.data.tokens import Reservoir

        self.o = opts
        self.counts: Counter = Counter()
        self.pii: Counter = Counter()
        self.quarantine_head: list[dict] = []
        self.quarantine_file = open(out / "quarantine.jsonl", "wb")
        dedup: DedupOptions = opts["dedup"]
        self.exact = ExactDuplicates() if dedup.exact else None
        self.near = (NearDuplicates(dedup.threshold, dedup.num_perm, dedup.shingle_words, spool_dir=work)
                     if dedup.near else None)
        self.sample = Reservoir(opts["tokens"].sample_rows, opts["seed"])
        self.stratified = bool(opts["stratify_by"])
        self.writers = SplitWriters(out)
        # stratified splits need every row first: the lines wait in a spool file
        self.spool = open(work / "rows-chat.jsonl", "wb") if self.stratified else None
        self.strata: dict[str, int] = {}
        self.row_strata: list[int] = []
        self.row_points: list[float] = []
        self.worker_pss_kb: dict[int, int] = {}
        self.main_pss = PssSampler()

    def consume(self, result) -> None:
        """One batch's results, in input order: quarantine, dedup, then each kept row to its split."""
        import numpy as np

        self.counts.update(result.counts)
        self.pii.update(result.pii)
        self.worker_pss_kb[result.pid] = max(self.worker_pss_kb.get(result.pid, 0), result.peak_pss_kb)
        self.main_pss.sample()  # the main process's memory only grows: the end is read too
        for entry in result.quarantine:
            self.quarantine_file.write(orjson.dumps(entry) + b"\n")
            if len(self.quarantine_head) < QUARANTINE_IN_CARD:
                self.quarantine_head.append(entry)
        keep = np.ones(len(result.keys), dtype=bool)
        if self.exact is not None and keep.any():
            keep &= ~self.exact.check_and_add(result.keys)
        self.counts["after_exact"] += int(keep.sum())
        if self.near is not None and keep.any():
            index = np.flatnonzero(keep)
            keep[index[self.near.check_and_add_signatures(result.signatures[index])]] = False
        self.counts["after_near"] += int(keep.sum())
        kept = np.flatnonzero(keep)
        self.sample.offer_many(_KeptLines(result.chat, kept))
        if not self.stratified:  # a batch's rows go to each split in one write per file
            codes = result.codes[kept]
            for code, split in enumerate(SPLITS):
                rows = kept[codes == code]
                if len(rows):
                    self.writers.write_many(split, len(rows), result.chat.take(rows))
            return
        for i in kept.tolist():
            self.row_strata.append(self.strata.setdefault(result.strata[i], len(self.strata)))
        self.row_points.extend(result.points[kept].tolist())
        self.spool.write(result.chat.take(kept))

    def stratified_splits(self) -> None:
        """Within each stratum, the rows ordered by hash point are cut at the split fractions."""
        import numpy as np

        self.spool.close()
        strata = np.array(self.row_strata, dtype=np.int32)
        points = np.array(self.row_points, dtype=np.float64)
        assignment = np.zeros(len(strata), dtype=np.int8)  # 0 train, 1 val, 2 test
        test_f, val_f = self.o["test_fraction"], self.o["val_fraction"]
        for s in range(len(self.strata)):
            members = np.flatnonzero(strata == s)
            ordered = members[np.argsort(points[members], kind="stable")]
            n_test, n_val = round(len(ordered) * test_f), round(len(ordered) * (test_f + val_f))
            assignment[ordered[:n_test]] = 2
            assignment[ordered[n_test:n_val]] = 1
        with open(self.spool.name, "rb") as spool:
            for split in assignment.tolist():
                self.writers.write_many(SPLITS[split], 1, spool.readline())
        self.strata_counts = {name: int((strata == s).sum()) for name, s in self.strata.items()}

    def close(self) -> None:
        self.quarantine_file.close()
        if self.near is not None:
            self.near.close()
        if self.spool is not None:
            self.spool.close()


class _KeptLines:
    """The chat lines of a batch's kept rows as a sequence, sliced only when the sample takes one."""

    def __init__(self, lines, kept):
        self.lines, self.kept = lines, kept

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, i: int) -> bytes:
        return self.lines.line(self.kept[i])


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f} rows"),
                    TimeElapsedColumn(), transient=True)


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
    min_prompt_chars: int = 1,
    source_format: str = "auto",
    normalization: str = "NFC",
    stratify_by: Optional[str] = None,
    dedup: DedupOptions | None = None,
    pii: PiiOptions | None = None,
    tokens: TokenOptions | None = None,
    feedback=None,
    workers: int = 1,
    progress: bool = False,
) -> PrepResult:
    """Read `source_uri` (files, folders, S3 prefixes or globs, comma-separated; may be empty
    when `feedback` is given) and production traces from `feedback` (a FeedbackOptions),
    and write into `out_dir`: train/val/test.jsonl (chat), quarantine.jsonl, data_card.json, data_card.md and token_lengths.png.

    `workers` > 1 runs the per-row work in that many processes (0 = one per CPU); the
    output is the same for any number. Raises DataError, naming the source, when the data
    cannot be used.
    """
    from modelchain.data.rows import StageConfig, results, worker_count

    if normalization not in ("NFC", "NFKC"):
        raise DataError(f"normalization must be NFC or NFKC, got {normalization!r}")
    opts = {
        "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed, "stratify_by": stratify_by,
        "normalization": normalization, "dedup": dedup or DedupOptions(), "tokens": tokens or TokenOptions(),
    }
    opts["pii"] = pii or PiiOptions()
    permutations = None
    if opts["dedup"].near:
        from modelchain.data.cleaning import datasketch_permutations

        permutations = datasketch_permutations(opts["dedup"].num_perm)
    stage = StageConfig(fields or FieldMap(), system_prompt, normalization, stratify_by, min_prompt_chars,
                        min_response_chars, seed, val_fraction, test_fraction, opts["pii"], opts["tokens"],
                        opts["dedup"], permutations)
    if stage.pii.enabled:
        from modelchain.data.pii import Scrubber

        try:
            Scrubber(stage.pii.kinds)
        except ValueError as exc:
            raise DataError(f"data.pii.kinds: {exc}") from exc
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    sources = expand(source_uri) if source_uri.strip() else []
    traces = None
    if feedback is not None and feedback.uri:
        from modelchain.data.feedback import TraceReader

        try:
            traces = TraceReader(feedback, system_prompt)
        except ValueError as exc:
            raise DataError(f"data.feedback: {exc}") from exc
    if not sources and traces is None:
        raise DataError("no data source: set data.source.uri or data.feedback.uri")
    where = source_uri if source_uri.strip() else feedback.uri
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(prefix=".data-prep-", dir=out_dir.parent) as work:
        run = _Run(tmp, Path(work), opts)
        bar = _progress(progress)
        try:
            if bar is not None:
                bar.start()
                task = bar.add_task("data prep", total=None)
            for result in results(_all_batches(sources, source_format, traces), stage, worker_count(workers)):
                run.consume(result)
                if bar is not None:
                    bar.update(task, completed=run.counts["rows_in"])
            rows_in = run.counts["rows_in"]
            if rows_in == 0:
                raise DataError(f"{where}: the dataset is empty")
            bad = run.counts["quarantined"]
            if bad / rows_in > max_bad_fraction:
                first = run.quarantine_head[0]
                at = f"line {first['line']}" if "line" in first else f"row {first['row']}"
                raise DataError(
                    f"{where}: {bad} of {rows_in} rows are bad ({bad / rows_in:.1%} > data.max_bad_fraction "
                    f"{max_bad_fraction:.1%}); first: {first['source']} {at}: {first['reason']}"
                )
            if run.stratified:
                run.stratified_splits()
            splits = run.writers.close()
            if splits["train"]["count"] == 0:
                raise DataError(f"{where}: no rows left to train on")
            card = _card(run, splits, [s.uri for s in sources], traces, tmp)
            atomic_write_json(tmp / "data_card.json", card)
            from modelchain.data.card import render_card

            atomic_write_text(tmp / "data_card.md", render_card(card, run.quarantine_head))
        except BaseException:
            run.writers.abort()
            raise
        finally:
            run.close()
            if bar is not None:
                bar.stop()
    stats = {"worker_peak_pss_mb": {pid: kb / 1024 for pid, kb in run.worker_pss_kb.items() if pid != os.getpid()},
             "main_peak_pss_mb": max(run.main_pss.peak_kb, pss_kb()) / 1024}
    return PrepResult(out_dir, card, {name: out_dir / f"{name}.jsonl" for name in SPLITS}, stats)


def check_out_dir(out_dir: str | Path) -> None:
    """Refuse an `out_dir` that prepare() must not replace: a file, or a non-empty folder that
    is not an earlier data-prep output (a data card and only files data prep writes).

    prepare() replaces `out_dir` as a whole, so `--out ~/work` would otherwise delete the folder.
    """
    out_dir = Path(out_dir)
    if not os.path.lexists(out_dir):
        return
    if out_dir.is_symlink():
        raise DataError(f"{out_dir}: a symbolic link; give the folder it points to (the output path is replaced "
                        f"as a whole)")
    if not out_dir.is_dir():
        raise DataError(f"{out_dir}: not a folder; the output of data prep is a folder")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    foreign = [name for name in entries if name not in OUTPUT_NAMES]
    if CARD_JSON not in entries or foreign:
        held = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        why = f"holds {held}" if foreign else f"has no {CARD_JSON}"
        raise DataError(f"{out_dir}: not an earlier data-prep output ({why}); refusing to replace it; "
                        "choose a new or empty folder")


def _all_batches(sources, source_format: str, traces) -> Iterator[tuple[Batch, bool]]:
    """Every batch of the sources, then of the traces (already `{"messages": [...]}` rows)."""
    for source in sources:
        for batch in read_batches(source, source_format):
            yield batch, False
    if traces is not None:
        for batch in traces.batches():
            yield batch, True


def _card(run: _Run, splits: dict, source_uris: list[str], traces, out: Path) -> dict:
    from modelchain.data.card import HISTOGRAM, length_summary, plot_histogram

    c, o = run.counts, run.o
    stages = [
        ("read", c["rows_in"], c["rows_in"]),
        ("valid (quarantine)", c["rows_in"], c["valid"]),
        ("length filter", c["valid"], c["after_length"]),
        ("token budget", c["after_length"], c["after_tokens"]),
        ("exact dedup", c["after_tokens"], c["after_exact"]),
        ("near dedup", c["after_exact"], c["after_near"]),
    ]
    rows_out = sum(s["count"] for s in splits.values())
    card: dict[str, Any] = {
        "source_uris": source_uris + (traces.summary()["uris"] if traces is not None else []),
        "rows_in": c["rows_in"],
        "rows_quarantined": c["quarantined"],
        "rows_too_short": c["too_short"],
        "rows_deduplicated": c["after_tokens"] - c["after_near"],
        "dedup": {"exact": c["after_tokens"] - c["after_exact"], "near": c["after_exact"] - c["after_near"],
                  "near_threshold": o["dedup"].threshold if o["dedup"].near else None},
        "rows_out": rows_out,
        "stages": [{"name": n, "rows_in": a, "rows_out": b} for n, a, b in stages],
        "seed": o["seed"],
        "normalization": o["normalization"],
        "stratify_by": o["stratify_by"],
        "pii": {"enabled": o["pii"].enabled, "rows_with_pii": c["rows_with_pii"],
                "counts": dict(sorted(run.pii.items()))},
        "tokens": {"enabled": o["tokens"].max_tokens > 0 and bool(o["tokens"].tokenizer_dir)},
        "splits": splits,
    }
    tokens: TokenOptions = o["tokens"]
    if card["tokens"]["enabled"]:
        from modelchain.data.tokens import TokenBudget, load_tokenizer

        budget = TokenBudget(load_tokenizer(tokens.tokenizer_dir), tokens.max_tokens, tokens.action)
        lengths = budget.lengths([orjson.loads(line)["messages"] for line in run.sample.items])
        drawn = plot_histogram(lengths, tokens.max_tokens, out / HISTOGRAM)
        card["tokens"].update({
            "max_tokens": tokens.max_tokens, "action": tokens.action, "over_budget": c["over_budget"],
            "truncated": c["truncated"], "dropped": c["dropped_tokens"], "counted_exactly": c["counted_exactly"],
            "lengths": length_summary(lengths, tokens.max_tokens), "histogram": HISTOGRAM if drawn else None,
        })
    if run.stratified:
        card["strata"] = run.strata_counts
    if traces is not None:
        card["feedback"] = {k: v for k, v in traces.summary().items() if k != "uris"}
    return card

"""The per-row work of data prep, one batch at a time, in worker processes or in-process.

Everything that needs no state shared across rows happens here: parsing, field mapping and
validation, normalisation, PII scrubbing, length filters, the token budget, the content
hash, the output lines and the MinHash signatures. What must see all rows
in order (dedup indexes, split assignment, the files) stays in the main process, which gets
back compact `BatchResult`s; results come back in input order, so the output does not
depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import os
import resource
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

from modelchain.data.sources import BadItem, Batch

_PSS_FIRST_READS = 4  # calls of PssSampler.sample() that always read (the memory grows most at first)


@dataclass
class StageConfig:
    fields: Any  # logic.FieldMap
    system_prompt: Optional[str]
    normalization: str
    stratify_by: Optional[str]
    min_prompt_chars: int
    min_response_chars: int
    seed: int
    val_fraction: float
    test_fraction: float
    pii: Any  # logic.PiiOptions
    tokens: Any  # logic.TokenOptions
    dedup: Any  # logic.DedupOptions
    permutations: Any = None  # MinHash (a, b) from cleaning.datasketch_permutations


class Lines:
    """A batch's output lines (newline-terminated), as one bytes object.

    The lines are stored grouped by split (input order within a split), so the rows of a
    split that survive dedup are mostly adjacent: the main process writes them as a few
    slices, and a batch crosses between processes as one object instead of thousands.
    """

    def __init__(self, lines: list[bytes], codes):
        import numpy as np

        order = np.argsort(codes, kind="stable")
        lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
        ends = np.cumsum(lengths[order])
        self.data = b"".join([lines[i] for i in order.tolist()])
        self.starts = np.empty(len(lines), dtype=np.int64)
        self.ends = np.empty(len(lines), dtype=np.int64)
        self.starts[order], self.ends[order] = ends - lengths[order], ends

    def __len__(self) -> int:
        return len(self.starts)

    def line(self, row: int) -> bytes:
        return self.data[self.starts[row]:self.ends[row]]

    def take(self, rows) -> bytes:
        """The lines of `rows` (input positions, ascending), concatenated."""
        import numpy as np

        if not len(rows):
            return b""
        starts, ends = self.starts[rows], self.ends[rows]
        cuts = np.flatnonzero(starts[1:] != ends[:-1]) + 1  # where the next row is not adjacent
        run_starts = starts[np.concatenate([[0], cuts])].tolist()
        run_ends = ends[np.concatenate([cuts - 1, [len(rows) - 1]])].tolist()
        view = memoryview(self.data)
        return b"".join([view[a:b] for a, b in zip(run_starts, run_ends)])


@dataclass
class BatchResult:
    counts: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    quarantine: list[dict] = field(default_factory=list)
    # For each row that passed: its exact-dedup key (the first 64 bits of its content sha256),
    # its split point (logic.split_point) and split (an index into logic.SPLITS; 0 when the
    # splits are stratified, which needs all rows first), its stratum, and its chat line.
    keys: Any = None  # uint64 array
    points: Any = None  # float64 array
    codes: Any = None  # int8 array
    strata: list[str] = field(default_factory=list)
    chat: Optional[Lines] = None
    signatures: Any = None  # (rows, num_perm) uint32 when near dedup is on
    pid: int = 0
    peak_pss_kb: int = 0  # this worker's largest proportional set size so far


def _bad_line_reason(line: bytes, exc: Exception) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text (byte 0x{line[err.start]:02x} at column {err.start + 1})"
    return f"malformed JSON: {exc}"


class RowStage:
    """Turns raw batches into BatchResults (see the module docstring)."""

    def __init__(self, cfg: StageConfig):
        from modelchain.data.pii import Scrubber

        self.cfg = cfg
        self.scrubber = Scrubber(cfg.pii.kinds) if cfg.pii.enabled else None
        self.budget = None
        if cfg.tokens.tokenizer_dir and cfg.tokens.max_tokens > 0:
            from modelchain.data.tokens import TokenBudget, load_tokenizer

            self.budget = TokenBudget(load_tokenizer(cfg.tokens.tokenizer_dir), cfg.tokens.max_tokens, cfg.tokens.action)
        self.pss = PssSampler()
        self.hasher = None
        if cfg.dedup.near:
            from modelchain.data.cleaning import MinHasher

            self.hasher = MinHasher(cfg.dedup.num_perm, 1, cfg.dedup.shingle_words, cfg.permutations)

    def __call__(self, batch: Batch, from_traces: bool = False) -> BatchResult:
        import numpy as np

        from modelchain.data.prepare import FieldMap, row_to_messages, split_codes, split_point

        cfg, out = self.cfg, BatchResult()
        fields = FieldMap(messages="messages") if from_traces else cfg.fields
        rows: list[tuple[list[dict], str]] = []
        out.counts["rows_in"] = len(batch.items)
        for number, item in zip(batch.numbers, batch.items):
            if isinstance(item, bytes):
                try:
                    item = orjson.loads(item)
                except orjson.JSONDecodeError as exc:
                    out.quarantine.append({"source": batch.source, batch.unit: number, "reason": _bad_line_reason(item, exc)})
                    continue
            elif isinstance(item, BadItem):
                out.quarantine.append({"source": batch.source, batch.unit: number, "reason": item.reason})
                continue
            try:
                messages = row_to_messages(item, fields, cfg.system_prompt, 0, cfg.normalization)
            except ValueError as exc:
                out.quarantine.append({"source": batch.source, batch.unit: number, "reason": str(exc)})
                continue
            stratum = ""
            if cfg.stratify_by:
                value = item.get(cfg.stratify_by)
                stratum = "" if value is None else str(value)
            rows.append((messages, stratum))
        out.counts["quarantined"] = len(out.quarantine)
        out.counts["valid"] = len(rows)
        if self.scrubber is not None:
            for messages, _ in rows:
                texts, found = self.scrubber.scrub_many([m["content"] for m in messages])
                if found:
                    out.counts["rows_with_pii"] += 1
                    for message, text in zip(messages, texts):
                        message["content"] = text
            out.pii, self.scrubber.counts = self.scrubber.counts, Counter()
        rows = [r for r in rows if self._long_enough(r[0], out.counts)]
        out.counts["after_length"] = len(rows)
        if self.budget is not None and rows:
            before = (self.budget.stats.over_budget, self.budget.stats.truncated, self.budget.stats.dropped,
                      self.budget.stats.counted_exactly)
            fitted = self.budget.apply([m for m, _ in rows])
            stats = self.budget.stats
            for key, now, then in zip(("over_budget", "truncated", "dropped_tokens", "counted_exactly"),
                                      (stats.over_budget, stats.truncated, stats.dropped, stats.counted_exactly), before):
                out.counts[key] = now - then
            rows = [(m, s) for m, (_, s) in zip(fitted, rows) if m is not None]
        out.counts["after_tokens"] = len(rows)
        keys, points, chat = [], [], []
        newline, seed = orjson.OPT_APPEND_NEWLINE, cfg.seed
        for messages, stratum in rows:
            content_hash = hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).hexdigest()
            keys.append(int(content_hash[:16], 16))
            points.append(split_point(content_hash, seed))
            out.strata.append(stratum)
            chat.append(orjson.dumps({"messages": messages, "id": content_hash[:16]}, option=newline))
        out.keys, out.points = np.array(keys, dtype=np.uint64), np.array(points, dtype=np.float64)
        out.codes = (np.zeros(len(rows), dtype=np.int8) if cfg.stratify_by
                     else split_codes(out.points, cfg.val_fraction, cfg.test_fraction))
        out.chat = Lines(chat, out.codes)
        if self.hasher is not None:
            out.signatures = self.hasher.signatures(
                ["\n".join(m["content"] for m in messages if m["role"] != "system") for messages, _ in rows])
        out.pid = os.getpid()
        out.peak_pss_kb = self.pss.sample()
        return out

    def _long_enough(self, messages: list[dict], counts: Counter) -> bool:
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if len(messages[-1]["content"]) < self.cfg.min_response_chars or len(prompt) < self.cfg.min_prompt_chars:
            counts["too_short"] += 1
            return False
        return True


class PssSampler:
    """A process's peak PSS, read on the first calls and then at most every `interval_s`:
    reading smaps_rollup walks the page tables (35 ms in the main process of a large run),
    and the memory of a data prep process is flat, or only grows, after its first batches."""

    def __init__(self, interval_s: float = 5.0):
        self.interval_s, self.calls, self.next_at, self.peak_kb = interval_s, 0, 0.0, 0

    def sample(self) -> int:
        self.calls += 1
        now = time.monotonic()
        if self.calls <= _PSS_FIRST_READS or now >= self.next_at:
            self.peak_kb = max(self.peak_kb, pss_kb())
            self.next_at = now + self.interval_s
        return self.peak_kb


def pss_kb() -> int:
    """This process's proportional set size: its private pages plus its share of the pages it
    shares (with the main process after fork, or libraries), so summing over processes counts
    every page once. Falls back to the peak RSS where /proc has no smaps_rollup."""
    try:
        with open("/proc/self/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------- workers
_STAGE: Optional[RowStage] = None


def _init_worker(cfg: StageConfig) -> None:
    global _STAGE
    _STAGE = RowStage(cfg)


def _run(batch: Batch, from_traces: bool) -> BatchResult:
    return _STAGE(batch, from_traces)


def worker_count(requested: int) -> int:
    """0 = one per CPU this process may use (at most 8)."""
    if requested > 0:
        return requested
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def results(batches: Iterable[tuple[Batch, bool]], cfg: StageConfig, workers: int) -> Iterator[BatchResult]:
    """BatchResults in input order; with workers > 1, computed by that many processes.

    At most two batches per worker are in flight, so a fast reader never piles the input up
    in memory while the workers catch up.
    """
    if workers <= 1:
        stage = RowStage(cfg)
        for batch, from_traces in batches:
            yield stage(batch, from_traces)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # fork: the workers start at once with everything imported, and a caller's script needs no
    # `if __name__ == "__main__"` guard. The pool forks before it starts any thread of its own,
    # this process has loaded no tokenizer (its threads would not survive a fork), and the
    # workers touch nothing else that a thread of this process might hold.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(cfg,)) as pool:
        pending: deque = deque()
        try:
            for batch, from_traces in batches:
                pending.append(pool.submit(_run, batch, from_traces))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

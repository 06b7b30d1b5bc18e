"""RAG scoring with ragas: retrieve contexts from Milvus, answer with each adapter, score the answers.

The judge is a seam (``JudgeEndpoint``, registered in ``JUDGES``, picked by ``open_judge``
from the typed ``eval`` config): with an endpoint (``openai``: any OpenAI-compatible one,
vLLM, LiteLLM, ...) the LLM-judged metrics faithfulness, answer relevancy, context precision
and context recall (``JUDGED``); without one (``offline``: ``eval.judge.base_url`` empty),
offline stand-ins under names of their own (``OFFLINE``, all ``offline_*``: non-LLM context
precision/recall against the reference answer, string similarity, ROUGE, BLEU, exact match),
so a floor set on a judged metric is never met by a string similarity. Answer relevancy
embeds with ``eval.judge.embedding`` (the project's embedder, core/embedder.py), never with
the chat model.

Every (sample, metric) pair is one task; at most `concurrency` run at once (an asyncio
semaphore), each attempt is bounded by `timeout_s`, and a failed task is retried `retries`
times. A task that still fails is counted under its metric and reported; its score is left
out of the mean, never replaced by a number, and every mean travels with its n (the samples
it is over).
"""

from __future__ import annotations

import asyncio
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

JUDGED = ("faithfulness", "answer_relevancy", "context_precision", "context_recall")
# Offline stand-ins: string similarities, never the judged metrics' names (the gate sees them as rag_offline_*).
OFFLINE = ("offline_context_precision", "offline_context_recall", "offline_string_similarity", "offline_rouge",
           "offline_bleu", "offline_exact_match")
# How a judge endpoint is held to the answer schemas (eval.judge.output).
JUDGE_OUTPUTS = ("json", "json_schema")


class JudgeEndpoint(ABC):
    """Who scores the answers: an LLM judge endpoint, or no judge (offline string metrics).

    Implementations are registered in ``JUDGES`` by name; ``open_judge(ev)`` picks one from
    the typed ``eval`` config. Each gives the ragas metrics it scores with and the limits
    (concurrency, per-attempt timeout, retries) ``score`` runs them under.
    """

    mode = ""  # what the report calls it: llm | offline
    concurrency: int
    timeout_s: float
    retries: int

    @classmethod
    @abstractmethod
    def from_config(cls, ev: "DictConfig") -> "JudgeEndpoint":
        """The judge of a typed ``eval`` config."""

    @abstractmethod
    def metrics(self) -> dict[str, Any]:
        """ragas metric objects by name."""

    def limits(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "timeout_s": self.timeout_s, "retries": self.retries}


@dataclass(frozen=True)
class OfflineJudge(JudgeEndpoint):
    """No judge: non-LLM context precision/recall against the reference, string similarity,
    ROUGE, BLEU and exact match. Nothing leaves the machine."""

    concurrency: int = 8
    timeout_s: float = 60.0
    retries: int = 2
    mode = "offline"

    @classmethod
    def from_config(cls, ev: "DictConfig") -> "OfflineJudge":
        return cls()

    def metrics(self) -> dict[str, Any]:
        # ragas 0.4 has no collections class for the non-LLM context metrics: they stay on the
        # single-turn interface, which `_Metric` calls the same way.
        from ragas.metrics._context_precision import NonLLMContextPrecisionWithReference
        from ragas.metrics._context_recall import NonLLMContextRecall
        from ragas.metrics.collections import BleuScore, ExactMatch, NonLLMStringSimilarity, RougeScore

        answer = ("reference", "response")
        return {
            "offline_context_precision": _Metric(NonLLMContextPrecisionWithReference()),
            "offline_context_recall": _Metric(NonLLMContextRecall()),
            "offline_string_similarity": _Metric(NonLLMStringSimilarity(), answer),
            "offline_rouge": _Metric(RougeScore(), answer),
            "offline_bleu": _Metric(BleuScore(), answer),
            "offline_exact_match": _Metric(ExactMatch(), answer),
        }


@dataclass
class OpenAIJudge(JudgeEndpoint):
    """An OpenAI-compatible judge endpoint (vLLM, LiteLLM, ...) and how hard to push it.

    ``embedding`` is the typed ``eval.judge.embedding`` group answer relevancy embeds with
    (None: the project's default local embedder); a chat endpoint serves no embeddings.
    """

    base_url: str
    model: str
    api_key: str = "none"
    concurrency: int = 8
    timeout_s: float = 60.0
    retries: int = 2
    embedding: Any = None
    seed: int | None = 0  # with temperature 0 on every call; repeat r sends seed + r
    cache_dir: str | None = None  # answers cached by content here; None = no cache
    max_tokens: int = 0  # the token budget (0 = none)
    price_per_1k_tokens: float = 0.0
    repeats: int = 1
    output: str = "json"  # json | json_schema (JUDGE_OUTPUTS)
    max_output_tokens: int = 1024
    budget: Any = None  # the TokenBudget every call of this judge counts against (made on first use)
    mode = "llm"

    @classmethod
    def from_config(cls, ev: "DictConfig") -> "OpenAIJudge":
        """The endpoint of ``eval.judge``; the key from the variable ``eval.judge.api_key_env`` names."""
        judge = ev.judge
        cache_dir = None
        if judge.cache:
            from modelchain.core.models import cache_dir as modelchain_cache

            cache_dir = judge.cache_dir or str(modelchain_cache() / "judge")
        return cls(
            base_url=judge.base_url, model=judge.model, api_key=os.environ.get(judge.api_key_env, "none"),
            concurrency=judge.concurrency, timeout_s=float(judge.timeout_s), retries=judge.retries,
            embedding=judge.embedding, seed=judge.seed, cache_dir=cache_dir, max_tokens=judge.max_tokens,
            price_per_1k_tokens=judge.price_per_1k_tokens, repeats=judge.repeats, output=judge.output,
            max_output_tokens=judge.max_output_tokens,
        )

    def limits(self) -> dict[str, Any]:
        return {**super().limits(), "budget": self.token_budget()}

    def token_budget(self):
        """The TokenBudget this judge's calls count against (one per judge object)."""
        if self.budget is None:
            from modelchain.eval.judge_calls import TokenBudget

            self.budget = TokenBudget(limit=self.max_tokens, price_per_1k=self.price_per_1k_tokens)
        return self.budget

    def metrics(self, repeat: int = 0) -> dict[str, Any]:
        """Faithfulness, answer relevancy, context precision and recall, judged by the endpoint.

        Every call goes through `JudgeTransport`: temperature 0, seed + `repeat`, the content
        cache and the token budget.
        """
        import httpx
        from openai import AsyncOpenAI
        from ragas.llms import llm_factory
        from ragas.metrics.collections import AnswerRelevancy, ContextPrecisionWithReference, ContextRecall, Faithfulness

        from modelchain.eval.judge_calls import JudgeTransport

        transport = JudgeTransport(self.token_budget(), self.cache_dir,
                                   None if self.seed is None else self.seed + repeat)
        # Retries and timeouts are ours (per task), so the client itself does not retry.
        client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=0,
                             http_client=httpx.AsyncClient(transport=transport, timeout=self.timeout_s))
        llm = llm_factory(self.model, provider="openai", client=client, max_tokens=self.max_output_tokens)
        if self.output == "json_schema":
            # ragas asks for a bare JSON object (instructor's JSON mode); with the schema as
            # response_format the server constrains decoding to it, so a small judge cannot
            # answer outside it. Failures are then the answers' own, not the format's.
            import instructor

            llm.client = instructor.from_openai(client, mode=instructor.Mode.JSON_SCHEMA)
        embeddings = ragas_embeddings(self.embedding)
        return {
            "faithfulness": _Metric(Faithfulness(llm=llm), ("user_input", "response", "retrieved_contexts")),
            "answer_relevancy": _Metric(AnswerRelevancy(llm=llm, embeddings=embeddings), ("user_input", "response")),
            "context_precision": _Metric(ContextPrecisionWithReference(llm=llm),
                                         ("user_input", "reference", "retrieved_contexts")),
            "context_recall": _Metric(ContextRecall(llm=llm), ("user_input", "retrieved_contexts", "reference")),
        }


# The judges by name. The config names one through eval.judge.base_url: empty = offline
# (no judge), a URL = openai (the endpoint at that URL); see `judge_name`.
JUDGES: dict[str, type[JudgeEndpoint]] = {"offline": OfflineJudge, "openai": OpenAIJudge}


def judge_name(ev: "DictConfig") -> str:
    """The registered judge a typed ``eval`` config asks for: ``openai`` with a judge.base_url, else ``offline``."""
    return "openai" if ev.judge.base_url else "offline"


def open_judge(ev: "DictConfig") -> JudgeEndpoint:
    """The judge of a typed ``eval`` config."""
    return JUDGES[judge_name(ev)].from_config(ev)


@dataclass
class Scores:
    """Per-sample scores (NaN where a task failed), failure counts and the first error messages."""

    values: dict[str, list[float]]
    failures: dict[str, int]
    errors: list[str] = field(default_factory=list)

    def means(self) -> dict[str, float]:
        """Mean per metric over the samples that scored (NaN when none did); `counts` gives each n."""
        out = {}
        for name, vals in self.values.items():
            ok = [v for v in vals if not math.isnan(v)]
            out[name] = sum(ok) / len(ok) if ok else math.nan
        return out

    def counts(self) -> dict[str, int]:
        """Per metric, the n its mean is over: the samples that scored."""
        return {name: sum(not math.isnan(v) for v in vals) for name, vals in self.values.items()}


class _Metric:
    """One ragas metric behind the one call the scoring loop makes: `ascore(sample)` -> a float.

    A collections metric (ragas 0.4's current API) takes the sample's `fields` as keyword
    arguments and returns a MetricResult; with no fields, a single-turn metric scores the
    sample itself. This class is the only place that knows either interface.
    """

    def __init__(self, metric: Any, fields: Sequence[str] = ()) -> None:
        self.metric, self.fields = metric, tuple(fields)

    async def ascore(self, sample: Any) -> float:
        if not self.fields:
            return float(await self.metric.single_turn_ascore(sample))
        result = await self.metric.ascore(**{name: getattr(sample, name) for name in self.fields})
        return float(result.value)


class ProjectEmbeddings:
    """The project's embedder (core/embedder.py), loaded on first use.

    ``embedding`` is a typed ``eval.judge.embedding`` group, or None for the default local model.
    """

    def __init__(self, embedding: "DictConfig | None" = None) -> None:
        import threading

        self._config = embedding
        self._embedder = None
        self._lock = threading.Lock()  # one encode at a time: the model is shared by every task

    def embed_texts(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            if self._embedder is None:
                from modelchain.core.embedder import embedder_from_config, make_embedder

                self._embedder = embedder_from_config(self._config) if self._config is not None else make_embedder()
            return [[float(x) for x in row] for row in self._embedder.encode(list(texts))]


def ragas_embeddings(embedding: "DictConfig | None" = None) -> Any:
    """`ProjectEmbeddings` as ragas' modern embedding interface (BaseRagasEmbedding), for answer relevancy."""
    from ragas.embeddings.base import BaseRagasEmbedding

    class _Embeddings(BaseRagasEmbedding):
        def __init__(self) -> None:
            super().__init__()
            self.project = ProjectEmbeddings(embedding)

        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.project.embed_texts([text])[0]

        def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return self.project.embed_texts(texts)

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return (await self.aembed_texts([text]))[0]

        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return await asyncio.to_thread(self.project.embed_texts, texts)  # off the event loop

    return _Embeddings()


def make_metrics(judge: JudgeEndpoint | None) -> dict[str, Any]:
    """ragas metric objects by name: the judge's, or the offline ones without a judge."""
    return (judge or OfflineJudge()).metrics()


def samples(questions: Sequence[str], answers: Sequence[str], contexts: Sequence[Sequence[str]],
            references: Sequence[str]) -> list:
    """ragas SingleTurnSamples; the reference answer doubles as the reference context offline."""
    from ragas.dataset_schema import SingleTurnSample

    return [
        SingleTurnSample(user_input=q, response=a or "(no answer)", retrieved_contexts=list(c) or [""],
                         reference=r, reference_contexts=[r])
        for q, a, c, r in zip(questions, answers, contexts, references)
    ]


async def ascore(rag_samples: Sequence, metrics: Mapping[str, Any], *, concurrency: int = 8,
                 timeout_s: float = 60.0, retries: int = 2, budget=None) -> Scores:
    """Score every sample with every metric: bounded concurrency, a timeout and retries per task.

    With a `budget` (judge_calls.TokenBudget), a task that finds it spent is not started (nor
    retried) and counts as failed: the scores are partial, and say so.
    """
    semaphore = asyncio.Semaphore(concurrency)
    values = {name: [math.nan] * len(rag_samples) for name in metrics}
    failures = {name: 0 for name in metrics}
    errors: list[str] = []

    async def task(i: int, name: str) -> None:
        async with semaphore:
            last: BaseException = RuntimeError("not run")
            for attempt in range(retries + 1):
                if budget is not None and budget.exhausted:
                    last = RuntimeError(f"not judged: the token budget of {budget.limit} is spent")
                    break
                try:
                    score = await asyncio.wait_for(metrics[name].ascore(rag_samples[i]), timeout_s)
                    values[name][i] = float(score)
                    return
                except Exception as exc:  # timeouts, HTTP errors, malformed JSON: all count alike
                    last = exc
            failures[name] += 1
            if len(errors) < 20:
                kind = "timeout" if isinstance(last, (asyncio.TimeoutError, TimeoutError)) else type(last).__name__
                errors.append(f"sample {i} {name}: {kind}: {' '.join(str(last).split())[:160]}")

    await asyncio.gather(*(task(i, name) for i in range(len(rag_samples)) for name in metrics))
    return Scores(values, failures, errors)


def score(rag_samples: Sequence, metrics: Mapping[str, Any], **limits) -> Scores:
    """`ascore` from synchronous code."""
    return asyncio.run(ascore(rag_samples, metrics, **limits))


# --------------------------------------------------------------------------- the RAG setting
RAG_SYSTEM = "Answer the question using the context. Be brief."


def rag_prompt(question: str, contexts: Sequence[str]) -> list[dict]:
    context = "\n\n".join(contexts)
    return [{"role": "system", "content": RAG_SYSTEM},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}]


def score_rag_for_sides(ev: "DictConfig", rag: "DictConfig", rows: Sequence[dict], base_dir: str | Path,
                        sides: Mapping[str, Path], retriever=None) -> dict:
    """Retrieve contexts for each row's question, answer with each side's adapter, score the answers.

    ``ev`` and ``rag`` are the typed ``eval`` and ``rag`` configs: the retriever opens the
    collection ``rag`` names as the ingest did, the judge is ``open_judge(ev)``. ``rows`` are
    chat rows (the last user message is the question, the last message the reference);
    ``sides`` maps a side ("challenger", "champion") to its adapter folder. Returns a
    report-ready summary: mode, question count, repeats (``eval.judge.repeats``; samples =
    questions x repeats), and per side the means (over repeats), their spread, the n of each
    mean and the failure counts; with a judge, its calls, cache hits, tokens and cost, and
    whether the token budget cut the run short (``partial``).
    """
    from modelchain.eval.generation import generate

    questions = [row["messages"][-2]["content"] for row in rows]
    references = [row["messages"][-1]["content"] for row in rows]
    if retriever is None:
        from modelchain.core.retriever import Retriever

        retriever = Retriever.open(rag)
    with retriever:
        contexts = [[h.text for h in hits] for hits in retriever.retrieve_many(questions, ev.rag_top_k)]
    judge = open_judge(ev)
    repeats = ev.judge.repeats if judge.mode == "llm" else 1  # offline metrics do not vary
    if judge.mode == "llm" and ev.judge.max_tokens:
        _check_budget_estimate(ev, questions, contexts, references, len(sides) * repeats)
    out = {"mode": judge.mode, "questions": len(rows), "repeats": repeats, "samples": len(rows) * repeats,
           "means": {}, "n": {}, "spread": {}, "failures": {}, "errors": []}
    metrics_by_repeat = [judge.metrics(repeat) if judge.mode == "llm" else judge.metrics() for repeat in range(repeats)]
    for side, adapter in sides.items():
        answers = generate(base_dir, [rag_prompt(q, c) for q, c in zip(questions, contexts)], adapter_dir=adapter,
                           max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)
        rag_samples = samples(questions, answers, contexts, references)
        runs = [score(rag_samples, metrics, **judge.limits()) for metrics in metrics_by_repeat]
        out["means"][side], out["spread"][side] = _over_repeats([r.means() for r in runs])
        out["n"][side] = {m: sum(r.counts()[m] for r in runs) for m in runs[0].values}
        out["failures"][side] = {m: sum(r.failures[m] for r in runs) for m in runs[0].values}
        out["errors"] += [f"{side}: {e}" for r in runs for e in r.errors][:20]
    out["failed_total"] = sum(sum(f.values()) for f in out["failures"].values())
    if judge.mode == "llm":
        out["calls"] = judge.token_budget().summary()
        out["partial"] = out["calls"]["budget_exhausted"]
    return out


def _over_repeats(means: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per metric, the mean of the repeats' means and their spread (standard deviation, min, max)."""
    mean, spread = {}, {}
    for name in means[0]:
        values = [m[name] for m in means if not math.isnan(m[name])]
        mean[name] = sum(values) / len(values) if values else math.nan
        sd = math.sqrt(sum((v - mean[name]) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        spread[name] = {"sd": sd, "min": min(values, default=math.nan), "max": max(values, default=math.nan),
                        "repeats": len(values)}
    return mean, spread


def check_judge_budget(ev: "DictConfig", rag: "DictConfig", rows: Sequence[dict], sides: int) -> None:
    """Before any model answers: refuse when even the retrieved contexts' size allowed by
    ``rag.chunk.tokens`` x ``eval.rag_top_k`` puts the judge tokens over ``eval.judge.max_tokens``.

    An upper estimate, so a run it lets through may still be refused by the exact estimate
    made once the contexts are retrieved (``score_rag_for_sides``).
    """
    if judge_name(ev) != "openai" or not ev.judge.max_tokens or ev.rag_questions <= 0:
        return
    rows = list(rows)[: ev.rag_questions]
    questions = [row["messages"][-2]["content"] for row in rows]
    references = [row["messages"][-1]["content"] for row in rows]
    contexts = [["x" * 4 * rag.chunk.tokens] * ev.rag_top_k for _ in rows]
    _check_budget_estimate(ev, questions, contexts, references, sides * ev.judge.repeats)


def _check_budget_estimate(ev: "DictConfig", questions, contexts, references, passes: int) -> None:
    """Refuse to start when the estimated judge tokens exceed eval.judge.max_tokens."""
    from modelchain.eval.judge_calls import estimate_tokens

    answer_chars = 4 * ev.max_new_tokens
    per_task = [len(q) + sum(map(len, c)) + len(r) + answer_chars
                for q, c, r in zip(questions, contexts, references)] * len(JUDGED) * passes
    estimate = estimate_tokens(per_task)
    if estimate > ev.judge.max_tokens:
        raise ValueError(f"eval.judge.max_tokens: about {estimate} judge tokens needed ({len(per_task)} tasks), "
                         f"over the budget of {ev.judge.max_tokens}; raise it, or lower eval.rag_questions or "
                         f"eval.judge.repeats")

"""The gate report, in Markdown and HTML, from the evaluation results and the decision.

Sections: the verdict; every metric per side with the paired intervals the gate used; the
rules with their reasons; judge failure counts (RAG scoring); the worst examples of the
challenger beside the champion's (or the base model's) answers. `render_evaluation` is
evaluate's own shorter summary (its KFP report and the gate run's eval/report.md).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

from modelchain.eval.gate import GateDecision, GatePolicy, paired_bootstrap
from modelchain.eval.metrics import ANSWER_METRICS

WORST_EXAMPLES = 10


def _tables(decision: GateDecision, results: Mapping, policy: GatePolicy) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for each table of the report."""
    sides = [s for s in ("base", "champion", "challenger") if s in results]
    other = "champion" if "champion" in sides else "base"
    scores = results.get("scores", {})
    metrics = sorted({m for s in sides for m in results[s]})
    header = ["metric", "n", *sides, f"challenger - {other} (mean [CI])"]
    rows = []
    for metric in metrics:
        row = [metric, _n_of(metric, results)] + [_num(results[s].get(metric)) for s in sides]
        if metric in scores.get("challenger", {}) and metric in scores.get(other, {}):
            ci = paired_bootstrap(
                scores["challenger"][metric], scores[other][metric],
                resamples=policy.bootstrap_resamples, confidence=policy.confidence, seed=policy.seed,
            )
            row.append(f"{ci.mean:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]")
        else:
            row.append("")
        rows.append(row)
    tables = [("Metrics", header, rows)]
    tables.append(("Rules", ["rule", "result", "detail"],
                   [[c.rule, "PASS" if c.passed else "FAIL", c.detail] for c in decision.checks]))
    compared = [c for c in decision.checks if c.interval is not None]
    if compared:
        ci = compared[0].interval
        tables.append((
            f"Comparisons and their power ({ci.confidence:.0%} two-sided paired bootstrap intervals; the rule reads "
            f"the lower bound, a one-sided test at {ci.one_sided:.1%}; detectable = smallest true difference found "
            f"with 80% power at this n)",
            ["rule", "observed difference", "interval", "margin", "detectable at n", "examples for the margin"],
            [[c.rule, f"{c.interval.mean:+.3f}", f"[{c.interval.low:+.3f}, {c.interval.high:+.3f}]",
              f"{c.margin:+.3f}" if c.margin is not None else "", f"{_num(c.detectable)} (n={c.interval.n})",
              str(c.examples_needed) if c.examples_needed else "enough"] for c in compared]))

    rag = results.get("rag")
    if rag:
        rag_sides = list(rag["means"])
        rag_metrics = sorted({m for s in rag_sides for m in rag["means"][s]})
        counts, spread, repeats = rag.get("n", {}), rag.get("spread", {}), rag.get("repeats", 1)

        def cell(side: str, metric: str) -> str:
            text = _num(rag["means"][side].get(metric)) + _n(counts.get(side, {}).get(metric))
            sd = spread.get(side, {}).get(metric, {}).get("sd")
            return text + (f" sd {sd:.3f}" if repeats > 1 and sd is not None else "")

        rows = [[m] + [cell(s, m) for s in rag_sides]
                + [str(sum(rag["failures"].get(s, {}).get(m, 0) for s in rag_sides))] for m in rag_metrics]
        kind = ("judged by an LLM" if rag["mode"] == "llm"
                else "offline string-similarity stand-ins, not judged: they never meet a judged metric's floor")
        over = f", {repeats} repeats (mean and sd over them)" if repeats > 1 else ""
        title = (f"RAG scoring ({kind}; {rag.get('questions', rag['samples'])} questions{over}; a mean is over its n, "
                 f"the samples that scored; judge failures are counted, not dropped: {rag['failed_total']} in all)")
        calls = rag.get("calls")
        if calls:
            title += (f"; judge calls {calls['judge_calls']}, from cache {calls['cached_calls']}, tokens "
                      f"{calls['tokens']}" + (f" of {calls['token_budget']}" if calls["token_budget"] else "")
                      + (f", cost {calls['cost']:.4f}" if calls["cost"] else ""))
        if rag.get("partial"):
            title = "PARTIAL: the judge's token budget ran out; " + title
        tables.append((title, ["metric (rag_ + name)", *rag_sides, "judge failures"], rows))

    examples = results.get("examples", [])
    if examples and other in sides:
        def key(e):
            return tuple(e.get(f"challenger_{m}", 0.0) - e.get(f"{other}_{m}", 0.0) for m in ANSWER_METRICS)
        worst = sorted(examples, key=key)[:WORST_EXAMPLES]
        tables.append((f"Worst {len(worst)} examples: challenger beside {other}",
                       ["prompt", "reference", other, "challenger"],
                       [[_cut(e["prompt"]), _cut(e["reference"]), _cut(e.get(other, "")), _cut(e["challenger"])]
                        for e in worst]))
    return tables


def _verdict(decision: GateDecision) -> str:
    return "PASSED: the adapter may be registered" if decision.passed else "REFUSED: nothing is registered"


def _subtitle(results: Mapping) -> str:
    resolution = results.get("champion_resolution")
    if resolution and resolution.get("status") == "resolved":
        champion = f"{resolution['uri']} (version {resolution['version']})" if resolution.get("version") else resolution["uri"]
    elif resolution:
        champion = f"{resolution['status']}: {resolution['reason']}"
    else:
        champion = results.get("champion_uri") or "none (floors and the base comparison decide)"
    return (f"{results.get('n_examples', 0)} examples from the {results.get('split', 'val')} split; "
            f"perplexity on the {results.get('perplexity_split', 'val')} split; champion: {champion}")


def render_markdown(decision: GateDecision, results: Mapping, policy: GatePolicy | None = None) -> str:
    policy = policy or GatePolicy()
    lines = [f"# Gate {_verdict(decision)}", "", _subtitle(results), ""]
    for title, header, rows in _tables(decision, results, policy):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    lines += ["## Reasons", ""] + [f"- {reason}" for reason in decision.reasons]
    return "\n".join(lines) + "\n"


def render_html(decision: GateDecision, results: Mapping, policy: GatePolicy | None = None) -> str:
    policy = policy or GatePolicy()
    colour = "#1a7f37" if decision.passed else "#cf222e"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Gate report</title><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;max-width:30em}"
        "th{background:#f4f4f4}</style></head><body>",
        f"<h1 style='color:{colour}'>Gate {html.escape(_verdict(decision))}</h1>",
        f"<p>{html.escape(_subtitle(results))}</p>",
    ]
    for title, header, rows in _tables(decision, results, policy):
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            style = " style='color:#cf222e'" if "FAIL" in row else ""
            parts.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _n_of(metric: str, results: Mapping) -> str:
    """The n behind a metric's means: per-example scores, the perplexity split, or the examples."""
    per_example = results.get("scores", {}).get("challenger", {}).get(metric)
    if per_example is not None:
        return str(len(per_example))
    if metric == "perplexity" and "perplexity_n_examples" in results:
        return str(results["perplexity_n_examples"])
    return str(results.get("n_examples", ""))


def _n(count) -> str:
    return "" if count is None else f" (n={count})"


def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def _cut(text: str, limit: int = 160) -> str:
    return " ".join(str(text).split())[:limit]


# --------------------------------------------------------------------------- evaluate's own report


def render_evaluation(results: Mapping) -> str:
    """Evaluate's short summary in Markdown (the gate report carries the intervals)."""
    sides = results.get("sides", ["base", "challenger"])
    lines = [
        f"# Evaluation on the {results['split']} split ({results['n_examples']} examples)",
        "",
        "| metric | " + " | ".join(sides) + " |",
        "| --- |" + " ---: |" * len(sides),
    ]
    for metric in results["challenger"]:
        lines.append(f"| {metric} | " + " | ".join(f"{results[s].get(metric, float('nan')):.3f}" for s in sides) + " |")
    wrong = [e for e in results["examples"] if e["challenger_exact_match"] < 1.0][:10]
    if wrong:
        lines += ["", "## Examples the challenger gets wrong (first 10)", "",
                  "| reference | " + " | ".join(sides) + " |", "| --- |" + " --- |" * len(sides)]
        lines += [f"| {_cell(e['reference'])} | " + " | ".join(_cell(e[s]) for s in sides) + " |" for e in wrong]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:120]

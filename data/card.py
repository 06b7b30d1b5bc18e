"""The data card: what data prep read, what each filter removed, and what it wrote.

`data_card.json` holds the numbers (the keys `rows_in`, `rows_quarantined`,
`rows_deduplicated` and `splits.<name>.{count,sha256}` are read by the gate for lineage);
`data_card.md` is the same for people, with the token-length histogram `token_lengths.png`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

HISTOGRAM = "token_lengths.png"


def length_summary(lengths: list[int], max_tokens: int, bins: int = 30) -> dict:
    """Percentiles and histogram counts of a sample of token lengths."""
    if not lengths:
        return {"sample_rows": 0}
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    top = max(ordered[-1], 1)
    width = max(1, -(-top // bins))
    counts = [0] * bins
    for n in ordered:
        counts[min(bins - 1, n // width)] += 1
    return {
        "sample_rows": len(ordered), "min": ordered[0], "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
        "max": ordered[-1], "mean": round(sum(ordered) / len(ordered), 1), "max_tokens": max_tokens,
        "histogram": {"bin_width": width, "counts": counts},
    }


def plot_histogram(lengths: list[int], max_tokens: Optional[int], path: Path) -> bool:
    """Write the histogram PNG (matplotlib, Agg backend); False when there is nothing to plot."""
    if not lengths:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.hist(lengths, bins=40, color="#4878a8")
    if max_tokens:
        ax.axvline(max_tokens, color="#c44e52", linestyle="--", label=f"max_tokens {max_tokens}")
        ax.legend()
    ax.set_xlabel("tokens per row (chat template included)")
    ax.set_ylabel("rows")
    ax.set_title(f"Token lengths ({len(lengths)} sampled rows)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def render_card(card: dict, quarantine: list[dict]) -> str:
    """The card as Markdown."""
    lines = ["# Data card", "", "Sources:", ""]
    lines += [f"- `{uri}`" for uri in card["source_uris"]]
    lines += ["", "| stage | rows in | rows out | removed |", "| --- | ---: | ---: | ---: |"]
    for stage in card["stages"]:
        lines.append(f"| {stage['name']} | {stage['rows_in']} | {stage['rows_out']} | {stage['rows_in'] - stage['rows_out']} |")
    lines += [
        "",
        f"Read {card['rows_in']} rows; quarantined {card['rows_quarantined']}; "
        f"removed {card['rows_deduplicated']} duplicates ({card['dedup']['exact']} exact, "
        f"{card['dedup']['near']} near); kept {card['rows_out']}.",
    ]
    pii = card.get("pii", {})
    if pii.get("enabled"):
        kinds = pii.get("counts", {})
        found = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) or "none"
        lines += ["", f"PII replaced ({pii['rows_with_pii']} rows): {found}."]
    tokens = card.get("tokens", {})
    if tokens.get("enabled"):
        lines += ["", f"Token budget {tokens['max_tokens']} ({tokens['action']}): {tokens['over_budget']} rows over, "
                      f"{tokens['truncated']} truncated, {tokens['dropped']} dropped."]
        lengths = tokens.get("lengths", {})
        if lengths.get("sample_rows"):
            lines += [f"Lengths of {lengths['sample_rows']} sampled rows: p50 {lengths['p50']}, p90 {lengths['p90']}, "
                      f"p99 {lengths['p99']}, max {lengths['max']}."]
        if tokens.get("histogram"):
            lines += ["", f"![token lengths]({tokens['histogram']})"]
    feedback = card.get("feedback")
    if feedback:
        lines += ["", "Production traces: " + ", ".join(f"{k} {v}" for k, v in feedback.items() if k != "uris") + "."]
    lines += ["", "| split | rows | sha256 |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {s['count']} | `{s['sha256'][:16]}` |" for name, s in card["splits"].items()]
    if card.get("stratify_by"):
        lines += ["", f"Splits stratified by `{card['stratify_by']}`."]
    if quarantine:
        lines += ["", f"## Quarantined rows (first {len(quarantine)})", ""]
        for q in quarantine:
            where = f"line {q['line']}" if "line" in q else f"row {q.get('row')}"
            lines.append(f"- `{q['source']}` {where}: {q['reason']}")
    return "\n".join(lines) + "\n"

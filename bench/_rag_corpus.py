"""A generated Markdown corpus with known answers, for the RAG ingestion benchmarks.

Each document describes one made-up service (a unique name, a kind, an owner, settings and
an error code), with front matter, headings and a few filler paragraphs of varying length;
about a third end with the same support footer, as pages of a real docs site do. Each
question asks for a fact of one document, some naming the service, some only describing
it, so recall@5 is neither trivial nor hopeless.
"""

from __future__ import annotations

import random
from pathlib import Path

SYLLABLES = "ka lo mi ren tas vo zel qui bar nor fen dra sil tor mav ek ul pry gan sto".split()
KINDS = ["gateway", "scheduler", "indexer", "cache", "billing service", "search service", "feature store",
         "notification service", "audit log", "model server", "queue", "report builder"]
PURPOSES = ["routes customer traffic between regions", "batches nightly training jobs",
            "builds the product search index", "keeps session data close to the users",
            "turns usage records into invoices", "answers full-text queries from the help centre",
            "serves precomputed features to the ranking models", "sends email and push alerts",
            "records every change to account permissions", "hosts the fraud detection model",
            "buffers events from the mobile apps", "assembles the weekly finance reports"]
TEAMS = ["platform", "payments", "search", "growth", "security", "data", "mobile", "finance", "ml", "support"]
REGIONS = ["eu-west-1", "us-east-1", "ap-southeast-2", "eu-central-1", "us-west-2"]
REMEDIES = ["restart the pods one at a time", "rotate the database credentials", "raise the memory limit",
            "clear the local disk cache", "re-run the last migration", "check the TLS certificate expiry",
            "scale the consumer group up", "re-sync the clock on the node"]
FILLER = ("the service reads its settings at start-up and reports health every ten seconds while "
          "deployments roll out one zone at a time and dashboards show latency error rate and saturation "
          "operators review alerts weekly and the runbook lists the steps for common incidents with links "
          "to the owning team and capacity is planned each quarter from the traffic forecast").split()
FOOTER = ("## Support\n\nQuestions about this page go to the internal help desk. Outages are announced on "
          "the status page, and every service has an on-call rotation listed in the service catalogue.\n")


def _names(rng: random.Random, n: int) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize())
    return sorted(names)


def _filler(rng: random.Random) -> str:
    return " ".join(rng.choices(FILLER, k=rng.randint(25, 70))).capitalize() + "."


def generate_corpus(root: str | Path, n_docs: int = 1000, n_questions: int = 300, seed: int = 0) -> list[dict]:
    """Write ``n_docs`` Markdown files under ``root``; return questions ``{question, source}``."""
    rng = random.Random(seed)
    root = Path(root)
    questions: list[dict] = []
    for i, name in enumerate(_names(rng, n_docs)):
        kind, purpose, team = rng.choice(KINDS), rng.choice(PURPOSES), rng.choice(TEAMS)
        region, remedy = rng.choice(REGIONS), rng.choice(REMEDIES)
        port, timeout, replicas = rng.randint(1024, 65000), rng.choice([5, 10, 15, 30, 45, 60, 90]), rng.randint(2, 12)
        code = f"{name[:3].upper()}-{rng.randint(100, 999)}"
        source = f"{team}/{name.lower()}.md"
        parts = [
            f"---\ntitle: {name} {kind}\nowner: {team}\ntags: [{kind.split()[0]}, {region}]\n---\n",
            f"# {name} {kind}\n\n{name} is the {kind} that {purpose}. It is owned by the {team} team "
            f"and runs in {region}.\n",
            *(f"\n{_filler(rng)}\n" for _ in range(rng.randint(0, 2))),
            f"\n## Configuration\n\n{name} listens on port {port}. Requests to it time out after {timeout} "
            f"seconds, and it runs {replicas} replicas behind the load balancer.\n",
            *(f"\n{_filler(rng)}\n" for _ in range(rng.randint(0, 1))),
            f"\n## Troubleshooting\n\nIf {name} reports error {code}, {remedy}. Escalate to the {team} "
            f"on-call engineer when the error persists for more than fifteen minutes.\n",
        ]
        if rng.random() < 0.33:
            parts.append("\n" + FOOTER)
        path = root / source
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(parts), encoding="utf-8")
        if len(questions) < n_questions and rng.random() < max(0.3, n_questions / n_docs):
            questions.append(rng.choice([
                {"question": f"Which port does {name} listen on?", "source": source},
                {"question": f"What should I do when {name} shows error {code}?", "source": source},
                {"question": f"Which team owns {name}?", "source": source},
                {"question": f"What is the error {code} about and how do I fix it?", "source": source},
                {"question": f"How many replicas does the {kind} {name} run?", "source": source},
                {"question": f"Which {kind} in {region} {purpose.split(' ', 1)[0]} "
                             f"{purpose.split(' ', 1)[1]} for the {team} team?", "source": source},
            ]))
    return questions

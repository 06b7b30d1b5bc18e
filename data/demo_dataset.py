"""The demo dataset: support tickets routed to one of five teams.

Each row is ``{"system": ..., "prompt": ..., "response": ...}``: the prompt holds a short
customer message and asks which team should handle it, the response is exactly one label.
A 135M instruct model answers this poorly out of the box (it explains, or picks a plausible
but wrong team), and a short LoRA fine-tune on the CPU fixes that, so the evaluation gate of
the demo measures a real difference.

The generator is deterministic: the same seed always writes the same bytes.

    python -m modelchain.data.demo_dataset --out support_tickets.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
from pathlib import Path

LABELS = ("billing", "shipping", "technical", "account", "returns")

# Short on purpose: every prompt token costs training time on the CPU.
SYSTEM_PROMPT = "You triage customer support tickets."

QUESTION = "Which team should handle it? Answer with one word: billing, shipping, technical, account or returns."

# Templates per team. "[a|b]" picks one alternative; "{slot}" takes a value from SLOTS.
# Words such as "order", "refund" or "app" occur under several teams on purpose: the team
# follows from what the customer needs, not from a single keyword.
TEMPLATES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for order #{order}. [Please refund one of the payments.|Can you reverse the duplicate charge?]",
        "My card statement shows {amount} from you [but I never placed an order this month|and I don't recognise it].",
        "Why did my subscription renew at {amount} [instead of the price I signed up for|when the plan page says less]?",
        "The invoice for order #{order} [has the wrong company name|is missing our VAT number], can you reissue it?",
        "My payment for the {product} keeps getting declined [even though my card works elsewhere|at the last step of checkout].",
        "I used the promo code {code} at checkout but was [still billed the full price|charged {amount} anyway].",
        "Can you send me a receipt for the {amount} charge on {date}? [I need it for expenses.|My accountant is asking.]",
        "I cancelled my plan on {date} but you [charged me {amount} again|took another monthly payment].",
        "There is a pending [authorization|hold] of {amount} on my card that never went away.",
        "How do I [switch|update] the card that pays for my monthly plan? The old one expired.",
        "I was billed in {currency} instead of my local currency for order #{order}.",
        "[Your|The] annual fee of {amount} was taken before my trial ended on {date}.",
    ],
    "shipping": [
        "My order #{order} was supposed to arrive on {date} and it [still hasn't shown up|is nowhere to be seen].",
        "The tracking number for my {product} hasn't updated in {days} days.",
        "Can I change the delivery address for order #{order}? [It has not shipped yet.|I moved last week.]",
        "The courier says my [package|parcel] was delivered but there is nothing at my door.",
        "Do you deliver to {country}? I'd like to order a {product}.",
        "My parcel with the {product} is stuck in customs in {country}, what should I do?",
        "How long does express delivery take to {city}?",
        "Only one of the two boxes for order #{order} arrived, [where is the other one|when will the rest come]?",
        "The delivery driver left my {product} [with a neighbour I don't know|outside in the rain].",
        "Can you upgrade order #{order} to next-day delivery? I need the {product} by {date}.",
        "[The|My] {product} has been sitting at the local depot for {days} days.",
        "Which carrier are you using for order #{order}? The tracking link [is broken|shows no carrier].",
    ],
    "technical": [
        "The app crashes every time I open the settings page on my {device}.",
        "My {gadget} won't connect to wifi after the latest firmware update.",
        "I get error {errcode} when I try to sync my {gadget}.",
        "The website shows a blank page at checkout in {browser}.",
        "The {gadget} [turns itself off|restarts] after a few minutes of use.",
        "Bluetooth pairing between my {device} and the {gadget} [keeps failing|drops every few seconds].",
        "The mobile app freezes when I [upload photos|open my order history].",
        "Notifications stopped working on my {device} since version {version}.",
        "How do I factory reset the {gadget}? The screen is frozen.",
        "[Searches|Product pages] time out with a 502 error on your site.",
        "The {gadget} shows error {errcode} [on startup|when charging].",
        "Since the update to {version} the app logs me out [every few minutes|whenever I switch screens] on my {device}.",
    ],
    "account": [
        "I can't log in and the password reset email never arrives.",
        "Please change the email address on my account to {email}.",
        "How do I delete my account and all my personal data?",
        "My account was locked after too many login attempts.",
        "I think someone else [signed in to|accessed] my account from {city}.",
        "I want to merge my two accounts; the other one uses {email}.",
        "The two-factor codes are not accepted when I sign in on my {device}.",
        "How can I change the username on my profile?",
        "I never got the verification link to activate my new account [at {email}|].",
        "Please update the phone number on my profile to {phone}.",
        "I [lost access to|no longer use] the email on my account, how can I recover it?",
        "Can I add my partner as a second user on my account?",
    ],
    "returns": [
        "The {product} I received is damaged, I'd like to send it back.",
        "How do I return the {product}? [It doesn't fit.|It is too small.|I changed my mind.]",
        "I want to exchange the {product} for a [different size|different colour].",
        "Can I get a return label for order #{order}? The {product} is the wrong colour.",
        "Is it too late to return a {product} I bought on {date}?",
        "I sent back the {product} {days} days ago, has the return [been received|arrived yet]?",
        "You sent me [the wrong item|a different model] instead of the {product}, how do I send it back?",
        "Where can I drop off a return for order #{order}?",
        "My return of the {product} was rejected, [why|can someone explain]?",
        "The {product} from order #{order} arrived [broken|cracked]; I'd like a replacement.",
        "Do I have to pay for the return shipping on the {product}?",
        "I [ordered the {product} twice by mistake|received the {product} twice] and want to return one.",
    ],
}

SLOTS: dict[str, list[str]] = {
    "product": [
        "pair of wireless headphones", "coffee grinder", "pair of running shoes", "laptop stand", "yoga mat",
        "desk lamp", "phone case", "backpack", "blender", "winter jacket", "office chair",
        "water bottle", "pair of rain boots", "cast iron pan", "kids' bike", "duvet cover",
    ],
    "gadget": [
        "smart thermostat", "doorbell camera", "fitness tracker", "smart speaker",
        "robot vacuum", "e-reader", "smart plug", "baby monitor",
    ],
    "device": ["iPhone", "Android phone", "iPad", "Pixel", "Samsung tablet", "Windows laptop", "MacBook"],
    "browser": ["Chrome", "Firefox", "Safari", "Edge"],
    "errcode": ["E102", "E-431", "0x80070005", "ERR_SYNC_7", "code 12", "E9"],
    "version": ["4.2", "5.0.1", "3.9", "6.1", "2.7.4"],
    "country": ["Canada", "Norway", "Brazil", "Japan", "Ireland", "Mexico", "Poland", "Australia"],
    "city": ["Lisbon", "Toronto", "Leeds", "Osaka", "Denver", "Lyon", "Cork", "Austin"],
    "currency": ["US dollars", "euros", "pounds"],
    "code": ["SPRING20", "WELCOME10", "FREESHIP", "VIP15", "SAVE5"],
}

OPENERS = ["", "", "", "Hi,\n", "Hello,\n", "Hi team,\n", "Good morning. ", "Hey there. ", "Urgent: ", "Quick question. "]
CLOSERS = ["", "", "", " Thanks.", " Thank you!", " Please help.", " Thanks in advance.", "\nRegards, {name}", "\n{name}"]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kofi", "Lena", "Mina", "Noah"]
MONTHS = ["March", "April", "May", "June", "July", "August", "September", "October"]

_ALTERNATIVE = re.compile(r"\[([^\[\]]*)\]")
_SLOT = re.compile(r"\{(\w+)\}")


def _slot_value(slot: str, rng: random.Random) -> str:
    if slot in SLOTS:
        return rng.choice(SLOTS[slot])
    if slot == "order":
        return str(rng.randint(10000, 99999))
    if slot == "amount":
        return f"${rng.randint(5, 250)}.{rng.choice(['00', '99', '49', '50'])}"
    if slot == "date":
        return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"
    if slot == "days":
        return str(rng.randint(3, 14))
    if slot == "email":
        return f"{rng.choice(NAMES).lower()}{rng.randint(1, 99)}@example.com"
    if slot == "phone":
        return f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    if slot == "name":
        return rng.choice(NAMES)
    raise KeyError(f"unknown slot {slot!r}")


def _fill(template: str, rng: random.Random) -> str:
    text = _ALTERNATIVE.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    text = _SLOT.sub(lambda m: _slot_value(m.group(1), rng), text)
    return " ".join(text.split()).replace(" ,", ",").replace(" ?", "?").replace(" .", ".")


def make_ticket(label: str, rng: random.Random) -> str:
    """One customer message for ``label``, with a random opener and sign-off."""
    body = _fill(rng.choice(TEMPLATES[label]), rng)
    closer = _SLOT.sub(lambda m: _slot_value(m.group(1), rng), rng.choice(CLOSERS))
    return (rng.choice(OPENERS) + body + closer).strip()


def make_prompt(ticket: str) -> str:
    return f"Ticket: {ticket}\n\n{QUESTION}"


def generate_rows(n: int = 400, seed: int = 0) -> list[dict]:
    """``n`` distinct rows, balanced over the labels, in a seeded random order."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[str] = set()
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        for _ in range(1000):
            ticket = make_ticket(label, rng)
            if ticket not in seen:
                break
        else:
            raise RuntimeError(f"cannot make {n} distinct tickets from the templates")
        seen.add(ticket)
        rows.append({"system": SYSTEM_PROMPT, "prompt": make_prompt(ticket), "response": label})
    rng.shuffle(rows)
    return rows


def write_dataset(out: str | os.PathLike, n: int = 400, seed: int = 0) -> Path:
    """Write the rows as JSONL, atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in generate_rows(n, seed))
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelchain.data.demo_dataset",
        description="Write the support-ticket routing demo dataset (JSONL).",
    )
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_dataset(args.out, args.rows, args.seed)
    print(f"wrote {args.rows} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""PII and secret scrubbing: each match is replaced by a placeholder and counted by kind.

Kinds: email, phone, card (13-19 digits passing the Luhn check), ip (v4 and v6), and secrets:
aws_access_key, aws_secret_key, bearer_token, api_key (sk-..., AIza...), github_token,
slack_token, jwt, private_key, and generic `password=...`/`api_key: ...` assignments.
Secrets go first, so a key made of digits is not reported as a phone number.

Every pattern has a cheap guard (a substring that must be present), because most rows hold
no PII at all and running a dozen regexes over every row would dominate data prep time.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Callable, Iterable, Optional

KINDS = ("private_key", "aws_access_key", "aws_secret_key", "bearer_token", "api_key", "github_token",
         "slack_token", "jwt", "secret", "email", "card", "phone", "ip")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _card(match: re.Match) -> Optional[str]:
    digits = _digits(match.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else None


def _phone(match: re.Match) -> Optional[str]:
    # Long digit runs without separators are ids or amounts far more often than phone numbers.
    text = match.group(0)
    digits = _digits(text)
    if not 9 <= len(digits) <= 15:
        return None
    if not (text.startswith(("+", "(")) or re.search(r"\d[\s.\-)]\d", text)):
        return None
    return "[PHONE]"


def _ipv6(match: re.Match) -> Optional[str]:
    try:
        ipaddress.IPv6Address(match.group(0))
    except ValueError:
        return None
    return "[IP]"


def _keep_name(placeholder: str) -> Callable[[re.Match], str]:
    """For `name = value` patterns: keep the name, replace only the value."""
    return lambda m: m.group(1) + placeholder


# Text rules: (kind, guard: substrings of which one must occur, pattern, replacement). Guards
# are matched as written, since the patterns are case-sensitive, except for the kinds in
# _CASELESS, whose patterns are not and whose guards are matched in the lower-cased text.
_TEXT_RULES: list[tuple[str, tuple[str, ...], re.Pattern, object]] = [
    ("private_key", ("-----BEGIN",),
     re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S), "[PRIVATE_KEY]"),
    ("aws_access_key", ("AKIA", "ASIA"), re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "[AWS_ACCESS_KEY]"),
    ("aws_secret_key", ("secret",),
     re.compile(r"(?i)(aws_?secret_?(?:access_?)?key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),
     _keep_name("[AWS_SECRET_KEY]")),
    ("bearer_token", ("bearer",), re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{8,}=*"), _keep_name("[TOKEN]")),
    ("api_key", ("sk-", "AIza"),
     re.compile(r"\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{16,}|\bAIza[0-9A-Za-z_\-]{35}"), "[API_KEY]"),
    ("github_token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
     re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}"), "[GITHUB_TOKEN]"),
    ("slack_token", ("xox",), re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), "[SLACK_TOKEN]"),
    ("jwt", ("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"), "[JWT]"),
    ("secret", ("password", "passwd", "pwd", "secret", "token", "api_key", "api-key", "apikey", "access_key"),
     re.compile(r"(?i)(\b(?:api[_\-]?key|access[_\-]?key|secret(?:[_\-]?key)?|token|password|passwd|pwd)"
                r"[\"']?\s*[:=]\s*[\"']?)(?![\[<])[^\s\"',;]{8,}"), _keep_name("[SECRET]")),
    ("email", ("@",),
     re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"), "[EMAIL]"),
    ("ip", (":",),
     re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,7}:?(?::?[0-9A-Fa-f]{1,4}){1,7}(?![\w:])"), _ipv6),
]
# Number rules run only inside runs of digits and separators (found by one scan), so text
# without such runs costs one search, not three.
_NUMBER_RUN = re.compile(r"[+(]?\d[\d \t.\-()/]{5,}\d")
_NUMBER_RULES: list[tuple[str, re.Pattern, object]] = [
    ("card", re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])"), _card),
    ("ip", re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])"),
     "[IP]"),
    ("phone", re.compile(r"(?<![\d+])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{1,4}\)[\s.\-]?)?\d{2,4}(?:[\s.\-]?\d{2,4}){1,4}(?!\d)"),
     _phone),
]
_DIGITS = "0123456789"
_CASELESS = {"aws_secret_key", "bearer_token", "secret"}
# Characters a rule's matches cannot do without (one of them), found with memchr: checked
# before its guard words, which cost a scan of the text each. "password" in prose is not a
# secret; "password: ..." or "password=..." may be. Most prose has none of "-_:=@J".
_NEEDS = {"private_key": "-", "aws_access_key": "A", "aws_secret_key": ":=", "api_key": "-A",
          "github_token": "_", "slack_token": "-", "jwt": "J", "secret": ":="}


class Scrubber:
    """Replaces PII in text and counts each kind it found."""

    def __init__(self, kinds: Iterable[str] = ()):
        wanted = set(kinds) or set(KINDS)
        unknown = wanted - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; choose from {list(KINDS)}")
        self.text_rules = [rule for rule in _TEXT_RULES if rule[0] in wanted]
        self._gated = [(rule, tuple(_NEEDS.get(rule[0], "")), rule[0] in _CASELESS) for rule in self.text_rules]
        self.number_rules = [rule for rule in _NUMBER_RULES if rule[0] in wanted]
        self.counts: Counter = Counter()
        self.last_found = 0

    def scrub(self, text: str) -> tuple[str, int]:
        """The text with PII replaced, and how many replacements were made."""
        return self.scrub_many([text])[0][0], self.last_found

    def rules_for(self, text: str) -> tuple[list, bool]:
        """The text rules whose guards occur in `text`, and whether number rules may apply."""
        lower = None
        rules = []
        for rule, needs, caseless in self._gated:
            if needs:
                for ch in needs:
                    if ch in text:
                        break
                else:
                    continue
            if caseless and lower is None:
                lower = text.lower()
            where = lower if caseless else text
            for guard in rule[1]:
                if guard in where:
                    if rule[0] == "ip" and text.count(":") < 2:
                        break
                    rules.append(rule)
                    break
        numbers = False
        if self.number_rules:
            for digit in _DIGITS:
                if digit in text:
                    numbers = True
                    break
        return rules, numbers

    def scrub_many(self, texts: list[str]) -> tuple[list[str], int]:
        """Scrub the texts of one row together: the guards are checked once on all of them."""
        rules, numbers = self.rules_for("\n".join(texts)) if len(texts) > 1 else self.rules_for(texts[0])
        if not rules and not numbers:  # most rows
            self.last_found = 0
            return texts, 0
        found = 0
        out = []
        for text in texts:
            for kind, _, pattern, replacement in rules:
                text, hits = _sub(pattern, replacement, text)
                if hits:
                    self.counts[kind] += hits
                    found += hits
            if numbers:
                text, hits = self._numbers(text)
                found += hits
            out.append(text)
        self.last_found = found
        return out, found

    def _numbers(self, text: str) -> tuple[str, int]:
        pieces, last, found = [], 0, 0
        for run in _NUMBER_RUN.finditer(text):
            start = run.start()
            if start and text[start - 1].isalnum():  # part of a word or id, like A12-345-678
                continue
            span = run.group(0)
            for kind, pattern, replacement in self.number_rules:
                span, hits = _sub(pattern, replacement, span)
                if hits:
                    self.counts[kind] += hits
                    found += hits
            if span != run.group(0):
                pieces += [text[last:start], span]
                last = run.end()
        if not pieces:
            return text, 0
        pieces.append(text[last:])
        return "".join(pieces), found


def _sub(pattern: re.Pattern, replacement, text: str) -> tuple[str, int]:
    """pattern.sub where a callable replacement may decline a match by returning None."""
    if not callable(replacement):
        return pattern.subn(replacement, text)
    hits = 0

    def replace(match: re.Match) -> str:
        nonlocal hits
        new = replacement(match)
        if new is None:
            return match.group(0)
        hits += 1
        return new

    return pattern.sub(replace, text), hits

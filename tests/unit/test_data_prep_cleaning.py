"""Cleaning: normalisation, PII scrubbing, exact and MinHash near-duplicate detection."""

import random

import numpy as np
import pytest
from datasketch import MinHash

from modelchain.data.cleaning import (ExactDuplicates, KeyIndex, MinHasher, NearDuplicates,
                                                      batch_shingles, normalize, row_shingles)
from modelchain.data.pii import Scrubber, luhn_ok


def test_normalize():
    assert normalize("  Cafe\u0301 \u200bok\r\nnext\x07\x00 ") == "Café ok\nnext"
    assert normalize("\uff21", "NFKC") == "A" and normalize("\uff21") == "\uff21"
    assert normalize("plain ascii") == "plain ascii"


@pytest.mark.parametrize(
    "text,kind,expected",
    [
        ("mail jane.doe+x@mail.example.co.uk now", "email", "mail [EMAIL] now"),
        ("call +1 (555) 123-4567 today", "phone", "call [PHONE] today"),
        ("call 020 7946 0958", "phone", "call [PHONE]"),
        ("card 4111-1111-1111-1111.", "card", "card [CARD]."),
        ("card 5500 0000 0000 0004 ok", "card", "card [CARD] ok"),
        ("host 192.168.10.254 up", "ip", "host [IP] up"),
        ("v6 2001:db8::8a2e:370:7334 up", "ip", "v6 [IP] up"),
        ("id AKIAIOSFODNN7EXAMPLE", "aws_access_key", "id [AWS_ACCESS_KEY]"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_key",
         "aws_secret_access_key = [AWS_SECRET_KEY]"),
        ("Authorization: Bearer eyJhbGciOi.abc-def_123", "bearer_token", "Authorization: Bearer [TOKEN]"),
        ("key sk-proj-Abcdefghijklmnop12345678", "api_key", "key [API_KEY]"),
        ("token ghp_" + "a" * 36, "github_token", "token [GITHUB_TOKEN]"),
        ("slack xoxb-1234567890-abcdef", "slack_token", "slack [SLACK_TOKEN]"),
        ("password: hunter2hunter2", "secret", "password: [SECRET]"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- done", "private_key",
         "[PRIVATE_KEY] done"),
    ],
)
def test_pii_kinds(text, kind, expected):
    scrubber = Scrubber()
    out, found = scrubber.scrub(text)
    assert out == expected and found == 1
    assert dict(scrubber.counts) == {kind: 1}


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "order #12345 cost $45.99 on 2024-05-29 at 10:30",
        "version 1.2.3 and ratio 3.14",
        "a long id 1234567890123 without separators",
        "the password policy changed",  # a word, not a secret
        "Note: see the key points",
    ],
)
def test_pii_leaves_ordinary_text_alone(text):
    assert Scrubber().scrub(text) == (text, 0)


def _mixed_sample(n=600, seed=3):
    """Rows like the benchmark's (plain prose, some PII) plus Unicode, control characters and
    near-misses of every guard: the inputs the fast paths must not treat differently."""
    from modelchain.bench.data_prep_throughput import WORDS, _pii

    rng = random.Random(seed)
    extras = ["", " Caf\u00e9 \u200bzero-width", " \uff21 full width", " line\r\nbreak\x07bell",
              " password policy", " Note: a colon", " a:b:c not an ip", " ask-me", " 42 apples",
              " x@y", " bearer of news", " BeArEr\tabcdefgh12345", " AKIA tooshort", " Auth: eyJ only",
              " 2001:db8::1", " sk-short", " -----begin nothing",
              " ghp_tooshort", " api_key = abcdefgh12345678", " eyJhbGciOi.eyJzdWIiOi.abcdefghijk",
              # one true match of every text kind, so a guard that wrongly skips its rule shows
              " AKIAIOSFODNN7EXAMPLE", " aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
              " Authorization: Bearer abcdef0123456789", " AIzaSyA1234567890abcdefghijklmnopqrstuv",
              " ghp_" + "a" * 36, " xoxb-1234567890-abcdefghij", " eyJhbGciOiJI.eyJzdWIiOiIx.SflKxwRJSMeKKF2Q",
              " -----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
              " fe80::1ff:fe23:4567:890a"]
    texts = []
    for _ in range(n):
        text = " ".join(rng.choices(WORDS, k=rng.randint(5, 60))).capitalize() + "."
        if rng.random() < 0.3:
            text += _pii(rng)
        if rng.random() < 0.5:
            text += rng.choice(extras)
        texts.append(text)
    return texts


def test_pii_guards_skip_only_rules_that_cannot_match():
    """The guards (substrings and characters each rule needs) change nothing: scrubbing with
    every rule applied to every text gives the same texts and counts."""
    from modelchain.data.pii import _sub

    texts = _mixed_sample()
    guarded, reference = Scrubber(), Scrubber()
    for i in range(0, len(texts), 2):
        row = texts[i:i + 2]
        out, found = guarded.scrub_many(row)
        expected, total = [], 0
        for text in row:
            for kind, _, pattern, replacement in reference.text_rules:
                text, hits = _sub(pattern, replacement, text)
                reference.counts[kind] += hits
                total += hits
            text, hits = reference._numbers(text)
            expected.append(text)
            total += hits
        assert (out, found) == (expected, total), row
    assert guarded.counts == reference.counts and sum(guarded.counts.values()) > 50


def test_normalize_fast_paths_equal_the_full_normalisation():
    import re
    import unicodedata

    from modelchain.data.cleaning import _INVISIBLE

    for text in _mixed_sample():
        for form in ("NFC", "NFKC"):
            full = unicodedata.normalize(form, text).translate(_INVISIBLE).replace("\r\n", "\n").replace("\r", "\n")
            full = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", full).strip()
            assert normalize(text, form) == full


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713") and not luhn_ok("4111111111111112")


def test_pii_kinds_can_be_chosen():
    scrubber = Scrubber(["email"])
    assert scrubber.scrub("a@b.io +1 555 123 4567") == ("[EMAIL] +1 555 123 4567", 1)
    with pytest.raises(ValueError, match="unknown PII kinds"):
        Scrubber(["ssn"])


def test_shingles_match_the_plain_reference():
    rng = random.Random(0)
    words = "alpha Beta gamma délta ε zeta".split()
    texts = [" ".join(rng.choices(words, k=rng.choice([0, 1, 2, 3, 9, 40]))) + rng.choice(["", "\n", " \t"])
             for _ in range(60)]
    hashes, rows = batch_shingles(texts, 3)
    for i, text in enumerate(texts):
        assert hashes[rows == i].tolist() == row_shingles(text, 3)


def test_signatures_equal_datasketch_minhash():
    texts = ["the quick brown fox jumps over the lazy dog", "x", "", "same words here and there " * 30]
    signatures = MinHasher(num_perm=64, seed=1, shingle_words=3).signatures(texts)
    for text, signature in zip(texts, signatures):
        reference = MinHash(num_perm=64, seed=1, scheme="affine32", hashfunc=int)
        reference.update_batch(row_shingles(text, 3))
        assert (reference.hashvalues == signature).all()


def test_key_index_levels():
    index = KeyIndex()
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, 5000, dtype=np.uint64)
    for start in range(0, 5000, 300):
        index.add(keys[start:start + 300], np.arange(start, min(start + 300, 5000), dtype=np.uint32))
    assert len(index.levels) < 10 and index.size == 5000
    assert (index.lookup(keys) == np.arange(5000)).all()
    assert (index.lookup(np.array([1, 2, 3], dtype=np.uint64)) == -1).all()


def test_exact_duplicates_within_and_across_batches():
    exact = ExactDuplicates()
    assert exact.check_and_add(np.array([1, 2, 1, 3], dtype=np.uint64)).tolist() == [False, False, True, False]
    assert exact.check_and_add(np.array([3, 4, 4], dtype=np.uint64)).tolist() == [True, False, True]


def test_near_duplicates_are_found_and_distinct_rows_kept(tmp_path):
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(2000)]
    base = [" ".join(rng.choices(vocab, k=120)) for _ in range(400)]
    edited = []
    for text in base[:100]:
        words = text.split()
        words[rng.randrange(len(words))] = "changed"
        edited.append(" ".join(words))
    near = NearDuplicates(threshold=0.85, num_perm=128, spool_dir=tmp_path)
    try:
        assert not near.check_and_add(base[:250]).any()
        flags = near.check_and_add(base[250:] + edited + [edited[0]])
        assert not flags[:150].any()  # different texts
        assert flags[150:250].mean() > 0.9  # one word changed in 120: Jaccard about 0.95
        assert flags[250]  # a near duplicate of a row in the same batch... and of an earlier one
    finally:
        near.close()
    assert not list(tmp_path.iterdir())  # the signature spool is removed


def test_near_duplicates_within_one_batch(tmp_path):
    text = " ".join(f"word{i}" for i in range(100))
    near = NearDuplicates(threshold=0.8, spool_dir=tmp_path)
    flags = near.check_and_add([text, text.replace("word50", "other"), "something else entirely here ok"])
    near.close()
    assert flags.tolist() == [False, True, False]

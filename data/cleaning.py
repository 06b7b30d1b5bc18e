"""Cleaning: Unicode normalisation, and exact and near-duplicate detection in bounded memory.

Exact duplicates are found by a 64-bit content hash; near duplicates by MinHash signatures
(datasketch's affine32 scheme, computed a batch at a time with numpy) and LSH banding with
datasketch's band/row parameters for the threshold. A band match is only a candidate: it is
confirmed by the signatures' estimated Jaccard similarity before a row is dropped.

Memory stays bounded on large inputs: the dedup state is sorted numpy arrays of keys (12
bytes a key with its value: one key a row for exact dedup, one a row and band for LSH) and a
16 MB bit filter for each, and the kept rows' signatures go to a spool file, read back only
for candidates. datasketch's own MinHashLSH keeps a Python
set per bucket, several hundred bytes per row and band: fine for thousands of rows, not for
the millions of a 2 GB file.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Optional

import numpy as np

# Zero-width and bidi-control characters that change nothing visible but defeat dedup.
_INVISIBLE = dict.fromkeys([0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x00AD, 0x202A, 0x202B, 0x202C, 0x202D,
                            0x202E, 0x2066, 0x2067, 0x2068, 0x2069])
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


_PRINTABLE_ASCII = bytes(range(32, 127)) + b"\t\n"


def normalize(text: str, form: str = "NFC") -> str:
    """Unicode-normalised text without control or invisible characters, CRLF as LF, stripped."""
    ascii_only = text.isascii()
    if not ascii_only:
        text = unicodedata.normalize(form, text).translate(_INVISIBLE)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Fast paths: most texts have no control characters at all. For ASCII, deleting the
    # allowed bytes leaves the control characters (a byte loop, several times quicker than
    # str.isprintable, which also says no to every newline).
    if (text.encode("ascii").translate(None, _PRINTABLE_ASCII) if ascii_only else not text.isprintable()):
        text = _CONTROL.sub("", text)
    return text.strip()


# --------------------------------------------------------------------------- compact key index
class KeyIndex:
    """uint64 keys -> uint32 values in sorted numpy levels (a small log-structured merge).

    Each batch of keys becomes a level; levels are merged when a newer one grows to half the
    size of the one before it, so there are O(log n) levels and lookups are a few
    searchsorted calls per batch.

    Most keys looked up are new (a row is rarely a duplicate), so a bit per slot of the
    keys' top `filter_bits` bits (16 MB at 27) says which keys may be present: only those
    are searched for, which on millions of keys saves most of the binary searches' cache
    misses. Keys must be hash values (uniform in their top bits).
    """

    def __init__(self, filter_bits: int = 27) -> None:
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []
        self.size = 0
        self._filter = np.zeros(1 << (filter_bits - 3), dtype=np.uint8)
        self._shift = np.uint64(64 - filter_bits)

    def _filter_slots(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slot = keys >> self._shift
        return slot >> np.uint64(3), np.left_shift(1, (slot & np.uint64(7)).astype(np.uint8), dtype=np.uint8)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The value stored under each key, or -1."""
        out = np.full(keys.shape, -1, dtype=np.int64)
        byte, bit = self._filter_slots(keys)
        maybe = np.flatnonzero(self._filter[byte] & bit)
        if not len(maybe) or not self.levels:
            return out
        # Looked up in sorted order: each binary search then starts where the last one ended,
        # about three times quicker than random order on a level of millions of keys.
        order = maybe[np.argsort(keys[maybe])]
        wanted = keys[order]
        found = np.full(wanted.shape, -1, dtype=np.int64)
        for level_keys, level_values in self.levels:
            idx = np.searchsorted(level_keys, wanted)
            idx[idx == len(level_keys)] = 0
            hit = (level_keys[idx] == wanted) & (found < 0)
            found[hit] = level_values[idx[hit]]
        out[order] = found
        return out

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if not len(keys):
            return
        byte, bit = self._filter_slots(keys)
        np.bitwise_or.at(self._filter, byte, bit)
        order = np.argsort(keys, kind="stable")
        self.levels.append((keys[order], values[order].astype(np.uint32)))
        self.size += len(keys)
        while len(self.levels) > 1 and len(self.levels[-1][0]) * 2 >= len(self.levels[-2][0]):
            (k2, v2), (k1, v1) = self.levels.pop(), self.levels.pop()
            self.levels.append(_merge(k1, v1, k2, v2))

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.levels)


def _merge(k1: np.ndarray, v1: np.ndarray, k2: np.ndarray, v2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted levels (k2 after k1 among equal keys) without sorting again: the peak
    is the merged arrays plus one index per element of the smaller level."""
    at = np.searchsorted(k1, k2, side="right") + np.arange(len(k2))
    keys = np.empty(len(k1) + len(k2), dtype=k1.dtype)
    values = np.empty(len(keys), dtype=v1.dtype)
    older = np.ones(len(keys), dtype=bool)
    older[at] = False
    keys[older], values[older] = k1, v1
    keys[at], values[at] = k2, v2
    return keys, values


def first_in_batch(keys: np.ndarray) -> np.ndarray:
    """True where a key occurs for the first time in `keys`."""
    _, first = np.unique(keys, return_index=True)
    mask = np.zeros(len(keys), dtype=bool)
    mask[first] = True
    return mask


class ExactDuplicates:
    """Drops rows whose 64-bit content hash was seen before."""

    def __init__(self) -> None:
        self.index = KeyIndex()

    def check_and_add(self, keys: np.ndarray) -> np.ndarray:
        """True for rows that are duplicates (of an earlier batch or an earlier row here)."""
        dup = (self.index.lookup(keys) >= 0) | ~first_in_batch(keys)
        self.index.add(keys[~dup], np.zeros(int((~dup).sum()), dtype=np.uint32))
        return dup


# --------------------------------------------------------------------------- MinHash
_U32 = np.uint32
_FMIX32 = (_U32(16), _U32(0x85EBCA6B), _U32(13), _U32(0xC2B2AE35), _U32(16))
_CHUNK_SHINGLES = 4096
_SHINGLE_MULT = (_U32(0x9E3779B1), _U32(0x85EBCA77), _U32(0xC2B2AE3D), _U32(0x27D4EB2F), _U32(0x165667B1))


def fmix32(hv: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch applies it before its permutations."""
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


_P = np.uint32(0x01000193)  # the 32-bit FNV prime: odd, so invertible modulo 2**32
_P_INV = np.uint32(pow(int(_P), -1, 2**32))


_POWERS: dict[int, np.ndarray] = {}


def _powers(base: np.uint32, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) modulo 2**32, cached and grown as batches need more."""
    cached = _POWERS.get(int(base))
    if cached is None or len(cached) < n:
        size = max(n, 2 * len(cached) if cached is not None else 1 << 22)
        out = np.full(size, base, dtype=_U32)
        out[0] = 1
        cached = _POWERS[int(base)] = np.cumprod(out, dtype=_U32)  # wraps modulo 2**32, as intended
    return cached[:n]


def batch_shingles(texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every row's k-word shingles (lower-cased, split on whitespace).

    Returns (hashes, row_of_each_hash); a row with fewer than k words gets one shingle of
    all its words, an empty row one shingle of nothing. Word hashes are polynomial hashes
    modulo 2**32 computed for the whole batch at once from prefix sums (a word's hash is the
    difference of two prefix sums, shifted back by the inverse power of the prime), which is
    what makes this fast.
    """
    encoded = [t.lower().encode("utf-8", "surrogatepass") for t in texts]
    n_rows, n_bytes = len(texts), sum(map(len, encoded)) + len(texts) - 1
    if n_bytes <= 0:
        return np.zeros(n_rows, dtype=_U32), np.arange(n_rows)
    data = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    # Vector compares, not a table lookup: ASCII whitespace is 9..13 (wrapping below 9) or 32.
    word = np.zeros(n_bytes + 2, dtype=np.int8)  # 1 inside a word, with a 0 either side
    np.logical_not((data - np.uint8(9) <= 4) | (data == 32), out=word[1:-1].view(bool))
    boundaries = np.flatnonzero(np.diff(word))  # a word's start, then its end, alternately
    starts, ends = boundaries[0::2], boundaries[1::2]
    with np.errstate(over="ignore"):
        prefix = np.empty(n_bytes + 1, dtype=_U32)
        prefix[0] = 0
        np.cumsum(np.multiply(data, _powers(_P, n_bytes), dtype=_U32), dtype=_U32, out=prefix[1:])
        words = fmix32((prefix[ends] - prefix[starts]) * _powers(_P_INV, n_bytes + 1)[starts])
    row_starts = np.zeros(n_rows, dtype=np.int64)
    np.cumsum([len(e) + 1 for e in encoded[:-1]], out=row_starts[1:])
    # each row's first word, then every word's row: cheaper than looking up each word's row
    first_word = np.searchsorted(starts, row_starts)
    counts = np.diff(first_word, append=len(starts))
    word_row = np.repeat(np.arange(n_rows), counts)
    n = len(words) - k + 1
    if n > 0:
        with np.errstate(over="ignore"):
            sh = np.zeros(n, dtype=_U32)
            for j in range(k):
                sh = sh + words[j:j + n] * _SHINGLE_MULT[j]
        sh_row = word_row[:n]
        valid = word_row[k - 1:] == sh_row
        hashes, rows = [sh[valid]], [sh_row[valid]]
    else:
        hashes, rows = [], []
    short = np.flatnonzero(counts < k)  # rows too short for one full shingle
    if len(short):
        extra = []
        for r in short.tolist():
            h = _U32(0)
            with np.errstate(over="ignore"):
                for j, w in enumerate(words[first_word[r]:first_word[r] + counts[r]]):
                    h = _U32(h + w * _SHINGLE_MULT[j])
            extra.append(h)
        hashes.append(np.array(extra, dtype=_U32))
        rows.append(short)
    hashes, rows = np.concatenate(hashes), np.concatenate(rows)
    order = np.argsort(rows, kind="stable")
    return hashes[order], rows[order]


def row_shingles(text: str, k: int) -> list[int]:
    """batch_shingles for one row, written plainly: the reference the fast path is tested against."""
    words = []
    for word in text.lower().encode("utf-8", "surrogatepass").split():
        h = 0
        for i, byte in enumerate(word):
            h = (h + byte * pow(int(_P), i, 2**32)) % 2**32
        words.append(int(fmix32(np.array([h], dtype=_U32))[0]))
    mults = [int(m) for m in _SHINGLE_MULT]
    if len(words) < k:
        return [sum(w * mults[j] for j, w in enumerate(words)) % 2**32]
    return [sum(words[i + j] * mults[j] for j in range(k)) % 2**32 for i in range(len(words) - k + 1)]


def datasketch_permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a, b), made once and handed to workers,
    which then need neither datasketch nor the scipy it imports."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(_U32), b.astype(_U32)


class MinHasher:
    """MinHash signatures equal to datasketch's MinHash(num_perm, seed, scheme="affine32")
    fed with our shingle hashes, computed for a whole batch of rows at once."""

    def __init__(self, num_perm: int = 64, seed: int = 1, shingle_words: int = 3, permutations=None):
        if not 1 <= shingle_words <= len(_SHINGLE_MULT):
            raise ValueError(f"shingle_words must be 1..{len(_SHINGLE_MULT)}")
        self.num_perm, self.seed, self.k = num_perm, seed, shingle_words
        a, b = permutations if permutations is not None else datasketch_permutations(num_perm, seed)
        self.a, self.b = np.asarray(a, dtype=_U32), np.asarray(b, dtype=_U32)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 signatures."""
        out = np.empty((len(texts), self.num_perm), dtype=_U32)
        if not texts:
            return out
        hashes, rows = batch_shingles(texts, self.k)
        hv = fmix32(hashes)
        row_first = np.searchsorted(rows, np.arange(len(texts)))
        # A few thousand shingles at a time, so the (shingles x permutations) matrix stays in cache.
        start = 0
        while start < len(texts):
            end = int(np.searchsorted(row_first, row_first[start] + _CHUNK_SHINGLES, side="left"))
            end = max(end, start + 1)
            lo = row_first[start]
            hi = row_first[end] if end < len(texts) else len(hv)
            with np.errstate(over="ignore"):  # permutations x shingles: reduceat runs along rows of memory
                phv = np.multiply(self.a[:, None], hv[None, lo:hi])
                phv += self.b[:, None]
            out[start:end] = np.minimum.reduceat(phv, row_first[start:end] - lo, axis=1).T
            start = end
        return out


class NearDuplicates:
    """Drops rows whose MinHash signature is close to an earlier kept row's."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 64, shingle_words: int = 3, seed: int = 1,
                 spool_dir: Optional[str | os.PathLike] = None):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.hasher = MinHasher(num_perm, seed, shingle_words)
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)  # for its optimal (bands, rows)
        self.bands, self.rows = lsh.b, lsh.r
        self.index = KeyIndex()
        self.count = 0
        spool = tempfile.NamedTemporaryFile(prefix="minhash-", suffix=".bin", dir=spool_dir, delete=False)
        self._path = Path(spool.name)
        self._spool = spool
        self._sig_bytes = num_perm * 4
        mult = np.random.RandomState(seed).randint(1, 2**62, size=self.rows, dtype=np.int64).astype(np.uint64) | 1
        self._band_mult = mult

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(n, bands) uint64 keys; the band number is mixed in, so one index serves all bands."""
        n = len(sigs)
        keys = np.empty((n, self.bands), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for band in range(self.bands):
                part = sigs[:, band * self.rows:(band + 1) * self.rows].astype(np.uint64)
                h = (part * self._band_mult[None, :]).sum(axis=1, dtype=np.uint64)
                h ^= np.uint64(band + 1) * np.uint64(0x9E3779B97F4A7C15)
                h ^= h >> np.uint64(31)
                keys[:, band] = h * np.uint64(0xBF58476D1CE4E5B9)
        return keys

    def _similar(self, sig: np.ndarray, other: np.ndarray) -> bool:
        return float(np.mean(sig == other)) >= self.threshold

    def _stored(self, row_id: int) -> np.ndarray:
        self._spool.flush()
        data = os.pread(self._spool.fileno(), self._sig_bytes, row_id * self._sig_bytes)
        return np.frombuffer(data, dtype=_U32)

    def check_and_add(self, texts: list[str]) -> np.ndarray:
        """True for rows that are near duplicates of an earlier kept row (and not added)."""
        return self.check_and_add_signatures(self.hasher.signatures(texts))

    def check_and_add_signatures(self, sigs: np.ndarray) -> np.ndarray:
        """check_and_add for signatures computed elsewhere (by data prep's worker processes)."""
        n = len(sigs)
        dup = np.zeros(n, dtype=bool)
        if n == 0:
            return dup
        keys = self.band_keys(sigs)
        found = self.index.lookup(keys.ravel()).reshape(n, self.bands)
        _, inverse, counts = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
        in_batch = (counts[inverse] > 1).reshape(n, self.bands).any(axis=1)
        # Most rows have no candidate at all: only the others are looked at one by one, in
        # order, so a row is compared with the rows kept before it.
        batch_keys: dict[int, int] = {}  # band key -> row of this batch, for rows kept so far
        for i in np.flatnonzero((found >= 0).any(axis=1) | in_batch).tolist():
            candidates = {c for c in found[i].tolist() if c >= 0}
            if any(self._similar(sigs[i], self._stored(c)) for c in candidates):
                dup[i] = True
                continue
            if in_batch[i]:
                row_keys = keys[i].tolist()
                mates = {batch_keys[k] for k in row_keys if k in batch_keys}
                if any(self._similar(sigs[i], sigs[j]) for j in mates):
                    dup[i] = True
                    continue
                for k in row_keys:
                    batch_keys.setdefault(k, i)
        kept = np.flatnonzero(~dup)
        kept_idx = kept
        ids = np.arange(self.count, self.count + len(kept_idx), dtype=np.uint32)
        self._spool.write(np.ascontiguousarray(sigs[kept_idx]).tobytes())
        self.index.add(keys[kept_idx].ravel(), np.repeat(ids, self.bands))
        self.count += len(kept_idx)
        return dup

    def close(self) -> None:
        self._spool.close()
        self._path.unlink(missing_ok=True)

"""Deduplication: exact (hash of the normalised text), then near-duplicate (MinHash, LSH, verified).

Why not the reference recipe's loop (described in benchmarks/dedup/README.md): it calls `MinHash.update`
once per 5-character shingle (a Python call and four small numpy operations each, ~2.5 us) and MinHashLSH
`query`/`insert` per record (a byteswap and a bytes copy per band). Here a whole batch is hashed at once:
shingle hashes come from a rolling polynomial over the code points (numpy), and each of the num_perm
permutations is one vectorised pass plus a `minimum.reduceat` over the batch. The permutations are
datasketch's own ("affine32" scheme, same seed), so a signature equals
`datasketch.MinHash(hashfunc=shingle_hash).update_batch(shingles)` exactly (a test checks this). The LSH
index keeps band keys in sorted numpy runs (~100 bytes per example against ~2 KB in MinHashLSH's dicts),
looks a batch up with `searchsorted`, and a candidate only counts as a duplicate when its estimated Jaccard
reaches the threshold: LSH alone also flags distinct templated records (true Jaccard 0.69-0.86 at the
reference recipe's 0.85, see benchmarks/dedup/README.md).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence

import numpy as np
from datasketch import MinHash

from feedback.examples import Messages

_POLY = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so the rolling hash loses no information mod 2^64
_SHINGLES_PER_CHUNK = 1 << 17  # 512 KB of uint32 per pass: stays in L2
MAX_BUCKET = 64  # members of one LSH bucket checked per query; only degenerate inputs fill a bucket


def normalise_text(text: str) -> str:
    """NFKC, lower case, whitespace runs collapsed to one space. (The reference recipe's `re.sub(r"s+", ...)`
    meant `\\s+`; as written it collapses runs of the letter s. `split()` does `\\s+` six times faster.)"""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def dedup_text(messages: Messages, include_system: bool = False) -> str:
    """The text two conversations are compared on: normalised turns with their roles."""
    return "\n".join(
        f"{m['role']}: {normalise_text(m['content'])}" for m in messages if include_system or m["role"] != "system"
    )


def exact_key(text: str) -> int:
    """64 bits of BLAKE2b: a chance collision needs ~4e9 examples."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def shingles(text: str, size: int) -> list[str]:
    """Overlapping `size`-character shingles; a shorter text is padded to one shingle (the reference
    recipe gave it none, so every short text looked identical to every other)."""
    text = text.ljust(size)
    return [text[i : i + size] for i in range(len(text) - size + 1)]


def shingle_hash(shingle: str) -> int:
    """The 32-bit hash of one shingle, as `MinHasher` computes it for many at once (reference version)."""
    value = 0
    for char in shingle:
        value = (value * int(_POLY) + ord(char)) & 0xFFFFFFFFFFFFFFFF
    return (value ^ (value >> 32)) & 0xFFFFFFFF


def _fmix32(values: np.ndarray) -> np.ndarray:
    # datasketch's affine32 pre-mix (MurmurHash3 finalizer), in place.
    values ^= values >> np.uint32(16)
    values *= np.uint32(0x85EBCA6B)
    values ^= values >> np.uint32(13)
    values *= np.uint32(0xC2B2AE35)
    values ^= values >> np.uint32(16)
    return values


class MinHasher:
    """Batch MinHash signatures, bit-identical to datasketch's affine32 MinHash with `shingle_hash`."""

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, seed: int = 1) -> None:
        self.num_perm, self.shingle_size, self.seed = num_perm, shingle_size, seed
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self._a, self._b = a.astype(np.uint32), b.astype(np.uint32)

    def shingle_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hash of every shingle of every text, index of each text's first shingle)."""
        k = self.shingle_size
        padded = [t.ljust(k) for t in texts]
        lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
        points = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n_positions = len(points) - k + 1
        rolling = np.zeros(n_positions, dtype=np.uint64)
        for j in range(k):
            rolling *= _POLY
            rolling += points[j : j + n_positions]
        per_text = lengths - k + 1
        text_starts = np.cumsum(lengths) - lengths
        # Keep positions whose shingle lies inside one text.
        positions = np.repeat(text_starts, per_text) + _ranges(per_text)
        folded = rolling[positions]
        hashes = ((folded ^ (folded >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        first = np.cumsum(per_text) - per_text
        return hashes, first

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 signatures."""
        out = np.empty((self.num_perm, len(texts)), dtype=np.uint32)
        for lo, hi in _chunks([max(len(t), self.shingle_size) - self.shingle_size + 1 for t in texts]):
            hashes, first = self.shingle_hashes(texts[lo:hi])
            _fmix32(hashes)
            buffer = np.empty_like(hashes)
            for p in range(self.num_perm):
                np.multiply(hashes, self._a[p], out=buffer)
                np.add(buffer, self._b[p], out=buffer)
                out[p, lo:hi] = np.minimum.reduceat(buffer, first)
        return np.ascontiguousarray(out.T)


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] without a Python loop."""
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)


def _chunks(shingle_counts: list[int]) -> list[tuple[int, int]]:
    chunks, lo, running = [], 0, 0
    for i, count in enumerate(shingle_counts):
        if running and running + count > _SHINGLES_PER_CHUNK:
            chunks.append((lo, i))
            lo, running = i, 0
        running += count
    if lo < len(shingle_counts):
        chunks.append((lo, len(shingle_counts)))
    return chunks


def lsh_params(threshold: float, num_perm: int, recall_at_threshold: float = 0.99) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest false candidates) that still makes a pair at the
    threshold a candidate with the given probability; verification then removes the false candidates."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall_at_threshold:
            return bands, rows
    return num_perm, 1

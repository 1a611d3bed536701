"""A compact, batch-at-a-time MinHash LSH index with verification (see feedback/dedup.py for why).

Each band of `rows` hash values is reduced to one 64-bit key. Keys live in sorted numpy runs (an LSM
layout: new runs are merged into older ones of similar size), so a batch of queries is a `searchsorted`
per band and run. Signatures are kept as their low 16 bits for verification: a chance 16-bit collision
adds (1 - J) / 65536 to an estimated Jaccard, which is nothing next to MinHash's own error (~0.03).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from feedback.dedup import MAX_BUCKET, MinHasher, dedup_text, exact_key, lsh_params
from feedback.examples import Messages


@dataclass
class _Run:
    keys: np.ndarray  # (bands, m) uint64, each row sorted
    ids: np.ndarray  # (bands, m) int64, the entry id of each key

    @property
    def size(self) -> int:
        return self.keys.shape[1]


@dataclass(frozen=True)
class NearMatch:
    """A batch item found to duplicate an earlier one: the entry it matched and the estimated Jaccard."""

    entry: int
    jaccard: float
    earlier_version: bool


class NearDuplicateIndex:
    def __init__(self, num_perm: int, threshold: float, seed: int = 1) -> None:
        self.num_perm, self.threshold = num_perm, threshold
        self.bands, self.rows = lsh_params(threshold, num_perm)
        rng = np.random.default_rng(seed)
        odd = rng.integers(0, 2**63, size=(self.bands, self.rows), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._mixers = odd
        self._signatures = np.empty((1024, num_perm), dtype=np.uint16)
        self._earlier = np.empty(1024, dtype=bool)
        self._size = 0
        self._runs: list[_Run] = []

    def __len__(self) -> int:
        return self._size

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: a multiply-add hash of each band (a collision only adds a candidate)."""
        used = signatures[:, : self.bands * self.rows].astype(np.uint64)
        used = used.reshape(len(signatures), self.bands, self.rows)
        keys = (used * self._mixers).sum(axis=2, dtype=np.uint64)
        return keys ^ (keys >> np.uint64(29))

    def add(self, signatures: np.ndarray, *, earlier_version: bool = False) -> np.ndarray:
        """Index entries without checking them (e.g. examples of earlier dataset versions); their ids."""
        if len(signatures) == 0:
            return np.empty(0, dtype=np.int64)
        ids = np.arange(self._size, self._size + len(signatures), dtype=np.int64)
        self._grow(self._size + len(signatures))
        self._signatures[ids] = signatures.astype(np.uint16)  # keep the low 16 bits
        self._earlier[ids] = earlier_version
        self._size += len(signatures)
        keys = self.band_keys(signatures).T  # (bands, n)
        order = np.argsort(keys, axis=1, kind="stable")
        self._runs.append(_Run(np.take_along_axis(keys, order, axis=1), ids[order]))
        while len(self._runs) > 1 and self._runs[-1].size * 2 >= self._runs[-2].size:
            newer, older = self._runs.pop(), self._runs.pop()
            merged_keys = np.concatenate([older.keys, newer.keys], axis=1)
            merged_ids = np.concatenate([older.ids, newer.ids], axis=1)
            order = np.argsort(merged_keys, axis=1, kind="stable")
            self._runs.append(
                _Run(np.take_along_axis(merged_keys, order, axis=1), np.take_along_axis(merged_ids, order, axis=1))
            )
        return ids

    def filter_batch(self, signatures: np.ndarray) -> list[NearMatch | None]:
        """For each item in order: the entry (indexed, or earlier in this batch and kept) it duplicates,
        or None, in which case it is kept and indexed. Same result as querying and inserting one by one."""
        n = len(signatures)
        if n == 0:
            return []
        keys = self.band_keys(signatures)
        low = signatures.astype(np.uint16)
        best_indexed = self._best_indexed(keys, low)
        later_to_earlier = self._intra_batch_pairs(keys, low)
        results: list[NearMatch | None] = [None] * n
        kept_rank = np.full(n, -1, dtype=np.int64)  # position among this batch's kept items
        n_kept = 0
        for i in range(n):
            if i in best_indexed:
                entry, jaccard = best_indexed[i]
                results[i] = NearMatch(entry, jaccard, bool(self._earlier[entry]))
                continue
            for j, jaccard in later_to_earlier.get(i, ()):
                if kept_rank[j] >= 0:
                    results[i] = NearMatch(self._size + int(kept_rank[j]), jaccard, False)
                    break
            else:
                kept_rank[i] = n_kept
                n_kept += 1
        self.add(signatures[kept_rank >= 0])
        return results

    def _estimated_jaccard(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return np.count_nonzero(left == right, axis=1) / self.num_perm

    def _best_indexed(self, keys: np.ndarray, low: np.ndarray) -> dict[int, tuple[int, float]]:
        """Query item -> (indexed entry, estimated Jaccard) for the best verified candidate."""
        queries, entries = [], []
        for run in self._runs:
            for band in range(self.bands):
                column = run.keys[band]
                left = np.searchsorted(column, keys[:, band], side="left")
                right = np.searchsorted(column, keys[:, band], side="right")
                counts = np.minimum(right - left, MAX_BUCKET)
                if not counts.any():
                    continue
                hit = np.repeat(np.arange(len(keys)), counts)
                offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
                queries.append(hit)
                entries.append(run.ids[band][np.repeat(left, counts) + offsets])
        if not queries:
            return {}
        pairs = np.unique(np.stack([np.concatenate(queries), np.concatenate(entries)], axis=1), axis=0)
        jaccard = self._estimated_jaccard(low[pairs[:, 0]], self._signatures[pairs[:, 1]])
        best: dict[int, tuple[int, float]] = {}
        # Highest Jaccard first, then the oldest entry: the same input always names the same match.
        for k in np.lexsort((pairs[:, 1], -jaccard)):
            if jaccard[k] < self.threshold:
                break
            best.setdefault(int(pairs[k, 0]), (int(pairs[k, 1]), float(jaccard[k])))
        return best

    def _intra_batch_pairs(self, keys: np.ndarray, low: np.ndarray) -> dict[int, list[tuple[int, float]]]:
        """Later item -> [(earlier item, estimated Jaccard)], verified, best first."""
        earlier, later = [], []
        for band in range(self.bands):
            order = np.argsort(keys[:, band], kind="stable")  # equal keys stay in batch order
            sorted_keys = keys[order, band]
            for distance in range(1, MAX_BUCKET + 1):
                same = sorted_keys[distance:] == sorted_keys[:-distance]
                if not same.any():
                    break
                earlier.append(order[:-distance][same])
                later.append(order[distance:][same])
        if not earlier:
            return {}
        pairs = np.unique(np.stack([np.concatenate(later), np.concatenate(earlier)], axis=1), axis=0)
        jaccard = self._estimated_jaccard(low[pairs[:, 0]], low[pairs[:, 1]])
        found: dict[int, list[tuple[int, float]]] = {}
        for k in np.lexsort((pairs[:, 1], -jaccard)):
            if jaccard[k] < self.threshold:
                break
            found.setdefault(int(pairs[k, 0]), []).append((int(pairs[k, 1]), float(jaccard[k])))
        return found

    def _grow(self, needed: int) -> None:
        if needed <= len(self._earlier):
            return
        capacity = max(needed, 2 * len(self._earlier))
        signatures = np.empty((capacity, self.num_perm), dtype=np.uint16)
        signatures[: self._size] = self._signatures[: self._size]
        earlier = np.empty(capacity, dtype=bool)
        earlier[: self._size] = self._earlier[: self._size]
        self._signatures, self._earlier = signatures, earlier


class Deduplicator:
    """Exact then near-duplicate removal, within a run and against earlier dataset versions.

    Both stages keep the first occurrence (the stream is ordered, so a rebuild keeps the same ones).
    """

    def __init__(
        self, *, num_perm: int, shingle_size: int, threshold: float, seed: int = 1, include_system: bool = False
    ) -> None:
        self.include_system = include_system
        self.hasher = MinHasher(num_perm=num_perm, shingle_size=shingle_size, seed=seed)
        self.index = NearDuplicateIndex(num_perm, threshold, seed)
        self._exact_earlier: set[int] = set()
        self._exact_now: set[int] = set()

    def add_earlier(self, conversations: Sequence[Messages]) -> None:
        texts = [dedup_text(m, self.include_system) for m in conversations]
        self._exact_earlier.update(exact_key(t) for t in texts)
        self.index.add(self.hasher.signatures(texts), earlier_version=True)

    def filter(self, conversations: Sequence[Messages]) -> list[str | None]:
        """Per conversation: None (kept, and remembered) or the reason it is dropped."""
        reasons: list[str | None] = [None] * len(conversations)
        survivors: list[int] = []
        texts: list[str] = []
        for i, messages in enumerate(conversations):
            text = dedup_text(messages, self.include_system)
            key = exact_key(text)
            if key in self._exact_earlier:
                reasons[i] = "exact_duplicate_of_earlier_version"
            elif key in self._exact_now:
                reasons[i] = "exact_duplicate"
            else:
                self._exact_now.add(key)
                survivors.append(i)
                texts.append(text)
        matches = self.index.filter_batch(self.hasher.signatures(texts)) if texts else []
        for i, match in zip(survivors, matches, strict=True):
            if match is not None:
                reasons[i] = "near_duplicate_of_earlier_version" if match.earlier_version else "near_duplicate"
        return reasons

"""The reference recipe's MinHash-LSH dedup against ours, in one process, on the same labelled records.

    .venv/bin/python benchmarks/dedup/bench_dedup.py [--records 10000] [--seed 0]

Reports records/s, recall on the labelled near-duplicates (overall and per edit rate), and false
drops (records dropped that duplicate nothing earlier). Rows:
  reference        the reference recipe's dedup (benchmarks/dedup/README.md): r"s+", 5-char shingles,
                   one MinHash.update per shingle, num_perm 128, MinHashLSH(0.85), query then insert
  ours             feedback.lsh.Deduplicator with the default policy (the code curate runs)
  ours+system      the same, with the system prompt counted (policy dedup_include_system=true)
  datasketch-index our signatures and verification, but datasketch's MinHashLSH as the index,
                   to show what the index costs
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import EDIT_RATES, duplicate_labels, make_corpus

from feedback.dedup import MinHasher, dedup_text, exact_key, lsh_params
from feedback.lsh import Deduplicator
from feedback.policy import CurationPolicy

BATCH = 1000  # what curate hands the deduplicator per page


# --- the reference recipe's dedup, as published apart from the function names ------------------------
def tokenize_for_minhash(text: str) -> list[str]:
    """Overlapping 5-character shingles for fuzzy matching."""
    text = re.sub(r"s+", " ", text.lower().strip())
    return [text[i : i + 5] for i in range(len(text) - 4)]


def build_minhash(text: str, num_perm: int = 128) -> MinHash:
    m = MinHash(num_perm=num_perm)
    for shingle in tokenize_for_minhash(text):
        m.update(shingle.encode("utf-8"))
    return m


class ReferenceDedup:
    """The reference recipe's `deduplicate` loop, fed a slice at a time (its state carries over)."""

    def __init__(self, threshold: float = 0.85) -> None:
        self.lsh = MinHashLSH(threshold=threshold, num_perm=128)
        self.i = 0

    def process(self, examples: list[dict]) -> list[bool]:
        dropped = []
        for ex in examples:
            text = " ".join(m["content"] for m in ex["messages"])
            m_hash = build_minhash(text)
            key = str(self.i)
            self.i += 1
            if not self.lsh.query(m_hash):
                self.lsh.insert(key, m_hash)
                dropped.append(False)
            else:
                dropped.append(True)
        return dropped


# --- ours ------------------------------------------------------------------------------------------------
class OursDedup:
    def __init__(self, include_system: bool = False) -> None:
        policy = CurationPolicy()
        self.dedup = Deduplicator(num_perm=policy.num_perm, shingle_size=policy.shingle_size,
                                  threshold=policy.near_dup_threshold, include_system=include_system)

    def process(self, examples: list[dict]) -> list[bool]:
        return [reason is not None for reason in self.dedup.filter([ex["messages"] for ex in examples])]


class DatasketchIndexDedup:
    """Our signatures, exact stage and verification, with datasketch's MinHashLSH as the index."""

    def __init__(self) -> None:
        self.policy = policy = CurationPolicy()
        self.hasher = MinHasher(policy.num_perm, policy.shingle_size, policy.minhash_seed)
        self.lsh = MinHashLSH(num_perm=policy.num_perm, params=lsh_params(policy.near_dup_threshold, policy.num_perm))
        self.exact: set[int] = set()
        self.stored: list[np.ndarray] = []

    def process(self, examples: list[dict]) -> list[bool]:
        policy, dropped = self.policy, []
        texts = [dedup_text(ex["messages"]) for ex in examples]
        for text, signature in zip(texts, self.hasher.signatures(texts), strict=True):
            key = exact_key(text)
            if key in self.exact:
                dropped.append(True)
                continue
            self.exact.add(key)
            sketch = LeanMinHash(seed=policy.minhash_seed, hashvalues=signature, scheme="affine32")
            duplicate = any(
                np.count_nonzero(self.stored[c] == signature) / policy.num_perm >= policy.near_dup_threshold
                for c in self.lsh.query(sketch)
            )
            if not duplicate:
                self.lsh.insert(len(self.stored), sketch, check_duplication=False)
                self.stored.append(signature)
            dropped.append(duplicate)
        return dropped


def run_interleaved(makers: dict[str, Callable[[], object]], examples: list[dict]) -> dict[str, tuple[list, float]]:
    """Every variant processes slice 1, then every variant slice 2, ...: all see the same machine load
    (this machine is shared; a variant timed alone in a busy minute would look slower than it is)."""
    states = {name: make() for name, make in makers.items()}
    dropped: dict[str, list[bool]] = {name: [] for name in makers}
    seconds = dict.fromkeys(makers, 0.0)
    for start in range(0, len(examples), BATCH):
        chunk = examples[start : start + BATCH]
        for name, state in states.items():
            started = time.perf_counter()
            dropped[name].extend(state.process(chunk))  # type: ignore[attr-defined]
            seconds[name] += time.perf_counter() - started
    return {name: (dropped[name], seconds[name]) for name in makers}


def score(name: str, dropped: list[bool], seconds: float, labels: list[bool], rates: list[float]) -> dict:
    true_drops = sum(d and lab for d, lab in zip(dropped, labels, strict=True))
    row = {
        "name": name, "records_per_s": len(dropped) / seconds, "seconds": seconds,
        "recall": true_drops / max(1, sum(labels)),
        "false_drops": sum(d and not lab for d, lab in zip(dropped, labels, strict=True)),
    }
    for rate in (0.0, *EDIT_RATES):
        pairs = [(d, lab) for d, lab, r in zip(dropped, labels, rates, strict=True) if lab and r == rate]
        row[f"recall@{rate:.0%}"] = sum(d for d, _ in pairs) / max(1, len(pairs))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    corpus = make_corpus(args.records, seed=args.seed)
    examples = [{"messages": r.messages} for r in corpus]
    labels = duplicate_labels(corpus)
    rates = [r.edit_rate for r in corpus]
    chars = sum(len(m["content"]) for ex in examples for m in ex["messages"]) / len(examples)
    print(f"{len(examples)} records, {chars:.0f} characters each on average, {sum(labels)} labelled duplicates "
          f"({sum(1 for r, lab in zip(rates, labels, strict=True) if lab and r == 0)} verbatim)")

    OursDedup().process(examples[:BATCH])  # warm-up: imports, first allocations
    makers: dict[str, Callable[[], object]] = {
        "reference": ReferenceDedup,
        "ours": OursDedup,
        "ours+system": lambda: OursDedup(include_system=True),
        "datasketch-index": DatasketchIndexDedup,
    }
    results = run_interleaved(makers, examples)
    rows = [score(name, dropped, seconds, labels, rates) for name, (dropped, seconds) in results.items()]
    shingles_per_record = sum(max(len(" ".join(m["content"] for m in ex["messages"])) - 4, 0) for ex in examples)
    shingles_per_record /= len(examples)
    print(f"reference: {rows[0]['seconds'] / len(examples) / shingles_per_record * 1e6:.2f} us per shingle "
          f"({shingles_per_record:.0f} shingles per record)")
    base = rows[0]["records_per_s"]
    header = ["name", "records/s", "vs reference", "recall", "false drops"] + [
        f"recall {rate:.0%} edits" if rate else "recall verbatim" for rate in (0.0, *EDIT_RATES)
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row["name"], f"{row['records_per_s']:,.0f}", f"{row['records_per_s'] / base:.0f}x",
                 f"{row['recall']:.3f}", str(row["false_drops"])]
        cells += [f"{row[f'recall@{rate:.0%}']:.3f}" for rate in (0.0, *EDIT_RATES)]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

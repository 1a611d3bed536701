"""Deduplication: normalisation, datasketch-exact signatures, the verified LSH index, both stages."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash

from feedback.dedup import MinHasher, dedup_text, exact_key, lsh_params, normalise_text, shingle_hash, shingles
from feedback.lsh import Deduplicator, NearDuplicateIndex

WORDS = [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiou" for c in "lmnrstxz"]


def _text(rng: random.Random, n_words: int = 120) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _edit(rng: random.Random, text: str, fraction: float) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(len(words) * fraction))):
        words[i] = rng.choice(WORDS)
    return " ".join(words)


SYSTEM_PROMPT = _text(random.Random(0), 300)  # long and shared by every conversation, like a product's


def _conversation(answer: str, question: str = "what should I know?") -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]


def test_normalisation_collapses_whitespace_not_the_letter_s() -> None:
    # The reference recipe's r"s+" turned "class  sessions" into "cla    e ion ".
    assert normalise_text("  Class \t\n Sessions  ") == "class sessions"
    assert normalise_text("\uff26\uff35\uff2c\uff2c width") == "full width"  # full-width letters


def test_dedup_text_leaves_the_system_prompt_out_unless_asked() -> None:
    conversation = _conversation("Answer.")
    assert "system" not in dedup_text(conversation)
    assert dedup_text(conversation, include_system=True).startswith("system: " + SYSTEM_PROMPT[:20])


@pytest.mark.parametrize("size", [1, 3, 5, 9])
def test_batch_signatures_equal_datasketch_minhash(size: int) -> None:
    rng = random.Random(size)
    texts = [_text(rng, rng.randint(1, 60)) for _ in range(20)] + ["", "ab", "naïve café 𝄞 ✓"]
    signatures = MinHasher(num_perm=64, shingle_size=size, seed=7).signatures(texts)
    for text, signature in zip(texts, signatures, strict=True):
        reference = MinHash(num_perm=64, seed=7, hashfunc=shingle_hash)
        reference.update_batch(shingles(text, size))
        assert np.array_equal(reference.hashvalues, signature)


def test_signatures_do_not_depend_on_batching() -> None:
    rng = random.Random(1)
    texts = [_text(rng, rng.randint(5, 3000)) for _ in range(60)]  # > one 2^17-shingle chunk in all
    hasher = MinHasher()
    together = hasher.signatures(texts)
    alone = np.vstack([hasher.signatures([t]) for t in texts])
    assert np.array_equal(together, alone)


def test_lsh_params_catch_pairs_at_the_threshold() -> None:
    for threshold in (0.7, 0.8, 0.85, 0.9):
        bands, rows = lsh_params(threshold, 128)
        assert bands * rows <= 128
        assert 1 - (1 - threshold**rows) ** bands >= 0.99
        # and the next longer band would not:
        longer = rows + 1
        assert 1 - (1 - threshold**longer) ** (128 // longer) < 0.99


def test_exact_key_is_stable_and_distinguishes() -> None:
    assert exact_key("hello") == exact_key("hello")
    assert exact_key("hello") != exact_key("hello!")


def test_index_drops_near_duplicates_and_keeps_distinct_texts() -> None:
    rng = random.Random(3)
    originals = [_text(rng) for _ in range(200)]
    near = [_edit(rng, t, 0.02) for t in originals[:50]]
    hasher = MinHasher()
    index = NearDuplicateIndex(128, 0.8)
    assert index.filter_batch(hasher.signatures(originals)) == [None] * 200
    matches = index.filter_batch(hasher.signatures(near))
    assert [m.entry if m else None for m in matches] == list(range(50))
    assert all(m is not None and m.jaccard >= 0.8 and not m.earlier_version for m in matches)
    assert len(index) == 200


def test_candidates_below_the_threshold_are_verified_away() -> None:
    # A pair that shares a whole band (the LSH makes it a candidate) but overlaps ~83%: kept at 0.9.
    rng = random.Random(5)
    base = _text(rng, 400)
    hasher = MinHasher()
    index = NearDuplicateIndex(128, 0.9)
    index.filter_batch(hasher.signatures([base]))
    variant = _edit(rng, base, 0.06)
    true_jaccard = len(set(shingles(base, 5)) & set(shingles(variant, 5))) / len(
        set(shingles(base, 5)) | set(shingles(variant, 5))
    )
    assert 0.7 < true_jaccard < 0.86  # clearly below the 0.9 threshold
    signatures = hasher.signatures([variant])
    candidates = set(index.band_keys(signatures)[0]) & set(index.band_keys(hasher.signatures([base]))[0])
    assert candidates, "the pair should collide in at least one band for this test to mean anything"
    assert index.filter_batch(signatures) == [None]


def test_batch_filtering_equals_one_at_a_time() -> None:
    rng = random.Random(11)
    pool = [_text(rng, 80) for _ in range(40)]
    texts = [rng.choice([t, _edit(rng, t, 0.03), _edit(rng, t, 0.3)]) for t in pool for _ in range(3)]
    rng.shuffle(texts)
    signatures = MinHasher().signatures(texts)
    batched = NearDuplicateIndex(128, 0.8).filter_batch(signatures)
    single = NearDuplicateIndex(128, 0.8)
    one_by_one = [single.filter_batch(signatures[i : i + 1])[0] for i in range(len(texts))]
    assert [m is None for m in batched] == [m is None for m in one_by_one]
    assert sum(m is not None for m in batched) > 20


def test_deduplicator_runs_exact_then_near_and_against_earlier_versions() -> None:
    rng = random.Random(2)
    old, new = _text(rng), _text(rng)
    dedup = Deduplicator(num_perm=128, shingle_size=5, threshold=0.8)
    dedup.add_earlier([_conversation(old)])
    reasons = dedup.filter(
        [
            _conversation(old),  # in an earlier version, verbatim
            _conversation(_edit(rng, old, 0.02)),  # in an earlier version, nearly
            _conversation(new),
            _conversation("  " + new.upper() + " "),  # same after normalisation
            _conversation(_edit(rng, new, 0.02)),
            _conversation(_text(rng)),
        ]
    )
    assert reasons == [
        "exact_duplicate_of_earlier_version",
        "near_duplicate_of_earlier_version",
        None,
        "exact_duplicate",
        "near_duplicate",
        None,
    ]
    # Kept ones are remembered across calls (the next batch of the same run).
    assert dedup.filter([_conversation(new), _conversation(_edit(rng, new, 0.02))]) == [
        "exact_duplicate",
        "near_duplicate",
    ]


def test_a_shared_system_prompt_does_not_make_conversations_duplicates() -> None:
    rng = random.Random(9)
    conversations = [_conversation(_text(rng, 15), question=_text(rng, 5)) for _ in range(30)]
    assert Deduplicator(num_perm=128, shingle_size=5, threshold=0.8).filter(conversations) == [None] * 30
    with_system = Deduplicator(num_perm=128, shingle_size=5, threshold=0.8, include_system=True)
    assert any(with_system.filter(conversations))

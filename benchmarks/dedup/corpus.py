"""A synthetic chat corpus with labelled near-duplicates and hard negatives, deterministic for a seed.

Records look like support traffic: one of a few long system prompts, a question, an answer; words
drawn Zipf-like from a fixed vocabulary (so distinct texts share common words, as real ones do).
  - near-duplicates: copies of a record with a few percent of the words edited (replaced, inserted or
    deleted), labelled with the group of the original; a few are verbatim copies;
  - hard negatives: "siblings" built from the same template as a record (same system prompt, the
    question and answer with about a quarter of the words changed): distinct, never to be dropped.
The stream is shuffled; a record is a labelled duplicate when an earlier record of its group exists.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def _vocabulary(rng: random.Random, size: int = 6000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        n_syllables = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n_syllables)))
    return sorted(words)


@dataclass
class Record:
    messages: list[dict[str, str]]
    group: int  # records of one group are copies (exact or edited) of one original
    edit_rate: float  # of the duplicate pair this record belongs to (0: verbatim, or no pair)


class CorpusMaker:
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.vocabulary = _vocabulary(self.rng)
        weights = [1 / (rank + 10) for rank in range(len(self.vocabulary))]  # Zipf-like
        total = sum(weights)
        self._cumulative = []
        running = 0.0
        for w in weights:
            running += w / total
            self._cumulative.append(running)
        self.system_prompts = [self.sentence(self.rng.randint(40, 80)) for _ in range(5)]

    def words(self, n: int) -> list[str]:
        return self.rng.choices(self.vocabulary, cum_weights=self._cumulative, k=n)

    def sentence(self, n: int) -> str:
        return " ".join(self.words(n))

    def original(self) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.rng.choice(self.system_prompts)},
            {"role": "user", "content": self.sentence(self.rng.randint(10, 40))},
            {"role": "assistant", "content": self.sentence(self.rng.randint(60, 220))},
        ]

    def edited(self, messages: list[dict[str, str]], rate: float) -> list[dict[str, str]]:
        """The same conversation with `rate` of its (user and assistant) words edited."""
        turns = [m["content"].split() for m in messages[1:]]
        total = sum(len(t) for t in turns)
        for _ in range(max(1, round(total * rate))):
            words = self.rng.choices(turns, weights=[len(t) for t in turns])[0]
            position = self.rng.randrange(len(words))
            action = self.rng.random()
            if action < 0.6:
                words[position] = self.words(1)[0]
            elif action < 0.8:
                words.insert(position, self.words(1)[0])
            elif len(words) > 1:
                del words[position]
        return [messages[0]] + [
            {"role": m["role"], "content": " ".join(t)} for m, t in zip(messages[1:], turns, strict=True)
        ]

    def sibling(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """Same template, different content: about a quarter of the words replaced."""
        out = [messages[0]]
        for m in messages[1:]:
            words = m["content"].split()
            for position in self.rng.sample(range(len(words)), max(1, len(words) // 4)):
                words[position] = self.words(1)[0]
            out.append({"role": m["role"], "content": " ".join(words)})
        return out


EDIT_RATES = (0.01, 0.02, 0.03, 0.05)


def make_corpus(n_records: int, seed: int = 0, duplicate_share: float = 0.2, sibling_share: float = 0.2,
                verbatim_share: float = 0.1) -> list[Record]:
    """`n_records` records: ~duplicate_share labelled duplicates, ~sibling_share hard negatives."""
    maker = CorpusMaker(seed)
    records: list[Record] = []
    group = 0
    while len(records) < n_records:
        base = maker.original()
        roll = maker.rng.random()
        if roll < duplicate_share:
            # Both members carry the pair's edit rate: after shuffling either may come first.
            rate = 0.0 if maker.rng.random() < verbatim_share else maker.rng.choice(EDIT_RATES)
            copy = [dict(m) for m in base] if rate == 0.0 else maker.edited(base, rate)
            records += [Record(base, group, rate), Record(copy, group, rate)]
        elif roll < duplicate_share + sibling_share:
            records += [Record(base, group, 0.0), Record(maker.sibling(base), group + 1, 0.0)]
            group += 1
        else:
            records.append(Record(base, group, 0.0))
        group += 1
    records = records[:n_records]
    maker.rng.shuffle(records)
    return records


def duplicate_labels(records: list[Record]) -> list[bool]:
    """True where an earlier record of the same group exists: the ones a perfect dedup drops."""
    seen: set[int] = set()
    labels = []
    for record in records:
        labels.append(record.group in seen)
        seen.add(record.group)
    return labels

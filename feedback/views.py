"""The preference views of a dataset version: KTO rows from every rated answer, DPO pairs from corrections
and from answers to one prompt rated both ways.

  kto   thumbs-up answer            -> {"prompt", "completion": answer, "label": true}
        thumbs-down answer          -> {"prompt", "completion": answer, "label": false}
        a correction                -> also {"prompt", "completion": correction, "label": true}
  dpo   a correction                -> {"prompt", "chosen": correction, "rejected": the served answer}
        answers to the same prompt  -> every thumbs-down answer paired with a thumbs-up one (in turn, in stream
        rated up and down              order), after the whole window is read
The rows go through the SFT view's rules: the system prompt policy, scrubbing (prompt, completion, chosen and
rejected), the refusal filter on what the model is taught to say (a refused answer rated down is a fine
negative), the length filter on the longest conversation of a row, exact and near-duplicate removal (within
the view, and against the view's rows in earlier versions) and the prompt-hash split (`split_fraction` of the
prompt, so a prompt is on the same side in every view). Near-duplicates are looked for among rows of one label
only: a right and a wrong answer to one prompt differ by a few characters, and that difference is the signal.
The answers waiting to be paired are held in memory: one entry per rated answer kept in the kto view.
Counts per view: `excluded` names why an interaction gave the view nothing (for dpo: why it gave no correction
pair: `thumbs_up`, `no_correction`, `empty_answer`, `correction_same_as_answer`; its answer may still pair
with another by prompt), `selected` the rows
made by kind, then `filtered`, `deduplicated`, `split` (and `labels` of the kto train split).
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from feedback.datasets import DatasetPublic
from feedback.dedup import normalise_text
from feedback.examples import Messages
from feedback.filters import RefusalFilter, TokenCounter, apply_system_prompt, length_reason
from feedback.lsh import Deduplicator
from feedback.policy import CurationPolicy
from feedback.scrub import Scrubber
from feedback.selection import Rated
from feedback.split import split_fraction

PREFERENCE_VIEWS = ("kto", "dpo")


@dataclass
class PreferenceRow:
    """One row of a preference view; `completion` is KTO's completion or DPO's chosen answer."""

    view: str
    prompt: Messages
    completion: str
    kind: str  # kto: thumbs_up, thumbs_down, correction; dpo: correction, thumbs_pair
    source: str
    label: bool | None = None  # kto only
    rejected: str | None = None  # dpo only
    rejected_source: str | None = None

    def conversation(self, answer: str | None = None) -> Messages:
        return [*self.prompt, {"role": "assistant", "content": self.completion if answer is None else answer}]

    def dedup_key(self) -> Messages:
        """What duplicates are compared on: the conversation, and the rejected answer as a further turn."""
        if self.rejected is None:
            return self.conversation()
        return [*self.conversation(), {"role": "user", "content": self.rejected}]

    def line(self) -> str:
        """The canonical JSONL line (TRL's field names); the bytes the dataset hash covers."""
        record: dict[str, Any] = {"prompt": self.prompt}
        if self.view == "kto":
            record.update(completion=self.completion, label=bool(self.label))
        else:
            record.update(chosen=self.completion, rejected=self.rejected)
        record.update(kind=self.kind, source=self.source)
        if self.rejected_source is not None:
            record["rejected_source"] = self.rejected_source
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


@dataclass
class ViewStats:
    excluded: Counter[str] = field(default_factory=Counter)
    selected: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    deduplicated: Counter[str] = field(default_factory=Counter)


def preference_rows(rated: Rated, prompt: Messages, answer: str, correction: str | None) -> tuple[
        list[PreferenceRow], list[str]]:
    """The kto and correction-dpo rows of one rated interaction (prompt and texts already scrubbed), and the
    kto view's exclusion reasons for what it could not use. Pure."""
    source = f"interaction:{rated.interaction_id}"
    rows: list[PreferenceRow] = []
    excluded: list[str] = []
    has_answer = bool(answer.strip())
    if rated.verdict == "up":
        if not has_answer:
            excluded.append("empty_answer")
        elif rated.truncated:  # rated up, but the model would learn to stop mid-answer
            excluded.append("truncated")
        else:
            rows.append(PreferenceRow("kto", prompt, answer, "thumbs_up", source, label=True))
        return rows, excluded
    if has_answer:  # a truncated answer rated down is a fair negative
        rows.append(PreferenceRow("kto", prompt, answer, "thumbs_down", source, label=False))
    else:
        excluded.append("empty_answer")
    if correction is not None:
        rows.append(PreferenceRow("kto", prompt, correction, "correction", source, label=True))
        if has_answer and normalise_text(correction) != normalise_text(answer):
            rows.append(PreferenceRow("dpo", prompt, correction, "correction", source, rejected=answer,
                                      rejected_source=source))
    return rows, excluded


def thumbs_pairs(ups: list[tuple[str, str]], downs: list[tuple[str, str]], prompt: Messages) -> list[PreferenceRow]:
    """Every thumbs-down answer of one prompt against a thumbs-up one, taken in turn ((text, source) each). Pure."""
    pairs = []
    for i, (rejected, rejected_source) in enumerate(downs):
        chosen, source = ups[i % len(ups)]
        if normalise_text(chosen) != normalise_text(rejected):
            pairs.append(PreferenceRow("dpo", prompt, chosen, "thumbs_pair", source, rejected=rejected,
                                       rejected_source=rejected_source))
    return pairs


def _no_pair_reason(rated: Rated, answer: str, correction: str | None) -> str:
    """Why an interaction gave the dpo view no correction pair."""
    if rated.verdict == "up":
        return "thumbs_up"
    if correction is None:
        return "no_correction"
    return "empty_answer" if not answer.strip() else "correction_same_as_answer"


def _dedup(policy: CurationPolicy) -> Deduplicator:
    return Deduplicator(num_perm=policy.num_perm, shingle_size=policy.shingle_size,
                        threshold=policy.near_dup_threshold, seed=policy.minhash_seed,
                        include_system=policy.dedup_include_system)


def _prompt_key(prompt: Messages) -> str:
    text = json.dumps([[m["role"], normalise_text(m["content"])] for m in prompt], ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class PreferenceViews:
    """Builds the kto and dpo views from the stream of rated interactions; kept lines go to `<view>_kept.jsonl`
    in `work`, their split fractions to `fractions[view]`."""

    def __init__(self, policy: CurationPolicy, scrubber: Scrubber, counter: TokenCounter | None, work: Path) -> None:
        self.policy, self.scrubber, self.counter = policy, scrubber, counter
        self.refusals = RefusalFilter(policy.refusal_patterns)
        self.stats = {view: ViewStats() for view in PREFERENCE_VIEWS}
        self.fractions = {view: array("d") for view in PREFERENCE_VIEWS}
        self.kept_paths = {view: work / f"{view}_kept.jsonl" for view in PREFERENCE_VIEWS}
        self._out: dict[str, TextIO] = {v: p.open("w", encoding="utf-8") for v, p in self.kept_paths.items()}
        self._dedup = {("kto", True): _dedup(policy), ("kto", False): _dedup(policy), ("dpo", None): _dedup(policy)}
        # prompt key -> (prompt, thumbs-up answers, thumbs-down answers), in order of first appearance
        self._answers: dict[str, tuple[Messages, list[tuple[str, str]], list[tuple[str, str]]]] = {}

    def exclude(self, reason: str) -> None:
        """An interaction every view excludes (the shared rules)."""
        for stats in self.stats.values():
            stats.excluded[reason] += 1

    def add_earlier(self, view: str, records: list[dict[str, Any]]) -> None:
        """Rows of an earlier version of this view, so the same preference is learned only once."""
        by_key: dict[tuple[str, bool | None], list[Messages]] = {}
        for record in records:
            row = _row_from_record(view, record)
            by_key.setdefault((view, row.label), []).append(row.dedup_key())
        for key, conversations in by_key.items():
            self._dedup[key].add_earlier(conversations)

    def add(self, batch: list[Rated]) -> None:
        rows: list[PreferenceRow] = []
        for rated in batch:
            prompt = self.scrubber.scrub_messages(
                apply_system_prompt(rated.prompt, self.policy.system_prompt_mode, self.policy.system_prompt))
            answer = self._scrub_text(rated.answer)
            correction = self._scrub_text(rated.correction) if rated.correction is not None else None
            made, excluded = preference_rows(rated, prompt, answer, correction)
            for reason in excluded:
                self.stats["kto"].excluded[reason] += 1
            if not any(row.view == "dpo" for row in made):
                self.stats["dpo"].excluded[_no_pair_reason(rated, answer, correction)] += 1
            rows += made
            for row in made:
                if row.view == "kto" and row.kind != "correction":
                    entry = self._answers.setdefault(_prompt_key(prompt), (prompt, [], []))
                    entry[1 if row.label else 2].append((row.completion, row.source))
        self._run(rows)

    def finish(self) -> None:
        """Pair the answers rated both ways, then close the kept files."""
        pairs: list[PreferenceRow] = []
        for prompt, ups, downs in self._answers.values():
            if ups and downs:
                pairs += thumbs_pairs(ups, downs, prompt)
            if len(pairs) >= self.policy.batch_size:
                self._run(pairs)
                pairs = []
        self._run(pairs)
        self._answers.clear()
        for handle in self._out.values():
            handle.close()

    def _scrub_text(self, text: str) -> str:
        return self.scrubber.scrub_messages([{"role": "assistant", "content": text}])[0]["content"]

    def _run(self, rows: list[PreferenceRow]) -> None:
        for row in rows:
            self.stats[row.view].selected[row.kind] += 1
        survivors = []
        for row in rows:
            if (row.label is not False) and self.refusals.is_refusal(row.conversation()):
                self.stats[row.view].filtered["refusal"] += 1
            else:
                survivors.append(row)
        if self.counter is not None and survivors:
            conversations = [row.conversation() for row in survivors]
            rejected = [row for row in survivors if row.rejected is not None]
            lengths = self.counter.count(conversations)
            longer = iter(self.counter.count([r.conversation(r.rejected) for r in rejected]) if rejected else [])
            within = []
            for row, n_tokens in zip(survivors, lengths, strict=True):
                if row.rejected is not None:
                    n_tokens = max(n_tokens, next(longer))
                reason = length_reason(n_tokens, self.policy.min_tokens, self.policy.max_tokens)
                if reason:
                    self.stats[row.view].filtered[reason] += 1
                else:
                    within.append(row)
            survivors = within
        groups: dict[tuple[str, bool | None], list[PreferenceRow]] = {}
        for row in survivors:
            groups.setdefault((row.view, row.label), []).append(row)
        kept: set[int] = set()
        for key, group in groups.items():
            for row, reason in zip(group, self._dedup[key].filter([r.dedup_key() for r in group]), strict=True):
                if reason:
                    self.stats[row.view].deduplicated[reason] += 1
                else:
                    kept.add(id(row))
        for row in survivors:  # stream order, whatever the grouping
            if id(row) in kept:
                self._out[row.view].write(row.line() + "\n")
                self.fractions[row.view].append(split_fraction(row.conversation()))


def _row_from_record(view: str, record: dict[str, Any]) -> PreferenceRow:
    if view == "kto":
        return PreferenceRow(view, record["prompt"], record["completion"], record.get("kind", ""),
                             record.get("source", ""), label=bool(record["label"]))
    return PreferenceRow(view, record["prompt"], record["chosen"], record.get("kind", ""), record.get("source", ""),
                         rejected=record["rejected"])


def view_counts(stats: ViewStats, n_train: int, n_eval: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's counts of one view."""
    return {
        "excluded": dict(sorted(stats.excluded.items())),
        "selected": dict(sorted(stats.selected.items())),
        "filtered": dict(sorted(stats.filtered.items())),
        "deduplicated": dict(sorted(stats.deduplicated.items())),
        "split": {"train": n_train, "eval": n_eval},
        **(extra or {}),
    }


def load_earlier_views(datasets: list[DatasetPublic], views: PreferenceViews) -> None:
    """The preference rows of earlier versions (those built before the views existed have none)."""
    for dataset in datasets:
        for view in PREFERENCE_VIEWS:
            for path in dataset.view_paths(view):
                if path.exists():
                    with path.open(encoding="utf-8") as handle:
                        views.add_earlier(view, [json.loads(line) for line in handle if line.strip()])


def kto_label_counts(train_path: Path) -> dict[str, int]:
    """Desirable / undesirable rows of the kto view's train split (the trainer weighs the classes by them)."""
    labels: Counter[bool] = Counter()
    with train_path.open(encoding="utf-8") as handle:
        for line in handle:
            labels[bool(json.loads(line)["label"])] += 1
    return {"desirable": labels[True], "undesirable": labels[False]}

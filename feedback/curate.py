"""Curation: logged interactions, feedback and seed files in; one immutable, versioned dataset out.

Stages, each counted by reason in the manifest:
  select  (feedback/selection.py)   rated chat interactions and validated seed lines become examples
  system  (feedback/filters.py)     the system prompt preserved, normalised or dropped
  scrub   (feedback/scrub.py)       secrets and personal data replaced, before anything is written
  filter  (feedback/filters.py)     refusals, too short / too long in the base model's tokens
  dedup   (feedback/lsh.py)         exact then near-duplicates, also against earlier versions
  split   (feedback/split.py)       train/eval by the hash of the prompt
Three views of one version come out: `sft` (train.jsonl, eval.jsonl: chat examples), and the preference
views `kto` and `dpo` (feedback/views.py), under the same rules and one split threshold, so a prompt is on
the same side in every view. The id hashes every view's files.
Everything streams in batches; what stays in memory grows only with the examples kept (their dedup
keys, ~1 KB each). The output goes to a temporary directory that is renamed into place, so a
version directory is either complete or absent; its id is derived from its content.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine

from core.chat_format import EVAL_FILE, MANIFEST_FILE, TRAIN_FILE, VIEW_FILES, check_messages, content_sha256
from core.clock import as_utc, utcnow
from core.settings import DEFAULT_BASE_DIR, Settings
from feedback.datasets import (
    Dataset,
    DatasetPublic,
    dataset_id_for,
    latest_dataset,
    list_datasets,
    record_dataset,
)
from feedback.examples import BadLine, Example, example_line, iter_seed_file
from feedback.filters import RefusalFilter, TokenCounter, apply_system_prompt, length_reason
from feedback.lsh import Deduplicator
from feedback.policy import CurationPolicy
from feedback.scrub import Scrubber
from feedback.selection import count_window, iter_rated_interactions, rate_interaction, sft_example
from feedback.split import eval_cutoff, split_fraction
from feedback.views import PREFERENCE_VIEWS, PreferenceViews, kto_label_counts, load_earlier_views, view_counts

ALL_HISTORY = datetime(1970, 1, 1, tzinfo=UTC)  # pass as `since` to ignore earlier datasets' windows
MAX_BAD_LINES_IN_MANIFEST = 1000

# progress(event, n): ("total", interactions expected) once, then ("advance", interactions read).
ProgressFn = Callable[[str, int], None]


@dataclass
class CurationResult:
    alias: str
    dataset_id: str | None  # None on a dry run or when nothing new was found
    sha256: str | None  # the would-be hash on a dry run too
    counts: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)  # train, eval, manifest, dir
    n_train: int = 0
    n_eval: int = 0
    window_start: datetime | None = None
    window_end: datetime | None = None
    bad_lines: list[BadLine] = field(default_factory=list)
    dry_run: bool = False
    already_existed: bool = False  # the same content was built before; nothing was rewritten


class _Stats:
    def __init__(self) -> None:
        self.excluded: Counter[str] = Counter()
        self.selected: Counter[str] = Counter()
        self.filtered: Counter[str] = Counter()
        self.deduplicated: Counter[str] = Counter()
        self.bad_lines: list[BadLine] = []
        self.n_bad_lines = 0


def curate(
    engine: Engine,
    settings_or_home: Settings | Path | str,
    policy: CurationPolicy,
    alias: str,
    since: datetime | None = None,
    dry_run: bool = False,
    *,
    until: datetime | None = None,
    seed_files: Sequence[Path | str] = (),
    progress: ProgressFn | None = None,
    earlier: Sequence[DatasetPublic] | None = None,
) -> CurationResult:
    """Build the next dataset version of `alias`.

    `since` defaults to the end of the latest version's window (all history if there is none); `until`
    to now. Building twice from the same store, seeds and window gives the same id. `earlier` are the
    versions whose conversations are not taken again (policy.dedup_against_earlier_versions); default: all
    of the alias's versions (the cycle passes only those a model was trained on).
    """
    home, tokenizer_path = _resolve_home(settings_or_home, policy)
    until = as_utc(until) if until is not None else utcnow()
    if since is None:
        previous = latest_dataset(engine, alias)
        since = previous.window_end if previous is not None else None
    since = as_utc(since) if since is not None else None
    counter = TokenCounter(tokenizer_path) if policy.needs_tokenizer else None
    notify = progress or (lambda _event, _n: None)

    datasets_dir = home / "datasets"
    if dry_run:  # a dry run leaves nothing behind in HOME
        work = Path(tempfile.mkdtemp(prefix="tuneloop-curate-"))
    else:  # next to its final place, so publishing is one rename on one filesystem
        datasets_dir.mkdir(parents=True, exist_ok=True)
        work = datasets_dir / f".tmp-{uuid.uuid4().hex}"
        work.mkdir()
    try:
        stats = _Stats()
        scrubber = Scrubber(policy.scrub_kinds, policy.scrub_extra)
        dedup = Deduplicator(
            num_perm=policy.num_perm, shingle_size=policy.shingle_size, threshold=policy.near_dup_threshold,
            seed=policy.minhash_seed, include_system=policy.dedup_include_system,
        )
        views = PreferenceViews(policy, Scrubber(policy.scrub_kinds, policy.scrub_extra), counter, work)
        earlier_count = 0
        if policy.dedup_against_earlier_versions:
            versions = list_datasets(engine, alias) if earlier is None else list(earlier)
            earlier_count = _load_earlier_versions(versions, alias, dedup, policy)
            load_earlier_views(versions, views)
        in_window, rated = count_window(engine, alias, since, until)
        stats.excluded["no_feedback"] = in_window - rated
        for view_stats in views.stats.values():
            view_stats.excluded["no_feedback"] = in_window - rated
        notify("total", rated)

        fractions = array("d")
        seeds_info: list[dict[str, Any]] = []
        with (work / "kept.jsonl").open("w", encoding="utf-8") as kept, (work / "sources.txt").open("w") as sources:
            stage = _Stage(policy, scrubber, counter, dedup, stats, kept, sources, fractions)
            for path in seed_files:
                stage.run_all(_seed_examples(Path(path), stats, seeds_info), policy.batch_size)
            for page in iter_rated_interactions(engine, alias, since, until, policy.batch_size):
                candidates, rated_batch = [], []
                for row, votes in page:
                    rated_row = rate_interaction(row, votes)
                    if isinstance(rated_row, str):
                        stats.excluded[rated_row] += 1
                        views.exclude(rated_row)
                        continue
                    rated_batch.append(rated_row)
                    outcome = sft_example(rated_row)
                    if isinstance(outcome, str):
                        stats.excluded[outcome] += 1
                    else:
                        stats.selected[outcome.kind] += 1
                        candidates.append(outcome)
                stage.run(candidates)
                views.add(rated_batch)
                notify("advance", len(page))
            views.finish()

        all_fractions = [*fractions, *views.fractions["kto"], *views.fractions["dpo"]]
        cutoff = eval_cutoff(all_fractions, policy.eval_fraction, policy.min_eval_examples)
        n_eval_by_hash = sum(1 for f in fractions if f < policy.eval_fraction)
        file_sha = _write_splits(work, "kept.jsonl", VIEW_FILES["sft"], [f < cutoff for f in fractions])
        view_split: dict[str, Any] = {}
        for view in PREFERENCE_VIEWS:
            mask = [f < cutoff for f in views.fractions[view]]
            file_sha.update(_write_splits(work, views.kept_paths[view].name, VIEW_FILES[view], mask))
            view_split[view] = (len(mask) - sum(mask), sum(mask))
        n_kept, n_eval = len(fractions), sum(1 for f in fractions if f < cutoff)
        counts: dict[str, Any] = {
            "interactions": {"in_window": in_window, "rated": rated},
            "excluded": dict(sorted(stats.excluded.items())),
            "selected": dict(sorted(stats.selected.items())),
            "seed_bad_lines": stats.n_bad_lines,
            "scrubbed": dict(sorted((k, v) for k, v in scrubber.counts.items() if v)),
            "filtered": dict(sorted(stats.filtered.items())),
            "deduplicated": dict(sorted(stats.deduplicated.items())),
            "earlier_version_examples": earlier_count,
            "split": {"train": n_kept - n_eval, "eval": n_eval, "eval_promoted": n_eval - n_eval_by_hash},
            "views": {
                "sft": {"split": {"train": n_kept - n_eval, "eval": n_eval}},
                # one scrubber reads the texts of both preference views
                "preference_scrubbed": dict(sorted((k, v) for k, v in views.scrubber.counts.items() if v)),
                "kto": view_counts(views.stats["kto"], *view_split["kto"],
                                   {"labels": kto_label_counts(work / VIEW_FILES["kto"][0])}),
                "dpo": view_counts(views.stats["dpo"], *view_split["dpo"]),
            },
        }
        result = CurationResult(
            alias=alias, dataset_id=None, sha256=None, counts=counts, n_train=n_kept - n_eval, n_eval=n_eval,
            window_start=since, window_end=until, bad_lines=stats.bad_lines, dry_run=dry_run,
        )
        if n_kept == 0 and not any(sum(view_split[v]) for v in PREFERENCE_VIEWS):
            return result
        sha256 = content_sha256(alias, file_sha)
        result.sha256 = sha256
        if dry_run:
            return result
        dataset_id = dataset_id_for(sha256)
        manifest = {
            "id": dataset_id, "sha256": sha256, "alias": alias, "created_at": utcnow().isoformat(),
            "window": {"since": since.isoformat() if since else None, "until": until.isoformat()},
            "n_train": result.n_train, "n_eval": n_eval,
            "files": file_sha,
            "counts": counts, "policy": policy.to_dict(),
            "dedup": {"lsh_bands": dedup.index.bands, "lsh_rows": dedup.index.rows, "scheme": "datasketch affine32"},
            "seed_files": seeds_info,
            "bad_lines": [vars(b) for b in stats.bad_lines],
        }
        _write_manifest(work / MANIFEST_FILE, manifest, work / "sources.txt")
        for scratch in ("kept.jsonl", "sources.txt", *(views.kept_paths[v].name for v in PREFERENCE_VIEWS)):
            (work / scratch).unlink()
        final = datasets_dir / dataset_id
        result.already_existed = not _publish(work, final)
        row = record_dataset(engine, Dataset(
            id=dataset_id, alias=alias, sha256=sha256, path=str(final.resolve()), n_train=result.n_train,
            n_eval=n_eval, counts=counts, policy=policy.to_dict(), window_start=since, window_end=until,
        ))
        result.dataset_id = row.id
        result.paths = {"dir": final, "train": final / TRAIN_FILE, "eval": final / EVAL_FILE,
                        "manifest": final / MANIFEST_FILE}
        for view in PREFERENCE_VIEWS:
            result.paths[f"{view}_train"], result.paths[f"{view}_eval"] = (final / n for n in VIEW_FILES[view])
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Stage:
    """The per-batch stages after selection; kept examples are appended to `kept` in stream order."""

    def __init__(
        self, policy: CurationPolicy, scrubber: Scrubber, counter: TokenCounter | None, dedup: Deduplicator,
        stats: _Stats, kept: TextIO, sources: TextIO, fractions: array,
    ) -> None:
        self.policy, self.scrubber, self.counter, self.dedup = policy, scrubber, counter, dedup
        self.refusals = RefusalFilter(policy.refusal_patterns)
        self.stats, self.kept, self.sources, self.fractions = stats, kept, sources, fractions

    def run_all(self, examples: Iterable[Example], batch_size: int) -> None:
        batch: list[Example] = []
        for example in examples:
            batch.append(example)
            if len(batch) >= batch_size:
                self.run(batch)
                batch = []
        self.run(batch)

    def run(self, batch: list[Example]) -> None:
        policy, filtered = self.policy, self.stats.filtered
        survivors: list[Example] = []
        for example in batch:
            messages = apply_system_prompt(example.messages, policy.system_prompt_mode, policy.system_prompt)
            example.messages = self.scrubber.scrub_messages(messages)
            if self.refusals.is_refusal(example.messages):
                filtered["refusal"] += 1
            else:
                survivors.append(example)
        if self.counter is not None and survivors:
            lengths = self.counter.count([e.messages for e in survivors])
            within = []
            for example, n_tokens in zip(survivors, lengths, strict=True):
                reason = length_reason(n_tokens, policy.min_tokens, policy.max_tokens)
                if reason:
                    filtered[reason] += 1
                else:
                    within.append(example)
            survivors = within
        reasons = self.dedup.filter([e.messages for e in survivors]) if survivors else []
        for example, reason in zip(survivors, reasons, strict=True):
            if reason:
                self.stats.deduplicated[reason] += 1
                continue
            self.kept.write(example_line(example) + "\n")
            self.sources.write((example.interaction_id or "") + "\n")
            self.fractions.append(split_fraction(example.messages))


def _seed_examples(path: Path, stats: _Stats, seeds_info: list[dict[str, Any]]) -> Iterator[Example]:
    if not path.is_file():
        raise ValueError(f"seed file {path} does not exist")
    digest = hashlib.sha256()
    good = bad = 0
    for item in iter_seed_file(path, digest):
        if isinstance(item, BadLine):
            bad += 1
            stats.n_bad_lines += 1
            if len(stats.bad_lines) < MAX_BAD_LINES_IN_MANIFEST:
                stats.bad_lines.append(item)
        else:
            good += 1
            stats.selected["seed"] += 1
            yield item
    seeds_info.append({"file": path.name, "sha256": digest.hexdigest(), "good_lines": good, "bad_lines": bad})


def _load_earlier_versions(datasets: Sequence[DatasetPublic], alias: str, dedup: Deduplicator,
                           policy: CurationPolicy) -> int:
    """Index every example of the alias's earlier versions, so a conversation is trained on only once."""
    loaded = 0
    for dataset in datasets:
        for path in (dataset.train_path, dataset.eval_path):
            if not path.exists():
                raise ValueError(f"dataset {dataset.id}: {path} is missing; the versions of {alias} are damaged")
            batch = []
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    messages, _ = check_messages(json.loads(line)["messages"])
                    if messages is not None:
                        batch.append(messages)
                    if len(batch) >= policy.batch_size:
                        dedup.add_earlier(batch)
                        loaded, batch = loaded + len(batch), []
            dedup.add_earlier(batch)
            loaded += len(batch)
    return loaded


def _write_splits(work: Path, kept_name: str, names: tuple[str, str], to_eval: list[bool]) -> dict[str, str]:
    """Route a view's kept lines (stream order) to its train and eval files; the sha256 of each file."""
    train_name, eval_name = names
    hashes = {train_name: hashlib.sha256(), eval_name: hashlib.sha256()}
    with (
        (work / kept_name).open("rb") as kept,
        (work / train_name).open("wb") as train,
        (work / eval_name).open("wb") as evaluation,
    ):
        for line, is_eval in zip(kept, to_eval, strict=True):
            name, out = (eval_name, evaluation) if is_eval else (train_name, train)
            out.write(line)
            hashes[name].update(line)
        for handle in (train, evaluation):
            handle.flush()
            os.fsync(handle.fileno())
    return {name: digest.hexdigest() for name, digest in hashes.items()}


def _write_manifest(path: Path, manifest: dict[str, Any], sources: Path) -> None:
    """manifest.json with the source interaction ids streamed in (there can be millions)."""
    head = json.dumps(manifest, indent=2, ensure_ascii=False)
    with path.open("w", encoding="utf-8") as out, sources.open(encoding="utf-8") as ids:
        out.write(head[: head.rindex("}")].rstrip() + ',\n  "source_interaction_ids": [')
        first = True
        for line in ids:
            interaction_id = line.rstrip("\n")
            if interaction_id:
                out.write(("\n    " if first else ",\n    ") + json.dumps(interaction_id))
                first = False
        out.write("\n  ]\n}\n")
        out.flush()
        os.fsync(out.fileno())


def _publish(work: Path, final: Path) -> bool:
    """Rename the finished directory into place; False when that version already exists (kept as is)."""
    if final.exists():
        return False
    try:
        work.rename(final)
    except OSError:
        if final.exists():  # a concurrent run published the same content first
            return False
        raise
    _fsync_dir(final.parent)
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _resolve_home(settings_or_home: Settings | Path | str, policy: CurationPolicy) -> tuple[Path, str]:
    if isinstance(settings_or_home, Settings):
        home, base = settings_or_home.home, settings_or_home.resolved_base_model
    else:
        home = Path(settings_or_home)
        base = str((home / "models" / DEFAULT_BASE_DIR).resolve())
    return home.resolve(), policy.tokenizer or base

"""curate() end to end on stores filled with SQLModel rows: counts, outputs, versions, reproducibility."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from core.db import make_engine, migrate
from feedback.curate import ALL_HISTORY, curate
from feedback.datasets import get_dataset, latest_dataset, list_datasets
from feedback.models import Feedback, Interaction
from feedback.policy import CurationPolicy

T0 = datetime(2026, 3, 1, tzinfo=UTC)
NO_LENGTH = {"min_tokens": 0, "max_tokens": None}  # most tests need no tokenizer
WORDS = [f"{a}{b}{c}" for a in "bcdfgklmnprstvw" for b in "aeiou" for c in "dklmnrstx"]


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


class Store:
    """Writes interactions and feedback the way the gateway does (one row each, UTC timestamps)."""

    def __init__(self, engine: Engine, seed: int = 0) -> None:
        self.engine, self.rng, self.n = engine, random.Random(seed), 0

    def add(
        self, *, votes: tuple[tuple[str, str | None], ...] = (("up", None),), question: str | None = None,
        answer: str | None = None, minute: float | None = None, alias: str = "support", **columns,
    ) -> str:
        self.n += 1
        interaction_id = f"req-{self.n:05d}"
        created = T0 + timedelta(minutes=self.n if minute is None else minute)
        body = {"model": alias, "messages": [
            {"role": "system", "content": "You answer for the support team."},
            {"role": "user", "content": question or _words(self.rng, 25)},
        ]}
        values = dict(response_text=answer if answer is not None else _words(self.rng, 40), finish_reason="stop",
                      status="ok", endpoint="chat.completions")
        values.update(columns)
        with Session(self.engine) as session:
            session.add(Interaction(id=interaction_id, api_key_id="key", model_alias=alias, served_version="v1",
                                    request_body=body, created_at=created, **values))
            session.commit()
            for user_index, (rating, correction) in enumerate(votes):
                session.add(Feedback(interaction_id=interaction_id, rating=rating, correction=correction,
                                     end_user=f"user{user_index}", api_key_id="key", created_at=created,
                                     updated_at=created + timedelta(seconds=30)))
            session.commit()
        return interaction_id


def _policy(**overrides) -> CurationPolicy:
    return CurationPolicy(**{"min_eval_examples": 2, **NO_LENGTH, **overrides})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_curate_run_selects_scrubs_dedups_splits_and_records(any_db_url: str, tmp_path: Path) -> None:
    engine = make_engine(any_db_url)
    store = Store(engine)
    kept_ids = [store.add() for _ in range(20)]
    corrected = store.add(votes=(("down", "The fix, mail ops@example.com or call +1 (555) 123-4567."),))
    store.add(votes=(("down", None),))
    store.add(status="upstream_error", response_text=None)
    store.add(answer="   ")
    store.add(finish_reason="length")
    store.add(endpoint="completions")
    store.add(votes=(("up", None), ("down", "other")))
    store.add(votes=())
    store.add(answer="I'm sorry, but I can't help with that request.")
    leaked = store.add(question="my key is sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12, why does it fail? " + _words(store.rng, 9))
    duplicate_question = store.add(question="How do I reset my password in the admin console today?",
                                   answer="Open settings, choose security, press reset and confirm by e-mail.")
    store.add(question="How do I reset my password in the admin console today?",
              answer="Open settings, choose security, press reset and confirm by e-mail!")
    store.add(question="how do I reset my  password in the admin console today?",
              answer="Open settings, choose security, press reset and confirm by e-mail.")

    result = curate(engine, tmp_path, _policy(), "support", until=T0 + timedelta(days=1))

    counts = result.counts
    assert counts["interactions"] == {"in_window": 33, "rated": 32}
    assert counts["excluded"] == {
        "conflicting_ratings": 1, "down_without_correction": 1, "empty_answer": 1, "no_feedback": 1,
        "not_chat": 1, "truncated": 1, "upstream_error": 1,
    }
    assert counts["selected"] == {"correction": 1, "thumbs_up": 25}
    assert counts["filtered"] == {"refusal": 1}
    assert counts["deduplicated"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert counts["scrubbed"] == {"api_key": 1, "email": 1, "phone": 1}
    assert result.n_train + result.n_eval == 20 + 1 + 1 + 1
    assert counts["split"]["eval"] == result.n_eval >= 2

    assert result.dataset_id == "ds-" + result.sha256[:16]
    assert result.paths["dir"] == tmp_path.resolve() / "datasets" / result.dataset_id
    examples = _lines(result.paths["train"]) + _lines(result.paths["eval"])
    by_source = {e["source"]: e["messages"] for e in examples}
    assert set(by_source) == {f"interaction:{i}" for i in [*kept_ids, corrected, leaked, duplicate_question]}
    assert by_source[f"interaction:{corrected}"][-1]["content"] == "The fix, mail [EMAIL] or call [PHONE]."
    assert by_source[f"interaction:{leaked}"][1]["content"].startswith("my key is [API_KEY], why")
    assert "sk-proj" not in result.paths["train"].read_text() + result.paths["eval"].read_text()

    manifest = json.loads(result.paths["manifest"].read_text())
    assert manifest["id"] == result.dataset_id and manifest["sha256"] == result.sha256
    assert manifest["alias"] == "support" and manifest["counts"] == counts
    assert manifest["policy"]["near_dup_threshold"] == 0.8
    assert sorted(manifest["source_interaction_ids"]) == sorted(s.split(":")[1] for s in by_source)
    row = get_dataset(engine, result.dataset_id)
    assert row is not None and (row.n_train, row.n_eval) == (result.n_train, result.n_eval)
    assert row.window_end == T0 + timedelta(days=1) and row.path == str(result.paths["dir"])
    assert not [p for p in (tmp_path / "datasets").iterdir() if p.name.startswith(".tmp")]
    engine.dispose()


def test_same_inputs_give_the_same_version_whatever_the_batch_size(tmp_path: Path) -> None:
    results = []
    for name, batch_size in (("one", 1000), ("two", 3)):
        url = f"sqlite:///{tmp_path / name}.db"
        migrate(url)
        engine = make_engine(url)
        store = Store(engine, seed=42)
        for i in range(30):
            store.add(question=("Same question about invoices?" if i % 10 == 0 else None))
        results.append(curate(engine, tmp_path / name, _policy(batch_size=batch_size), "support",
                              until=T0 + timedelta(days=1)))
        engine.dispose()
    one, two = results
    assert one.dataset_id == two.dataset_id is not None
    for name in ("train", "eval"):
        assert one.paths[name].read_bytes() == two.paths[name].read_bytes()


def test_next_night_skips_what_earlier_versions_hold(sqlite_engine: Engine, tmp_path: Path) -> None:
    store = Store(sqlite_engine)
    first_answers = []
    for i in range(12):
        answer = _words(store.rng, 40)
        first_answers.append(answer)
        store.add(answer=answer, question=f"first night question {i} " + _words(store.rng, 20), minute=i)
    first = curate(sqlite_engine, tmp_path, _policy(), "support", until=T0 + timedelta(hours=1))
    assert first.dataset_id is not None and first.window_start is None

    # The next night: one conversation repeated verbatim, one nearly, and two new ones.
    repeated = _lines(first.paths["train"])[0]["messages"]
    store.add(question=repeated[1]["content"], answer=repeated[2]["content"], minute=120)
    store.add(question=repeated[1]["content"], answer=repeated[2]["content"] + " Thanks.", minute=121)
    store.add(minute=122)
    store.add(minute=123)
    second = curate(sqlite_engine, tmp_path, _policy(), "support", until=T0 + timedelta(hours=3))
    assert second.window_start == T0 + timedelta(hours=1)  # since the last version, by default
    assert second.counts["interactions"]["in_window"] == 4
    assert second.counts["earlier_version_examples"] == 12
    assert second.counts["deduplicated"] == {
        "exact_duplicate_of_earlier_version": 1, "near_duplicate_of_earlier_version": 1,
    }
    assert second.n_train + second.n_eval == 2
    assert [d.id for d in list_datasets(sqlite_engine, "support")] == [first.dataset_id, second.dataset_id]

    third = curate(sqlite_engine, tmp_path, _policy(), "support", until=T0 + timedelta(hours=4))
    assert third.dataset_id is None and third.counts["interactions"]["in_window"] == 0
    assert latest_dataset(sqlite_engine, "support").id == second.dataset_id


def test_a_version_is_immutable(sqlite_engine: Engine, tmp_path: Path) -> None:
    store = Store(sqlite_engine)
    for _ in range(6):
        store.add()
    policy = _policy(dedup_against_earlier_versions=False)
    first = curate(sqlite_engine, tmp_path, policy, "support", until=T0 + timedelta(days=1))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first.paths["dir"].iterdir()}
    again = curate(sqlite_engine, tmp_path, policy, "support", since=ALL_HISTORY, until=T0 + timedelta(days=1))
    assert again.dataset_id == first.dataset_id and again.already_existed
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first.paths["dir"].iterdir()} == before
    assert len(list_datasets(sqlite_engine)) == 1


def test_dry_run_writes_nothing_and_predicts_the_hash(sqlite_engine: Engine, tmp_path: Path) -> None:
    store = Store(sqlite_engine)
    for _ in range(8):
        store.add()
    dry = curate(sqlite_engine, tmp_path, _policy(), "support", until=T0 + timedelta(days=1), dry_run=True)
    assert dry.dataset_id is None and dry.sha256 and dry.n_train + dry.n_eval == 8
    assert not (tmp_path / "datasets").exists() and list_datasets(sqlite_engine) == []
    real = curate(sqlite_engine, tmp_path, _policy(), "support", until=T0 + timedelta(days=1))
    assert real.sha256 == dry.sha256


def test_split_is_by_prompt_and_stable_across_versions(sqlite_engine: Engine, tmp_path: Path) -> None:
    store = Store(sqlite_engine)
    questions = [f"question {i}: " + _words(store.rng, 12) for i in range(200)]
    for i, question in enumerate(questions):
        store.add(question=question, minute=i)
    policy = _policy(eval_fraction=0.1, min_eval_examples=0)
    first = curate(sqlite_engine, tmp_path, policy, "support", until=T0 + timedelta(days=1))
    eval_questions = {e["messages"][1]["content"] for e in _lines(first.paths["eval"])}
    assert 8 <= len(eval_questions) <= 35  # ~10% of 200
    # Later, the same questions get new (different) answers: each stays on its side.
    for i, question in enumerate(questions[:60]):
        store.add(question=question, minute=2000 + i)
    second = curate(sqlite_engine, tmp_path, policy, "support", until=T0 + timedelta(days=3))
    assert second.n_train + second.n_eval == 60
    assert {e["messages"][1]["content"] for e in _lines(second.paths["eval"])} == eval_questions & set(questions[:60])


def test_small_sets_get_a_minimum_eval_count(sqlite_engine: Engine, tmp_path: Path) -> None:
    store = Store(sqlite_engine)
    for _ in range(10):
        store.add()
    result = curate(sqlite_engine, tmp_path, _policy(eval_fraction=0.0, min_eval_examples=3), "support",
                    until=T0 + timedelta(days=1))
    assert (result.n_train, result.n_eval) == (7, 3)
    assert result.counts["split"]["eval_promoted"] == 3
    tiny = curate(sqlite_engine, tmp_path / "b", _policy(eval_fraction=0.0, min_eval_examples=50,
                                                         dedup_against_earlier_versions=False),
                  "support", since=ALL_HISTORY, until=T0 + timedelta(days=1), dry_run=True)
    assert (tiny.n_train, tiny.n_eval) == (5, 5)  # never more than half


def test_seed_files_are_validated_per_line(sqlite_engine: Engine, tmp_path: Path) -> None:
    good = {"messages": [{"role": "system", "content": "You are a PostgreSQL expert."},
                         {"role": "user", "content": "How do I create a non-blocking index on a large table?"},
                         {"role": "assistant", "content": "Use CREATE INDEX CONCURRENTLY (PostgreSQL 8.2+)."}]}
    other = {"messages": [{"role": "user", "content": "What causes index bloat and how do I fix it?"},
                          {"role": "assistant", "content": "Dead tuples; REINDEX CONCURRENTLY (PG 12+)."}]}
    lines = [
        json.dumps(good),
        '{"messages": [',
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        "",
        json.dumps({"text": "no messages"}),
        json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps(other),
        json.dumps([1, 2]),
    ]
    seed = tmp_path / "seed.jsonl"
    seed.write_text("\n".join(lines) + "\n")
    result = curate(sqlite_engine, tmp_path, _policy(), "support", until=T0, seed_files=[seed])
    assert [(b.line, b.reason) for b in result.bad_lines] == [
        (2, "invalid JSON: Expecting value at column 15"),
        (3, "the last message must be the assistant's answer"),
        (5, 'no "messages" key'),
        (6, "messages[0].role must be one of system, user, assistant (got 'wizard')"),
        (8, "a line must be a JSON object"),
    ]
    assert result.counts["selected"] == {"seed": 2} and result.counts["seed_bad_lines"] == 5
    examples = _lines(result.paths["train"]) + _lines(result.paths["eval"])
    assert sorted(e["source"] for e in examples) == ["seed:seed.jsonl:1", "seed:seed.jsonl:7"]
    manifest = json.loads(result.paths["manifest"].read_text())
    assert manifest["seed_files"][0]["good_lines"] == 2 and len(manifest["bad_lines"]) == 5
    assert manifest["source_interaction_ids"] == []


def test_system_prompt_modes(sqlite_engine: Engine, tmp_path: Path) -> None:
    store = Store(sqlite_engine)
    store.add()
    until = T0 + timedelta(days=1)
    kwargs = dict(since=ALL_HISTORY, until=until, dry_run=False)
    policies = {
        "preserve": _policy(dedup_against_earlier_versions=False),
        "normalise": _policy(system_prompt_mode="normalise", system_prompt="Canonical prompt.",
                             dedup_against_earlier_versions=False),
        "drop": _policy(system_prompt_mode="drop", dedup_against_earlier_versions=False),
    }
    first_turns = {}
    for mode, policy in policies.items():
        result = curate(sqlite_engine, tmp_path / mode, policy, "support", **kwargs)
        messages = (_lines(result.paths["train"]) + _lines(result.paths["eval"]))[0]["messages"]
        first_turns[mode] = messages[0]
    assert first_turns["preserve"] == {"role": "system", "content": "You answer for the support team."}
    assert first_turns["normalise"] == {"role": "system", "content": "Canonical prompt."}
    assert first_turns["drop"]["role"] == "user"


def test_length_filter_counts_tokens_of_the_base_model(
    sqlite_engine: Engine, tmp_path: Path, demo_model_dir: Path
) -> None:
    store = Store(sqlite_engine)
    store.add(question="hi", answer="ok")
    store.add()
    store.add(answer=_words(store.rng, 900))
    policy = CurationPolicy(min_tokens=60, max_tokens=1000, tokenizer=str(demo_model_dir), min_eval_examples=0)
    result = curate(sqlite_engine, tmp_path, policy, "support", until=T0 + timedelta(days=1))
    assert result.counts["filtered"] == {"too_long": 1, "too_short": 1}
    assert result.n_train + result.n_eval == 1


def test_a_missing_tokenizer_is_a_clear_error(sqlite_engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer: no tokenizer at"):
        curate(sqlite_engine, tmp_path, CurationPolicy(), "support")

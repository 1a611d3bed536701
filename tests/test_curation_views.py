"""The three views of one dataset version (sft, kto, dpo) from a hand-built store: every rule, every count,
one split for all views, and an id that covers them all."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from core.db import make_engine
from feedback.curate import curate
from feedback.datasets import get_dataset
from tests.test_curation import T0, Store, _lines, _policy

REFUSAL = "I'm sorry, but I cannot help with that request."


def _views(result) -> dict[str, dict[str, list[dict]]]:
    root = result.paths["dir"]
    return {view: {"train": _lines(root / f"{prefix}train.jsonl"), "eval": _lines(root / f"{prefix}eval.jsonl")}
            for view, prefix in (("sft", ""), ("kto", "kto_"), ("dpo", "dpo_"))}


def _sides(result) -> dict[str, set[str]]:
    """Question -> the splits it appears in, over every view; asserts each question is on one side only."""
    side: dict[str, set[str]] = {}
    for splits in _views(result).values():
        for split, rows in splits.items():
            for row in rows:
                side.setdefault(_question(row), set()).add(split)
    assert all(len(sides) == 1 for sides in side.values()), {q: s for q, s in side.items() if len(s) > 1}
    return side


def _question(row: dict) -> str:
    messages = row.get("prompt") or row["messages"][:-1]
    return next(m["content"] for m in messages if m["role"] == "user")


def test_every_rule_and_every_count_of_the_three_views(any_db_url: str, tmp_path: Path) -> None:
    engine = make_engine(any_db_url)
    store = Store(engine)
    ups = [store.add(question=f"Question {i}: which plan fits a team of {i + 3}?", answer=f"The team plan, {i}.")
           for i in range(6)]
    corrected = store.add(question="Where is parcel 77?", answer="It is lost.",
                          votes=(("down", "It arrives Monday; write to ops@example.com."),))
    bare_down = store.add(question="What is the refund window?", answer="Ninety years.", votes=(("down", None),))
    store.add(question="Reset my password", answer="", votes=(("down", "Use the reset link on the login page."),))
    store.add(question="Summarise my invoice", answer="Your invoice lists", finish_reason="length")
    store.add(question="Which colour is the logo?", answer="   ")
    store.add(question="Can you share the admin password?", answer=REFUSAL, votes=(("down", None),))
    store.add(question="How do I export data?", answer=REFUSAL)
    # One question answered twice, rated both ways: a thumbs pair; the same answer rated up twice: a duplicate.
    store.add(question="Which port does the API use?", answer="Port 8080.", votes=(("down", None),))
    right = store.add(question="Which port does the API use?", answer="Port 443.")
    store.add(question="Which port does the API use?", answer="Port 443.")
    store.add(endpoint="completions")
    store.add(status="upstream_error", response_text=None)
    store.add(votes=(("up", None), ("down", "other")))
    store.add(votes=())

    result = curate(engine, tmp_path, _policy(eval_fraction=0.0, min_eval_examples=0), "support")
    counts, views = result.counts, _views(result)
    shared = {"not_chat": 1, "conflicting_ratings": 1, "no_feedback": 1, "upstream_error": 1}
    kto_counts, dpo_counts = counts["views"]["kto"], counts["views"]["dpo"]
    assert counts["excluded"] == {**shared, "down_without_correction": 3, "empty_answer": 1, "truncated": 1}
    assert kto_counts["excluded"] == {**shared, "empty_answer": 2, "truncated": 1}
    assert kto_counts["selected"] == {"correction": 2, "thumbs_down": 4, "thumbs_up": 9}
    assert kto_counts["filtered"] == {"refusal": 1}  # the refusal rated up; the one rated down is a negative
    assert kto_counts["deduplicated"] == {"exact_duplicate": 1}
    assert kto_counts["labels"] == {"desirable": 9, "undesirable": 4}
    assert kto_counts["split"] == {"train": 13, "eval": 0}
    assert dpo_counts["selected"] == {"correction": 1, "thumbs_pair": 1}
    assert dpo_counts["excluded"] == {**shared, "empty_answer": 1, "no_correction": 3, "thumbs_up": 11}
    assert dpo_counts["split"] == {"train": 2, "eval": 0}
    assert counts["views"]["preference_scrubbed"] == {"email": 1}

    kto = {(_question(r), r["completion"], r["label"]): r for r in views["kto"]["train"]}
    assert (_question(views["kto"]["train"][0]), views["kto"]["train"][0]["label"]) == ("Question 0: which plan "
                                                                                        "fits a team of 3?", True)
    assert kto[("Where is parcel 77?", "It is lost.", False)]["source"] == f"interaction:{corrected}"
    assert ("Where is parcel 77?", "It arrives Monday; write to [EMAIL].", True) in kto
    assert kto[("What is the refund window?", "Ninety years.", False)]["source"] == f"interaction:{bare_down}"
    assert ("Reset my password", "Use the reset link on the login page.", True) in kto
    assert ("Can you share the admin password?", REFUSAL, False) in kto
    assert not any(q == "How do I export data?" for q, _a, _l in kto)
    assert [r["kind"] for r in views["kto"]["train"]].count("thumbs_up") == 6 + 1  # six plans, port 443 once
    assert {r["source"] for r in views["kto"]["train"] if r["kind"] == "thumbs_up"} >= {f"interaction:{i}" for i in ups}

    dpo = {_question(r): r for r in views["dpo"]["train"]}
    assert set(dpo) == {"Where is parcel 77?", "Which port does the API use?"}
    assert (dpo["Where is parcel 77?"]["chosen"], dpo["Where is parcel 77?"]["rejected"]) == (
        "It arrives Monday; write to [EMAIL].", "It is lost.")
    pair = dpo["Which port does the API use?"]
    assert (pair["chosen"], pair["rejected"], pair["kind"], pair["source"]) == (
        "Port 443.", "Port 8080.", "thumbs_pair", f"interaction:{right}")
    assert all(set(r) >= {"prompt", "completion", "label", "source"} for r in views["kto"]["train"])

    sft_questions = {_question(r) for r in views["sft"]["train"]}
    assert "What is the refund window?" not in sft_questions and "Where is parcel 77?" in sft_questions
    assert get_dataset(engine, result.dataset_id).view_sizes("kto") == {"train": 13, "eval": 0}


def test_a_prompt_is_on_the_same_side_of_the_split_in_every_view(any_db_url: str, tmp_path: Path) -> None:
    engine = make_engine(any_db_url)
    store = Store(engine, seed=3)
    for i in range(60):
        question = f"Ticket {i}: {store.rng.choice(['refund', 'login', 'export', 'invoice'])} trouble, code {i * 7}"
        kind = i % 3
        if kind == 0:
            store.add(question=question, answer=f"Answer {i}, done.")
        elif kind == 1:
            store.add(question=question, answer=f"Wrong {i}.", votes=(("down", f"Right {i}, fixed."),))
        else:  # only the preference views see these
            store.add(question=question, answer=f"Bad {i}.", votes=(("down", None),))
    result = curate(engine, tmp_path, _policy(eval_fraction=0.2, min_eval_examples=0), "support")
    side = _sides(result)
    eval_questions = {q for q, s in side.items() if s == {"eval"}}
    assert 4 <= len(eval_questions) <= 24  # the hash split, not everything on one side
    counts = result.counts["views"]
    assert counts["kto"]["split"]["eval"] + counts["kto"]["split"]["train"] == 60 + 20  # corrections add a row
    assert counts["dpo"]["split"]["eval"] + counts["dpo"]["split"]["train"] == 20


def test_the_top_up_of_a_small_eval_split_takes_whole_prompts_across_views(any_db_url: str, tmp_path: Path) -> None:
    """Too few prompts below eval_fraction: the lowest-hash prompts of all views move over, whole. The bare
    thumbs-down prompts are in the kto view only, so a top-up per view would pick different prompts."""
    engine = make_engine(any_db_url)
    store = Store(engine, seed=5)
    for i in range(12):
        store.add(question=f"Order {i * 13} is late, ref {i}", answer=f"Bad {i}.", votes=(("down", f"Fixed {i}."),))
        store.add(question=f"Invoice {i * 17} is wrong, ref {i}", answer=f"No {i}.", votes=(("down", None),))
    result = curate(engine, tmp_path, _policy(eval_fraction=0.0, min_eval_examples=4), "support")
    side = _sides(result)
    assert sum(1 for sides in side.values() if sides == {"eval"}) == 4
    counts = result.counts
    assert counts["split"]["eval"] == counts["views"]["dpo"]["split"]["eval"] == counts["split"]["eval_promoted"]


def test_the_id_covers_every_view(tmp_path: Path) -> None:
    """Two stores that differ only in an uncorrected thumbs-down answer (which only the kto view holds) give
    different versions; the same store twice gives the same one."""

    def build(name: str, bad_answer: str):
        engine = make_engine(f"sqlite:///{tmp_path / name}.db")
        from core.db import migrate

        migrate(f"sqlite:///{tmp_path / name}.db")
        store = Store(engine, seed=1)
        for i in range(5):
            store.add(question=f"Plan question {i}", answer=f"Plan answer {i}.")
        store.add(question="Refund window?", answer=bad_answer, votes=(("down", None),))
        return curate(engine, tmp_path / name, _policy(), "support")

    first, again, other = build("a", "Ninety years."), build("b", "Ninety years."), build("c", "Nine hours.")
    assert first.dataset_id == again.dataset_id
    assert other.dataset_id != first.dataset_id
    assert (first.paths["train"].read_bytes(), first.paths["eval"].read_bytes()) == (
        other.paths["train"].read_bytes(), other.paths["eval"].read_bytes())  # the sft view is the same
    manifest = json.loads(first.paths["manifest"].read_text())
    assert set(manifest["files"]) == {"train.jsonl", "eval.jsonl", "kto_train.jsonl", "kto_eval.jsonl",
                                      "dpo_train.jsonl", "dpo_eval.jsonl"}


def test_a_preference_learned_in_an_earlier_version_is_not_learned_again(any_db_url: str, tmp_path: Path) -> None:
    engine = make_engine(any_db_url)
    store = Store(engine, seed=7)
    store.add(question="What is the refund window?", answer="Ninety years.", votes=(("down", None),), minute=1)
    store.add(question="Where is parcel 77?", answer="It is lost.", votes=(("down", "It arrives Monday."),), minute=2)
    everything_trained = _policy(eval_fraction=0.0, min_eval_examples=0)
    first = curate(engine, tmp_path, everything_trained, "support", until=T0 + timedelta(minutes=10))
    assert first.counts["views"]["kto"]["labels"] == {"desirable": 1, "undesirable": 2}
    # The next day: the same wrong answers again, and one new one.
    store.add(question="What is the refund window?", answer="Ninety years.", votes=(("down", None),), minute=20)
    store.add(question="Where is parcel 77?", answer="It is lost.", votes=(("down", "It arrives Monday."),), minute=21)
    store.add(question="Do you ship to Oslo?", answer="Only by camel.", votes=(("down", None),), minute=22)
    second = curate(engine, tmp_path, everything_trained, "support", until=T0 + timedelta(minutes=30))
    kto, dpo = second.counts["views"]["kto"], second.counts["views"]["dpo"]
    assert kto["deduplicated"] == {"exact_duplicate_of_earlier_version": 3}
    assert kto["labels"] == {"desirable": 0, "undesirable": 1}
    assert dpo["deduplicated"] == {"exact_duplicate_of_earlier_version": 1}
    assert dpo["split"] == {"train": 0, "eval": 0}


def test_a_correction_that_repeats_the_answer_makes_no_pair() -> None:
    from feedback.selection import Rated
    from feedback.views import preference_rows

    prompt = [{"role": "user", "content": "Where is parcel 77?"}]
    rated = Rated(prompt, "It arrives Monday.", "down", "it arrives  monday.", False, "req-1")
    rows, excluded = preference_rows(rated, prompt, rated.answer, rated.correction)
    assert [(r.view, r.kind, r.label) for r in rows] == [("kto", "thumbs_down", False), ("kto", "correction", True)]
    assert excluded == []

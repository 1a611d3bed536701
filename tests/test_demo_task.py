"""The demo task: reproducible examples, a strict answer format, correctness that checks the copied fields."""

from __future__ import annotations

import json

import pytest

from trainer.demo_task import (
    STATUSES,
    SYSTEM_PROMPT,
    expected_fields,
    format_ok,
    is_correct,
    make_examples,
    reference_answer,
    task_vocabulary,
)


def test_examples_are_reproducible_chats_with_a_strict_reference_answer() -> None:
    first, again, other = make_examples(50, seed=7), make_examples(50, seed=7), make_examples(50, seed=8)
    assert first == again
    assert first != other
    for example in first:
        roles = [m["role"] for m in example["messages"]]
        assert roles == ["system", "user", "assistant"]
        system, user, assistant = (m["content"] for m in example["messages"])
        assert system == SYSTEM_PROMPT
        assert format_ok(assistant)
        assert is_correct(example["messages"], assistant)
        assert is_correct(user, assistant)
        answer = json.loads(assistant)
        assert str(answer["order_id"]) in user and answer["status"] in user


def test_examples_cover_every_status_and_phrasing() -> None:
    examples = make_examples(300, seed=0)
    statuses = {json.loads(e["messages"][2]["content"])["status"] for e in examples}
    assert statuses == set(STATUSES)
    openings = {e["messages"][1]["content"].split()[0] for e in examples}
    assert len(openings) >= 5


@pytest.mark.parametrize(
    "text",
    [
        '{"order_id": 4821, "status": "shipped"}',
        '  {"order_id": 4821, "status": "shipped"}\n',
        '{"order_id": 0, "status": "returned"}',
    ],
)
def test_format_ok_accepts_the_exact_form(text: str) -> None:
    assert format_ok(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"order_id":4821,"status":"shipped"}',  # other spacing
        '{"status": "shipped", "order_id": 4821}',  # other key order
        '{"order_id": "4821", "status": "shipped"}',  # id as a string
        '{"order_id": 4821, "status": "lost"}',  # unknown status
        '{"order_id": 4821, "status": "shipped", "eta": 2}',  # extra key
        '{"order_id": 04821, "status": "shipped"}',  # leading zero
        'Sure! {"order_id": 4821, "status": "shipped"}',  # chatter
        '{"order_id": 4821, "status": "shipped"',  # cut off
        "",
    ],
)
def test_format_ok_rejects_near_misses(text: str) -> None:
    assert not format_ok(text)


def test_is_correct_needs_the_copied_id_and_status() -> None:
    question = "Order 4821 shows as shipped, can you confirm?"
    assert expected_fields(question) == (4821, "shipped")
    assert is_correct(question, reference_answer(4821, "shipped"))
    assert not is_correct(question, reference_answer(4822, "shipped"))
    assert not is_correct(question, reference_answer(4821, "delivered"))
    assert not is_correct(question, '{"order_id":4821,"status":"shipped"}')
    assert not is_correct("Hello there", reference_answer(4821, "shipped"))


def test_is_correct_reads_the_last_user_turn_and_rejects_messages_without_one() -> None:
    messages = [
        {"role": "user", "content": "Order 11 is pending."},
        {"role": "assistant", "content": reference_answer(11, "pending")},
        {"role": "user", "content": "And order 12? It says delivered."},
    ]
    assert is_correct(messages, reference_answer(12, "delivered"))
    assert not is_correct(messages, reference_answer(11, "pending"))
    with pytest.raises(ValueError, match="no user turn"):
        is_correct([{"role": "system", "content": SYSTEM_PROMPT}], reference_answer(1, "pending"))


def test_make_examples_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="n must be"):
        make_examples(-1, seed=0)


def test_task_vocabulary_holds_filled_in_phrasing() -> None:
    lines = task_vocabulary()
    assert SYSTEM_PROMPT in lines
    assert not any("{order_id}" in line or "{status}" in line for line in lines)
    assert all(any(status in line for line in lines) for status in STATUSES)


def test_demo_tokenizer_keeps_task_words_whole() -> None:
    from trainer.demo_model import build_tokenizer

    tokenizer = build_tokenizer()
    for word in (" order", " status", " shipped", " delivered", " pending"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_the_demo_prints_the_gate_and_its_forgetting_check() -> None:
    from deploy.cycle_runs import CycleRunPublic, CycleStepPublic
    from tuneloop.demo import DemoReport, Measurement

    gate = {"passed": False, "reasons": ["FAIL: golden set: mean score 3.00"],
            "figures": {"regression_base_points": 35.9, "regression_candidate_points": 38.3,
                        "regression_drop_points": -2.4}, "policy": {"max_regression_drop_points": 5.0}}
    run = CycleRunPublic(id=1, alias="demo", trigger="demo", status="skipped", holder="h",
                         steps=[CycleStepPublic(id=1, run_id=1, name="gate", figures=gate)])
    report = DemoReport(Measurement("demo-v1", 1.0, 0.0, 0.0), None, run)
    assert report.gate_lines() == [
        "gate: REJECTED",
        "forgetting check (shipped regression set): base 35.9 points, candidate 38.3, drop -2.4 (the gate allows 5.0)",
        "  FAIL: golden set: mean score 3.00",
    ]
    stopped_early = DemoReport(report.before, None, CycleRunPublic(id=2, alias="demo", trigger="demo",
                                                                   status="skipped", holder="h"))
    assert stopped_early.gate_lines() == ["gate: not reached"]

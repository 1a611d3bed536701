"""The thumbs-only demo's task and day: the answer checker, the examples, and users who never type."""

from __future__ import annotations

import pytest

from deploy.demo_tasks import ORDERS, SENTIMENT
from trainer.sentiment_task import expected_label, format_ok, is_correct, make_examples
from tuneloop.demo import DemoConfig


def test_examples_carry_the_label_their_message_calls_for() -> None:
    examples = make_examples(200, seed=1)
    assert examples == make_examples(200, seed=1)
    labels = [ex["messages"][-1]["content"] for ex in examples]
    assert set(labels) == {"positive", "negative"} and 60 <= labels.count("negative") <= 140
    assert all(expected_label(ex["messages"]) == ex["messages"][-1]["content"] for ex in examples)


@pytest.mark.parametrize(("answer", "right"), [
    ("negative", True), ("Negative.", True), ('"NEGATIVE"', True), ("  negative!  ", True),
    ("Positive", False), ("Negative: negative", False), ("The review is negative.", False), ("", False),
])
def test_only_the_bare_right_label_is_correct(answer: str, right: bool) -> None:
    question = [{"role": "user", "content": "Message: Honestly, the lamp arrived broken.\nSentiment:"}]
    assert is_correct(question, answer) is right
    assert format_ok(answer) is (right or answer.strip().lower() == "positive")


def test_the_thumbs_only_day_uses_the_sentiment_task_and_never_corrects() -> None:
    day = DemoConfig.for_feedback("thumbs-only", morning_requests=10)
    assert day.task is SENTIMENT and SENTIMENT.temperature > 0 and day.morning_requests == 10
    example = SENTIMENT.make_examples(1, 3)[0]
    right, wrong = example["messages"][-1]["content"], "I think it is fine."
    for user in range(8):
        assert day.rater(example["messages"], right, user) == ("up", None)
        assert day.rater(example["messages"], wrong, user) == ("down", None)
    assert DemoConfig.for_feedback("corrections").task is ORDERS
    with pytest.raises(ValueError, match="feedback: must be one of corrections, thumbs-only"):
        DemoConfig.for_feedback("stars")

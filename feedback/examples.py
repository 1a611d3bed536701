"""Chat examples, their validation, and the import of chat-format JSONL seed files.

One example is `{"messages": [{"role", "content"}, ...]}` ending in an assistant turn (the format of
../shared/seed/fine-tuning-article.txt and of the trainer). Interactions and seed lines pass the same
validator, so the two sources cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")

Messages = list[dict[str, str]]


@dataclass
class Example:
    """A candidate training conversation and where it came from."""

    messages: Messages
    source: str  # "interaction:<id>" or "seed:<file>:<line>"
    kind: str  # "thumbs_up", "correction" or "seed"
    interaction_id: str | None = None


@dataclass(frozen=True)
class BadLine:
    file: str
    line: int
    reason: str


def validate_messages(value: Any) -> tuple[Messages | None, str | None]:
    """(clean messages, None) for a valid conversation, else (None, reason).

    Valid: a non-empty list of {"role", "content"} objects with string content, roles system/user/
    assistant, a system message only first, at least one user turn, and a non-empty final assistant turn.
    """
    if not isinstance(value, list) or not value:
        return None, "messages must be a non-empty list"
    clean: Messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            return None, f"messages[{index}] is not an object"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return None, f"messages[{index}].role must be one of {', '.join(ROLES)} (got {role!r})"
        if not isinstance(content, str):
            return None, f"messages[{index}].content must be a string"
        if role == "system" and index != 0:
            return None, f"messages[{index}]: a system message may only come first"
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in clean):
        return None, "no user message"
    if clean[-1]["role"] != "assistant":
        return None, "the last message must be the assistant's answer"
    if not clean[-1]["content"].strip():
        return None, "the assistant's answer is empty"
    return clean, None


def parse_seed_line(text: str) -> tuple[Messages | None, str | None]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(record, dict):
        return None, "a line must be a JSON object"
    if "messages" not in record:
        return None, 'no "messages" key'
    return validate_messages(record["messages"])


def iter_seed_file(path: Path, digest: Any = None) -> Iterator[Example | BadLine]:
    """Validate a chat JSONL file line by line, streaming: an Example per good line, a BadLine (number and
    reason) per bad one; blank lines are ignored. `digest` (a hashlib object) sees every byte read."""
    with path.open("rb") as handle:
        for number, raw_bytes in enumerate(handle, start=1):
            if digest is not None:
                digest.update(raw_bytes)
            raw = raw_bytes.decode("utf-8", errors="replace")
            if not raw.strip():
                continue
            messages, reason = parse_seed_line(raw.strip())
            if messages is None:
                yield BadLine(path.name, number, reason or "invalid")
            else:
                yield Example(messages, source=f"seed:{path.name}:{number}", kind="seed")


def example_line(example: Example) -> str:
    """The canonical JSONL line of an example (the bytes the dataset hash is computed over)."""
    return json.dumps(
        {"messages": example.messages, "source": example.source}, ensure_ascii=False, separators=(",", ":")
    )

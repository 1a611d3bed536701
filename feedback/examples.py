"""Chat examples, their validation, and the import of chat-format JSONL seed files.

One example is `{"messages": [{"role", "content"}, ...]}` ending in an assistant turn (core.chat_format, the
trainer's format too). Interactions and seed lines pass the same validator, so the two sources cannot drift
apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.chat_format import Messages, check_messages, dataset_line

__all__ = ["BadLine", "Example", "Messages", "example_line", "iter_seed_file", "parse_seed_line"]


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


def parse_seed_line(text: str) -> tuple[Messages | None, str | None]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(record, dict):
        return None, "a line must be a JSON object"
    if "messages" not in record:
        return None, 'no "messages" key'
    return check_messages(record["messages"])


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
    return dataset_line({"messages": example.messages, "source": example.source})

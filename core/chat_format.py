"""The chat-dataset format, in one place: what a conversation is, the files of a dataset version, how a row is
written, and how a version's content is hashed. Curation writes it, the trainer and the evaluator read it.

A row of the `sft` view is `{"messages": [{"role", "content"}, ...], "source": ...}` ending in the assistant's
answer; a `kto` row is `{"prompt": [...], "completion", "label"}`, a `dpo` row `{"prompt", "chosen",
"rejected"}` (TRL's formats).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

ROLES = ("system", "user", "assistant")
Messages = list[dict[str, str]]

TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"
MANIFEST_FILE = "manifest.json"
VIEW_FILES = {  # view -> (train file, eval file) of a dataset version
    "sft": (TRAIN_FILE, EVAL_FILE),
    "kto": ("kto_train.jsonl", "kto_eval.jsonl"),
    "dpo": ("dpo_train.jsonl", "dpo_eval.jsonl"),
}


def check_messages(value: Any, *, answered: bool = True) -> tuple[Messages | None, str | None]:
    """(clean messages, None) for a valid conversation, else (None, reason).

    Valid: a non-empty list of {"role", "content"} objects with string content, roles system/user/assistant,
    a system message only first, at least one user turn, and, when `answered`, a non-empty final assistant
    turn (a prompt, `answered=False`, ends before the answer). Extra keys are dropped: the chat template never
    sees them.
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
    if not answered:
        return clean, None
    if clean[-1]["role"] != "assistant":
        return None, "the last message must be the assistant's answer"
    if not clean[-1]["content"].strip():
        return None, "the assistant's answer is empty"
    return clean, None


def dataset_line(row: dict[str, Any]) -> str:
    """The canonical JSONL line of a row (no newline): the bytes a version's hash is computed over."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def content_sha256(alias: str, file_sha256: dict[str, str]) -> str:
    """A version's content hash: its alias and the sha256 of every view's files, in the fixed view order (a
    view a version lacks counts as an empty file)."""
    empty = hashlib.sha256().hexdigest()
    ordered = [file_sha256.get(name, empty) for view in VIEW_FILES for name in VIEW_FILES[view]]
    return hashlib.sha256(("\n".join([alias, *ordered]) + "\n").encode()).hexdigest()

"""Quality filters: the system prompt policy, refusal patterns, and length in the base model's tokens."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feedback.examples import Messages

_ENCODE_BATCH = 64  # a 1000-text batch costs ~130 MB of token buffers, 64 about 15 MB, at the same speed


def apply_system_prompt(messages: Messages, mode: str, system_prompt: str = "") -> Messages:
    """preserve: as sent; normalise: every example gets `system_prompt` (the one the model is served with,
    so training does not teach ad-hoc prompts); drop: no system turn at all."""
    if mode == "preserve":
        return messages
    turns = [m for m in messages if m["role"] != "system"]
    if mode == "drop":
        return turns
    if mode == "normalise":
        return [{"role": "system", "content": system_prompt}, *turns]
    raise ValueError(f"system_prompt_mode: unknown mode {mode!r}")


class RefusalFilter:
    def __init__(self, patterns: Sequence[str]) -> None:
        self._pattern = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None

    def is_refusal(self, messages: Messages) -> bool:
        """Whether the final answer matches a refusal pattern (such answers teach the model to refuse)."""
        return self._pattern is not None and self._pattern.search(messages[-1]["content"]) is not None


class TokenCounter:
    """Length of a conversation as the trainer sees it: the chat template rendered, then tokenized."""

    def __init__(self, tokenizer_path: str | Path) -> None:
        hint = "set policy.tokenizer or TUNELOOP_BASE_MODEL, or no length filter: min_tokens=0, max_tokens=None"
        path = Path(tokenizer_path)
        local = path.is_absolute() or str(tokenizer_path).startswith(".") or path.exists()
        if local and not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise ValueError(f"tokenizer: no tokenizer at {path} ({hint})")
        from transformers import AutoTokenizer  # heavy import, only when the length filter is on

        try:  # a local directory, or a model id already in the Hugging Face cache (never the network)
            self._tokenizer: Any = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"tokenizer: cannot load {tokenizer_path} ({hint}): {exc}") from None
        self._tokenizer.model_max_length = 1 << 40  # measuring, not feeding a model: no "too long" warning
        self._has_template = bool(getattr(self._tokenizer, "chat_template", None))

    def count(self, conversations: Sequence[Messages]) -> list[int]:
        if not conversations:
            return []
        if self._has_template:
            texts = self._tokenizer.apply_chat_template(list(conversations), tokenize=False)
        else:  # a base tokenizer without a template: the plain turns are the closest measure
            texts = ["\n".join(m["content"] for m in messages) for messages in conversations]
        lengths: list[int] = []
        for start in range(0, len(texts), _ENCODE_BATCH):
            encoded = self._tokenizer(
                texts[start : start + _ENCODE_BATCH], add_special_tokens=False, return_attention_mask=False
            )["input_ids"]
            lengths.extend(len(ids) for ids in encoded)
        return lengths


def length_reason(n_tokens: int, min_tokens: int, max_tokens: int | None) -> str | None:
    if n_tokens < min_tokens:
        return "too_short"
    if max_tokens is not None and n_tokens > max_tokens:
        return "too_long"
    return None

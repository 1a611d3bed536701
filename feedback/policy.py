"""The curation policy: every threshold and switch of a curation run, recorded in each dataset's manifest."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from feedback.scrub import SCRUB_KINDS

SYSTEM_PROMPT_MODES = ("preserve", "normalise", "drop")

# Matched (case-insensitively) against the final assistant turn; a match drops the example.
DEFAULT_REFUSAL_PATTERNS: tuple[str, ...] = (
    r"^\s*(?:i'?m sorry|i am sorry|sorry|unfortunately)\b[^.!?\n]{0,40}\bi (?:can(?:no|')t|won'?t|am unable|'m unable)",
    r"\bi (?:can(?:no|')t|am unable to|'m unable to|won'?t) (?:help|assist|comply|provide|do that)\b",
    r"\bas an ai(?: language)? model\b",
)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class CurationPolicy:
    """How interactions and feedback become a training set. Bad values raise ValueError naming the field."""

    eval_fraction: float = field(default=0.05, metadata=_help("Share of conversations (by hash) held out."))
    min_eval_examples: int = field(
        default=20, metadata=_help("Eval never has fewer (lowest-hash train examples move over), at most half.")
    )
    min_tokens: int = field(default=4, metadata=_help("Drop examples shorter than this (chat-templated tokens)."))
    max_tokens: int | None = field(
        default=4096, metadata=_help("Drop examples longer than this; None: no upper bound.")
    )
    tokenizer: str = field(
        default="", metadata=_help("Tokenizer path for lengths; empty: the base model from the settings.")
    )
    refusal_patterns: tuple[str, ...] = field(
        default=DEFAULT_REFUSAL_PATTERNS, metadata=_help("Regexes (case-insensitive) on the final answer.")
    )
    system_prompt_mode: str = field(
        default="preserve", metadata=_help("preserve | normalise (replace with system_prompt) | drop.")
    )
    system_prompt: str = field(default="", metadata=_help("The system prompt used by system_prompt_mode=normalise."))
    scrub_kinds: tuple[str, ...] = field(
        default=SCRUB_KINDS, metadata=_help(f"Secrets and PII replaced by placeholders: {', '.join(SCRUB_KINDS)}.")
    )
    scrub_extra: Mapping[str, str] = field(
        default_factory=dict, metadata=_help("Extra kinds: name -> regex; matches become [NAME].")
    )
    near_dup_threshold: float = field(
        default=0.8, metadata=_help("Estimated Jaccard at or above which two conversations are duplicates.")
    )
    shingle_size: int = field(default=5, metadata=_help("Characters per shingle for MinHash."))
    num_perm: int = field(default=128, metadata=_help("MinHash permutations."))
    minhash_seed: int = field(default=1, metadata=_help("Seed of the MinHash permutations (datasketch)."))
    dedup_include_system: bool = field(
        default=False, metadata=_help("Count the system prompt in dedup (a shared one makes all look alike).")
    )
    dedup_against_earlier_versions: bool = field(
        default=True, metadata=_help("Also drop conversations already in earlier versions of the alias.")
    )
    batch_size: int = field(default=1000, metadata=_help("Interactions read from the store per query."))

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"{name}: {why} (got {getattr(self, name)!r})")

        if not 0 <= self.eval_fraction < 1:
            fail("eval_fraction", "must be in [0, 1)")
        if self.min_eval_examples < 0:
            fail("min_eval_examples", "must be >= 0")
        if self.min_tokens < 0:
            fail("min_tokens", "must be >= 0")
        if self.max_tokens is not None and self.max_tokens < max(self.min_tokens, 1):
            fail("max_tokens", "must be >= min_tokens and >= 1, or None")
        for pattern in self.refusal_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"refusal_patterns: {pattern!r} is not a valid regex: {exc}") from None
        if self.system_prompt_mode not in SYSTEM_PROMPT_MODES:
            fail("system_prompt_mode", f"must be one of {', '.join(SYSTEM_PROMPT_MODES)}")
        if self.system_prompt_mode == "normalise" and not self.system_prompt.strip():
            fail("system_prompt", "is required when system_prompt_mode is 'normalise'")
        unknown = [kind for kind in self.scrub_kinds if kind not in SCRUB_KINDS]
        if unknown:
            fail("scrub_kinds", f"unknown kind(s) {', '.join(unknown)}; known: {', '.join(SCRUB_KINDS)}")
        for name, pattern in self.scrub_extra.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in SCRUB_KINDS:
                raise ValueError(f"scrub_extra: {name!r} must be a new lower_snake_case kind name")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"scrub_extra: {name}: {pattern!r} is not a valid regex: {exc}") from None
        if not 0 < self.near_dup_threshold <= 1:
            fail("near_dup_threshold", "must be in (0, 1]")
        if not 1 <= self.shingle_size <= 64:
            fail("shingle_size", "must be in [1, 64]")
        if not 16 <= self.num_perm <= 1024:
            fail("num_perm", "must be in [16, 1024]")
        if self.batch_size < 1:
            fail("batch_size", "must be >= 1")

    @property
    def needs_tokenizer(self) -> bool:
        return self.min_tokens > 0 or self.max_tokens is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the manifest and the Dataset row."""
        data = dataclasses.asdict(self)
        data["refusal_patterns"] = list(self.refusal_patterns)
        data["scrub_kinds"] = list(self.scrub_kinds)
        data["scrub_extra"] = dict(self.scrub_extra)
        return data

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CurationPolicy:
        """Build from a YAML/JSON mapping; an unknown key is an error naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: unknown policy field(s); known: {', '.join(sorted(known))}")
        values = dict(data)
        for name in ("refusal_patterns", "scrub_kinds"):
            if name in values:
                if isinstance(values[name], str) or not isinstance(values[name], list | tuple):
                    raise ValueError(f"{name}: must be a list of strings")
                values[name] = tuple(values[name])
        if "scrub_extra" in values and not isinstance(values["scrub_extra"], Mapping):
            raise ValueError("scrub_extra: must be a mapping of kind name -> regex")
        for f in dataclasses.fields(cls):
            if f.name in values and f.type in ("int", "float", "int | None", "bool"):
                values[f.name] = _checked_scalar(f.name, str(f.type), values[f.name])
        return cls(**values)

    @staticmethod
    def field_help() -> list[tuple[str, str, str]]:
        """(name, default, help) for every field, for `tuneloop datasets policy`."""
        return [
            (f.name, repr(f.default if f.default is not dataclasses.MISSING else f.default_factory()),  # type: ignore[misc]
             f.metadata.get("help", ""))
            for f in dataclasses.fields(CurationPolicy)
        ]


def _checked_scalar(name: str, type_name: str, value: Any) -> Any:
    if type_name == "int | None" and value is None:
        return None
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: must be true or false (got {value!r})")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: must be a number (got {value!r})")
    if type_name.startswith("int"):
        if not float(value).is_integer():
            raise ValueError(f"{name}: must be a whole number (got {value!r})")
        return int(value)
    return float(value)

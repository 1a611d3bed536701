"""The judge the settings ask for: Claude, any OpenAI-compatible endpoint, or the offline reference judge."""

from __future__ import annotations

from pathlib import Path

from core.settings import DEFAULT_CLAUDE_MODEL, JudgeSettings
from registry.judges import AnthropicJudge, Judge, JudgeCache, OpenAIJudge
from registry.reference_judge import ReferenceJudge


def build_judge(config: JudgeSettings, cache_path: Path | None = None) -> Judge:
    """`auto` is Claude when a key is set, else the reference judge. LLM verdicts are cached at `cache_path`."""
    kind = config.resolved_kind
    if kind == "reference":
        return ReferenceJudge()
    options = {"concurrency": config.concurrency, "max_attempts": config.max_attempts,
               "cache": JudgeCache(cache_path), "timeout_s": config.timeout_s}
    if kind == "anthropic":
        return AnthropicJudge(config.model or DEFAULT_CLAUDE_MODEL, api_key=config.resolved_api_key,
                              base_url=config.resolved_base_url or None, **options)  # type: ignore[arg-type]
    return OpenAIJudge(config.model, base_url=config.base_url, api_key=config.resolved_api_key or "EMPTY",
                       **options)  # type: ignore[arg-type]

"""The composition root's builders: the objects every entry point wires from one `Settings`.

Library packages take these objects as arguments; only `tuneloop` (the CLI, `tuneloop up`, the demo, the ASGI
factory) reads the settings and builds them.
"""

from __future__ import annotations

from core.settings import Settings
from deploy.scheduler import JobContext
from registry.judge_factory import build_judge
from registry.judges import Judge


def judge(settings: Settings) -> Judge:
    """The configured judge; LLM verdicts cached in HOME/judge-cache.jsonl."""
    return build_judge(settings.judge, cache_path=settings.home / "judge-cache.jsonl")


def job_context(settings: Settings) -> JobContext:
    """What the scheduler's cycle and canary jobs run with in this process."""
    return JobContext(settings=settings, judge=judge(settings))

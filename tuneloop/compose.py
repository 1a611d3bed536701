"""The composition root's builders: the objects every entry point wires from one `Settings`.

Library packages take these objects as arguments; only `tuneloop` (the CLI, `tuneloop up`, the demo, the ASGI
factory) reads the settings and builds them.
"""

from __future__ import annotations

from core.settings import Settings, SettingsError
from deploy.scheduler import JobContext
from registry.judge_factory import build_judge
from registry.judges import Judge


def judge(settings: Settings) -> Judge:
    """The configured judge; LLM verdicts cached in HOME/judge-cache.jsonl."""
    return build_judge(settings.judge, cache_path=settings.home / "judge-cache.jsonl")


def check_cycle_train(settings: Settings) -> None:
    """The cycle's TrainConfig overrides, checked when a process starts rather than inside the nightly run
    (after curation): a bad field is a SettingsError naming its variable."""
    from trainer.config import ConfigError, from_mapping

    try:
        from_mapping(dict(settings.cycle.train))
    except ConfigError as exc:
        message = str(exc).split(": ", 1)[-1]
        raise SettingsError(f"invalid settings: TUNELOOP_CYCLE__TRAIN__{exc.field.upper()}: {message}") from None


def job_context(settings: Settings) -> JobContext:
    """What the scheduler's cycle and canary jobs run with in this process; the cycle's settings are checked."""
    check_cycle_train(settings)
    return JobContext(settings=settings, judge=judge(settings))

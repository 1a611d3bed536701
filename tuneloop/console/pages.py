"""What each console page shows, from the same queries the CLI and the canary analysis use.

Plain functions over the engine returning plain data; the routes render them. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from core.clock import utcnow
from core.policies import CanaryPolicy
from deploy import canary
from deploy.analysis import Analysis, ArmFigures
from deploy.controls import ControlState, control_state
from deploy.cycle_runs import CycleRunPublic, get_run, list_runs
from deploy.figures import arm_figures, arm_series, versions_served
from feedback.browse import InteractionPage, InteractionQuery, search_interactions
from feedback.interaction_log import interaction_with_feedback
from feedback.models import InteractionPublic
from feedback.scrub import scrub_text
from registry import store
from registry.errors import UnknownVersion
from registry.models import AuditEntryPublic, ModelVersionPublic
from registry.queries import AliasState
from tuneloop.console.plots import Series, line_chart

WINDOWS = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "6h": timedelta(hours=6),
           "24h": timedelta(hours=24), "7d": timedelta(days=7)}
BUCKETS = 24
DECISION_LOOKBACK = 200  # audit entries read for the last canary decision
DECISIONS = ("promote", "rollback_canary", "start_canary", "set_canary_weight", "rollback")


@dataclass
class AliasOverview:
    state: AliasState
    figures: dict[str, ArmFigures]  # the current canary stage's figures (empty without a canary)
    analysis: Analysis | None
    last_decision: AuditEntryPublic | None
    control: ControlState | None = None
    charts: list[Any] = field(default_factory=list)
    window_figures: dict[str, ArmFigures] = field(default_factory=dict)  # over the chosen window


def overview(engine: Engine, policy: CanaryPolicy, window: str, now: datetime | None = None) -> list[AliasOverview]:
    now = now or utcnow()
    span = WINDOWS.get(window, WINDOWS["1h"])
    result = []
    for state in store.list_aliases(engine):
        state_now, figures, analysis = canary.evaluate(engine, state.alias, policy, now=now)
        # the newest entries only: an alias's audit log grows with every transition, a page load must not
        decisions = [e for e in store.audit_log(engine, state.alias, limit=DECISION_LOOKBACK) if e.action in DECISIONS]
        item = AliasOverview(state_now, figures, analysis, decisions[-1] if decisions else None,
                             control_state(engine, state.alias))
        # the versions serving now, and any that served in the window (a promotion's before and after)
        current = [v for v in (state_now.production_id, state_now.canary_id) if v]
        end = now + timedelta(microseconds=1)  # the newest interaction is inside the last bucket
        earlier = [v for v in versions_served(engine, state.alias, now - span, end) if v not in current]
        if current or earlier:
            item.charts, item.window_figures = _charts(engine, state.alias, earlier + current, now - span, end)
        result.append(item)
    return result


def _charts(engine: Engine, alias: str, versions: list[str], start: datetime, end: datetime
            ) -> tuple[list[Any], dict[str, ArmFigures]]:
    series = arm_series(engine, alias, versions, start, end, BUCKETS)
    labels = [p.start.strftime("%H:%M") for p in series[versions[0]]]

    def lines(value) -> list[Series]:  # type: ignore[no-untyped-def]
        return [Series(version, [value(p.figures) for p in points]) for version, points in series.items()]

    charts = [
        line_chart("requests", labels, lines(lambda f: float(f.requests))),
        line_chart("error rate", labels, lines(lambda f: f.error_rate), fmt=_percent, y_max=1.0),
        line_chart("thumbs-up rate", labels, lines(lambda f: f.thumbs_up_rate), fmt=_percent, y_max=1.0),
        line_chart("p50 latency (ms)", labels, lines(lambda f: f.p50_latency_ms), fmt=lambda v: f"{v:.0f}"),
        line_chart("p95 latency (ms)", labels, lines(lambda f: f.p95_latency_ms), fmt=lambda v: f"{v:.0f}"),
    ]
    return charts, arm_figures(engine, alias, versions, start, until=end)


def _percent(value: float) -> str:
    return f"{value:.0%}"


def cycles(engine: Engine, alias: str | None = None, limit: int = 50) -> list[CycleRunPublic]:
    return list_runs(engine, alias, limit=limit)


def cycle(engine: Engine, run_id: int) -> CycleRunPublic | None:
    return get_run(engine, run_id)


@dataclass
class VersionsPage:
    versions: list[ModelVersionPublic]
    aliases: dict[str, AliasState]
    audit: list[AuditEntryPublic]


def versions(engine: Engine, alias: str | None = None, audit_limit: int = 100) -> VersionsPage:
    return VersionsPage(
        versions=list(reversed(store.list_versions(engine, alias))),
        aliases={s.alias: s for s in store.list_aliases(engine)},
        audit=list(reversed(store.audit_log(engine, alias, limit=audit_limit))),
    )


def version(engine: Engine, version_id: str) -> tuple[ModelVersionPublic, list[AuditEntryPublic]]:
    if "\x00" in version_id:  # PostgreSQL refuses NUL in a text parameter; no id holds one
        raise UnknownVersion(f"no model version {version_id!r}")
    found = store.get_version(engine, version_id)
    return found, [e for e in reversed(store.audit_log(engine, found.alias)) if e.version_id == found.id]


def interactions(engine: Engine, query: InteractionQuery) -> InteractionPage:
    return search_interactions(engine, query)


@dataclass
class ScrubbedInteraction:
    interaction: InteractionPublic
    messages: list[dict[str, str]]
    answer: str
    feedback: list[dict[str, Any]]
    replaced: dict[str, int]


def interaction(engine: Engine, interaction_id: str) -> ScrubbedInteraction | None:
    """One interaction and its feedback whole, with secrets replaced as curation would replace them."""
    found = interaction_with_feedback(engine, interaction_id)
    if found is None:
        return None
    replaced: dict[str, int] = {}

    def clean(text: str | None) -> str:
        scrubbed, counts = scrub_text(text or "")
        for kind, n in counts.items():
            replaced[kind] = replaced.get(kind, 0) + n
        return scrubbed

    body = found.request_body or {}
    raw_messages = body.get("messages") if isinstance(body.get("messages"), list) else None
    if raw_messages is None and "prompt" in body:
        raw_messages = [{"role": "prompt", "content": body.get("prompt")}]
    messages = [{"role": str(m.get("role", "?")), "content": clean(_content_text(m.get("content")))}
                for m in (raw_messages or []) if isinstance(m, dict)]
    feedback = [{"rating": str(f.rating), "score": f.score, "user": f.end_user, "comment": clean(f.comment),
                 "correction": clean(f.correction) if f.correction else None, "at": f.updated_at}
                for f in found.feedback]
    return ScrubbedInteraction(found, messages, clean(found.response_text), feedback, replaced)


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)

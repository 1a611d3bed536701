"""Per-arm figures of a canary from the interaction log: requests, errors, thumbs up/down, p95 latency.

Aggregates run in the database (grouped by served_version); only the latency sample behind the p95 comes back
to Python, bounded to the newest `latency_sample` successful requests per arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Engine, case, func, true
from sqlmodel import Session, col, select

from deploy.analysis import ArmFigures
from feedback.models import Feedback, Interaction, InteractionStatus, Rating

LATENCY_SAMPLE = 5000


def arm_figures(engine: Engine, alias: str, version_ids: list[str], since: datetime,
                latency_sample: int = LATENCY_SAMPLE, until: datetime | None = None) -> dict[str, ArmFigures]:
    """Figures for each version of `alias` over interactions created at or after `since` (and before `until`)."""
    window = (
        Interaction.model_alias == alias,
        col(Interaction.served_version).in_(version_ids),
        Interaction.created_at >= since,
        Interaction.created_at < until if until is not None else true(),
        Interaction.status != InteractionStatus.rejected,  # refused by the gateway: no version was involved
        # a stream still running (or cut by a gateway killed mid-flight) is neither an answer nor a version's error
        Interaction.status != InteractionStatus.in_progress,
    )
    is_error = case((Interaction.status == InteractionStatus.upstream_error, 1), else_=0)
    counts: dict[str, tuple[int, int]] = {}
    ratings: dict[tuple[str, str], int] = {}
    latencies: dict[str, list[float]] = {}
    with Session(engine) as session:
        for version, requests, errors in session.exec(
            select(Interaction.served_version, func.count(), func.sum(is_error)).where(*window)
            .group_by(Interaction.served_version)
        ):
            counts[version] = (int(requests), int(errors or 0))
        for version, rating, n in session.exec(
            select(Interaction.served_version, Feedback.rating, func.count())
            .join(Feedback, col(Feedback.interaction_id) == col(Interaction.id)).where(*window)
            .group_by(Interaction.served_version, Feedback.rating)
        ):
            ratings[(version, str(rating))] = int(n)
        for version in version_ids:
            latencies[version] = [float(v) for v in session.exec(
                select(Interaction.latency_ms).where(
                    *window, Interaction.served_version == version, Interaction.status == InteractionStatus.ok,
                    col(Interaction.latency_ms).is_not(None),
                ).order_by(col(Interaction.created_at).desc()).limit(latency_sample)
            )]
    figures = {}
    for version in version_ids:
        requests, errors = counts.get(version, (0, 0))
        sample = latencies[version]
        figures[version] = ArmFigures(
            version_id=version, requests=requests, errors=errors,
            thumbs_up=ratings.get((version, Rating.up.value), 0),
            thumbs_down=ratings.get((version, Rating.down.value), 0),
            p95_latency_ms=float(np.percentile(sample, 95)) if sample else None,
            p50_latency_ms=float(np.percentile(sample, 50)) if sample else None,
            latency_samples=len(sample),
        )
    return figures


def versions_served(engine: Engine, alias: str, since: datetime, until: datetime) -> list[str]:
    """The versions of `alias` that answered a request in [since, until), oldest version first."""
    with Session(engine) as session:
        found = session.exec(select(Interaction.served_version).distinct().where(
            Interaction.model_alias == alias, Interaction.created_at >= since, Interaction.created_at < until,
            Interaction.status != InteractionStatus.rejected)).all()
    return sorted(found)


@dataclass(frozen=True)
class SeriesPoint:
    start: datetime
    end: datetime
    figures: ArmFigures


def arm_series(engine: Engine, alias: str, version_ids: list[str], start: datetime, end: datetime,
               buckets: int = 24) -> dict[str, list[SeriesPoint]]:
    """Each version's figures per time bucket from `start` to `end` (the console's plots): the same query as
    the canary analysis, one window per bucket, so a plot and a decision never disagree on a number."""
    if buckets < 1 or end <= start:
        raise ValueError("arm_series needs buckets >= 1 and end after start")
    width = (end - start) / buckets
    series: dict[str, list[SeriesPoint]] = {version: [] for version in version_ids}
    for i in range(buckets):
        low, high = start + i * width, start + (i + 1) * width if i < buckets - 1 else end
        for version, figures in arm_figures(engine, alias, version_ids, low, until=high).items():
            series[version].append(SeriesPoint(low, high, figures))
    return series

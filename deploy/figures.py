"""Per-arm figures of a canary from the interaction log: requests, errors, thumbs up/down, p95 latency.

Aggregates run in the database (grouped by served_version); only the latency sample behind the p95 comes back
to Python, bounded to the newest `latency_sample` successful requests per arm.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from sqlalchemy import Engine, case, func
from sqlmodel import Session, col, select

from deploy.analysis import ArmFigures
from feedback.models import Feedback, Interaction, InteractionStatus, Rating

LATENCY_SAMPLE = 5000


def arm_figures(engine: Engine, alias: str, version_ids: list[str], since: datetime,
                latency_sample: int = LATENCY_SAMPLE) -> dict[str, ArmFigures]:
    """Figures for each version of `alias` over interactions created at or after `since`."""
    window = (
        Interaction.model_alias == alias,
        col(Interaction.served_version).in_(version_ids),
        Interaction.created_at >= since,
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
            latency_samples=len(sample),
        )
    return figures

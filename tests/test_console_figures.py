"""What the console's plots and lists read, on SQLite and PostgreSQL: the per-bucket figures add up to the
canary analysis's figures over the whole window, and the interaction search filters what it says it filters."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import Session

from core.clock import utcnow
from core.db import make_engine
from deploy.figures import arm_figures, arm_series, versions_served
from feedback.browse import InteractionQuery, search_interactions
from feedback.models import Interaction
from tests.test_deploy_helpers import traffic
from tuneloop.console.plots import Series, line_chart


def test_buckets_add_up_to_the_window_the_analysis_reads(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    now = utcnow()
    traffic(engine, "a", "a-v1", 10, errors=2, up=5, down=1, latency_ms=100, at=now - timedelta(minutes=50))
    traffic(engine, "a", "a-v1", 6, up=1, down=3, latency_ms=300, at=now - timedelta(minutes=5))
    traffic(engine, "a", "a-v2", 4, up=4, latency_ms=200, at=now - timedelta(minutes=5))
    traffic(engine, "a", "a-v1", 7, at=now - timedelta(hours=3))  # before the window
    traffic(engine, "b", "b-v1", 3, at=now - timedelta(minutes=5))  # another alias
    start, end = now - timedelta(hours=1), now + timedelta(microseconds=1)
    assert versions_served(engine, "a", start, end) == ["a-v1", "a-v2"]
    series = arm_series(engine, "a", ["a-v1", "a-v2"], start, end, buckets=12)
    whole = arm_figures(engine, "a", ["a-v1", "a-v2"], start, until=end)
    for version, points in series.items():
        assert len(points) == 12 and points[0].start == start and points[-1].end == end
        assert sum(p.figures.requests for p in points) == whole[version].requests
        assert sum(p.figures.errors for p in points) == whole[version].errors
        assert sum(p.figures.thumbs_up for p in points) == whole[version].thumbs_up
        assert sum(p.figures.thumbs_down for p in points) == whole[version].thumbs_down
    assert (whole["a-v1"].requests, whole["a-v1"].errors, whole["a-v1"].thumbs_up) == (16, 2, 6)
    late = series["a-v1"][-1].figures
    assert (late.requests, late.thumbs_up_rate, late.p50_latency_ms) == (6, 0.25, 300.0)
    early = next(p.figures for p in series["a-v1"] if p.figures.requests)
    assert early.error_rate == 0.2 and early.p95_latency_ms == 100.0
    assert series["a-v2"][0].figures.thumbs_up_rate is None  # nothing rated: a gap in the plot, not a zero


def test_the_interaction_search_filters_what_it_says(any_db_url: str, tmp_path: Path) -> None:
    engine = make_engine(any_db_url)
    traffic(engine, "a", "a-v1", 5, up=2, down=1)
    traffic(engine, "a", "a-v2", 3, down=3)
    traffic(engine, "b", "b-v1", 4)
    with Session(engine) as session:  # a request text with LIKE's wildcards in it
        row = session.get(Interaction, search_interactions(engine, InteractionQuery(alias="b")).rows[0].id)
        assert row is not None
        row.request_body = {"messages": [{"role": "user", "content": "discount 100%_off please"}]}
        session.add(row)
        session.commit()

    def total(**fields: object) -> int:
        return search_interactions(engine, InteractionQuery(**fields)).total  # type: ignore[arg-type]

    assert total() == 12 and total(alias="a") == 8 and total(version="a-v2") == 3
    assert total(rating="up") == 2 and total(rating="down") == 4 and total(rating="none") == 6
    assert total(alias="a", rating="none") == 2
    assert total(text="100%_off") == 1 and total(text="100%") == 1 and total(text="0%_o") == 1
    assert total(text="%") == 1 and total(text="_") == 1  # wildcards are searched for, not matched by
    assert total(text="user-1") == 3  # the end user
    page = search_interactions(engine, InteractionQuery(alias="a", limit=3, offset=6))
    assert page.total == 8 and len(page.rows) == 2
    newest_first = [r.created_at for r in search_interactions(engine, InteractionQuery()).rows]
    assert newest_first == sorted(newest_first, reverse=True)


def test_a_plot_has_one_point_per_value_and_a_gap_for_none() -> None:
    chart = str(line_chart("thumbs-up rate", ["10:00", "10:05", "10:10"],
                           [Series("v1", [0.5, None, 1.0]), Series("v2<script>", [None, None, 0.25])], y_max=1.0))
    assert chart.count('class="point"') == 3
    assert 'data-value="0.5"' in chart and 'data-value="0.25"' in chart
    assert "<script>" not in chart and "v2&lt;script&gt;" in chart  # names are escaped
    empty = str(line_chart("requests", ["10:00"], [Series("v1", [None])]))
    assert "no data in this window" in empty and 'class="point"' not in empty

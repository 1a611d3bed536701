"""Line charts drawn on the server as SVG: no script and nothing fetched, so a page renders offline and a
test reads each point's value from its element (`data-value`).

A plotting library with bundled assets (plotly ships ~4.6 MB of plotly.js) was weighed against this: the
console shows a handful of small time series per version, which a hundred lines of SVG draw exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 420, 170
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 22, 26
LEGEND_STEP = 110
COLOURS = ("#2563eb", "#d97706", "#059669", "#7c3aed")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # one per bucket; None: nothing to show in that bucket


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series],
               fmt: Callable[[float], str] = lambda v: f"{v:g}", y_max: float | None = None) -> Markup:
    """An SVG chart of `series` over the bucket `labels` (first and last label printed under the axis)."""
    points = [v for s in series for v in s.values if v is not None]
    top = y_max if y_max is not None else max(points, default=0.0)
    top = top if top > 0 else 1.0
    n = max(len(labels), 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{LEFT}" y="14" class="chart-title">{escape(title)}</text>',
             f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" class="axis"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" class="axis"/>',
             f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" class="tick">{escape(fmt(top))}</text>',
             f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" class="tick">{escape(fmt(0))}</text>']
    if labels:
        parts.append(f'<text x="{LEFT}" y="{HEIGHT - 8}" class="tick">{escape(labels[0])}</text>')
        parts.append(f'<text x="{LEFT + plot_w}" y="{HEIGHT - 8}" text-anchor="end" class="tick">'
                     f'{escape(labels[-1])}</text>')
    if not points:
        parts.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle" class="empty">'
                     "no data in this window</text>")
    for number, line in enumerate(series):
        colour = COLOURS[number % len(COLOURS)]
        segment: list[str] = []
        for i, value in enumerate(line.values):
            if value is None:  # a gap, not a zero
                if len(segment) > 1:
                    parts.append(_polyline(segment, colour))
                segment = []
                continue
            segment.append(f"{x(i):.1f},{y(value):.1f}")
            label = labels[i] if i < len(labels) else str(i)
            parts.append(f'<circle class="point" cx="{x(i):.1f}" cy="{y(value):.1f}" r="2.5" fill="{colour}" '
                         f'data-series="{escape(line.name)}" data-value="{value:.6g}">'
                         f"<title>{escape(line.name)} {escape(label)}: {escape(fmt(value))}</title></circle>")
        if len(segment) > 1:
            parts.append(_polyline(segment, colour))
        legend_x = WIDTH - RIGHT - LEGEND_STEP * (len(series) - number - 1)  # top right, the last one rightmost
        parts.append(f'<text x="{legend_x}" y="14" text-anchor="end" fill="{colour}" class="legend">'
                     f"{escape(line.name)}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))


def _polyline(points: list[str], colour: str) -> str:
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(points)}"/>'

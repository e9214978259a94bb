"""Charts as server-side SVG: no script, no CDN, readable with styles off.

Each function returns an ``<svg>`` element as text, with a ``<title>`` per mark so a
hover (or a screen reader) names its value. Sizes are in CSS pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

COLOURS = {"email": "#3b6fb6", "sms": "#d9822b", "telegram": "#2aa3a3"}
OTHER_COLOUR = "#888"


@dataclass(frozen=True)
class Bar:
    label: str
    """The bar's time (or category), shown under it when there is room."""
    parts: dict[str, int]
    """Stacked values by series (channel)."""


def stacked_bars(bars: Sequence[Bar], *, title: str, width: int = 720, height: int = 220) -> str:
    """Stacked bars (e.g. messages sent per hour by channel), with a legend."""
    left, bottom, top = 48, 36, 24
    series = sorted({name for bar in bars for name in bar.parts})
    peak = max((sum(bar.parts.values()) for bar in bars), default=0) or 1
    plot_w, plot_h = width - left - 8, height - bottom - top
    step = plot_w / max(len(bars), 1)
    marks = []
    for i, bar in enumerate(bars):
        x, y = left + i * step, float(top + plot_h)
        for name in series:
            value = bar.parts.get(name, 0)
            if not value:
                continue
            h = value / peak * plot_h
            y -= h
            marks.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}" '
                f'fill="{COLOURS.get(name, OTHER_COLOUR)}"><title>{escape(bar.label)} {escape(name)}: {value:,}</title></rect>'
            )
    every = max(1, round(len(bars) / 8))
    labels = [
        f'<text x="{left + i * step + step / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle">{escape(bar.label)}</text>'
        for i, bar in enumerate(bars)
        if i % every == 0
    ]
    axis = (
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 8}" y2="{top + plot_h}" stroke="#999"/>'
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak:,}</text>'
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>'
    )
    legend = "".join(
        f'<rect x="{left + i * 110}" y="4" width="10" height="10" fill="{COLOURS.get(name, OTHER_COLOUR)}"/>'
        f'<text x="{left + i * 110 + 14}" y="13">{escape(name)}</text>'
        for i, name in enumerate(series)
    )
    return _svg(width, height, title, axis + "".join(marks) + "".join(labels) + legend)


@dataclass(frozen=True)
class Interval:
    label: str
    value: float
    low: float
    high: float
    text: str
    """The value and interval as the page prints them (``+9.4% (+4.9% .. +13.1%)``)."""
    verdict: str | None = None
    """``better`` (drawn green), ``worse`` (red) or None (grey: the interval holds zero)."""


def intervals(rows: Sequence[Interval], *, title: str, width: int = 720) -> str:
    """One row per measure: the difference as a dot, its confidence interval as a line
    coloured by ``verdict``, zero as a dashed line. Each row has its own scale (measures
    differ in units), wide enough for the interval and zero."""
    row_h, label_w, text_w = 34, 250, 190
    height = row_h * len(rows) + 10
    plot_x, plot_w = label_w, width - label_w - text_w
    marks = []
    for i, row in enumerate(rows):
        y = 10 + i * row_h + row_h / 2
        span = max(abs(row.low), abs(row.high), abs(row.value), 1e-9) * 1.1

        def x(value: float, span: float = span) -> float:
            return plot_x + plot_w / 2 + value / span * plot_w / 2

        colour = {"better": "#2a7d2a", "worse": "#b00020"}.get(row.verdict or "", "#555")
        marks.append(
            f'<text x="0" y="{y + 4:.1f}">{escape(row.label)}</text>'
            f'<line x1="{x(0):.1f}" y1="{y - 12:.1f}" x2="{x(0):.1f}" y2="{y + 12:.1f}" stroke="#999" stroke-dasharray="3 3"/>'
            f'<line x1="{x(row.low):.1f}" y1="{y:.1f}" x2="{x(row.high):.1f}" y2="{y:.1f}" stroke="{colour}" stroke-width="3">'
            f"<title>{escape(row.label)}: {escape(row.text)}</title></line>"
            f'<circle cx="{x(row.value):.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>'
            f'<text x="{width - text_w + 8}" y="{y + 4:.1f}">{escape(row.text)}</text>'
        )
    return _svg(width, height, title, "".join(marks))


def _svg(width: int, height: int, title: str, body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" font-size="12" font-family="system-ui, sans-serif">'
        f"<title>{escape(title)}</title>{body}</svg>"
    )

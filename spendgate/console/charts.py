"""SVG charts drawn on the server: no script, no library, styled by classes (so dark mode
and the CSP's ``style-src 'self'`` apply). Every chart is shown beside a table of the
same numbers; the SVG has a title and description, each bar a ``<title>``.

- :func:`stacked_bars`: spend per time bucket, one stacked segment per group.
- :func:`budget_chart`: a budget's period: cumulative spend, the budget line, each alert
  threshold and the soft/hard limit as labelled dashed lines, and the P10–P90 forecast
  band from today to the period's end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal

from markupsafe import Markup, escape

from spendgate.core.money import NANOS_PER_USD, format_usd

WIDTH, HEIGHT = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 72, 150, 20, 40
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


def _usd(nanos: int) -> str:
    return "$" + format_usd(nanos)


#: the suffixes of :func:`_short_usd`, largest first
_UNITS = ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k"))


def _short_usd(nanos: int) -> str:
    """Dollars to three significant digits, thousands and up with k, M, B or T
    (``$1.05M``, ``$617k``, ``$12.50``, ``$0.0075``): a figure drawn beside an axis or a
    level line, whose room is fixed (``LEFT``, ``RIGHT``), where a budget of a million
    dollars as ``$1049382.70735`` ran out of the chart. The exact figure is in the table
    beside it and in the chart's ``<title>`` tooltips."""
    if nanos <= 0:
        return "$0" if nanos == 0 else "-" + _short_usd(-nanos)
    value = Decimal(nanos) / NANOS_PER_USD
    rounded = value.quantize(Decimal(1).scaleb(value.adjusted() - 2), rounding=ROUND_HALF_EVEN)
    for size, suffix in _UNITS:
        if rounded >= size:
            return f"${format(rounded.scaleb(-len(str(size)) + 1).normalize(), 'f')}{suffix}"
    whole, _, frac = format(rounded.normalize(), "f").partition(".")
    return f"${whole}.{frac.ljust(2, '0')}" if frac else f"${whole}"


def _nice_max(value: int) -> int:
    """A round top for the axis, at least ``value`` (nanos)."""
    if value <= 0:
        return 1_000_000_000
    step = 1
    while step * 10 <= value:
        step *= 10
    for mult in (1, 2, 5, 10):
        if step * mult >= value:
            return step * mult
    return step * 10


def _axis(top: int, zone_note: str) -> list[str]:
    parts = []
    for i in range(5):
        value = top * i // 4
        y = TOP + PLOT_H - PLOT_H * i / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y}" y2="{y}"/>')
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">'
            f"{escape(_short_usd(value))}</text>"
        )
    parts.append(
        f'<text class="tick" x="{LEFT + PLOT_W}" y="{HEIGHT - 4}" text-anchor="end">'
        f"{escape(zone_note)}</text>"
    )
    return parts


def _frame(title: str, desc: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="chart-title">{escape(title)}</title>'
        f'<desc id="chart-desc">{escape(desc)}</desc>' + "".join(body) + "</svg>"
    )


def stacked_bars(
    buckets: Sequence[date],
    series: Sequence[tuple[str, dict[date, int]]],
    *,
    title: str,
    zone: str,
    totals: Mapping[date, int] | None = None,
) -> Markup:
    """One bar per bucket; ``series`` are (label, nanos per bucket), bottom first.
    ``totals``: the groups overlap (tags: a call is under each of its tags), so the bars
    add up to more than the spend; each bucket's true total is drawn as a line across
    its bar, and said so in the legend and the description."""
    stacked = [sum(values.get(b, 0) for _, values in series) for b in buckets]
    top = _nice_max(max([*stacked, *(totals or {}).values()], default=0))
    body = _axis(top, f"bucket start dates, {zone}")
    slot = PLOT_W / max(1, len(buckets))
    width = max(2.0, slot * 0.7)
    label_every = max(1, len(buckets) // 8)
    for i, bucket in enumerate(buckets):
        x = LEFT + i * slot + (slot - width) / 2
        base: float = TOP + PLOT_H
        for n, (label, values) in enumerate(series):
            value = values.get(bucket, 0)
            if value <= 0:
                continue
            h = PLOT_H * value / top
            base -= h
            body.append(
                f'<rect class="s{n % 8}" x="{x:.1f}" y="{base:.1f}" width="{width:.1f}" '
                f'height="{h:.1f}"><title>{escape(bucket.isoformat())} {escape(label)}: '
                f"{escape(_usd(value))}</title></rect>"
            )
        if totals is not None:
            y = TOP + PLOT_H - PLOT_H * totals.get(bucket, 0) / top
            body.append(
                f'<line class="total" x1="{x - 2:.1f}" x2="{x + width + 2:.1f}" y1="{y:.1f}" '
                f'y2="{y:.1f}"><title>{escape(bucket.isoformat())} total, each call once: '
                f"{escape(_usd(totals.get(bucket, 0)))}</title></line>"
            )
        if i % label_every == 0:
            body.append(
                f'<text class="tick" x="{x + width / 2:.1f}" y="{TOP + PLOT_H + 14}" '
                f'text-anchor="middle">{escape(bucket.strftime("%m-%d"))}</text>'
            )
    for n, (label, _) in enumerate(series):
        y = TOP + 12 + n * 16
        body.append(
            f'<rect class="s{n % 8}" x="{LEFT + PLOT_W + 10}" y="{y - 9}" width="10" height="10"/>'
        )
        body.append(
            f'<text class="legend" x="{LEFT + PLOT_W + 24}" y="{y}">{escape(label[:18])}</text>'
        )
    desc = f"Stacked bars of spend per bucket for {len(series)} groups; the table has the values."
    if totals is not None:
        y = TOP + 12 + len(series) * 16
        body.append(
            f'<line class="total" x1="{LEFT + PLOT_W + 8}" x2="{LEFT + PLOT_W + 22}" '
            f'y1="{y - 4}" y2="{y - 4}"/>'
        )
        body.append(
            f'<text class="legend" x="{LEFT + PLOT_W + 24}" y="{y}">total, calls once</text>'
        )
        desc = (
            f"Stacked bars of spend per bucket for {len(series)} overlapping groups (a call "
            "with several tags is in each of them, so a bar adds up to more than the spend); "
            "a line across each bar marks its total, each call counted once; the table has "
            "the values."
        )
    return _frame(title, desc, body)


def _spread(ys: Sequence[float], gap: float = 13.0) -> list[float]:
    """Label heights near ``ys`` but at least ``gap`` apart (levels may coincide, e.g. a
    soft limit at 100 % on the budget line), in the same order as ``ys``."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed: dict[int, float] = {}
    last = -1e9
    for i in order:
        placed[i] = max(ys[i], last + gap)
        last = placed[i]
    return [placed[i] for i in range(len(ys))]


@dataclass(frozen=True, slots=True)
class Level:
    """A horizontal line across a budget chart: its label and height in nanos."""

    label: str
    nanos: int
    kind: str  # budget | alert | soft | hard


@dataclass(frozen=True, slots=True)
class Band:
    """The forecast at the period's end (nanos), drawn from the last day with spend."""

    p10: int
    p50: int
    p90: int


def budget_chart(
    days: Sequence[date],
    cumulative: Sequence[int],
    levels: Sequence[Level],
    band: Band | None,
    *,
    title: str,
    zone: str,
) -> Markup:
    """Cumulative spend over the days of a budget's period (``cumulative`` may be shorter
    than ``days``: the days so far)."""
    peak = max([*cumulative, *(lv.nanos for lv in levels), band.p90 if band else 0, 0])
    top = _nice_max(int(peak * Decimal("1.05")))
    body = _axis(top, f"days of the period, {zone}")
    n = max(1, len(days))
    step = PLOT_W / n

    def x_of(i: float) -> float:
        return LEFT + i * step

    def y_of(v: int) -> float:
        return TOP + PLOT_H - PLOT_H * v / top

    if band is not None and cumulative:
        x0, y0 = x_of(len(cumulative)), y_of(cumulative[-1])
        x1 = x_of(n)
        body.append(
            f'<polygon class="band" points="{x0:.1f},{y0:.1f} {x1:.1f},{y_of(band.p90):.1f} '
            f'{x1:.1f},{y_of(band.p10):.1f}"><title>forecast P10–P90 at period end: '
            f"{escape(_usd(band.p10))} – {escape(_usd(band.p90))}</title></polygon>"
        )
        body.append(
            f'<line class="p50" x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" '
            f'y2="{y_of(band.p50):.1f}"><title>forecast P50: {escape(_usd(band.p50))}</title>'
            "</line>"
        )
    if cumulative:
        points = " ".join(f"{x_of(i + 1):.1f},{y_of(v):.1f}" for i, v in enumerate(cumulative))
        body.append(
            f'<polyline class="spend" points="{x_of(0):.1f},{y_of(0):.1f} {points}">'
            f"<title>spend so far: {escape(_usd(cumulative[-1]))}</title></polyline>"
        )
    ys = [y_of(level.nanos) for level in levels]
    for level, y, label_y in zip(levels, ys, _spread(ys), strict=True):
        body.append(
            f'<line class="level {level.kind}" x1="{LEFT}" x2="{LEFT + PLOT_W}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        body.append(
            f'<text class="legend" x="{LEFT + PLOT_W + 6}" y="{label_y + 4:.1f}">'
            f"{escape(level.label)} {escape(_short_usd(level.nanos))}</text>"
        )
    label_every = max(1, n // 8)
    for i, day in enumerate(days):
        if i % label_every == 0:
            body.append(
                f'<text class="tick" x="{x_of(i + 0.5):.1f}" y="{TOP + PLOT_H + 14}" '
                f'text-anchor="middle">{escape(day.strftime("%m-%d"))}</text>'
            )
    desc = (
        "Cumulative spend this period as a solid line, budget levels as labelled dashed "
        "lines, and the forecast band to the period end; the table has the values."
    )
    return _frame(title, desc, body)

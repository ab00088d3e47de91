"""The overview's chart of the last hour, as numbers an inline SVG template draws: queue depth
as a line, jobs finished per minute as bars (completed and failed stacked). No script, no
library: the page is drawn by the server and readable with styles alone."""

from __future__ import annotations

from dataclasses import dataclass

from shared.console.queries import QueueMinute

WIDTH = 600
HEIGHT = 150
GAP = 2  # between two minutes' bars


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    completed_y: float
    completed_height: float
    failed_y: float
    failed_height: float
    label: str


@dataclass(frozen=True, slots=True)
class QueueChart:
    width: int
    height: int
    depth_points: str
    bars: list[Bar]
    depth_max: int
    finished_max: int
    depth_now: int
    finished_total: int
    failed_total: int
    summary: str


def _scale(peak: int) -> int:
    """A round top for an axis at or above ``peak``: 1, 2, 5, 10, 20, 50..."""
    top = 1
    while True:
        for multiple in (1, 2, 5):
            if top * multiple >= peak:
                return top * multiple
        top *= 10


def queue_chart(minutes: list[QueueMinute]) -> QueueChart:
    count = max(1, len(minutes))
    step = WIDTH / count
    depth_max = _scale(max((m.depth for m in minutes), default=0))
    finished_max = _scale(max((m.completed + m.failed for m in minutes), default=0))
    points = []
    bars = []
    for i, m in enumerate(minutes):
        x = i * step
        points.append(f"{x + step / 2:.1f},{HEIGHT - HEIGHT * m.depth / depth_max:.1f}")
        completed_h = HEIGHT * m.completed / finished_max
        failed_h = HEIGHT * m.failed / finished_max
        bars.append(
            Bar(
                x=round(x + GAP / 2, 1),
                width=round(max(1.0, step - GAP), 1),
                completed_y=round(HEIGHT - completed_h, 1),
                completed_height=round(completed_h, 1),
                failed_y=round(HEIGHT - completed_h - failed_h, 1),
                failed_height=round(failed_h, 1),
                label=f"{m.start:%H:%M} UTC: {m.depth} waiting, {m.completed} completed,"
                f" {m.failed} failed",
            )
        )
    finished = sum(m.completed for m in minutes)
    failed = sum(m.failed for m in minutes)
    depth_now = minutes[-1].depth if minutes else 0
    summary = (
        f"Last hour: {finished} jobs completed, {failed} failed;"
        f" {depth_now} waiting now, at most {max((m.depth for m in minutes), default=0)}."
    )
    return QueueChart(
        width=WIDTH,
        height=HEIGHT,
        depth_points=" ".join(points),
        bars=bars,
        depth_max=depth_max,
        finished_max=finished_max,
        depth_now=depth_now,
        finished_total=finished,
        failed_total=failed,
        summary=summary,
    )

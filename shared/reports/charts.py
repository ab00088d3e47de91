"""A chart per report (matplotlib, Agg), drawn in the renderer's child process from the
report's totals: value by category and by location, net movement per day, and the SKUs
furthest below their reorder point."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

GREEN = "#2e7d32"
RED = "#c62828"
BLUE = "#1565c0"
GREY = "#9e9e9e"


def _money(value: float, _: Any = None) -> str:
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:,.1f}{suffix}"
    return f"{value:,.2f}"


def _units(value: float, _: Any = None) -> str:
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:,.1f}{suffix}"
    return f"{value:,.0f}"


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color=GREY)
    ax.set_axis_off()


def _valuation(fig: Any, doc: dict[str, Any]) -> None:
    totals = doc["totals"]
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    fig.suptitle(
        f"Stock value {_money(float(Decimal(totals['value'])))} — "
        f"{totals['quantity']:,} units in {totals['rows']:,} SKU x location rows",
        fontsize=13,
        fontweight="bold",
    )
    for ax, key, label, title in (
        (axes[0], "by_category", "category", "By category"),
        (axes[1], "by_location", "location_code", "By location"),
    ):
        groups = sorted(totals[key], key=lambda g: Decimal(g["value"]))[-20:]
        if not groups:
            _empty(ax, "No stock")
            continue
        names = [g[label] if g[label] is not None else "(none)" for g in groups]
        values = [float(Decimal(g["value"])) for g in groups]
        bars = ax.barh(names, values, color=BLUE)
        ax.bar_label(bars, labels=[_money(v) for v in values], padding=3, fontsize=8)
        ax.set_title(title)
        ax.xaxis.set_major_formatter(FuncFormatter(_money))
        ax.margins(x=0.15)
        ax.spines[["top", "right"]].set_visible(False)


def _movements(fig: Any, doc: dict[str, Any]) -> None:
    totals = doc["totals"]
    params = doc["params"]
    ax = fig.subplots()
    fig.suptitle(
        f"Stock movements {params['since'][:10]} → {params['until'][:10]} (UTC days): "
        f"in {totals['in']:,}, out {totals['out']:,}, net {totals['net']:+,}",
        fontsize=13,
        fontweight="bold",
    )
    days = totals["by_day"]
    if not days:
        _empty(ax, "No movements in this window")
        return
    x = [date.fromisoformat(d["day"]) for d in days]
    ax.bar(x, [d["in"] for d in days], color=GREEN, alpha=0.55, label="in")
    ax.bar(x, [-d["out"] for d in days], color=RED, alpha=0.55, label="out")
    ax.plot(x, [d["net"] for d in days], color="black", linewidth=1.6, marker=".", label="net")
    ax.axhline(0, color=GREY, linewidth=0.8)
    ax.yaxis.set_major_formatter(FuncFormatter(_units))
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax.set_ylabel("units per day")
    ax.legend(loc="upper left", frameon=False, ncols=3)
    ax.spines[["top", "right"]].set_visible(False)


def _low_stock(fig: Any, doc: dict[str, Any]) -> None:
    totals = doc["totals"]
    ax = fig.subplots()
    fig.suptitle(
        f"{totals['products']:,} products at or below their reorder point — suggested order "
        f"{totals['suggested_order_quantity']:,} units, "
        f"{_money(float(Decimal(totals['order_value'])))}",
        fontsize=13,
        fontweight="bold",
    )
    top = list(reversed(doc["top"]))
    if not top:
        _empty(ax, "Nothing is low on stock")
        return
    names = [row["sku"] for row in top]
    ax.barh(
        names,
        [row["reorder_point"] for row in top],
        color="white",
        edgecolor=GREY,
        label="reorder point",
    )
    ax.barh(names, [row["on_hand"] for row in top], color=GREY, label="on hand")
    bars = ax.barh(
        names,
        [row["shortfall"] for row in top],
        left=[row["on_hand"] for row in top],
        color=RED,
        alpha=0.75,
        label="shortfall",
    )
    ax.bar_label(
        bars,
        labels=[f"order {row['suggested_order_quantity']:,}" for row in top],
        padding=4,
        fontsize=8,
    )
    ax.set_title(f"The {len(top)} SKUs furthest below their reorder point", fontsize=10)
    ax.set_xlabel("units")
    ax.margins(x=0.2)
    ax.legend(loc="lower right", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)


_LEFT = {"valuation": 0.12, "movements": 0.07, "low_stock": 0.16}
_DRAW = {"valuation": _valuation, "movements": _movements, "low_stock": _low_stock}


def render_chart(doc: dict[str, Any]) -> bytes:
    fig = plt.figure(figsize=(12, 6.5), dpi=100)
    try:
        _DRAW[doc["kind"]](fig, doc)
        fig.text(
            0.005,
            0.005,
            f"Stockroom · generated {doc['generated_at'][:19]}Z",
            ha="left",
            va="bottom",
            fontsize=7,
            color=GREY,
        )
        # fixed margins: a constrained layout costs more than the drawing
        fig.subplots_adjust(left=_LEFT[doc["kind"]], right=0.97, top=0.88, bottom=0.1, wspace=0.35)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()

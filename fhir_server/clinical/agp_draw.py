"""The AGP's charts, drawn with matplotlib (object API, no pyplot state: safe in the
server's worker threads): the time-in-ranges stacked bar, the 24-hour modal day with its
percentile bands and the target range, the daily profiles (one small chart per day), and
the whole one-page report for PDF and PNG.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # no display: draw to files

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fhir_server.clinical.agp import Agp  # noqa: E402
from fhir_server.clinical.agp_text import (  # noqa: E402
    TEXT,
    band_limits,
    band_targets,
    flags_text,
    number,
    panel_rows,
)
from fhir_server.clinical.glucose import MG_PER_MMOL  # noqa: E402
from fhir_server.clinical.ranges import BANDS, TARGETS  # noqa: E402

COLOURS = {
    "very_high": "#f28c28",
    "high": "#fbc16a",
    "in_range": "#3aa655",
    "low": "#e5342d",
    "very_low": "#8b1a1a",
}
MEDIAN, INNER, OUTER = "#1f3b73", "#5b7fbf", "#b9cbe8"
TARGET_BAND = "#3aa655"
FONT = {"family": "DejaVu Sans"}  # shipped with matplotlib: the same page everywhere


def _scale(unit: str) -> float:
    return 1 / MG_PER_MMOL if unit == "mmol/L" else 1.0


def draw_tir_bar(ax: Axes, agp: Agp, lang: str, unit: str) -> None:
    t = TEXT[lang]
    metrics = agp.metrics
    shares = metrics.target_ranges
    limits = band_limits(unit, metrics.population)
    targets = band_targets(metrics.population, lang)
    bottom = 0.0
    label_y = -100.0
    # labels from the bottom up, at least 9 points apart so that thin bands stay readable
    for band in BANDS:
        share = shares[band]
        ax.bar(0, share, bottom=bottom, color=COLOURS[band], width=0.6, edgecolor="white")
        label_y = max(bottom + share / 2, label_y + 9)
        label = f"{t[band]} ({limits[band]}): {number(share, 1, lang, ' %')}"
        if band in targets:
            label += f"\n{t['target']} {targets[band]}"
        ax.annotate(label, xy=(0.3, bottom + share / 2), xytext=(0.45, label_y),
                    fontsize=7, va="center", arrowprops={"arrowstyle": "-", "lw": 0.5},
                    **FONT)
        bottom += share
    ax.set_xlim(-0.4, 2.6)
    ax.set_ylim(0, max(100, label_y + 6))
    ax.axis("off")
    ax.set_title(t["tir"], fontsize=10, loc="left", **FONT)


def draw_modal_day(ax: Axes, agp: Agp, lang: str, unit: str) -> None:
    t = TEXT[lang]
    k = _scale(unit)
    bounds = TARGETS[agp.metrics.population].bounds.mg_dl
    hours = agp.slot_hours
    ax.axhspan(bounds[1] * k, bounds[2] * k, color=TARGET_BAND, alpha=0.12, lw=0)
    for limit in (bounds[1], bounds[2]):
        ax.axhline(limit * k, color=TARGET_BAND, lw=0.8)
    b = agp.bands
    ax.fill_between(hours, b[5] * k, b[95] * k, color=OUTER, lw=0, label="5-95 %")
    ax.fill_between(hours, b[25] * k, b[75] * k, color=INNER, lw=0, label="25-75 %")
    ax.plot(hours, b[50] * k, color=MEDIAN, lw=1.8, label=f"{number(50, 0, lang)} %")
    ax.set_xlim(0, 24)
    ax.set_ylim(0, 350 * k)
    ax.set_xticks(range(0, 25, 3))
    ax.set_xticklabels([f"{h:02d}:00" for h in range(0, 25, 3)], fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel(unit, fontsize=8)
    ax.set_xlabel(t["hour"], fontsize=8)
    ax.legend(fontsize=7, loc="upper right", frameon=False)
    ax.set_title(t["modal"], fontsize=10, loc="left", **FONT)


def draw_day(ax: Axes, agp: Agp, index: int, unit: str) -> None:
    k = _scale(unit)
    day = agp.days[index]
    bounds = TARGETS[agp.metrics.population].bounds.mg_dl
    ax.axhspan(bounds[1] * k, bounds[2] * k, color=TARGET_BAND, alpha=0.12, lw=0)
    values = [math.nan if v is None else v * k for v in day.mg_dl]
    hours = [math.nan if h is None else h for h in day.hours]
    ax.plot(hours, values, color=MEDIAN, lw=0.7)
    ax.set_xlim(0, 24)
    ax.set_ylim(0, 350 * k)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(day.day.strftime("%d/%m"), fontsize=6, pad=1)


def daily_figure(agp: Agp, lang: str, unit: str, columns: int = 7) -> Figure:
    rows = max(1, math.ceil(len(agp.days) / columns))
    fig = Figure(figsize=(8.0, 1.05 * rows + 0.3))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(agp.days):
            draw_day(ax, agp, i, unit)
        else:
            ax.axis("off")
    fig.suptitle(TEXT[lang]["daily"], fontsize=10, x=0.01, ha="left", **FONT)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.35 / fig.get_figheight(),
                        bottom=0.02, wspace=0.05, hspace=0.35)
    return fig


def tir_figure(agp: Agp, lang: str, unit: str) -> Figure:
    fig = Figure(figsize=(4.2, 3.2))
    draw_tir_bar(fig.add_subplot(), agp, lang, unit)
    return fig


def modal_figure(agp: Agp, lang: str, unit: str) -> Figure:
    fig = Figure(figsize=(8.0, 3.4))
    ax = fig.add_subplot()
    draw_modal_day(ax, agp, lang, unit)
    fig.tight_layout()
    return fig


def page_figure(agp: Agp, lang: str, unit: str, patient: str) -> Figure:
    """The one-page report (A4 portrait): header, metrics panel and time-in-ranges bar,
    modal day, daily profiles (the first 14 days of the period)."""
    t = TEXT[lang]
    fig = Figure(figsize=(8.27, 11.69))
    fig.text(0.04, 0.975, t["title"], fontsize=15, weight="bold", va="top", **FONT)
    fig.text(0.04, 0.95, f"{t['patient']}: {patient}", fontsize=9, va="top", **FONT)
    warning = flags_text(agp.metrics, lang)
    if warning:
        fig.text(0.04, 0.932, warning, fontsize=8, color="#b00020", va="top", **FONT)
    panel = fig.add_axes((0.04, 0.66, 0.52, 0.26))
    panel.axis("off")
    panel.set_title(t["metrics"], fontsize=10, loc="left", **FONT)
    rows = panel_rows(agp.metrics, lang, unit)
    for i, row in enumerate(rows):
        y = 1 - (i + 0.5) / max(len(rows), 1)
        panel.text(0, y, row.label, fontsize=7, va="center", **FONT)
        panel.text(0.66, y, row.value, fontsize=7, va="center", weight="bold", **FONT)
        if row.target:
            panel.text(1.0, y, row.target, fontsize=6.5, va="center", color="#555555",
                       ha="right", **FONT)
    draw_tir_bar(fig.add_axes((0.62, 0.66, 0.36, 0.26)), agp, lang, unit)
    draw_modal_day(fig.add_axes((0.08, 0.36, 0.88, 0.25)), agp, lang, unit)
    fig.text(0.04, 0.31, t["daily"], fontsize=10, **FONT)
    days = agp.days[:14]
    for i in range(len(days)):
        row, col = divmod(i, 7)
        ax = fig.add_axes((0.04 + col * 0.135, 0.17 - row * 0.13, 0.125, 0.11))
        draw_day(ax, agp, i, unit)
    return fig


def render(fig: Figure, fmt: str, dpi: int = 110) -> bytes:
    out = io.BytesIO()
    metadata = {"Creator": None, "Producer": None} if fmt == "pdf" else None
    if fmt == "svg":
        metadata = {"Date": None}
    fig.savefig(out, format=fmt, dpi=dpi, metadata=metadata)
    return out.getvalue()

"""PNG figures of the evaluation report (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def bar_heights(values: dict[str, float | None], groups: Sequence[str]) -> list[float]:
    """One bar per group; NaN (no bar) where a value is missing, never a bar at 0."""
    return [float("nan") if values.get(g) is None else float(values[g]) for g in groups]


def grouped_bars(
    values: dict[str, dict[str, float | None]],
    groups: Sequence[str],
    path: Path,
    *,
    title: str,
    ylabel: str,
    group_labels: Sequence[str] | None = None,
) -> str:
    """One group of bars per entry of `groups`, one bar per series (model) within each."""
    series = list(values)
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(groups)), 4))
    for i, name in enumerate(series):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, bar_heights(values[name], groups), width, label=name)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(group_labels or groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def histograms(
    panels: dict[str, dict[str, Sequence[float]]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str = "count",
    bins: int = 20,
) -> str:
    """One panel per key of `panels`, overlaid histograms of its named series: outlines, so
    that where series overlap no blended colour reads as another series."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items(), strict=True):
        pooled = [v for values in series.values() for v in values]
        edges = np.histogram_bin_edges(pooled, bins=bins) if pooled else bins
        for name, values in series.items():
            if len(values):
                ax.hist(values, bins=edges, histtype="step", linewidth=1.8,
                        label=f"{name} (n={len(values)})")  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize="small")
    return _save(fig, path)


def boxplot(series: dict[str, Sequence[float]], path: Path, *, title: str, ylabel: str) -> str:
    fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(series)), 3.5))
    names = [n for n, v in series.items() if len(v)]
    ax.boxplot([series[n] for n in names], tick_labels=names)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _save(fig, path)

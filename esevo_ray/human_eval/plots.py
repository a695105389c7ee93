"""Figures like the paper's Figure 3 (point-wise scores) and Figure 4 (pair-wise votes)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from esevo_ray.config import JUDGE_DIMENSIONS  # noqa: E402
from esevo_ray.io import atomic_write  # noqa: E402


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path.name


def pointwise_figure(summary: dict[str, dict[str, dict]], path: Path) -> str:
    """Grouped bars: one group per dimension, one bar per model, 95% CI whiskers."""
    models = list(summary)
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, model in enumerate(models):
        xs, ys, lo, hi = [], [], [], []
        for g, dim in enumerate(JUDGE_DIMENSIONS):
            d = summary[model].get(dim)
            if d is None:
                continue
            xs.append(g + i * width)
            ys.append(d["mean"])
            no_ci = d["ci_low"] is None  # too few raters
            lo.append(0.0 if no_ci else d["mean"] - d["ci_low"])
            hi.append(0.0 if no_ci else d["ci_high"] - d["mean"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=model)
    ax.set_xticks([g + width * (len(models) - 1) / 2 for g in range(len(JUDGE_DIMENSIONS))])
    ax.set_xticklabels([d.capitalize() for d in JUDGE_DIMENSIONS], rotation=15)
    ax.set_ylim(1, 5.3)
    ax.set_ylabel("mean rating (1-5)")
    ax.set_title("Interactive point-wise human evaluation")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return _save(fig, path)


def pairwise_figure(entries: list[dict], path: Path) -> str:
    """Horizontal stacked bars per comparison: A win, tie, B win, with the A-win 95% CI."""
    colors = {"win": "#2b8cbe", "tie": "#bdbdbd", "loss": "#f03b20"}
    names = {"win": "A win", "tie": "tie", "loss": "B win"}
    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.7 * len(entries)))
    ys = list(range(len(entries)))
    left = [0.0] * len(entries)
    for outcome in ("win", "tie", "loss"):
        rates = [e[outcome]["rate"] for e in entries]
        ax.barh(ys, rates, height=0.6, left=left, color=colors[outcome], label=names[outcome])
        for y, x0, rate in zip(ys, left, rates, strict=True):
            if rate >= 0.06:
                ax.text(
                    x0 + rate / 2,
                    y - 0.08,
                    f"{rate:.0%}",
                    ha="center",
                    va="center",
                    color="white",
                    fontsize=9,
                )
        left = [a + r for a, r in zip(left, rates, strict=True)]
    wins = [e["win"]["rate"] for e in entries]
    cis = [(e["win"]["ci_low"], e["win"]["ci_high"]) for e in entries]  # None: too few raters
    err = [
        [0.0 if lo is None else w - lo for w, (lo, _) in zip(wins, cis, strict=True)],
        [0.0 if hi is None else hi - w for w, (_, hi) in zip(wins, cis, strict=True)],
    ]
    ax.errorbar(wins, [y + 0.18 for y in ys], xerr=err, fmt="none", ecolor="black", capsize=3)
    ax.set_yticks(ys, [f"{e['model']} vs {e['opponent']} (n={e['n']})" for e in entries])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of votes (whisker: 95% bootstrap interval of A win, over raters)")
    ax.set_title("Interactive pair-wise human evaluation (A vs B)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return _save(fig, path)

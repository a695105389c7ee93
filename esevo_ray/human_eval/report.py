"""`esevo report human`: point-wise means and pair-wise win/tie/loss rates with 95% CIs.

Point-wise: each rated session gives one 1-5 score per dimension; the mean per model and
dimension gets a percentile bootstrap interval over sessions. Pair-wise: each vote on a
turn of models X and Y is a win, tie or loss for X; the three rates get Wilson intervals.
As in the paper, a pair-wise dialogue lasts at least ten turns: only sessions with at least
their `min_turns` voted turns count, and the votes of shorter ones are reported as left out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from esevo_ray.config import JUDGE_DIMENSIONS
from esevo_ray.human_eval.store import connect
from esevo_ray.io import atomic_write_text

Z95 = 1.959963984540054


def model_order(name: str) -> tuple[int, str]:
    """base first, then m0, m1, ... by iteration, then anything else by name."""
    if name == "base":
        return (-1, name)
    if name[:1] == "m" and name[1:].isdigit():
        return (int(name[1:]), name)
    return (10**6, name)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n; (0, 1) for n = 0."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(values: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float(x.mean()), float(x.mean())) if len(x) else (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


def pointwise_summary(ratings: list[dict]) -> dict[str, dict[str, dict]]:
    """{model: {dimension: {n, mean, ci_low, ci_high}}} from rating rows."""
    by: dict[str, dict[str, list[int]]] = {}
    for r in ratings:
        by.setdefault(r["model"], {}).setdefault(r["dimension"], []).append(int(r["score"]))
    out: dict[str, dict[str, dict]] = {}
    for model in sorted(by, key=model_order):
        out[model] = {}
        for dim in JUDGE_DIMENSIONS:
            scores = by[model].get(dim, [])
            if not scores:
                continue
            lo, hi = bootstrap_ci(scores)
            out[model][dim] = {
                "n": len(scores),
                "mean": float(np.mean(scores)),
                "ci_low": lo,
                "ci_high": hi,
            }
    return out


def pairwise_summary(votes: list[dict]) -> list[dict]:
    """One entry per model pair "X vs Y" (X the later model): win/tie/loss rates of X."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for v in votes:
        x, y = sorted((v["model_a"], v["model_b"]), key=model_order, reverse=True)
        c = counts.setdefault((x, y), {"win": 0, "tie": 0, "loss": 0})
        if v["choice"] == "tie":
            c["tie"] += 1
        else:
            winner = v["model_a"] if v["choice"] == "A" else v["model_b"]
            c["win" if winner == x else "loss"] += 1
    out = []
    for (x, y), c in sorted(counts.items(), key=lambda kv: [model_order(m) for m in kv[0]]):
        n = sum(c.values())
        entry = {"model": x, "opponent": y, "n": n}
        for outcome in ("win", "tie", "loss"):
            lo, hi = wilson(c[outcome], n)
            entry[outcome] = {
                "count": c[outcome],
                "rate": c[outcome] / n,
                "ci_low": lo,
                "ci_high": hi,
            }
        out.append(entry)
    return out


# Each vote with its session's `min_turns` and the number of turns `voted` in that session.
VOTES = """
SELECT v.*, s.min_turns, n.voted FROM votes v JOIN sessions s USING (session_id)
JOIN (SELECT session_id, COUNT(*) AS voted FROM votes GROUP BY session_id) n USING (session_id)
"""


def load_rows(db_path: str | Path) -> tuple[list[dict], list[dict]]:
    """Rating rows and vote rows (with `min_turns` and `voted`) of a human evaluation database."""
    conn = connect(db_path, readonly=True)
    try:
        ratings = [dict(r) for r in conn.execute("SELECT * FROM ratings")]
        votes = [dict(r) for r in conn.execute(VOTES)]
    finally:
        conn.close()
    return ratings, votes


def finished_votes(votes: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """The votes of sessions with at least their `min_turns` voted turns, and the counts of
    the sessions and votes left out."""
    kept = [v for v in votes if v["voted"] >= v["min_turns"]]
    short = {v["session_id"] for v in votes if v["voted"] < v["min_turns"]}
    return kept, {"sessions": len(short), "votes": len(votes) - len(kept)}


def _markdown(point: dict, pair: list[dict], left_out: dict[str, int]) -> str:
    lines = ["# Human evaluation", "", "## Point-wise (mean, 95% bootstrap CI)", ""]
    if point:
        lines.append("| model | n | " + " | ".join(JUDGE_DIMENSIONS) + " |")
        lines.append("|---" * (len(JUDGE_DIMENSIONS) + 2) + "|")
        for model, dims in point.items():
            n = max((d["n"] for d in dims.values()), default=0)
            cells = [
                f"{dims[d]['mean']:.2f} [{dims[d]['ci_low']:.2f}, {dims[d]['ci_high']:.2f}]"
                if d in dims
                else "-"
                for d in JUDGE_DIMENSIONS
            ]
            lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
    else:
        lines.append("no ratings yet")
    lines += ["", "## Pair-wise (rate, 95% Wilson CI)", ""]
    if pair:
        lines += ["| A vs B | n | A win | tie | B win |", "|---|---|---|---|---|"]
        for e in pair:
            cells = [
                f"{e[o]['rate']:.1%} [{e[o]['ci_low']:.1%}, {e[o]['ci_high']:.1%}]"
                for o in ("win", "tie", "loss")
            ]
            lines.append(
                f"| {e['model']} vs {e['opponent']} | {e['n']} | " + " | ".join(cells) + " |"
            )
    else:
        lines.append("no votes yet")
    if left_out["votes"]:
        lines += ["", f"Left out: {left_out['votes']} vote(s) of {left_out['sessions']} "
                  "session(s) with fewer voted turns than their minimum."]  # fmt: skip
    return "\n".join(lines) + "\n"


def human_report(db_path: str | Path, out_dir: str | Path) -> dict:
    """Write human_report.json/.md and the Figure 3 and 4 style PNGs into `out_dir`.

    Raises:
        FileNotFoundError: `db_path` does not exist.
    """
    from esevo_ray.human_eval.plots import pairwise_figure, pointwise_figure

    out = Path(out_dir)
    ratings, votes = load_rows(db_path)
    votes, left_out = finished_votes(votes)
    point, pair = pointwise_summary(ratings), pairwise_summary(votes)
    report = {
        "db": str(db_path), "pointwise": point, "pairwise": pair,
        "pairwise_left_out": left_out, "figures": [],
    }  # fmt: skip
    if point:
        report["figures"].append(pointwise_figure(point, out / "human_pointwise.png"))
    if pair:
        report["figures"].append(pairwise_figure(pair, out / "human_pairwise.png"))
    atomic_write_text(out / "human_report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "human_report.md", _markdown(point, pair, left_out))
    return report

"""`esevo report human`: point-wise means and pair-wise win/tie/loss rates with 95% CIs.

Point-wise: each rated session gives one 1-5 score per dimension, averaged per model and
dimension. Pair-wise: each vote on a turn of models X and Y is a win, tie or loss for X; the
margin is the win rate minus the loss rate (above 0 when X wins more often). The intervals
are percentile bootstraps over raters: a session's votes come from one rater on one
dialogue, and one rater's sessions share that rater's taste (the paper's pair-wise study
had four raters), so all of a rater's ratings or votes are resampled together. Resampling
votes, or sessions, would count ten votes of one rater as ten raters and come out too
narrow. Fewer than MIN_RATERS raters give no interval, the table the mean or rate alone:
drawn from a few, a percentile interval covers far less than 95% (the same floor, and for
the same reason, as the automatic metrics' intervals over dialogues).
As in the paper, a pair-wise dialogue lasts at least ten turns: only sessions with at least
their `min_turns` voted turns count, and the votes of shorter ones are reported as left out.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from esevo_ray.config import JUDGE_DIMENSIONS
from esevo_ray.errors import UsageError
from esevo_ray.human_eval.store import connect
from esevo_ray.io import atomic_write_text
from esevo_ray.resampling import MIN_CLUSTERS

# Raters are the unit resampled, as dialogues are for the automatic metrics.
MIN_RATERS = MIN_CLUSTERS


def model_order(name: str) -> tuple[int, str]:
    """base first, then m0, m1, ... by iteration, then anything else by name."""
    if name == "base":
        return (-1, name)
    if name[:1] == "m" and name[1:].isdigit():
        return (int(name[1:]), name)
    return (10**6, name)


def rater(row: dict) -> str:
    """Whose rating or vote `row` is: its rater, whatever the case of the name as typed
    ("Alice" and "alice" are one rater), or its session where none is recorded."""
    name = (row.get("rater") or "").strip().casefold()
    return name or row["session_id"]


def resampled_sums(per_rater: np.ndarray, n_boot: int = 2000, seed: int = 0) -> np.ndarray | None:
    """`n_boot` sums of `per_rater` (raters x values, each rater's totals) over raters drawn
    with replacement; None for fewer than MIN_RATERS raters."""
    if len(per_rater) < MIN_RATERS:
        return None
    rng = np.random.default_rng(seed)
    return per_rater[rng.integers(0, len(per_rater), size=(n_boot, len(per_rater)))].sum(axis=1)


def _interval(samples: np.ndarray | None) -> dict:
    """The 95% percentile interval of bootstrap `samples` (None: no interval)."""
    if samples is None:
        return {"ci_low": None, "ci_high": None}
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"ci_low": float(low), "ci_high": float(high)}


def pointwise_summary(ratings: list[dict]) -> dict[str, dict[str, dict]]:
    """{model: {dimension: {n, mean, ci_low, ci_high}}} from rating rows (with their
    `rater`), the interval resampling raters."""
    by: dict[str, dict[str, dict[str, list[int]]]] = {}
    for r in ratings:
        scores = by.setdefault(r["model"], {}).setdefault(r["dimension"], {})
        scores.setdefault(rater(r), []).append(int(r["score"]))
    out: dict[str, dict[str, dict]] = {}
    for model in sorted(by, key=model_order):
        out[model] = {}
        for dim in JUDGE_DIMENSIONS:
            raters = by[model].get(dim, {})
            if not raters:
                continue
            per = np.array([[sum(v), len(v)] for v in raters.values()], dtype=float)
            drawn = resampled_sums(per)
            out[model][dim] = {
                "n": int(per[:, 1].sum()),
                "mean": float(per[:, 0].sum() / per[:, 1].sum()),
                **_interval(None if drawn is None else drawn[:, 0] / drawn[:, 1]),
            }
    return out


OUTCOMES = ("win", "tie", "loss")


def pairwise_summary(votes: list[dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One entry per model pair "X vs Y" (X the later model): win/tie/loss rates of X and the
    margin win - loss, with 95% percentile bootstrap intervals resampling raters (each with
    all their sessions' votes)."""
    counts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    sessions: dict[tuple[str, str], set[str]] = {}
    for v in votes:
        x, y = sorted((v["model_a"], v["model_b"]), key=model_order, reverse=True)
        if v["choice"] == "tie":
            outcome = "tie"
        else:
            winner = v["model_a"] if v["choice"] == "A" else v["model_b"]
            outcome = "win" if winner == x else "loss"
        by_rater = counts.setdefault((x, y), {}).setdefault(rater(v), np.zeros(3))
        by_rater[OUTCOMES.index(outcome)] += 1
        sessions.setdefault((x, y), set()).add(v["session_id"])
    out = []
    for (x, y), raters in sorted(counts.items(), key=lambda kv: [model_order(m) for m in kv[0]]):
        per = np.stack(list(raters.values()))  # raters x (win, tie, loss)
        total = per.sum(axis=0)
        drawn = resampled_sums(per, n_boot, seed)
        rates = None if drawn is None else drawn / drawn.sum(axis=1, keepdims=True)
        n = int(total.sum())
        entry = {"model": x, "opponent": y, "n": n, "sessions": len(sessions[(x, y)]),
                 "raters": len(per)}  # fmt: skip
        for i, outcome in enumerate(OUTCOMES):
            entry[outcome] = {"count": int(total[i]), "rate": total[i] / n,
                              **_interval(None if rates is None else rates[:, i])}  # fmt: skip
        margin = None if rates is None else rates[:, 0] - rates[:, 2]
        entry["margin"] = {"value": (total[0] - total[2]) / n, **_interval(margin)}
        out.append(entry)
    return out


# Each vote with its session's rater and `min_turns`, and the number of turns `voted` in that
# session; each rating with its session's rater.
VOTES = """
SELECT v.*, s.rater, s.min_turns, n.voted FROM votes v JOIN sessions s USING (session_id)
JOIN (SELECT session_id, COUNT(*) AS voted FROM votes GROUP BY session_id) n USING (session_id)
"""
RATINGS = "SELECT r.*, s.rater FROM ratings r JOIN sessions s USING (session_id)"


def load_rows(db_path: str | Path) -> tuple[list[dict], list[dict]]:
    """Rating rows (with their `rater`) and vote rows (with `rater`, `min_turns` and `voted`)
    of a human evaluation database."""
    try:
        conn = connect(db_path, readonly=True)
        try:
            ratings = [dict(r) for r in conn.execute(RATINGS)]
            votes = [dict(r) for r in conn.execute(VOTES)]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:  # a folder, not SQLite, or another database
        raise UsageError(f"{db_path} is not a human evaluation database ({e})") from None
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
                "-" if d not in dims
                else f"{dims[d]['mean']:.2f}" if dims[d]["ci_low"] is None
                else f"{dims[d]['mean']:.2f} [{dims[d]['ci_low']:.2f}, {dims[d]['ci_high']:.2f}]"
                for d in JUDGE_DIMENSIONS
            ]  # fmt: skip
            lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
    else:
        lines.append("no ratings yet")
    lines += ["", "## Pair-wise (rate, 95% bootstrap CI over raters)", ""]
    if pair:
        lines += [
            "| A vs B | raters | sessions | votes | A win | tie | B win | A win - B win |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in pair:

            def cell(value: float, c: dict, e: dict = e) -> str:
                ci = "" if c["ci_low"] is None else f" [{c['ci_low']:.1%}, {c['ci_high']:.1%}]"
                return f"{value:.1%}{ci}"

            cells = [cell(e[o]["rate"], e[o]) for o in OUTCOMES]
            cells.append(cell(e["margin"]["value"], e["margin"]))
            lines.append(
                f"| {e['model']} vs {e['opponent']} | {e['raters']} | {e['sessions']} | {e['n']} | "
                + " | ".join(cells)
                + " |"
            )
    else:
        lines.append("no votes yet")
    if left_out["votes"]:
        lines += ["", f"Left out: {left_out['votes']} vote(s) of {left_out['sessions']} "
                  "session(s) with fewer voted turns than their minimum."]  # fmt: skip
    lines += ["", "Intervals resample raters, each with all their ratings or votes: one "
              "rater's sessions are not independent. No interval is given on fewer than "
              f"{MIN_RATERS} raters: drawn from a few, a percentile interval covers far less "
              "than 95%."]  # fmt: skip
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
        "pairwise_left_out": left_out, "min_raters": MIN_RATERS, "figures": [],
    }  # fmt: skip
    if point:
        report["figures"].append(pointwise_figure(point, out / "human_pointwise.png"))
    if pair:
        report["figures"].append(pairwise_figure(pair, out / "human_pairwise.png"))
    atomic_write_text(out / "human_report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "human_report.md", _markdown(point, pair, left_out))
    return report

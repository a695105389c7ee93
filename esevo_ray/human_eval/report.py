"""`esevo report human`: point-wise means and pair-wise win/tie/loss rates with 95% CIs.

Point-wise: each rated session gives one 1-5 score per dimension; the mean per model and
dimension gets a percentile bootstrap interval over sessions. Pair-wise: each vote on a
turn of models X and Y is a win, tie or loss for X. A session's votes come from one rater on
one dialogue and go together, so the three rates and the margin (win rate minus loss rate,
above 0 when X wins more often) get percentile bootstrap intervals over sessions, not over
votes, which would treat ten votes of one rater as ten raters and come out too narrow.
Fewer than MIN_SESSIONS sessions give no interval, the table the mean or rate alone: drawn
from a few sessions, a percentile interval covers far less than 95% (the same floor, and
for the same reason, as the automatic metrics' intervals over dialogues).
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

# Sessions are the unit resampled, as dialogues are for the automatic metrics.
MIN_SESSIONS = MIN_CLUSTERS


def model_order(name: str) -> tuple[int, str]:
    """base first, then m0, m1, ... by iteration, then anything else by name."""
    if name == "base":
        return (-1, name)
    if name[:1] == "m" and name[1:].isdigit():
        return (int(name[1:]), name)
    return (10**6, name)


def bootstrap_ci(
    values: list[float], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float] | tuple[None, None]:
    """95% percentile bootstrap interval of the mean of one value per session; (None, None)
    for fewer than MIN_SESSIONS values."""
    x = np.asarray(values, dtype=float)
    if len(x) < MIN_SESSIONS:
        return None, None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


def _interval(low: float, high: float, none: bool) -> dict:
    return (
        {"ci_low": None, "ci_high": None}
        if none
        else {"ci_low": float(low), "ci_high": float(high)}
    )


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


OUTCOMES = ("win", "tie", "loss")


def pairwise_summary(votes: list[dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One entry per model pair "X vs Y" (X the later model): win/tie/loss rates of X and the
    margin win - loss, with 95% percentile bootstrap intervals resampling whole sessions."""
    counts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for v in votes:
        x, y = sorted((v["model_a"], v["model_b"]), key=model_order, reverse=True)
        if v["choice"] == "tie":
            outcome = "tie"
        else:
            winner = v["model_a"] if v["choice"] == "A" else v["model_b"]
            outcome = "win" if winner == x else "loss"
        session = counts.setdefault((x, y), {}).setdefault(v["session_id"], np.zeros(3))
        session[OUTCOMES.index(outcome)] += 1
    rng = np.random.default_rng(seed)
    out = []
    for (x, y), sessions in sorted(counts.items(), key=lambda kv: [model_order(m) for m in kv[0]]):
        per = np.stack(list(sessions.values()))  # sessions x (win, tie, loss)
        total = per.sum(axis=0)
        drawn = per[rng.integers(0, len(per), size=(n_boot, len(per)))].sum(axis=1)
        rates = drawn / drawn.sum(axis=1, keepdims=True)
        lo, hi = np.percentile(rates, [2.5, 97.5], axis=0)
        margin = np.percentile(rates[:, 0] - rates[:, 2], [2.5, 97.5])
        n = int(total.sum())
        entry = {"model": x, "opponent": y, "n": n, "sessions": len(per)}

        few = len(per) < MIN_SESSIONS  # no interval, as bootstrap_ci
        for i, outcome in enumerate(OUTCOMES):
            entry[outcome] = {"count": int(total[i]), "rate": total[i] / n,
                              **_interval(lo[i], hi[i], few)}  # fmt: skip
        entry["margin"] = {"value": (total[0] - total[2]) / n, **_interval(*margin, few)}
        out.append(entry)
    return out


# Each vote with its session's `min_turns` and the number of turns `voted` in that session.
VOTES = """
SELECT v.*, s.min_turns, n.voted FROM votes v JOIN sessions s USING (session_id)
JOIN (SELECT session_id, COUNT(*) AS voted FROM votes GROUP BY session_id) n USING (session_id)
"""


def load_rows(db_path: str | Path) -> tuple[list[dict], list[dict]]:
    """Rating rows and vote rows (with `min_turns` and `voted`) of a human evaluation database."""
    try:
        conn = connect(db_path, readonly=True)
        try:
            ratings = [dict(r) for r in conn.execute("SELECT * FROM ratings")]
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
    lines += ["", "## Pair-wise (rate, 95% bootstrap CI over sessions)", ""]
    if pair:
        lines += [
            "| A vs B | sessions | votes | A win | tie | B win | A win - B win |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in pair:

            def cell(value: float, c: dict, e: dict = e) -> str:
                ci = "" if c["ci_low"] is None else f" [{c['ci_low']:.1%}, {c['ci_high']:.1%}]"
                return f"{value:.1%}{ci}"

            cells = [cell(e[o]["rate"], e[o]) for o in OUTCOMES]
            cells.append(cell(e["margin"]["value"], e["margin"]))
            lines.append(
                f"| {e['model']} vs {e['opponent']} | {e['sessions']} | {e['n']} | "
                + " | ".join(cells)
                + " |"
            )
    else:
        lines.append("no votes yet")
    if left_out["votes"]:
        lines += ["", f"Left out: {left_out['votes']} vote(s) of {left_out['sessions']} "
                  "session(s) with fewer voted turns than their minimum."]  # fmt: skip
    lines += ["", f"No interval is given on fewer than {MIN_SESSIONS} sessions: drawn from a "
              "few, a percentile interval covers far less than 95%."]  # fmt: skip
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
        "pairwise_left_out": left_out, "min_sessions": MIN_SESSIONS, "figures": [],
    }  # fmt: skip
    if point:
        report["figures"].append(pointwise_figure(point, out / "human_pointwise.png"))
    if pair:
        report["figures"].append(pairwise_figure(pair, out / "human_pairwise.png"))
    atomic_write_text(out / "human_report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "human_report.md", _markdown(point, pair, left_out))
    return report

"""`esevo report human`: statistics, figures and the CLI, on a database written by the store."""

from __future__ import annotations

import argparse
import json
import math
import sqlite3

import pytest

from esevo_ray.config import JUDGE_DIMENSIONS  # noqa: E402
from esevo_ray.human_eval.report import (
    human_report,
    model_order,
    pairwise_summary,
    pointwise_summary,
)
from esevo_ray.human_eval.store import HumanEvalStore

DIMS = list(JUDGE_DIMENSIONS)


def test_model_order():
    assert sorted(["m10", "m2", "base", "m0", "x"], key=model_order) == [
        "base",
        "m0",
        "m2",
        "m10",
        "x",
    ]


def test_pointwise_summary_means_and_intervals():
    ratings = [
        {"model": m, "dimension": d, "score": s, "rater": f"r{i}"}
        for m, scores in {"m0": [3, 3, 4] * 4, "m1": [4, 5, 5] * 4}.items()
        for i, s in enumerate(scores)
        for d in DIMS
    ]
    summary = pointwise_summary(ratings)
    assert list(summary) == ["m0", "m1"]
    e = summary["m1"]["empathy"]
    assert e["n"] == 12 and e["mean"] == pytest.approx(14 / 3)
    assert 4 <= e["ci_low"] <= e["mean"] <= e["ci_high"] <= 5
    # One rating has no interval, and the table shows none (not [4.00, 4.00]).
    one = pointwise_summary([{"model": "m2", "dimension": "empathy", "score": 4, "rater": "r"}])
    assert one["m2"]["empathy"] == {"n": 1, "mean": 4.0, "ci_low": None, "ci_high": None}
    from esevo_ray.human_eval.report import _markdown

    assert "| m2 | 1 | - | - | 4.00 | - |" in _markdown(one, [], {"votes": 0, "sessions": 0})


def test_pairwise_summary_counts_from_the_later_models_side():
    votes = [
        {"session_id": "s", "model_a": "m1", "model_b": "m0", "choice": "A"},  # m1 wins
        {"session_id": "s", "model_a": "m0", "model_b": "m1", "choice": "B"},  # m1 wins (swapped)
        {"session_id": "t", "model_a": "m0", "model_b": "m1", "choice": "A"},  # m1 loses
        {"session_id": "t", "model_a": "m1", "model_b": "m0", "choice": "tie"},
    ]
    (entry,) = pairwise_summary(votes)
    assert (entry["model"], entry["opponent"], entry["n"], entry["sessions"]) == ("m1", "m0", 4, 2)
    assert [entry[o]["count"] for o in ("win", "tie", "loss")] == [2, 1, 1]
    assert math.isclose(sum(entry[o]["rate"] for o in ("win", "tie", "loss")), 1.0)
    assert entry["margin"]["value"] == pytest.approx(0.25)


def test_pairwise_intervals_resample_sessions_not_votes():
    """Ten votes of one rater on one dialogue are not ten raters: with sessions that disagree,
    the interval must be as wide as the sessions' spread, not the votes' count."""
    votes = [
        {"session_id": f"s{s}", "model_a": "m1", "model_b": "m0", "choice": "A" if win else "B"}
        for s, wins in enumerate([10, 0] * 5)
        for win in [True] * wins + [False] * (10 - wins)
    ]  # fmt: skip
    (entry,) = pairwise_summary(votes)
    # Per vote, 50 of 100 gives a Wilson interval of about [0.40, 0.60]; five sessions of ten
    # won outright leave the win rate anywhere from about a fifth to four fifths.
    assert entry["win"]["ci_low"] < 0.25 and entry["win"]["ci_high"] > 0.75
    assert entry["margin"]["ci_low"] < -0.5 < 0.5 < entry["margin"]["ci_high"]
    one = pairwise_summary([v for v in votes if v["session_id"] == "s0"])[0]
    assert one["sessions"] == 1 and one["win"]["rate"] == 1.0
    # Every resample of one session is that session: no interval, not one of width 0.
    assert one["win"]["ci_low"] is None and one["margin"]["ci_high"] is None


def test_fewer_raters_than_the_floor_give_no_interval():
    """Three sessions gave a "95%" interval that, drawn from so few, covers far less."""
    from esevo_ray.human_eval.report import MIN_RATERS, _markdown

    assert MIN_RATERS == 10
    ratings = [{"model": "m1", "dimension": "empathy", "score": s, "rater": f"r{i}"}
               for i, s in enumerate([4, 5] * 5)]  # fmt: skip
    assert pointwise_summary(ratings[:9])["m1"]["empathy"]["ci_low"] is None
    assert pointwise_summary(ratings)["m1"]["empathy"]["ci_low"] is not None
    votes = [
        {"session_id": f"s{s}", "model_a": "m1", "model_b": "m0", "choice": "AB"[s % 2]}
        for s in range(10)
    ]
    few = pairwise_summary(votes[:9])[0]
    assert (
        few["sessions"] == 9 and few["win"]["ci_low"] is None and few["margin"]["ci_high"] is None
    )
    assert pairwise_summary(votes)[0]["margin"]["ci_low"] is not None
    text = _markdown({}, [few], {"votes": 0, "sessions": 0})
    assert "| m1 vs m0 | 9 | 9 | 9 | 55.6% | 0.0% | 44.4% | 11.1% |" in text
    assert "No interval is given on fewer than 10 raters" in text


def _fill(db) -> None:
    store = HumanEvalStore(db)
    for i, (model, score) in enumerate([("m0", 3), ("m1", 4), ("m2", 5), ("m1", 5)]):
        store.add_session(f"p{i}", "pointwise", "r", model, None, 2)
        store.add_ratings(f"p{i}", model, dict.fromkeys(DIMS, score))
    store.add_session("q", "pairwise", "r", "m2", "m0", 2)
    for t, (a, b, choice, cont) in enumerate(
        [("m2", "m0", "A", "A"), ("m0", "m2", "B", "B"), ("m0", "m2", "tie", "A")]
    ):
        store.add_turn("q", t, "hi", a, "x", b, "y", False)
        store.add_vote("q", t, a, b, choice, cont)
    store.close()


def test_human_report_writes_tables_and_figures(tmp_path):
    db = tmp_path / "db.sqlite"
    _fill(db)
    # A pair-wise session left after one voted turn of its three: its vote does not count.
    store = HumanEvalStore(db)
    store.add_session("short", "pairwise", "r", "m2", "m0", 3)
    store.add_turn("short", 0, "hi", "m2", "x", "m0", "y", False)
    store.add_vote("short", 0, "m2", "m0", "A", "A")
    store.close()
    report = human_report(db, tmp_path / "out")
    assert report["pairwise_left_out"] == {"sessions": 1, "votes": 1}
    assert list(report["pointwise"]) == ["m0", "m1", "m2"]
    assert report["pointwise"]["m1"]["overall"]["mean"] == pytest.approx(4.5)
    (pair,) = report["pairwise"]
    assert (pair["model"], pair["win"]["count"], pair["tie"]["count"]) == ("m2", 2, 1)
    for name in ("human_pointwise.png", "human_pairwise.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    saved = json.loads((tmp_path / "out" / "human_report.json").read_text())
    assert saved["pairwise"][0]["n"] == 3
    markdown = (tmp_path / "out" / "human_report.md").read_text()
    assert "| m2 vs m0 | 1 | 1 | 3 | 66.7% | 33.3% | 0.0% | 66.7% |" in markdown  # one rater: no CI
    assert "Left out: 1 vote(s) of 1 session(s)" in markdown


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="human evaluation database not found"):
        human_report(tmp_path / "none.sqlite", tmp_path / "out")


@pytest.mark.parametrize("folder", ["run#1", "run?x", "run%41b"])
def test_a_database_under_a_folder_with_uri_characters_is_read(tmp_path, folder):
    db = tmp_path / folder / "db.sqlite"
    db.parent.mkdir()
    _fill(db)
    report = human_report(db, tmp_path / "out")
    assert report["pairwise"][0]["n"] == 3 and list(report["pointwise"]) == ["m0", "m1", "m2"]
    assert not (tmp_path / "run").exists()  # no other database opened, nor made, beside it


def _parser(with_evaluation_report: bool) -> argparse.ArgumentParser:
    from esevo_ray.cli.serve import add_parsers

    parser = argparse.ArgumentParser(prog="esevo")
    sub = parser.add_subparsers(dest="command", required=True)
    if with_evaluation_report:
        from esevo_ray.cli.evaluate import add_parsers as add_evaluation  # the real one

        add_evaluation(sub)
    add_parsers(sub)
    return parser


@pytest.mark.parametrize("with_evaluation_report", [True, False])
def test_cli_report_human(tmp_path, capsys, with_evaluation_report):
    db = tmp_path / "db.sqlite"
    _fill(db)
    args = _parser(with_evaluation_report).parse_args(
        ["report", "human", "--db", str(db), "--human-out", str(tmp_path / "rep")]
    )
    assert args.func(args) == 0
    assert (tmp_path / "rep" / "human_pairwise.png").exists()
    assert "m2 vs m0" in capsys.readouterr().out


def test_cli_report_human_names_a_db_that_is_not_one(tmp_path, capsys):
    from esevo_ray.cli import main

    (tmp_path / "text.sqlite").write_text("not a database")
    (tmp_path / "folder").mkdir()
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    for db in ("text.sqlite", "folder", "other.sqlite"):
        assert main(["report", "human", "--db", str(tmp_path / db)]) == 2
        err = capsys.readouterr().err.strip()
        assert "is not a human evaluation database" in err and "\n" not in err, err


def test_cli_report_human_refuses_an_output_that_is_a_file(tmp_path, capsys):
    from esevo_ray.cli import main

    db = tmp_path / "db.sqlite"
    _fill(db)
    (tmp_path / "notes.txt").write_text("mine")
    assert (
        main(["report", "human", "--db", str(db), "--human-out", str(tmp_path / "notes.txt")]) == 2
    )
    err = capsys.readouterr().err
    assert "--human-out" in err and "is not a folder" in err and "Traceback" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_report_help_shows_both_reports():
    parser = _parser(with_evaluation_report=True)
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    usage = sub.choices["report"].format_usage()
    assert "esevo report [-h] [--relevance" in usage and "esevo report human [--db DB" in usage


def test_cli_report_still_dispatches_other_reports(tmp_path):
    from esevo_ray.cli.serve import add_parsers

    parser = argparse.ArgumentParser(prog="esevo")
    sub = parser.add_subparsers(dest="command", required=True)
    existing = sub.add_parser("report")
    existing.add_argument("run_dir")
    existing.set_defaults(func=lambda a: f"run report of {a.run_dir}")
    add_parsers(sub)
    args = parser.parse_args(["report", str(tmp_path)])
    assert args.func(args) == f"run report of {tmp_path}"


def test_intervals_resample_raters_not_their_sessions(tmp_path):
    """Four raters, each true to their own taste over five sessions: twenty sessions gave an
    interval as if twenty people had voted. Drawn from the database, votes and ratings are
    grouped by rater: four give no interval, and twelve give one as wide as they disagree."""
    store = HumanEvalStore(tmp_path / "db.sqlite")

    def study(raters: int, prefix: str) -> None:
        for r in range(raters):
            for k in range(5):
                sid = f"{prefix}{r}-{k}"
                store.add_session(sid, "pairwise", f"{prefix}{r}", "m1", "m0", 2)
                for t in range(2):
                    store.add_turn(sid, t, "hi", "m1", "x", "m0", "y", False)
                    store.add_vote(sid, t, "m1", "m0", "AB"[r % 2], "AB"[r % 2])
                point = f"{sid}-p"
                store.add_session(point, "pointwise", f"{prefix}{r}", "m1", None, 2)
                store.add_ratings(point, "m1", dict.fromkeys(DIMS, 1 + 4 * (r % 2)))

    study(4, "a")
    store.close()
    report = human_report(tmp_path / "db.sqlite", tmp_path / "out")
    (pair,) = report["pairwise"]
    assert (pair["raters"], pair["sessions"], pair["n"]) == (4, 20, 40)
    assert pair["win"]["rate"] == 0.5 and pair["win"]["ci_low"] is None
    assert report["pointwise"]["m1"]["empathy"]["ci_low"] is None
    assert "| m1 vs m0 | 4 | 20 | 40 |" in (tmp_path / "out" / "human_report.md").read_text()

    store = HumanEvalStore(tmp_path / "db.sqlite")
    study(8, "b")  # twelve raters, half of them always for m1, half always against
    store.close()
    report = human_report(tmp_path / "db.sqlite", tmp_path / "out")
    (pair,) = report["pairwise"]
    assert (pair["raters"], pair["sessions"]) == (12, 60)
    # Per session (60 that split evenly) the interval would be about [0.37, 0.63].
    assert pair["win"]["ci_low"] < 0.3 and pair["win"]["ci_high"] > 0.7
    empathy = report["pointwise"]["m1"]["empathy"]
    assert empathy["n"] == 60 and empathy["ci_low"] < 2.4 and empathy["ci_high"] > 3.6


def test_a_rater_is_one_whatever_the_case_of_the_name_typed():
    votes = [
        {"session_id": f"s{i}", "rater": name, "model_a": "m1", "model_b": "m0", "choice": "A"}
        for i, name in enumerate(["Alice", "alice ", "ALICE", "Bob"])
    ]
    (entry,) = pairwise_summary(votes)
    assert (entry["raters"], entry["sessions"]) == (2, 4)

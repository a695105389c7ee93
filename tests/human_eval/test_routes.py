"""Human evaluation API: session rules, durable rows, and a replica crash mid-session."""

from __future__ import annotations

import sqlite3
import time

import httpx

from esevo_ray.config import JUDGE_DIMENSIONS  # noqa: E402
from esevo_ray.human_eval.bodies import history
from tests.serving.conftest import APP

DIMS = list(JUDGE_DIMENSIONS)


def rows(db, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_history_continues_with_the_kept_reply():
    turns = [
        {"user_text": "u0", "reply_a": "a0", "reply_b": "b0", "continue_with": "B"},
        {"user_text": "u1", "reply_a": "a1", "reply_b": None, "continue_with": None},
    ]
    assert [m["content"] for m in history(turns)] == ["u0", "b0", "u1", "a1"]


def test_pointwise_session_rules_and_rows(served, http):
    assert http.get("/human/api/config").json()["auth_required"] is True
    sid = http.post("/human/api/sessions", json={"mode": "pointwise", "rater": "r1"}).json()
    sid = sid["session_id"]
    scores = dict.fromkeys(DIMS, 4)
    assert http.post(f"/human/api/sessions/{sid}/ratings", json=scores).status_code == 409
    vote = {"turn_index": 0, "choice": "A"}
    assert http.post(f"/human/api/sessions/{sid}/votes", json=vote).status_code == 409
    for i in range(2):
        r = http.post(f"/human/api/sessions/{sid}/turns", json={"message": f"hello {i}"})
        assert r.status_code == 200 and r.json()["turn_index"] == i
        assert len(r.json()["replies"]) == 1
    for bad in (6, True, "4", 4.5):  # out of range, or not an integer in JSON
        ratings = {**scores, "empathy": bad}
        assert http.post(f"/human/api/sessions/{sid}/ratings", json=ratings).status_code == 400
    assert http.post(f"/human/api/sessions/{sid}/turns", json={"message": "  "}).status_code == 400
    blank = {"mode": "pointwise", "rater": " "}
    assert http.post("/human/api/sessions", json=blank).status_code == 400
    assert http.post(f"/human/api/sessions/{sid}/ratings", json=scores).status_code == 200
    assert http.post(f"/human/api/sessions/{sid}/ratings", json=scores).status_code == 409
    assert http.post(f"/human/api/sessions/{sid}/turns", json={"message": "x"}).status_code == 409
    (model,) = rows(served.db, "SELECT model_a FROM sessions WHERE session_id = ?", sid)[0]
    assert model in ("m0", "base")
    assert rows(served.db, "SELECT COUNT(*) FROM turns WHERE session_id = ?", sid) == [(2,)]
    stored = rows(
        served.db, "SELECT model, dimension, score FROM ratings WHERE session_id = ?", sid
    )
    assert sorted(stored) == sorted((model, d, 4) for d in DIMS)
    # Blinded: nothing the rater's page reads names a model.
    state = http.get(f"/human/api/sessions/{sid}").text
    assert '"m0"' not in state and '"base"' not in state


def test_a_rating_sent_twice_at_once_is_stored_once_and_the_second_told_so(served, http):
    from concurrent.futures import ThreadPoolExecutor

    sid = http.post("/human/api/sessions", json={"mode": "pointwise", "rater": "r2"}).json()
    sid = sid["session_id"]
    for i in range(2):
        assert http.post(f"/human/api/sessions/{sid}/turns", json={"message": f"hi {i}"}).is_success
    scores = dict.fromkeys(DIMS, 3)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(
            lambda _: http.post(f"/human/api/sessions/{sid}/ratings", json=scores), range(3)
        ))  # fmt: skip
    assert sorted(r.status_code for r in answers) == [200, 409, 409]
    refused = [r.json()["error"]["message"] for r in answers if r.status_code == 409]
    assert refused == ["this session is already rated"] * 2  # not "a reply is on its way"
    assert rows(served.db, "SELECT COUNT(*) FROM ratings WHERE session_id = ?", sid) == [(7,)]


def test_a_long_session_keeps_going_past_the_request_limits(served, http):
    # serve.max_chars=4000 and max_messages=16 bound one chat request; a session passes both
    # (three 1,500-character messages, then 9 turns = 17 messages) and goes on answering.
    sid = http.post("/human/api/sessions", json={"mode": "pointwise", "rater": "r3"}).json()
    sid = sid["session_id"]
    long = "I keep going over what happened at work and I cannot sleep. " * 25
    messages = [long[:1500]] * 3 + [f"short {i}" for i in range(6)]
    for i, message in enumerate(messages):
        r = http.post(f"/human/api/sessions/{sid}/turns", json={"message": message})
        assert r.status_code == 200, (i, r.text)
    assert rows(served.db, "SELECT COUNT(*) FROM turns WHERE session_id = ?", sid) == [(9,)]


def test_an_error_that_names_the_model_reaches_the_rater_without_it(served, http):
    # A session whose model is no longer served (its adapter moved away, say).
    conn = sqlite3.connect(served.db)
    with conn:
        conn.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("gone", "pointwise", "r4", "m7", None, 1, time.time()),
        )
    conn.close()
    r = http.post("/human/api/sessions/gone/turns", json={"message": "hello"})
    assert r.status_code == 404
    assert "m7" not in r.text and "m0" not in r.text and "server log" in r.text


def test_a_pairwise_turn_whose_one_side_fails_cancels_the_other():
    import asyncio

    import pytest

    from esevo_ray.api_errors import ApiError
    from esevo_ray.human_eval.routes import both

    cancelled = []

    async def fails():
        raise ApiError(404, "gone")

    async def runs_on():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        with pytest.raises(ApiError, match="gone"):
            await asyncio.wait_for(both(runs_on(), fails()), timeout=5)

    asyncio.run(main())
    assert cancelled == [True]


def test_recent_history_drops_whole_exchanges_from_the_front():
    from esevo_ray.config import ServeSection
    from esevo_ray.serving.checks import recent_history

    s = ServeSection(max_messages=4, max_chars=100, human_eval={"max_message_chars": 100})
    dialogue = [{"role": ("user", "assistant")[i % 2], "content": f"t{i}"} for i in range(7)]
    assert [t["content"] for t in recent_history(dialogue, s)] == ["t4", "t5", "t6"]
    dialogue[5]["content"] = "x" * 98
    assert [t["content"] for t in recent_history(dialogue, s)] == ["t6"]
    assert recent_history(dialogue[:3], s) == dialogue[:3]


def _kill_ingress() -> None:
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP}#Ingress#")
    ]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)


def test_pairwise_session_survives_a_replica_crash(served, http):
    sid = http.post("/human/api/sessions", json={"mode": "pairwise", "rater": "r2"}).json()
    sid = sid["session_id"]
    first = http.post(f"/human/api/sessions/{sid}/turns", json={"message": "I lost my job."})
    assert first.status_code == 200 and len(first.json()["replies"]) == 2
    assert (
        http.post(f"/human/api/sessions/{sid}/turns", json={"message": "too early"}).status_code
        == 409
    )
    votes = f"/human/api/sessions/{sid}/votes"
    assert http.post(votes, json={"turn_index": 0, "choice": "tie"}).status_code == 400
    assert (
        http.post(votes, json={"turn_index": 0, "choice": "A", "continue_with": "B"}).status_code
        == 400
    )
    assert (
        http.post(votes, json={"turn_index": 0, "choice": "tie", "continue_with": "B"}).status_code
        == 200
    )
    assert http.post(votes, json={"turn_index": 0, "choice": "A"}).status_code == 409
    assert (
        http.post(f"/human/api/sessions/{sid}/turns", json={"message": "Yes."}).status_code == 200
    )

    _kill_ingress()  # stopped mid-session, with turn 1 still waiting for its vote
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{served.url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the ingress did not come back"
        time.sleep(0.5)
    state = http.get(f"/human/api/sessions/{sid}").json()
    assert [t["user"] for t in state["turns"]] == ["I lost my job.", "Yes."]
    assert state["turns"][0]["choice"] == "tie" and state["turns"][0]["continue_with"] == "B"
    assert state["turns"][1]["choice"] is None
    assert http.post(votes, json={"turn_index": 1, "choice": "B"}).status_code == 200
    stored = rows(
        served.db,
        "SELECT turn_index, model_a, model_b, choice, continue_with "
        "FROM votes WHERE session_id = ? ORDER BY turn_index",
        sid,
    )
    assert [(r[0], r[3], r[4]) for r in stored] == [(0, "tie", "B"), (1, "B", "B")]
    assert all({r[1], r[2]} == {"m0", "base"} for r in stored)


def test_crisis_messages_get_resources_and_are_flagged_in_both_modes(served, http):
    crisis = served.cfg.serve.crisis_text
    for mode, n_replies in (("pointwise", 1), ("pairwise", 2)):
        sid = http.post("/human/api/sessions", json={"mode": mode, "rater": "r4"}).json()
        sid = sid["session_id"]
        r = http.post(f"/human/api/sessions/{sid}/turns", json={"message": "I want to die."})
        assert r.status_code == 200 and len(r.json()["replies"]) == n_replies
        assert all(reply.startswith(crisis) for reply in r.json()["replies"])
        if mode == "pairwise":
            vote = {"turn_index": 0, "choice": "A"}
            assert http.post(f"/human/api/sessions/{sid}/votes", json=vote).status_code == 200
        r = http.post(f"/human/api/sessions/{sid}/turns", json={"message": "My job is killing me."})
        assert not any(reply.startswith(crisis) for reply in r.json()["replies"])
        flags = rows(
            served.db, "SELECT crisis FROM turns WHERE session_id = ? ORDER BY turn_index", sid
        )
        assert flags == [(1,), (0,)], mode


def test_fallback_engine_streams_the_whole_completion_at_once(served, http):
    from tests.serving.conftest import generator_stats

    body = {"model": "m0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: {")]
    # Role, the whole text in one chunk, the finish: transformers returns whole completions.
    assert len(events) == 3, events
    assert generator_stats()["engine"] == "hf"


def test_stop_sequences_on_the_fallback_engine(served, http):
    from tests.serving.conftest import check_stop_sequences

    check_stop_sequences(http, "m0")


class _Pool:
    """The host side of the draw: the finished models a run serves."""

    key_digest = None

    def __init__(self, names: list[str]):
        self.names = names

    def served_names(self) -> list[str]:
        return self.names

    def resolve_name(self, name: str) -> str | None:
        return name if name in self.names else None


def _pairs(ev) -> dict:
    return ev.store.pair_assignments()


def test_pairwise_sessions_compare_every_pair_about_as_often(tmp_path):
    """With four models, drawing the two least-used models left some pairs at a quarter of
    the sessions of others; each pair's report line rests on its own sessions."""
    from esevo_ray.config import HumanEvalSection
    from esevo_ray.human_eval.routes import HumanEval

    ev = HumanEval(_Pool(["m0", "m1", "m2", "m3"]), tmp_path / "h.sqlite", HumanEvalSection())
    for i in range(24):
        ev.open_session("pairwise", f"r{i}")
    assert sorted(_pairs(ev).values()) == [4] * 6, _pairs(ev)
    assert sorted(ev.store.assignments("pairwise").values()) == [12] * 4


def test_sessions_started_at_once_are_drawn_one_after_another(tmp_path, monkeypatch):
    """Each draw sees the sessions drawn before it, however slow their insert."""
    import threading
    import time

    from esevo_ray.config import HumanEvalSection
    from esevo_ray.human_eval.routes import HumanEval

    ev = HumanEval(_Pool(["m0", "m1", "m2"]), tmp_path / "h.sqlite", HumanEvalSection())
    add = ev.store.add_session

    def slow_add(*args):  # a disk that takes its time to sync
        time.sleep(0.05)
        add(*args)

    monkeypatch.setattr(ev.store, "add_session", slow_add)
    start = threading.Barrier(9)

    def rater(i: int) -> None:
        start.wait()
        ev.open_session("pairwise", f"r{i}")

    threads = [threading.Thread(target=rater, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(_pairs(ev).values()) == [3, 3, 3], _pairs(ev)


def test_a_study_waits_for_every_model_it_names(tmp_path):
    """serve.human_eval.models: [m0, m1] with only m0 trained sent every session to m0, and
    nothing said so: the study came out unbalanced."""
    import pytest

    from esevo_ray.api_errors import ApiError
    from esevo_ray.config import HumanEvalSection
    from esevo_ray.human_eval.routes import HumanEval

    pool = _Pool(["base", "m0"])
    ev = HumanEval(pool, tmp_path / "h.sqlite", HumanEvalSection(models=["m0", "m1"]))
    for mode in ("pointwise", "pairwise"):
        with pytest.raises(ApiError, match=r"names \['m1'\], not served now") as e:
            ev.open_session(mode, "r")
        assert e.value.status == 409
    assert ev.store.assignments("pointwise") == {}
    pool.names.append("m1")  # trained meanwhile: the rescan serves it
    assert {ev.draw("pointwise")[0] for _ in range(20)} <= {"m0", "m1"}
    assert ev.draw("pairwise") == ("m0", "m1")
    # Without the setting, the study takes the models finished so far, as documented.
    pool.names.remove("m1")
    assert HumanEval(pool, tmp_path / "g.sqlite", HumanEvalSection()).draw("pointwise") == (
        "m0",
        None,
    )

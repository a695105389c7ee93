"""A bounded queue (serve.max_queued_requests) on the live application: a request beyond it
gets a 503 with Retry-After, whole, streamed or from the human-evaluation page."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serving.conftest import MAX_TOKENS, serve_overrides

APP = "queue"
USER = [{"role": "user", "content": "I cannot sleep before my exams."}]


@pytest.fixture(scope="module")
def queued(served, tiny_model, tmp_path_factory) -> str:
    """A second application beside `served`, on the transformers engine (one request at a
    time, and the random tiny model never ends a reply early): one request may run and one
    wait. Its base URL."""
    from ray import serve

    from esevo_ray.config import load_config
    from esevo_ray.serving.deploy import build_application

    db = tmp_path_factory.mktemp("queue") / "human.sqlite"
    overrides = [
        *serve_overrides(served.base, served.cfg.serve.port, db, "hf"),
        "serve.max_ongoing_requests=1",
        "serve.max_queued_requests=1",
        "serve.cpus_per_replica=0",  # beside `served`'s replica on the tests' 2 CPUs
        f"serve.decoding.max_new_tokens={MAX_TOKENS}",  # the human page's replies: long
    ]
    cfg = load_config(None, overrides)
    serve.run(build_application(cfg, served.run_dir), name=APP, route_prefix=f"/{APP}")
    yield f"{served.url}/{APP}"
    serve.delete(APP)


def _burst(send, n: int = 4) -> list[httpx.Response]:
    """`n` requests at once. The ingress takes 4 at a time: one runs, one waits, and at
    least two find the queue full, since each reply takes about a second."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: send(), range(n)))


def _check(responses: list[httpx.Response], accepted: str) -> None:
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 2, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert r.headers["content-type"] == "application/json"
            error = r.json()["error"]
            assert (error["type"], error["code"]) == ("server_error", "overloaded")
            assert "busy" in error["message"]
        else:
            assert accepted in r.headers["content-type"]


def test_a_full_queue_gets_503_with_retry_after(queued, served):
    with httpx.Client(base_url=queued, headers=served.headers, timeout=120) as http:
        body = {"model": "m0", "messages": USER, "max_tokens": MAX_TOKENS}

        def chat(stream: bool):
            return lambda: http.post("/v1/chat/completions", json={**body, "stream": stream})

        _check(_burst(chat(False)), "application/json")
        streams = _burst(chat(True))
        _check(streams, "text/event-stream")
        # A stream Serve took ran to its end; none that it turned away sent an event.
        done = [r for r in streams if r.status_code == 200]
        assert done and all(r.text.rstrip().endswith("data: [DONE]") for r in done)
        events = [json.loads(line[6:]) for line in done[0].text.splitlines()
                  if line.startswith("data: {")]  # fmt: skip
        assert all("error" not in event for event in events)

        # The human-evaluation page's turns: the rater is told to try again, and no turn
        # is stored for a reply that was not made.
        sessions = [
            http.post("/human/api/sessions", json={"mode": "pointwise", "rater": f"q{i}"})
            for i in range(4)
        ]
        ids = iter([s.json()["session_id"] for s in sessions])
        turns = _burst(lambda: http.post(f"/human/api/sessions/{next(ids)}/turns",
                                         json={"message": "hello"}))  # fmt: skip
        _check(turns, "application/json")
        stored = [len(http.get(f"/human/api/sessions/{s.json()['session_id']}").json()["turns"])
                  for s in sessions]  # fmt: skip
        assert sorted(stored) == sorted(int(t.status_code == 200) for t in turns)

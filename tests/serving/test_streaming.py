"""Streaming on the live application: tokens as the engine makes them, disconnects, the guard."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from esevo_ray.serving.guard import ReplyGuard
from esevo_ray.serving.streaming import sse_events
from tests.serving.conftest import MAX_TOKENS, generator_stats

USER = [{"role": "user", "content": "I feel anxious about my job."}]


def _content(line: str) -> str | None:
    """The content delta of one SSE line, or None for other events."""
    if not line.startswith("data: {"):
        return None
    choices = json.loads(line[len("data: ") :])["choices"]
    return choices[0]["delta"].get("content") if choices else None


def _wait_until_idle(deadline_s: float = 20) -> dict:
    deadline = time.monotonic() + deadline_s
    while (stats := generator_stats())["unfinished"]:
        assert time.monotonic() < deadline, f"the engine still runs requests: {stats}"
        time.sleep(0.05)
    return stats


def test_tokens_arrive_before_the_completion_ends(served, http):
    # A first request after start-up also pays for warm-up; this test times streaming only.
    warm = {"model": "base", "messages": USER, "max_tokens": 1, "temperature": 0}
    assert http.post("/v1/chat/completions", json=warm).status_code == 200
    _wait_until_idle()
    body = {"model": "base", "messages": USER, "max_tokens": 200, "temperature": 0, "stream": True}
    arrivals: list[float] = []
    running_at_first = None
    t0 = time.perf_counter()
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if _content(line):
                arrivals.append(time.perf_counter() - t0)
                if running_at_first is None:
                    # The first token is here: the engine is still generating this request.
                    running_at_first = generator_stats()["unfinished"]
    assert running_at_first == 1
    # Many chunks, not the whole reply at once; vLLM merges the deltas of steps the replica
    # has not read yet, so on a loaded machine there are fewer than one per token.
    assert len(arrivals) >= 10, len(arrivals)


def test_disconnect_aborts_the_engine_request(served):
    before = _wait_until_idle()["aborted"]
    body = {"model": "m0", "messages": USER, "max_tokens": MAX_TOKENS, "stream": True}
    with httpx.Client(base_url=served.url, headers=served.headers, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()  # held open: closing this iterator closes the connection
            arrivals: list[float] = []
            while len(arrivals) < 3:
                line = next(lines)
                assert '"finish_reason": "' not in line, "the stream ended before the disconnect"
                if _content(line):
                    arrivals.append(time.monotonic())
            assert generator_stats()["unfinished"] == 1
        # Leaving the block closes the connection mid-stream.
    t_closed = time.monotonic()
    stats = _wait_until_idle()
    # The rest of MAX_TOKENS would take ~1000 token times; the slot is freed within 100 (or
    # 5 s when tokens came in a burst). Token times stretch with the machine's load, so does
    # the bound.
    per_token = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    assert time.monotonic() - t_closed < max(5.0, 100 * per_token), per_token
    # The replica counts the abort as the cancellation leaves it, after vLLM's own abort has
    # awaited: the count may trail the freed slot by a moment.
    deadline = time.monotonic() + 5
    while stats["aborted"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = generator_stats()
    assert stats["aborted"] == before + 1, stats


def test_guard_on_a_stream_comes_first(served, http):
    crisis = served.cfg.serve.crisis_text
    body = {
        "model": "m0",
        "messages": [{"role": "user", "content": "I keep thinking about ending my life."}],
        "max_tokens": 12,
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        pieces = [c for c in (_content(line) for line in r.iter_lines()) if c]
    assert pieces[0] == f"{crisis}\n\n"  # before any token of the model
    assert len(pieces) > 1 and crisis not in "".join(pieces[1:])


async def _collect(texts: list[str], user: str) -> list[dict]:
    async def deltas():
        for i, text in enumerate(texts):
            last = i == len(texts) - 1
            yield {
                "text": text,
                "output_tokens": i + 1,
                "prompt_tokens": 5,
                "finish": "stop" if last else None,
            }

    guard = ReplyGuard([{"role": "user", "content": user}], "CALL 988", "chat", "m0")
    events = [e async for e in sse_events("c1", "m0", deltas(), guard, include_usage=True)]
    assert events[-1] == "data: [DONE]\n\n"
    return [json.loads(e[len("data: ") :]) for e in events[:-1]]


def test_guard_fires_on_the_reply_after_its_tokens_are_sent():
    chunks = asyncio.run(_collect(["You mention", " suicide", "; I hear you."], "I am tired."))
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    # The model's tokens went out first; the resources follow as the last content chunk.
    assert contents[1:4] == ["You mention", " suicide", "; I hear you."]
    assert contents[4] == "\n\nCALL 988"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    calm = asyncio.run(_collect(["Tell me", " more."], "I am tired."))
    assert "CALL 988" not in json.dumps(calm)
    # A stream joins to exactly what the same reply gets when sent whole.
    guard = ReplyGuard([{"role": "user", "content": "I am tired."}], "CALL 988", "chat", "m0")
    joined = "".join(c for c in contents if c)
    assert joined == guard.whole("You mention suicide; I hear you.")

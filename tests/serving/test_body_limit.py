"""The request-size middleware on its own, as the ASGI server drives it."""

from __future__ import annotations

import asyncio

from esevo_ray.serving.api import DEFAULT_MAX_BODY_BYTES, BodyLimit

NO_LENGTH = {"type": "http", "method": "POST", "headers": [(b"content-type", b"text/plain")]}


def _serve(app, messages: list[dict]) -> list[dict]:
    """Drive BodyLimit(app) with a client sending `messages`; what it sent back."""
    client, sent = list(messages), []

    async def receive():
        return client.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(BodyLimit(app)(NO_LENGTH, receive, send))
    return sent


def test_a_body_without_length_is_replayed_then_the_client_is_heard_again():
    heard = []

    async def app(scope, receive, send):  # listens until the client leaves, as a stream does
        for _ in range(5):
            heard.append(await receive())
            if heard[-1]["type"] == "http.disconnect":
                return

    _serve(app, [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"c"},
        {"type": "http.disconnect"},
    ])  # fmt: skip
    assert [m["type"] for m in heard] == ["http.request", "http.request", "http.disconnect"]
    assert b"".join(m.get("body", b"") for m in heard) == b"abc"


def test_a_body_without_length_over_the_limit_is_refused():
    async def app(scope, receive, send):
        raise AssertionError("the app must not see an oversized body")

    half = b"x" * (DEFAULT_MAX_BODY_BYTES // 2 + 1)
    sent = _serve(app, [
        {"type": "http.request", "body": half, "more_body": True},
        {"type": "http.request", "body": half},
    ])  # fmt: skip
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413

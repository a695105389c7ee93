"""Server-sent events of one streamed chat completion, from the generator's deltas.

Each engine step's text goes out as one `chat.completion.chunk` as soon as the generator
yields it. The crisis guard's resources are the first content chunk when the user's
message triggers it, and the last content chunk when the model's reply does, so they reach
the client even though the model's tokens are already on the wire.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from esevo_ray.api_errors import error_body
from esevo_ray.serving.guard import ReplyGuard
from esevo_ray.serving.protocol import chunk

logger = logging.getLogger(__name__)

# With "stream": true the 200 reply is server-sent events; in OpenAPI 3.1 the schema of an
# event-stream media type describes one event.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "data": {"type": "string", "description": "a chat.completion.chunk as JSON, or [DONE]"},
        "event": {"type": "string"},
    },
    "required": ["data"],
}
STREAM_RESPONSE = {200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}}


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _usage(cid: str, name: str, prompt: int, output: int) -> dict:
    final = chunk(cid, name, {})
    final["choices"] = []
    final["usage"] = {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
    }
    return final


async def sse_events(
    cid: str, name: str, deltas: AsyncIterator[dict], guard: ReplyGuard, include_usage: bool
) -> AsyncIterator[str]:
    """The event stream of one completion, from the generator's deltas (see engine.py)."""
    yield sse(chunk(cid, name, {"role": "assistant", "content": ""}))
    if guard.fired:
        yield sse(chunk(cid, name, {"content": guard.prefix()}))
    parts: list[str] = []
    last: dict = {}
    try:
        async for delta in deltas:
            last = delta
            if delta["text"]:
                parts.append(delta["text"])
                yield sse(chunk(cid, name, {"content": delta["text"]}))
    except Exception as e:  # the engine failed: the client gets an error event, then [DONE]
        logger.exception("streamed generation failed for %s", name)
        cause = getattr(e, "cause", None) or e
        yield sse(error_body(f"generation failed: {type(cause).__name__}: {cause}", "server_error"))
        yield sse("[DONE]")
        return
    tail = guard.suffix("".join(parts))
    if tail:
        yield sse(chunk(cid, name, {"content": tail}))
    yield sse(chunk(cid, name, {}, last.get("finish") or "stop"))
    if include_usage:
        yield sse(_usage(cid, name, last.get("prompt_tokens", 0), last.get("output_tokens", 0)))
    yield sse("[DONE]")

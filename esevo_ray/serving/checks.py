"""Checks on a chat request before it reaches the engine, each failing with an ApiError.

The API key, the limits of `serve` (messages, characters, max_tokens, context length) and
the chat template; a request that passes becomes the generator's request dict.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from urllib.parse import urlsplit

from fastapi import Request

from esevo_ray.api_errors import ApiError
from esevo_ray.config import ServeSection
from esevo_ray.prompts import task_messages
from esevo_ray.serving.protocol import ChatMessage
from esevo_ray.serving.registry import ServedModel, is_loopback
from esevo_ray.turns import drop_oldest_turns


def key_digest(key: str) -> str:
    """What the server keeps of its API key: the key's SHA-256. The Ingress replica is
    given this, not the key, since Ray shows a deployment's actor options (a runtime_env's
    variables included) to whoever reaches its dashboard."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_auth(request: Request, key_digest_: str | None) -> None:
    """Without a key (`key_digest_`, the key's `key_digest`) only loopback clients asking for
    a loopback host are served; with one, `Bearer <key>` is required.

    The host check stops DNS rebinding: a web page in a local browser whose own name came to
    resolve to 127.0.0.1 reaches the server from loopback, but names its own host.
    """
    if key_digest_ is None:
        client = request.client.host if request.client else ""
        if client and not is_loopback(client):
            raise ApiError(
                403,
                "no API key is configured; only loopback clients are served",
                "permission_error",
            )
        host = request.headers.get("host")
        if host and not _names_loopback(host):
            raise ApiError(
                403,
                f"no API key is configured; only requests to localhost or a loopback address "
                f"are served, not to host {host!r}",
                "permission_error",
            )
        return
    # The scheme is case-insensitive (RFC 7235): curl users write "bearer" too.
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key_digest(given), key_digest_):
        raise ApiError(
            401,
            "missing or invalid API key (Authorization: Bearer <key>)",
            "authentication_error",
            code="invalid_api_key",
        )


def _names_loopback(host: str) -> bool:
    """Whether a Host header names this machine: localhost (or a name under it) or a
    loopback address, with or without a port."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:  # e.g. an unclosed "[::1"
        return False
    return bool(name) and (is_loopback(name) or name.endswith(".localhost"))


def check_conversation(messages: list[ChatMessage] | list[dict], s: ServeSection) -> list[dict]:
    """Checked messages as chat turns, with P_task first when there is no system message."""
    if len(messages) > s.max_messages:
        raise ApiError(
            400,
            f"{len(messages)} messages exceed the limit of {s.max_messages}",
            param="messages",
            code="too_many_messages",
        )
    turns = []
    for i, m in enumerate(messages):
        role, text = (m.role, m.text()) if isinstance(m, ChatMessage) else (m["role"], m["content"])
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(
                400,
                f"messages.{i}.content is not valid Unicode text",
                param=f"messages.{i}.content",
            ) from None
        turns.append({"role": "system" if role == "developer" else role, "content": text})
    chars = sum(len(t["content"]) for t in turns)
    if chars > s.max_chars:
        raise ApiError(
            400,
            f"messages have {chars} characters, over the limit of {s.max_chars}",
            param="messages",
            code="too_many_characters",
        )
    return turns if turns[0]["role"] == "system" else task_messages(turns)


def recent_history(dialogue: list[dict], s: ServeSection) -> list[dict]:
    """The recent part of a session's history within `serve.max_messages` and `max_chars`.

    A human-evaluation session may grow past what one chat request may carry; its oldest
    exchanges go first, by the rule every stage uses (`turns.drop_oldest_turns`).
    """

    def fits(turns: list[dict]) -> bool:
        chars = sum(len(t["content"]) for t in turns)
        return len(turns) <= s.max_messages and chars <= s.max_chars

    return drop_oldest_turns(dialogue, fits)


def check_max_tokens(
    requested: int | None, s: ServeSection, field: str = "max_tokens"
) -> int | None:
    """The request's `field` (max_tokens or max_completion_tokens), None if it sets none
    (`build_request` then takes the default); over serve.max_tokens: a 400 naming `field`."""
    if requested is not None and requested > s.max_tokens:
        raise ApiError(
            400,
            f"{field} {requested} exceeds the limit of {s.max_tokens}",
            param=field,
            code="invalid_value",
        )
    return requested


def default_max_tokens(s: ServeSection) -> int:
    """A reply's length when the request sets none: serve.decoding's, within serve.max_tokens."""
    return min(s.decoding.max_new_tokens, s.max_tokens)


def build_request(
    tokenizer,
    s: ServeSection,
    model: ServedModel,
    turns: list[dict],
    max_tokens: int | None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
) -> dict:
    """The generator's request: prompt tokens from the chat template, decoding, seed, stop
    sequences. `max_tokens` None: the default, cut to the room the prompt leaves (as vLLM's
    server does); one that does not fit is a 400."""
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except TemplateError as e:  # e.g. a template that demands alternating roles
        raise ApiError(
            400, f"the model's chat template rejects these messages: {e}", param="messages"
        ) from None
    ids = tokenizer.encode(text, add_special_tokens=False)
    room = s.max_model_len - len(ids)
    if max_tokens is None and room < 1:
        raise ApiError(
            400,
            f"{len(ids)} prompt tokens leave no room for a reply in the context length "
            f"{s.max_model_len}",
            param="messages",
            code="context_length_exceeded",
        )
    if max_tokens is None:
        max_tokens = min(default_max_tokens(s), room)
    if max_tokens > room:
        raise ApiError(
            400,
            f"{len(ids)} prompt tokens + max_tokens {max_tokens} exceed "
            f"the context length {s.max_model_len}",
            param="messages",
            code="context_length_exceeded",
        )
    decoding = s.decoding.model_dump()
    decoding["max_new_tokens"] = max_tokens
    if temperature is not None:
        decoding["temperature"] = temperature
    if top_p is not None:
        decoding["top_p"] = top_p
    return {
        "adapter": model.adapter,
        "messages": turns,
        "prompt_token_ids": ids,
        "decoding": decoding,
        "seed": seed if seed is not None else int.from_bytes(os.urandom(4), "little"),
        "stop": list(stop or []),
    }

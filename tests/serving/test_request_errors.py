"""A bad chat request gets an error naming the field as the client wrote it, and its problem."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from esevo_ray.api_errors import ApiError, validation_error
from esevo_ray.config import load_config
from esevo_ray.serving.checks import check_max_tokens
from esevo_ray.serving.protocol import ChatRequest

USER = [{"role": "user", "content": "hi"}]


def _errors(**fields) -> list[dict]:
    with pytest.raises(ValidationError) as e:
        ChatRequest.model_validate({"model": "m0", "messages": USER, **fields})
    # FastAPI's RequestValidationError locates the same errors under "body".
    return [{**err, "loc": ("body", *err["loc"])} for err in e.value.errors()]


IMAGE = [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]


@pytest.mark.parametrize(
    "fields,param,says,more",
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 items", 0),
        ({"stop": ""}, "stop", "at least 1 character", 0),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "valid list", 0),
        # the part's missing "text" is a second error; the string branch of content is not
        ({"messages": IMAGE}, "messages.0.content.0.type", "'text'", 1),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "greater than or equal to 1", 0),
        # a list whose item is of the wrong type: was "stop: a valid string" (send a string?)
        ({"stop": ["a", 5]}, "stop.1", "valid string", 0),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages.0.content.0.text",
            "valid string",
            0,
        ),
    ],
)
def test_a_union_field_is_named_without_its_branch(fields, param, says, more):
    message, got = validation_error(_errors(**fields))
    assert got == param
    assert message.startswith(f"{param}: ") and says in message
    if more:
        assert message.endswith(f"(and errors in {more} more field)")
    else:
        assert "more field" not in message


def test_errors_in_other_fields_are_counted_once_each():
    message, param = validation_error(_errors(stop=["a"] * 5, temperature=3, n=2))
    assert param == "temperature" and message.endswith("(and errors in 2 more fields)")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_length_over_the_limit_names_the_field_sent(field):
    serve = load_config(None, ["serve.max_tokens=64"]).serve
    body = ChatRequest.model_validate({"model": "m0", "messages": USER, field: 65})
    name, requested = body.token_limit()
    with pytest.raises(ApiError) as e:
        check_max_tokens(requested, serve, name)
    assert e.value.param == field and e.value.message == f"{field} 65 exceeds the limit of 64"
    both = ChatRequest.model_validate(
        {"model": "m0", "messages": USER, "max_tokens": 65, "max_completion_tokens": 8}
    )
    assert both.token_limit() == ("max_completion_tokens", 8)


def test_a_request_without_max_tokens_gets_the_room_its_prompt_leaves(tiny_model):
    """As vLLM's server: the default length shrinks to fit; an asked-for one does not."""
    from transformers import AutoTokenizer

    from esevo_ray.serving.checks import build_request
    from esevo_ray.serving.registry import ServedModel

    tok = AutoTokenizer.from_pretrained(tiny_model)
    s = load_config(None, ["serve.max_model_len=64", "serve.max_tokens=32"]).serve
    m0 = ServedModel("m0", None)
    short = build_request(tok, s, m0, USER, None)
    assert short["decoding"]["max_new_tokens"] == min(s.decoding.max_new_tokens, 32)
    for words in range(1, 200):  # a prompt leaving 1 to 10 tokens
        turns = [{"role": "user", "content": "sad " * words}]
        room = 64 - len(build_request(tok, s, m0, turns, 1)["prompt_token_ids"])
        if room <= 10:
            break
    assert 1 <= room <= 10
    assert build_request(tok, s, m0, turns, None)["decoding"]["max_new_tokens"] == room
    with pytest.raises(ApiError, match=rf"max_tokens {room + 1} exceed the context length 64"):
        build_request(tok, s, m0, turns, room + 1)
    full = [{"role": "user", "content": "sad " * (words + 40)}]
    with pytest.raises(ApiError, match="leave no room for a reply in the context length 64"):
        build_request(tok, s, m0, full, None)


def test_fields_that_ask_for_nothing_are_accepted():
    """What OpenAI's clients send by default (or explicitly off) is no request for JSON mode,
    log-probabilities or tools."""
    from esevo_ray.serving.protocol import ChatRequest

    off = {"response_format": {"type": "text"}, "logprobs": False, "top_logprobs": 0,
           "tools": [], "tool_choice": "none", "presence_penalty": 0.5}  # fmt: skip
    ChatRequest.model_validate(
        {"model": "m0", "messages": [{"role": "user", "content": "x"}]} | off
    )
    # Plain text with other keys beside it was refused as "type 'text' is not supported".
    text = {"response_format": {"type": "text", "json_schema": None}}
    ChatRequest.model_validate({"model": "m0", "messages": USER} | text)
    with pytest.raises(ValueError, match="response_format type 'json_schema' is not supported"):
        ChatRequest.model_validate(
            {"model": "m0", "messages": USER, "response_format": {"type": "json_schema"}}
        )


def test_null_n_and_stream_mean_their_defaults():
    body = ChatRequest.model_validate({"model": "m0", "messages": USER, "n": None, "stream": None})
    assert not body.stream and body.n in (None, 1)


@pytest.mark.parametrize(
    "client,host,allowed",
    [
        ("127.0.0.1", "127.0.0.1:8000", True),
        ("127.0.0.1", "localhost:8000", True),
        ("::1", "[::1]:8000", True),
        ("127.0.0.1", None, True),  # no Host header (HTTP/1.0): the client address decides
        ("127.0.0.1", "evil.example:8000", False),  # DNS rebinding: loopback client, foreign host
        ("127.0.0.1", "[::1", False),
        ("10.0.0.5", "127.0.0.1:8000", False),
    ],
)
def test_without_a_key_only_loopback_clients_asking_for_a_loopback_host_pass(client, host, allowed):
    from starlette.requests import Request

    from esevo_ray.serving.checks import check_auth

    headers = [(b"host", host.encode())] if host else []
    request = Request({"type": "http", "client": (client, 5000), "headers": headers})
    if allowed:
        check_auth(request, None)
        return
    with pytest.raises(ApiError) as e:
        check_auth(request, None)
    assert e.value.status == 403


def test_with_a_key_any_host_may_ask():
    from starlette.requests import Request

    from esevo_ray.serving.checks import check_auth, key_digest

    def request(authorization: bytes) -> Request:
        headers = [(b"host", b"gpu-box.internal:8000"), (b"authorization", authorization)]
        return Request({"type": "http", "client": ("10.0.0.5", 1), "headers": headers})

    for right in (b"Bearer k", b"bearer k", b"BEARER k"):  # the scheme in any case (RFC 7235)
        check_auth(request(right), key_digest("k"))
    for wrong in (b"Bearer kk", b"Basic k", b"k", b"Bearer " + key_digest("k").encode()):
        with pytest.raises(ApiError) as e:
            check_auth(request(wrong), key_digest("k"))
        assert e.value.status == 401


def test_an_unknown_model_error_offers_current_only_once_an_iteration_finished():
    from esevo_ray.serving.app import Ingress
    from esevo_ray.serving.registry import ServedModel

    ingress = object.__new__(Ingress.func_or_class)
    for models, offered in (
        ({"base": ServedModel("base", None)}, "available: base"),
        ({"base": ServedModel("base", None), "m0": ServedModel("m0", "a")},
         "available: base, m0, current"),
    ):  # fmt: skip
        ingress.models = lambda models=models: models
        with pytest.raises(ApiError) as e:
            ingress.resolve("m9")
        assert e.value.status == 404 and e.value.message.endswith(offered)


@pytest.mark.parametrize(
    "fields,param,says",
    [
        ({"max_tokens": True}, "max_tokens", "valid integer"),  # was a 1-token reply
        ({"stream": "yes"}, "stream", "valid boolean"),  # was a stream
        ({"seed": "7"}, "seed", "valid integer"),
        ({"temperature": "0"}, "temperature", "valid number"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when"),
        ({"stream_options": {}, "stream": False}, "stream_options", "only allowed when"),
        (
            {"stream": True, "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
            "valid boolean",
        ),
    ],
)
def test_values_are_taken_as_json_types_them(fields, param, says):
    message, got = validation_error(_errors(**fields))
    assert got == param and says in message


def test_a_whole_number_stands_for_a_float():
    body = ChatRequest.model_validate(
        {"model": "m0", "messages": USER, "temperature": 1, "top_p": 1, "stream": True,
         "stream_options": {"include_usage": True}}
    )  # fmt: skip
    assert body.temperature == 1.0 and body.top_p == 1.0 and body.stream_options.include_usage

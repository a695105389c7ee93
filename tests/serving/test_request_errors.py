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

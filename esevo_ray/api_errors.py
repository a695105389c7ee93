"""OpenAI error bodies, and the exception every HTTP route raises to send one.

Shared by the Serve application (`serving`) and the human-evaluation routes (`human_eval`),
which sit side by side: neither imports the other for its errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    model_config = ConfigDict(title="Error")
    error: ErrorDetail


# Documented on every route, so clients (and schema checks) know each status can happen.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "invalid request (bad JSON, wrong types, limits)",
        401: "missing or wrong API key",
        403: "no API key configured and the client is not on loopback",
        404: "unknown model or route",
        409: "conflicting state (human evaluation)",
        413: "request body too large",
        500: "engine failure",
        503: "the generators' queue is full (serve.max_queued_requests): retry after Retry-After",
    }.items()
}


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict:
    detail = ErrorDetail(message=message, type=type_, param=param, code=code)
    return ErrorBody(error=detail).model_dump()


class ApiError(Exception):
    """An error for the client, rendered as an OpenAI error body with `status` (and
    `headers`, e.g. Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


# pydantic names the branch of a union in an error's location ("str", "constrained-str",
# "list[TextPart]"): not a field the client sent.
_BRANCH = re.compile(r"[\[\]-]|^(str|int|float|bool|list|dict|none)$")


def field_path(loc: Sequence[Any]) -> str | None:
    """The dotted path of the field an error is about, as the client wrote the body."""
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and _BRANCH.search(p))]
    return ".".join(parts) or None


def validation_error(errors: Sequence[dict]) -> tuple[str, str | None]:
    """(message, param) of a request that failed validation: one field, its problem.

    Of a field whose union branches all failed, the error of the branch that took the input's
    type is the one to show (five stop sequences: "at most 4 items", not "a valid string";
    `stop: ["a", 5]`: "stop.1: a valid string", where the list branch failed inside).
    """
    if not errors:
        return "invalid request", None
    if errors[0].get("type") == "json_invalid":
        return "request body is not valid JSON", None

    def depth(e: dict) -> int:
        path = field_path(e.get("loc", ()))
        return path.count(".") + 1 if path else 0

    fitting = [e for e in errors if not str(e.get("type", "")).endswith("_type")]
    # Type errors alone: the deepest is inside the branch that took the input's own type.
    first = fitting[0] if fitting else max(errors, key=depth)  # the first of equals
    param = field_path(first.get("loc", ()))
    said = [str(first.get("msg", "invalid value")).removeprefix("Value error, ")]
    if not fitting:  # no branch took the type: name every type the field accepts
        said += [
            e["msg"] for e in errors if e is not first and field_path(e.get("loc", ())) == param
        ]
    message = f"{param or 'body'}: {', or '.join(dict.fromkeys(said))}"
    # Another branch's type error at this field or above it is no error of another field.
    here = f"{param}." if param else ""
    others = {
        path
        for e in errors
        if (path := field_path(e.get("loc", ()))) != param
        and not (str(e.get("type", "")).endswith("_type") and here.startswith(f"{path}."))
    }
    if others:
        message += f" (and errors in {len(others)} more field{'s' if len(others) > 1 else ''})"
    return message, param

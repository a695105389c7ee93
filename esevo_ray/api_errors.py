"""OpenAI error bodies, and the exception every HTTP route raises to send one.

Shared by the Serve application (`serving`) and the human-evaluation routes (`human_eval`),
which sit side by side: neither imports the other for its errors.
"""

from __future__ import annotations

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
    """An error for the client, rendered as an OpenAI error body with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

"""The FastAPI application object, its error handlers and the request body size limit.

Every error leaves as an OpenAI error body (`{"error": {"message", "type", "param",
"code"}}`) with a 4xx status for anything the client sent; a 500 only for engine failures.
"""

from __future__ import annotations

import json
import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from esevo_ray.api_errors import ApiError, error_body, validation_error

logger = logging.getLogger(__name__)

app = FastAPI(
    title="esevo_ray serving",
    version="0.1.0",
    description="OpenAI-compatible chat completions for the base model and every finished "
    "self-evolution iteration (m0, m1, ...; alias `current`), and the human evaluation page.",
)


def error_response(status: int, message: str, type_: str, param=None, code=None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers or None)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = validation_error(exc.errors())
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # The body as a whole, sent as something FastAPI does not read as JSON: it reads only
    # application/json and application/*+json (no Content-Type, strict_content_type: not).
    if param is None and not (kind == "application/json" or kind.endswith("+json")):
        message = (
            f"send the body as JSON, with Content-Type: application/json (got {kind or 'none'})"
        )
    return error_response(400, message, "invalid_request_error", param, "invalid_value")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return error_response(exc.status_code, detail, kind)


@app.exception_handler(sqlite3.IntegrityError)
async def _duplicate(request: Request, exc: sqlite3.IntegrityError) -> JSONResponse:
    # Two concurrent submissions for the same turn or session: the second one loses.
    return error_response(409, f"already recorded: {request.url.path}", "conflict_error")


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}", "server_error")


DEFAULT_MAX_BODY_BYTES = 262144


def body_limit() -> int:
    """`serve.max_body_bytes` of the ingress replica serving this request."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context().servable_object.scfg.max_body_bytes
    except RayServeException:  # outside a Serve replica (e.g. a plain ASGI test client)
        return DEFAULT_MAX_BODY_BYTES


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over the ingress's `serve.max_body_bytes`."""

    def __init__(self, asgi_app):
        self.app = asgi_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = body_limit()
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = False
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = True
        if not too_large and declared is None and scope.get("method") in ("POST", "PUT"):
            # No length given: read the body here, counting, and replay it.
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                chunks.append(message)
                size += len(message.get("body", b""))
                more = message.get("more_body", False) and message["type"] == "http.request"
                too_large = size > limit
                if too_large:
                    break
            if not too_large:
                replay, client = iter(chunks), receive

                async def receive():  # noqa: F811 - replays what was read above, then
                    # hands over to the client, so the app still hears its disconnect
                    message = next(replay, None)
                    return message if message is not None else await client()

        if too_large:
            response = error_response(
                413,
                f"request body exceeds {limit} bytes",
                "invalid_request_error",
                code="request_too_large",
            )
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


app.add_middleware(BodyLimit)

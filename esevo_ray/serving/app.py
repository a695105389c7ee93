"""The ingress deployment: OpenAI-compatible chat completions in front of the generator.

Requests are checked (API key, limits, model name), P_task is put first when there is no
system message, the generator answers (token by token with `stream: true`), and the crisis
guard has the last word. The human-evaluation router is mounted here; the ingress is its
`Host` (auth, model names, guarded replies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentResponseGenerator

from esevo_ray.api_errors import ERROR_RESPONSES, ApiError
from esevo_ray.config import RunConfig
from esevo_ray.human_eval.routes import HumanEval, human_eval_service, router
from esevo_ray.serving.api import app
from esevo_ray.serving.checks import (
    build_request,
    check_auth,
    check_conversation,
    check_max_tokens,
    default_max_tokens,
    recent_history,
)
from esevo_ray.serving.guard import ReplyGuard
from esevo_ray.serving.protocol import (
    ChatCompletion,
    ChatRequest,
    Health,
    ModelCard,
    ModelList,
    completion,
    new_id,
)
from esevo_ray.serving.registry import (
    CURRENT,
    ServedModel,
    current_name,
    scan_models,
)
from esevo_ray.serving.streaming import STREAM_RESPONSE, sse_events

logger = logging.getLogger(__name__)


OVERLOADED = "overloaded"
RETRY_AFTER_S = 1


def overloaded() -> ApiError:
    """The 503 for a request Serve turned away: the generators' queue was full."""
    return ApiError(
        503,
        "the server is busy (its generators' queue is full): retry in a moment",
        "server_error",
        code=OVERLOADED,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def started(response: DeploymentResponseGenerator) -> AsyncIterator[dict]:
    """The generator's deltas of a streamed `response`, the first one fetched already: Serve
    turning the request away (`serve.max_queued_requests`) is a 503 before the 200 and its
    events go out. Any other error is left to the stream, which sends it as an event
    (streaming.sse_events)."""
    first: dict | None = None
    error: Exception | None = None
    try:
        first = await anext(response)
    except BackPressureError:
        raise overloaded() from None
    except StopAsyncIteration:
        pass
    except asyncio.CancelledError:  # the client went away: so does the engine's request
        response.cancel()
        raise
    except Exception as e:
        error = e

    async def deltas() -> AsyncIterator[dict]:
        if error is not None:
            raise error
        if first is not None:
            yield first
            async for delta in response:
                yield delta

    return deltas()


def _authorized(request: Request) -> None:
    """The ingress replica's API-key check, as a route dependency: FastAPI runs it before it
    validates the body, so a request without the key is told so (401), not what its body
    lacks."""
    serve.get_replica_context().servable_object.auth(request)


Authorized = Depends(_authorized)


def _human_eval() -> HumanEval:
    """The ingress replica's HumanEval (the human_eval router's dependency)."""
    return serve.get_replica_context().servable_object.human_eval


app.include_router(router, responses=ERROR_RESPONSES)
app.dependency_overrides[human_eval_service] = _human_eval


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        generator,
        config: dict,
        run_dir: str | None,
        base_model: str,
        db_path: str,
        key_digest: str | None,
    ):
        """`key_digest`: the API key's `checks.key_digest`, None without one."""
        self.cfg = RunConfig.model_validate(config)
        self.scfg = self.cfg.serve
        self.key_digest = key_digest
        self.generator = generator
        self.run_dir = run_dir
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self._scan: tuple[float, dict[str, ServedModel]] = (0.0, {})
        self.human_eval = HumanEval(self, db_path, self.scfg.human_eval)

    # --- models and generation, shared with the human evaluation (its Host) ---

    def auth(self, request: Request) -> None:
        check_auth(request, self.key_digest)

    def models(self) -> dict[str, ServedModel]:
        at, models = self._scan
        if not models or time.monotonic() - at >= self.scfg.rescan_s:
            models = scan_models(self.run_dir)
            self._scan = (time.monotonic(), models)
        return models

    def served_names(self) -> list[str]:
        return list(self.models())

    def resolve_name(self, name: str) -> str | None:
        return self._resolve(name, self.models())

    @staticmethod
    def _resolve(name: str, models: dict[str, ServedModel]) -> str | None:
        return current_name(models) if name == CURRENT else (name if name in models else None)

    def resolve(self, name: str) -> ServedModel:
        models = self.models()  # one scan for the lookup and the answer: a rescan may drop one
        target = self._resolve(name, models)
        if target is None and name == CURRENT:
            raise ApiError(
                404,
                "model 'current': no iteration of the run has finished yet",
                param="model",
                code="model_not_found",
            )
        if target is None:
            names = [*models, *([CURRENT] if current_name(models) is not None else [])]
            raise ApiError(
                404,
                f"model {name!r} not found; available: {', '.join(names)}",
                param="model",
                code="model_not_found",
            )
        return models[target]

    def handle(self, model: ServedModel):
        """The generator handle for `model`: an adapter is a multiplexed model id."""
        if model.adapter is None:
            return self.generator
        return self.generator.options(multiplexed_model_id=model.key)

    async def generate(self, model: ServedModel, request: dict) -> dict:
        try:
            return await self.handle(model).generate.remote(request)
        except BackPressureError:
            raise overloaded() from None
        except Exception as e:  # a Ray error wrapping the engine's exception
            logger.exception("generation failed for %s", model.key)
            cause = getattr(e, "cause", None) or e
            raise ApiError(
                500, f"generation failed: {type(cause).__name__}: {cause}", "server_error"
            ) from None

    async def reply(self, model_name: str, dialogue: list[dict]) -> tuple[str, bool]:
        """A guarded whole reply for the human evaluation; the oldest turns go first.

        Raises:
            ApiError: as `_reply`, but blind: an error that names the model (a model no longer
                served, an engine failure) reaches the rater's page without its name, which
                the log keeps.
        """
        try:
            return await self._reply(model_name, dialogue)
        except ApiError as e:
            if (e.status < 404 or e.code == OVERLOADED) and model_name not in e.message:
                raise
            logger.warning("human evaluation: reply of %s failed: %s", model_name, e.message)
            raise ApiError(
                e.status,
                "the reply could not be made (the server log says why)",
                e.type,
                code=e.code,
                headers=e.headers,
            ) from None

    async def _reply(self, model_name: str, dialogue: list[dict]) -> tuple[str, bool]:
        model = self.resolve(model_name)
        turns = check_conversation(recent_history(dialogue, self.scfg), self.scfg)
        max_tokens = default_max_tokens(self.scfg)  # whole: older turns make room instead
        while True:
            try:
                request = build_request(self.tokenizer, self.scfg, model, turns, max_tokens)
                break
            except ApiError as e:  # a long session: drop the oldest exchange
                if e.code != "context_length_exceeded" or len(turns) <= 3:
                    raise
                turns = [turns[0], *turns[3:]]
        result = await self.generate(model, request)
        guard = ReplyGuard(turns, self.scfg.crisis_text, "human", model.name)
        return guard.whole(result["text"]), guard.fired

    # --- OpenAI routes ---

    @app.get("/health", response_model=Health, responses=ERROR_RESPONSES)
    def health(self) -> Health:
        return Health(status="ok", models=list(self.models()))

    @app.get(
        "/v1/models", response_model=ModelList, responses=ERROR_RESPONSES, dependencies=[Authorized]
    )
    def list_models(self) -> ModelList:
        models = self.models()
        cards = [ModelCard(id=name, created=m.stamp // 10**9) for name, m in models.items()]
        target = current_name(models)
        if target is not None:
            cards.append(
                ModelCard(id=CURRENT, created=models[target].stamp // 10**9, alias_of=target)
            )
        return ModelList(data=cards)

    @app.get(
        "/v1/models/{model_id}",
        response_model=ModelCard,
        responses=ERROR_RESPONSES,
        dependencies=[Authorized],
    )
    def get_model(self, model_id: str) -> ModelCard:
        """One model's card, as `client.models.retrieve(name)` asks; 404 as for a request."""
        model = self.resolve(model_id)
        alias_of = model.name if model_id == CURRENT else None
        return ModelCard(id=model_id, created=model.stamp // 10**9, alias_of=alias_of)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={**ERROR_RESPONSES, **STREAM_RESPONSE},
        dependencies=[Authorized],
    )
    async def chat_completions(self, body: ChatRequest):
        model = self.resolve(body.model)
        turns = check_conversation(body.messages, self.scfg)
        field, requested = body.token_limit()
        max_tokens = check_max_tokens(requested, self.scfg, field)
        req = build_request(
            self.tokenizer,
            self.scfg,
            model,
            turns,
            max_tokens,
            body.temperature,
            body.top_p,
            body.seed,
            body.stop_sequences(),
        )
        guard = ReplyGuard(turns, self.scfg.crisis_text, "chat", model.name)
        cid = new_id()
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            response = self.handle(model).options(stream=True).stream.remote(req)
            # Only a bounded queue turns requests away; without one, headers go out at once.
            bounded = self.scfg.max_queued_requests is not None
            deltas = await started(response) if bounded else response
            return StreamingResponse(
                self._events(sse_events(cid, model.name, deltas, guard, usage), response),
                media_type="text/event-stream",
            )
        result = await self.generate(model, req)
        return completion(
            cid,
            model.name,
            guard.whole(result["text"]),
            result["prompt_tokens"],
            result["output_tokens"],
            result["finish"],
        )

    @staticmethod
    async def _events(
        events: AsyncIterator[str], response: DeploymentResponseGenerator
    ) -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        finally:
            # A no-op once the stream has ended; after a client disconnects it cancels the
            # generator call, and with it the request in the engine.
            response.cancel()

"""The ingress deployment: OpenAI-compatible chat completions in front of the generator.

Requests are checked (API key, limits, model name), P_task is put first when there is no
system message, the generator answers, and the crisis guard has the last word.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time

from fastapi import Request
from fastapi.responses import StreamingResponse
from ray import serve

from esevo_ray.config import RunConfig
from esevo_ray.prompts import task_messages
from esevo_ray.serving import guard
from esevo_ray.serving.api import ApiError, app
from esevo_ray.serving.human import HumanEvalRoutes
from esevo_ray.serving.protocol import (
    ERROR_RESPONSES,
    ChatCompletion,
    ChatMessage,
    ChatRequest,
    Health,
    ModelCard,
    ModelList,
    chunk,
    completion,
    error_body,
    new_id,
)
from esevo_ray.serving.registry import (
    CURRENT,
    ServedModel,
    check_host_key,
    current_name,
    is_loopback,
    scan_models,
)

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


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress(HumanEvalRoutes):
    def __init__(self, generator, config: dict, run_dir: str | None, base_model: str, db_path: str):
        self.cfg = RunConfig.model_validate(config)
        self.scfg = self.cfg.serve
        check_host_key(self.scfg)
        self.api_key = os.environ.get(self.scfg.api_key_env) or None
        self.generator = generator
        self.run_dir = run_dir
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self._scan: tuple[float, dict[str, ServedModel]] = (0.0, {})
        self.init_human_eval(db_path)

    # --- helpers shared with the human evaluation routes ---

    def auth(self, request: Request) -> None:
        if self.api_key is None:
            client = request.client.host if request.client else ""
            if client and not is_loopback(client):
                raise ApiError(
                    403,
                    "no API key is configured; only loopback clients are served",
                    "permission_error",
                )
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(
                401,
                "missing or invalid API key (Authorization: Bearer <key>)",
                "authentication_error",
                code="invalid_api_key",
            )

    def models(self) -> dict[str, ServedModel]:
        at, models = self._scan
        if not models or time.monotonic() - at >= self.scfg.rescan_s:
            models = scan_models(self.run_dir)
            self._scan = (time.monotonic(), models)
        return models

    def resolve(self, name: str) -> ServedModel:
        models = self.models()
        if name == CURRENT:
            target = current_name(models)
            if target is None:
                raise ApiError(
                    404,
                    "model 'current': no iteration of the run has finished yet",
                    param="model",
                    code="model_not_found",
                )
            return models[target]
        if name not in models:
            raise ApiError(
                404,
                f"model {name!r} not found; available: {', '.join([*models, CURRENT])}",
                param="model",
                code="model_not_found",
            )
        return models[name]

    def conversation(self, messages: list[ChatMessage] | list[dict]) -> list[dict]:
        """Checked messages as chat turns, with P_task first when there is no system message."""
        if len(messages) > self.scfg.max_messages:
            raise ApiError(
                400,
                f"{len(messages)} messages exceed the limit of {self.scfg.max_messages}",
                param="messages",
                code="too_many_messages",
            )
        turns = []
        for i, m in enumerate(messages):
            role, text = (
                (m.role, m.text()) if isinstance(m, ChatMessage) else (m["role"], m["content"])
            )
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
        if chars > self.scfg.max_chars:
            raise ApiError(
                400,
                f"messages have {chars} characters, over the limit of {self.scfg.max_chars}",
                param="messages",
                code="too_many_characters",
            )
        if turns[0]["role"] != "system":
            turns = task_messages(turns)
        return turns

    def generation_request(
        self,
        model: ServedModel,
        turns: list[dict],
        max_tokens: int,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> dict:
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                turns, tokenize=False, add_generation_prompt=True
            )
        except TemplateError as e:  # e.g. a template that demands alternating roles
            raise ApiError(
                400, f"the model's chat template rejects these messages: {e}", param="messages"
            ) from None
        prompt_tokens = len(self.tokenizer.encode(text, add_special_tokens=False))
        if prompt_tokens + max_tokens > self.scfg.max_model_len:
            raise ApiError(
                400,
                f"{prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed "
                f"the context length {self.scfg.max_model_len}",
                param="messages",
                code="context_length_exceeded",
            )
        decoding = self.cfg.generation.decoding.model_dump()
        decoding["max_new_tokens"] = max_tokens
        if temperature is not None:
            decoding["temperature"] = temperature
        if top_p is not None:
            decoding["top_p"] = top_p
        seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
        return {
            "key": model.key,
            "adapter": model.adapter,
            "messages": turns,
            "decoding": decoding,
            "seed": seed,
        }

    async def generate(self, request: dict) -> dict:
        result = await self.generator.generate.remote(request)
        if "error" in result:
            raise ApiError(500, f"generation failed: {result['error']}", "server_error")
        return result

    def guard(self, turns: list[dict], text: str, route: str, model: str) -> tuple[str, bool]:
        pattern = guard.check_messages(turns)
        if pattern is None:
            return text, False
        guard.log_event(pattern, route, model)
        return guard.guarded_reply(text, self.scfg.crisis_text), True

    # --- OpenAI routes ---

    @app.get("/health", response_model=Health, responses=ERROR_RESPONSES)
    def health(self) -> Health:
        return Health(status="ok", models=list(self.models()))

    @app.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
    def list_models(self, request: Request) -> ModelList:
        self.auth(request)
        models = self.models()
        cards = [ModelCard(id=name, created=m.stamp // 10**9) for name, m in models.items()]
        target = current_name(models)
        if target is not None:
            cards.append(
                ModelCard(id=CURRENT, created=models[target].stamp // 10**9, alias_of=target)
            )
        return ModelList(data=cards)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={**ERROR_RESPONSES, **STREAM_RESPONSE},
    )
    async def chat_completions(self, body: ChatRequest, request: Request):
        self.auth(request)
        model = self.resolve(body.model)
        turns = self.conversation(body.messages)
        max_tokens = body.max_completion_tokens or body.max_tokens
        max_tokens = max_tokens or min(
            self.cfg.generation.decoding.max_new_tokens, self.scfg.max_tokens
        )
        if max_tokens > self.scfg.max_tokens:
            raise ApiError(
                400,
                f"max_tokens {max_tokens} exceeds the limit of {self.scfg.max_tokens}",
                param="max_tokens",
                code="invalid_value",
            )
        req = self.generation_request(
            model, turns, max_tokens, body.temperature, body.top_p, body.seed
        )
        cid = new_id()
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                self._stream(cid, model.name, req, turns, usage), media_type="text/event-stream"
            )
        result = await self.generate(req)
        text, _ = self.guard(turns, result["text"], "chat", model.name)
        finish = "length" if result["output_tokens"] >= max_tokens else "stop"
        return completion(
            cid, model.name, text, result["prompt_tokens"], result["output_tokens"], finish
        )

    async def _stream(self, cid: str, name: str, req: dict, turns: list[dict], usage: bool):
        yield _sse(chunk(cid, name, {"role": "assistant", "content": ""}))
        try:
            result = await self.generate(req)
        except ApiError as e:
            yield _sse(error_body(e.message, e.type, e.param, e.code))
            yield _sse("[DONE]")
            return
        text, _ = self.guard(turns, result["text"], "chat", name)
        # The engines return whole completions; the text goes out in word-sized deltas.
        for piece in re.split(r"(?<=\s)(?=\S)", text):
            if piece:
                yield _sse(chunk(cid, name, {"content": piece}))
        max_tokens = req["decoding"]["max_new_tokens"]
        finish = "length" if result["output_tokens"] >= max_tokens else "stop"
        yield _sse(chunk(cid, name, {}, finish))
        if usage:
            p, o = result["prompt_tokens"], result["output_tokens"]
            final = chunk(cid, name, {})
            final["choices"] = []
            final["usage"] = {"prompt_tokens": p, "completion_tokens": o, "total_tokens": p + o}
            yield _sse(final)
        yield _sse("[DONE]")

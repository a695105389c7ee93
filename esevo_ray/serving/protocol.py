"""OpenAI chat-completions request and response bodies, and the OpenAI error shape."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from esevo_ray.api_errors import ERROR_RESPONSES, ErrorBody, error_body

__all__ = ["ERROR_RESPONSES", "ErrorBody", "error_body"]  # the error shape, re-exported


class _Request(BaseModel):
    """A part of a chat request: values are taken as JSON types them, not converted (true is
    no token limit, "yes" no stream); a whole number stands for a float."""

    model_config = ConfigDict(strict=True)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(min_length=1)]
    name: str | None = None

    def text(self) -> str:
        """The message's text; parts on lines of their own, as vLLM's server joins them
        (glued, "hopeless" + "suicide..." hid the words from the crisis guard and the model)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


StopList = Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)]


def _not_asked(value: Any, field: str, none: tuple = ()) -> Any:
    """Refuse a field this server cannot honour, unless it asks for nothing (None, False,
    0, an empty list or mapping, or one of `none`)."""
    if value in (None, False, 0, [], {}) or value in none:
        return value
    what = f"{field}={value!r}" if isinstance(value, bool | int | str) else field
    raise ValueError(f"{what} is not supported by this server (its replies are plain text)")


class ChatRequest(_Request):
    """The subset of OpenAI's request that the engines honour. Fields that would change what
    a reply is (JSON mode, log-probabilities, tool calls) are refused when they ask for
    anything, so a client never takes plain text for what it asked; other keys are ignored.
    """

    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    # torch and vLLM seeds are 64-bit: larger ones are a 4xx, not an overflow inside the engine.
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    # null as OpenAI's schema allows: the default
    n: Annotated[int, Field(ge=1, le=1)] | None = 1
    # Up to 4 sequences, as OpenAI: the reply ends before the first one it would contain.
    stop: Annotated[str, Field(min_length=1)] | StopList | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: dict | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict | None) -> dict | None:
        """Plain text is what the replies are: `{"type": "text"}`, with whatever other keys
        a client sends beside it (`"json_schema": null`, say), asks for nothing."""
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "text":
            return value
        return _not_asked(value, f"response_format type {kind!r}")

    @field_validator("logprobs", "top_logprobs", "tools", "functions")
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        return _not_asked(value, str(info.field_name))

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_call(cls, value: str | dict | None) -> str | dict | None:
        return _not_asked(value, "tool_choice", ("none", "auto"))

    @field_validator("stream_options")
    @classmethod
    def _with_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("stream", True) is not True:  # (validated first)
            raise ValueError("only allowed when stream is true")
        return value

    def token_limit(self) -> tuple[str, int | None]:
        """(the field that sets the reply's length, its value): max_completion_tokens, the
        newer name, wins over max_tokens."""
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens

    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "esevo"
    # The model an alias currently follows ("current" -> "m2"); None for concrete models.
    alias_of: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    models: list[str]


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def completion(
    cid: str, model: str, text: str, prompt_tokens: int, output_tokens: int, finish: str
) -> ChatCompletion:
    return ChatCompletion(
        id=cid,
        created=now(),
        model=model,
        choices=[Choice(message=AssistantMessage(content=text), finish_reason=finish)],
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=output_tokens,
            total_tokens=prompt_tokens + output_tokens,
        ),
    )


def chunk(cid: str, model: str, delta: dict, finish: str | None = None) -> dict:
    """One `chat.completion.chunk` of a server-sent event stream."""
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }

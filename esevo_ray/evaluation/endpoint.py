"""Evaluation responses from a served model: any OpenAI-compatible chat-completions endpoint.

The requests carry the run's decoding settings (`generation.decoding`) and per-context seeds,
so a served M^t is evaluated like the same model on the Ray Data engine path. Requests run on
a bounded thread pool; finished batches are written as Parquet parts (the layout of the engine
pipeline), so a rerun into the same folder asks only for the contexts still missing.
"""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse, urlsplit, urlunsplit

from esevo_ray import prompts, schema
from esevo_ray.config import DecodingSection, RunConfig
from esevo_ray.errors import EndpointError, UsageError
from esevo_ray.evaluation.responses import PARTS, collect_responses, eval_contexts
from esevo_ray.generation.engines import TokenizerCounter
from esevo_ray.generation.pipeline import eval_seed, response_row, task_request
from esevo_ray.parts import claim, recorded_producer, todo, write_part

logger = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 429}


def rejected(status: int) -> bool:
    """An HTTP status that sending the same request again cannot change (a 4xx but 408, 409
    and 429)."""
    return status < 500 and status not in _RETRY_STATUS


class MalformedReply(Exception):
    """A 200 answer that holds no chat completion (see `reply_text`): retried."""


class NoText(MalformedReply):
    """A chat completion without text: filtered by the server, or no message content. The
    same request (and seed) gets the same answer: not retried."""


def reply_text(reply) -> str:
    """The text of a chat completion's first choice.

    Raises:
        MalformedReply: no completion (an HTML page, a streamed body, an error object sent
            with status 200) or no choice; `NoText`: no message text, or a reply the
            server's content filter withheld. Each would otherwise read as an empty reply.
    """
    choices = getattr(reply, "choices", None)
    if not isinstance(choices, list):
        raise MalformedReply(f"the reply is not a chat completion: {str(reply)[:120]!r}")
    if not choices:
        raise MalformedReply("the reply has no choices")
    choice = choices[0]
    if getattr(choice, "finish_reason", None) == "content_filter":
        raise NoText("the server's content filter withheld the reply")
    content = getattr(getattr(choice, "message", None), "content", None)
    if not isinstance(content, str):
        raise NoText("the reply's first choice has no message text")
    return content


def create_with_retries(client, request: dict, *, max_retries: int, backoff_s: float, before=None):
    """`reply_text(client.chat.completions.create(**request))`, retrying transport errors.

    Timeouts, connection errors, 408/409/429, 5xx and malformed replies (`MalformedReply`)
    are retried with exponential backoff and jitter, or after the wait a 429 or 503 names
    (Retry-After, in seconds; at most MAX_RETRY_AFTER_S); `before()` (e.g. a rate limiter)
    runs before every attempt. Any other HTTP error raises `openai.APIStatusError`, and a
    reply without text `NoText`, at once; after the retries the last error is raised.
    """
    import openai

    for attempt in range(max_retries + 1):
        if before is not None:
            before()
        asked = None  # the wait the server asked for
        try:
            return reply_text(client.chat.completions.create(**request))
        except NoText:
            raise
        except (MalformedReply, ValueError) as e:  # ValueError: a body that is not JSON
            error = e if isinstance(e, MalformedReply) else MalformedReply(f"not JSON ({e})")
        except openai.APIStatusError as e:
            if rejected(e.status_code):
                raise
            error: Exception = e
            asked = retry_after(e.response.headers.get("retry-after"))
        except openai.APIConnectionError as e:  # includes timeouts
            error = e
        if attempt == max_retries:
            raise error
        delay = backoff_s * 2**attempt * (1 + 0.25 * random.random())
        delay = max(delay, asked or 0.0)
        logger.debug("request failed (%s); retry %d in %.2fs", error, attempt + 1, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


MAX_RETRY_AFTER_S = 120.0


def retry_after(value: str | None) -> float | None:
    """The seconds of a Retry-After header given in seconds (not an HTTP date), capped at
    MAX_RETRY_AFTER_S; None without one."""
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value else None
    except ValueError:
        return None


def is_endpoint(model: str | os.PathLike) -> bool:
    return str(model).startswith(("http://", "https://"))


def base_url(url: str) -> str:
    """The OpenAI client's base URL: `url` itself, or `url/v1` when it has no path."""
    url = url.rstrip("/")
    return url if urlparse(url).path not in ("", "/") else f"{url}/v1"


def shown_url(url: str) -> str:
    """`url` without a user and password, for logs and records."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))


class ChatEndpoint:
    """One model behind an OpenAI-compatible chat endpoint, with retries on transport errors.

    Args:
        url: the server (`http://host:8000`) or its base URL (`http://host:8000/v1`).
        model: the served model name sent in each request.
        api_key_env: environment variable holding the bearer key (a placeholder when unset).
        sampling_extras: also send `top_k` and `repetition_penalty` (vLLM honours them;
            `esevo serve` decodes with its own `serve.decoding` values of both and ignores
            them; servers that reject unknown fields need False).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str = "ESEVO_EVAL_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        sampling_extras: bool = True,
    ):
        from openai import OpenAI

        # `url` as shown and recorded: a key written into it is not.
        self.url, self.model = shown_url(base_url(url)), model
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.sampling_extras = sampling_extras
        key = os.environ.get(api_key_env)
        if not key:
            logger.info("$%s is not set; sending a placeholder API key", api_key_env)
        self._client = OpenAI(
            base_url=base_url(url), api_key=key or "EMPTY", max_retries=0, timeout=timeout_s
        )

    def identity(self) -> dict | None:
        """What the server says of the model behind the name (GET /v1/models/{name}), so that
        another model served under it later is not taken for this one: `esevo serve`'s
        adapter stamp (`created`) and, for `current`, the iteration it stands for; vLLM's
        `root` (the model it loaded). None where the server says nothing of it."""
        try:
            card = self._client.models.retrieve(self.model).model_dump()
        except Exception:  # vLLM has no /v1/models/{id}: its list has the card
            try:
                cards = self._client.models.list().data
                card = next(c.model_dump() for c in cards if c.id == self.model)
            except Exception as e:  # no model list, or the name not in it
                logger.debug("no model card for %r (%s)", self.model, e)
                return None
        # vLLM's `created` is the time of the request, which a resume must not compare.
        keys = ("created", "alias_of") if card.get("owned_by") == "esevo" else ("root",)
        return {k: card[k] for k in keys if card.get(k) is not None} or None

    def chat(self, messages: list[dict], decoding: DecodingSection, seed: int) -> str:
        """One completion; transport errors (timeouts, 408/409/429, 5xx) are retried.

        Raises:
            EndpointError: any other HTTP error, or a transport error after the retries.
        """
        import openai

        extra = {"top_k": decoding.top_k, "repetition_penalty": decoding.repetition_penalty}
        request = dict(
            model=self.model, messages=messages, temperature=decoding.temperature,
            top_p=decoding.top_p, max_tokens=decoding.max_new_tokens, seed=seed,
            extra_body=extra if self.sampling_extras else None,
        )  # fmt: skip
        try:
            text = create_with_retries(
                self._client, request, max_retries=self.max_retries, backoff_s=self.backoff_s
            )
        except openai.APIStatusError as e:
            raise EndpointError(self._where(f"HTTP {e.status_code}: {e.message}")) from e
        except (openai.APIError, MalformedReply) as e:
            raise EndpointError(self._where(f"{e} after {self.max_retries + 1} attempts")) from e
        return text.strip()

    def _where(self, what: str) -> str:
        return f"endpoint {self.url} model {self.model!r}: {what}"


def token_counter(tokenizer_path: str | Path) -> TokenizerCounter:
    """Counts chat tokens with the local tokenizer of `--tokenizer`, to fit contexts without
    an engine.

    Raises:
        UsageError: no tokenizer folder there, or none loads from it.
    """
    from transformers import AutoTokenizer

    if not Path(tokenizer_path).is_dir():  # a hub id would be looked up online
        raise UsageError(f"--tokenizer {tokenizer_path}: no tokenizer folder there")
    try:
        return TokenizerCounter(AutoTokenizer.from_pretrained(tokenizer_path))
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise UsageError(
            f"--tokenizer {tokenizer_path}: no tokenizer loads from it ({first})"
        ) from None


def endpoint_responses(
    cfg: RunConfig,
    contexts_path: str | Path,
    out_dir: str | Path,
    endpoint: ChatEndpoint,
    *,
    model_name: str,
    concurrency: int = 4,
    system_prompt: str = prompts.TASK_PROMPT,
    tokenizer: str | Path | None = None,
) -> Path:
    """Responses of the served model to the evaluation contexts -> `out_dir/responses.parquet`.

    At most `concurrency` requests are in flight; every `generation.batch_size` contexts are
    written as one part as soon as they are answered. With `tokenizer` (a local folder with the
    served model's tokenizer) contexts are cut to `generation.max_context_tokens` as on the
    engine path; without it they are sent whole.

    Raises:
        EndpointError: a request failed for good; parts already written are kept.
    """
    out_dir = Path(out_dir)
    contexts = eval_contexts(cfg, contexts_path)
    gen = cfg.generation
    served = endpoint.identity()
    if served is None and any(k.startswith("served.") for k in recorded_producer(out_dir / PARTS)):
        logger.warning(
            "%s: the server does not say now which model is behind %r, so a resume cannot tell "
            "whether it is the one the earlier answers came from", out_dir, endpoint.model,
        )  # fmt: skip
    counter = None if tokenizer is None else token_counter(tokenizer)  # before any write
    claim(out_dir / PARTS, {
        "stage": "endpoint", "model": f"{endpoint.model} at {endpoint.url}",
        "served": served, "model_name": model_name, "system_prompt": system_prompt,
        "sampling_extras": endpoint.sampling_extras,
        "tokenizer": None if tokenizer is None else str(Path(tokenizer).resolve()),
        "generation": {"decoding": gen.decoding.model_dump(), "max_context_tokens":
                       gen.max_context_tokens if tokenizer is not None else None},
    })  # fmt: skip
    rows = todo(contexts, out_dir / PARTS, schema.EVAL_RESPONSES).to_pylist()
    logger.info(
        "endpoint %s (%s): %d contexts, %d to go", endpoint.url, model_name, contexts.num_rows,
        len(rows),
    )  # fmt: skip
    requests = [
        prompts.task_messages(r["context"], system_prompt) if counter is None
        else task_request(counter, cfg.generation, r, system_prompt)
        for r in rows
    ]  # fmt: skip
    _answer(cfg, endpoint, rows, requests, out_dir / PARTS, model_name, concurrency)
    return collect_responses(out_dir, contexts)


def _answer(
    cfg: RunConfig,
    endpoint: ChatEndpoint,
    rows: list[dict],
    requests: list[list[dict]],
    parts: Path,
    model_name: str,
    concurrency: int,
) -> None:
    """Send every request, `concurrency` at a time; write each batch's part when it is done,
    and when a request fails for good (or the run is stopped) the answers already in."""
    decoding, size = cfg.generation.decoding, cfg.generation.batch_size
    written = 0
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures: list[Future] = [
            pool.submit(endpoint.chat, request, decoding, eval_seed(decoding, r))
            for r, request in zip(rows, requests, strict=True)
        ]
        try:
            for start in range(0, len(rows), size):
                batch = rows[start : start + size]
                texts = [f.result() for f in futures[start : start + size]]
                out = [response_row(r, model_name, t) for r, t in zip(batch, texts, strict=True)]
                write_part(parts, out, schema.EVAL_RESPONSES)
                written = start + len(batch)
                logger.info("endpoint %s: %d/%d answered", model_name, written, len(rows))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # waits for the requests in flight
            answered = [
                response_row(r, model_name, f.result())
                for r, f in zip(rows[written:], futures[written:], strict=True)
                if f.done() and not f.cancelled() and f.exception() is None
            ]
            if answered:  # parts are named by their keys: any grouping resumes alike
                write_part(parts, answered, schema.EVAL_RESPONSES)
                logger.info("endpoint %s: kept %d answers of the unfinished batches",
                            model_name, len(answered))  # fmt: skip
            raise

"""The generator deployment: one engine on the base model per replica, adapters multiplexed.

Adapters follow Ray Serve's pattern for many models on one deployment: the ingress names
the adapter with `handle.options(multiplexed_model_id="m1@<stamp>")`, Serve routes the
request to a replica that already holds it, and `@serve.multiplexed` loads it on first use
and drops the least recently used one beyond `serve.max_adapters`. The id carries the
adapter's stamp, so a new iteration or a rewritten adapter is a new model: `current` moves
without a restart, and an adapter is never reloaded under an old name. Requests without an
id use the base model.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from esevo_ray.generation.placement import Placement, enter_actor
from esevo_ray.serving.engine import EngineSettings, build_serve_engine

logger = logging.getLogger(__name__)


def _rss_bytes() -> int | None:
    """Resident memory of this process and its children (vLLM's engine core), if known."""
    try:
        import psutil
    except ImportError:  # a dependency of vLLM and Ray's dashboard, not of this package
        return None
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@serve.deployment(name="Generator")
class Generator:
    """`stream(request)` yields deltas as the engine produces them; `generate` the whole.

    A request: {"adapter" (folder or None), "messages", "prompt_token_ids", "decoding"
    (DecodingSection fields), "seed"}; the adapter's id comes from the multiplexed model id.
    """

    def __init__(self, settings: dict, placement: dict | None = None):
        """`placement`: the replica's (deploy.replica_placement), as a dict; first, before
        anything touches CUDA, GPUs this replica did not reserve are hidden."""
        self.placed = enter_actor(Placement(**placement), "serve") if placement else {}
        self.settings = EngineSettings(**settings)
        self.engine = build_serve_engine(self.settings)
        self.paths: dict[str, str] = {}
        self.loaded: dict[str, Any] = {}
        self.aborted = 0

        async def load(model_id: str) -> Any:
            return await self._load(model_id)

        # The cache size comes from the config, so the multiplexed loader is made per replica.
        self.adapter = serve.multiplexed(max_num_models_per_replica=self.settings.max_adapters)(
            load
        )

    async def _load(self, model_id: str) -> Any:
        path = self.paths.get(model_id)
        if path is None:
            raise ValueError(f"adapter {model_id!r}: no adapter folder came with the request")
        logger.info("loading adapter %s from %s", model_id, path)
        adapter = await self.engine.load(model_id, path)
        self.loaded[model_id] = getattr(adapter, "lora_int_id", None)
        return adapter

    async def _model(self, request: dict) -> Any:
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            return None
        if request.get("adapter") is None:
            raise ValueError(f"model {model_id!r} is multiplexed but the request has no adapter")
        self.paths.setdefault(model_id, request["adapter"])
        return await self.adapter(model_id)

    async def stream(self, request: dict) -> AsyncIterator[dict]:
        """Deltas of one completion; a cancelled call aborts the engine request."""
        adapter = await self._model(request)
        try:
            async for delta in self.engine.stream(request, adapter):
                yield delta
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted += 1
            raise

    async def generate(self, request: dict) -> dict:
        """One whole completion: {"text", "prompt_tokens", "output_tokens", "finish"}."""
        parts: list[str] = []
        last: dict = {}
        async for delta in self.stream(request):
            parts.append(delta["text"])
            last = delta
        return {
            "text": "".join(parts),
            "prompt_tokens": last.get("prompt_tokens", len(request["prompt_token_ids"])),
            "output_tokens": last.get("output_tokens", 0),
            "finish": last.get("finish") or "stop",
        }

    def stats(self) -> dict:
        """Engine kind, placement, requests in the engine, aborted streams, adapters, resident
        memory."""
        # Serve keeps its LRU on the function it wraps (`__serve_multiplex_wrapper`).
        wrapper = getattr(inspect.unwrap(self.adapter), "__serve_multiplex_wrapper", None)
        return {
            "engine": self.settings.kind,
            "placement": self.placed,
            "unfinished": self.engine.unfinished(),
            "aborted": self.aborted,
            "loaded": dict(self.loaded),
            "resident": list(wrapper.models) if wrapper is not None else [],
            "rss_bytes": _rss_bytes(),
        }

    async def check_health(self) -> None:
        await self.engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()

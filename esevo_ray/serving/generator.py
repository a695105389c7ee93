"""The generator deployment: engines for the served models and batched generation.

Requests from concurrent callers are collected by `@serve.batch`, grouped by model and
decoding parameters, and each group is one `Engine.chat` call. Engines are built on first
use and kept in a small LRU cache, so M0, M1, ... share a replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from typing import Any

from ray import serve

from esevo_ray.config import DecodingSection

logger = logging.getLogger(__name__)


@serve.deployment(name="Generator")
class Generator:
    """Owns the engines; `generate` takes one request dict and returns one result dict.

    A request: {"key", "adapter", "messages", "decoding" (DecodingSection fields), "seed"}.
    A result: {"text", "prompt_tokens", "output_tokens"}.
    """

    def __init__(
        self,
        base_model: str,
        engine: str = "hf",
        dtype: str = "float32",
        max_model_len: int = 2048,
        max_loaded_models: int = 4,
        lora_mode: str = "merge",
        engine_extra: dict[str, Any] | None = None,
    ):
        self.base_model = base_model
        self.kind = engine
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.max_loaded = max_loaded_models
        self.lora_mode = lora_mode
        self.extra = engine_extra or {}
        self.engines: OrderedDict[str, Any] = OrderedDict()
        self.batch_sizes: deque[int] = deque(maxlen=10_000)

    def reconfigure(self, user_config: dict) -> None:
        """Batching parameters, changeable without a restart (`user_config`)."""
        if "max_batch_size" in user_config:
            self.generate_batch.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self.generate_batch.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    async def _engine(self, key: str, adapter: str | None):
        if key in self.engines:
            self.engines.move_to_end(key)
            return self.engines[key]
        from esevo_ray.generation.engines import build_engine

        logger.info("loading engine %s (%s)", key, adapter or "base model")
        engine = await asyncio.to_thread(
            build_engine,
            self.kind,
            self.base_model,
            adapter,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            lora_mode=self.lora_mode,
            extra=self.extra,
        )
        self.engines[key] = engine
        while len(self.engines) > self.max_loaded:
            dropped, _ = self.engines.popitem(last=False)
            logger.info("unloaded engine %s", dropped)
        return engine

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate_batch(self, requests: list[dict]) -> list[dict]:
        self.batch_sizes.append(len(requests))
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r["key"], tuple(sorted(r["decoding"].items()))), []).append(i)
        results: list[dict] = [{} for _ in requests]
        for (key, decoding), idxs in groups.items():
            try:
                engine = await self._engine(key, requests[idxs[0]]["adapter"])
                out = await asyncio.to_thread(
                    engine.chat,
                    [requests[i]["messages"] for i in idxs],
                    DecodingSection(**dict(decoding)),
                    [requests[i]["seed"] for i in idxs],
                )
            except Exception as e:  # one failing model must not fail the other groups
                logger.exception("generation failed for %s", key)
                for i in idxs:
                    results[i] = {"error": f"{type(e).__name__}: {e}"}
                continue
            for i, c in zip(idxs, out, strict=True):
                results[i] = {
                    "text": c.text,
                    "prompt_tokens": c.prompt_tokens,
                    "output_tokens": c.output_tokens,
                }
        return results

    async def generate(self, request: dict) -> dict:
        return await self.generate_batch(request)

    def stats(self) -> dict:
        """Batch sizes seen so far and the loaded engines (tests and benchmarks read it)."""
        return {"batch_sizes": list(self.batch_sizes), "loaded": list(self.engines)}

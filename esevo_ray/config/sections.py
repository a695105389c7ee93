"""Model, data, generation and loop sections of a run config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from esevo_ray.config.base import Section


class ModelSection(Section):
    # A local folder with a Hugging Face model; None means the default SmolLM2-135M-Instruct,
    # converted once by `esevo model prepare` into the cache directory.
    path: str | None = None
    # "auto": bfloat16 where the hardware computes it natively, else float32 (for training on
    # CPU: float32 weights, bf16 autocast per `bf16`); see esevo_ray.numerics.
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"


class DataSection(Section):
    # None: $ESEVO_DATA_DIR, else ../shared/data when it exists.
    data_dir: str | None = None
    # Seed contexts for preference data: ESConv's training pool and/or ExTES / ServeForEmo (the
    # paper's), whose files must then exist at extes_path / serveforemo_path.
    seed_sources: list[Literal["esconv", "extes", "serveforemo"]] = Field(["esconv"], min_length=1)
    extes_path: str | None = None
    serveforemo_path: str | None = None
    # Appendix A's greeting filter, on preference-data seeds only (seed_contexts): SFT and
    # evaluation contexts keep every supporter turn of the normalised dialogue (consecutive
    # utterances merged, seeker first; Table 2 scores all of them). A "turn" is
    # read as one exchange, a seeker message and the supporter's reply: the replies of the
    # first `greeting_first` and the last `greeting_last` exchanges are not targets (the
    # paper: the first turn and the last two turns); they stay in later contexts.
    drop_greetings: bool = True
    greeting_first: int = Field(1, ge=0)
    greeting_last: int = Field(2, ge=0)
    # Dialogue subsets (None = all); chosen by seed, recorded in the output manifest.
    max_train_dialogues: int | None = Field(None, ge=1)
    max_eval_dialogues: int | None = Field(None, ge=1)
    max_seed_dialogues: int | None = Field(None, ge=1)
    alpaca_samples: int = Field(500, ge=0)
    seed: int = 42
    on_bad_record: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _sources_once(self) -> DataSection:
        if len(set(self.seed_sources)) < len(self.seed_sources):
            raise ValueError(f"seed_sources names a source twice: {self.seed_sources}")
        return self


class DecodingSection(Section):
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(0.8, gt=0, le=1)
    top_k: int = Field(50, ge=0)  # 0: off
    repetition_penalty: float = Field(1.2, gt=0)
    max_new_tokens: int = Field(128, ge=1)
    seed: int = 0


# Room kept for the reflection inside a two-step refinement request beyond the tokens it was
# generated in: it is parsed and written back as JSON, whose spacing may differ.
ANALYSIS_MARGIN = 16


class GenerationSection(Section):
    # "auto": vllm where it is installed, else hf (esevo_ray/generation/engine_choice.py).
    engine: Literal["auto", "vllm", "hf"] = "vllm"
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
    length_ratio: float = Field(2.0, gt=0)
    # Seed contexts per iteration: a sample of them seeded by data.seed and the iteration
    # (`data.seeds.sample_contexts`), each iteration its own; None: all of them.
    max_contexts: int | None = Field(None, ge=1)
    cpus_per_actor: float = Field(1, ge=0)
    # Placement (esevo_ray/generation/placement.py). "auto": CUDA when the Ray cluster declares
    # GPUs, else CPU. gpus_per_actor None: tensor_parallel_size (vllm) or 1 (hf) on CUDA, 0 on
    # CPU; Ray gives each actor its own devices (CUDA_VISIBLE_DEVICES).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus_per_actor: float | None = Field(None, ge=0)
    # vLLM only: GPUs each engine is sharded over.
    tensor_parallel_size: int = Field(1, ge=1)
    # M^t as weights merged once into a cached folder ("merge"), or a vLLM LoRA request.
    lora_mode: Literal["merge", "adapter"] = "merge"
    max_model_len: int = Field(2048, ge=1)
    # Cap on the tokens of dialogue context (with P_task); older turns are dropped first.
    # 896: with decoding's 128 new tokens, dpo.max_length (1024) holds the prompt and the
    # rejected response whole; a longer chosen one (a golden fallback, a refinement up to
    # twice its words) may still lose old turns there, which DPO's stage log counts.
    max_context_tokens: int = Field(896, ge=1)
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
        if self.refinement_budget() <= 0:
            reflection = self.reflection_decoding.max_new_tokens
            two_step = self.reflection_mode == "two_step"
            raise ValueError(
                f"{'2 x ' if two_step else ''}reflection_decoding.max_new_tokens ({reflection})"
                f" + decoding.max_new_tokens ({self.decoding.max_new_tokens})"
                f"{f' + {ANALYSIS_MARGIN}' if two_step else ''} leave no room for the "
                f"refinement request in max_model_len ({self.max_model_len})"
            )
        check_engine_keys(self.vllm, "generation", {
            "tensor_parallel_size": "generation.tensor_parallel_size",
            "max_model_len": "generation.max_model_len", "model": "model.path", "seed": None,
            "dtype": "model.dtype",  # training, merging and the placement record use that one
        })  # fmt: skip
        return _check_placement(self, self.engine)

    def refinement_budget(self) -> int:
        """Tokens left for the refinement prompt (generation/pairs.py: fit_context) beside
        what it holds or makes: the rejected response and the answer, and in two_step the
        reflection (plus ANALYSIS_MARGIN)."""
        room = self.decoding.max_new_tokens + self.reflection_decoding.max_new_tokens
        if self.reflection_mode == "two_step":
            room += self.reflection_decoding.max_new_tokens + ANALYSIS_MARGIN
        return self.max_model_len - room


def check_engine_keys(extra: dict, section: str, wired: dict[str, str | None]) -> None:
    """Refuse keys of `<section>.vllm` that the engine is given already (vLLM would stop with
    "got multiple values" inside an actor, after the stages before it ran); `wired` maps each
    to the setting that gives it (None: fixed by the project)."""
    if clash := [k for k in extra if k in wired]:
        said = [f"{k} (set {wired[k]})" if wired[k] else f"{k} (set by esevo_ray)" for k in clash]
        raise ValueError(f"{section}.vllm may not set {', '.join(said)}")


def _check_placement(section: Any, engine: str) -> Any:
    """device, gpus_per_actor and tensor_parallel_size must agree (generation and judge)."""
    gpus, tp = section.gpus_per_actor, section.tensor_parallel_size
    if tp > 1 and (engine not in ("vllm", "auto") or section.device == "cpu"):
        raise ValueError(
            f"tensor_parallel_size {tp} needs engine vllm on GPUs (engine {engine!r}, "
            f"device {section.device!r})"
        )
    # The rules of placement.check_gpus that need no cluster (it checks them again once
    # device: auto is resolved): some GPU, and one per tensor-parallel rank.
    if gpus is not None and section.device == "cuda" and (gpus == 0 or (tp > 1 and gpus < tp)):
        raise ValueError(
            f"device cuda needs gpus_per_actor > 0 and >= tensor_parallel_size ({tp}), got "
            f"{gpus:g} (or leave gpus_per_actor unset)"
        )
    # An engine computes on tensor_parallel_size GPUs (the hf engine on one): GPUs reserved
    # beyond them sit idle, kept from the other actors and stages.
    if gpus is not None and gpus > max(1, tp):
        raise ValueError(
            f"gpus_per_actor {gpus:g} is more than an engine uses (tensor_parallel_size {tp}, "
            "1 on the hf engine): set it to tensor_parallel_size, or leave it unset"
        )
    return section


class EvolveSection(Section):
    iterations: int = Field(2, ge=0)
    # M0: "sft", LoRA SFT of the backbone (Section 2.1); "base", the backbone itself with no
    # SFT stage (Table 5's M0); then DPO of M1 trains a fresh adapter against the base.
    init: Literal["sft", "base"] = "sft"
    # Chosen side of the pairs: "self_refined", M^{t-1}'s reflection and refinement ({SR, P});
    # "human_reference", the golden response, no reflection generated (Table 5: {HM, P} on
    # ESConv seeds, {HL, P} on ExTES / ServeForEmo, whose golden responses GPT-4 wrote).
    chosen: Literal["self_refined", "human_reference"] = "self_refined"
    # Split the seed contexts into `iterations` disjoint parts of whole dialogues, part t for
    # iteration t; false: every iteration draws from all of them. Appendix B.1 splits them for
    # Table 5's arms (`esevo ablate pairs-table` sets it); whether the main loop did is not
    # said, so it stays off here (set it for that reading).
    seed_split: bool = False


# The seven judge dimensions of the paper's Table 7, in its column order.

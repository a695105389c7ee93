"""LLM-as-a-judge on a local engine (vLLM or transformers) instead of an HTTP endpoint.

Verdicts are generated in batches, decoding constrained to the verdict's JSON schema on
either engine (`guided_json`). Unparseable verdicts are asked again `parse_retries` times,
then recorded as missing, exactly as with the endpoint judge.

Placement follows the generation rule (`esevo_ray.generation.placement`, keys
`eval.judge.device`, `gpus_per_actor`, `tensor_parallel_size`): on CPU the engine runs in this
process; on GPUs it runs in one Ray actor that reserves them, checked before it starts, and
exits when the `LocalJudge` is dropped, so the driver never holds GPU memory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from esevo_ray.config import DecodingSection, JudgeSection
from esevo_ray.evaluation.judge_prompts import judge_messages, request_seed
from esevo_ray.evaluation.verdicts import Verdict, VerdictError, parse_verdict
from esevo_ray.generation.engine_choice import choose_engine
from esevo_ray.generation.placement import Placement, enter_actor, place, resolve
from esevo_ray.storage import check_shared
from esevo_ray.turns import fit_turns

logger = logging.getLogger(__name__)

VERDICT_SCHEMA = {
    "type": "object",
    # In the prompt's order (Appendix E.2), which guided decoding follows: the judge explains,
    # then scores. The explanation cap keeps the answer within ~80 tokens for real models.
    "properties": {
        "explanation": {"type": "string", "maxLength": 200},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["score", "explanation"],
}


KEY = "eval.judge"


def judge_placement(cfg: JudgeSection) -> Placement:
    """Where the judge runs: placed on the Ray cluster, as generation is. With no cluster to
    join (no Ray connection and no RAY_ADDRESS), this machine's GPUs are the cluster, and a
    judge on CPU runs here without starting Ray; a job's driver (on a head node that may have
    no GPU) always asks its cluster."""
    import ray

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            import torch

            local = resolve(cfg, cfg.backend, [float(torch.cuda.device_count())], key=KEY)
            if not local.gpus:
                return local  # in this process: no Ray needed
        ray.init()
    return place(cfg, cfg.backend, 1, KEY)


class LocalJudge:
    """A local judge model; `judge_many` scores a batch of requests.

    The engine lives in this process on CPU, or in one Ray actor holding its GPUs (released
    when this object is dropped).
    """

    def __init__(self, cfg: JudgeSection, model_path: str | Path, *, dtype: str = "auto"):
        if cfg.backend == "endpoint":
            raise ValueError("LocalJudge needs eval.judge.backend 'vllm' or 'hf'")

        def check(device: str | None) -> None:
            choose_engine(
                cfg.backend, f"{KEY}.backend", device=device, guided_json=cfg.guided_json,
                tensor_parallel_size=cfg.tensor_parallel_size,
            )  # fmt: skip

        check(None)  # what is installed, before anything starts
        self.cfg = cfg
        self.model = Path(model_path).name
        self.placement = judge_placement(cfg)
        check(self.placement.device)  # and whether it runs where the judge was placed
        if self.placement.gpus:
            import ray

            check_shared(KEY, reads=[model_path])
            actor = ray.remote(num_cpus=1, **self.placement.ray_options())(JudgeEngine)
            self._actor = actor.remote(cfg, str(model_path), dtype, self.placement, in_actor=True)
        else:
            self._local = JudgeEngine(cfg, model_path, dtype, self.placement)

    def judge_many(self, tasks: list[tuple[str, list[dict], str]]) -> list[Verdict]:
        """Score (dimension, context, response) tasks; missing after repeated bad replies."""
        if self.placement.gpus:
            import ray

            return ray.get(self._actor.judge_many.remote(tasks))
        return self._local.judge_many(tasks)


class JudgeEngine:
    """The judge's engine and its batched, retried verdicts (in this process or an actor)."""

    def __init__(
        self,
        cfg: JudgeSection,
        model_path: str | Path,
        dtype: str,
        placement: Placement,
        *,
        in_actor: bool = False,
    ):
        from esevo_ray.generation.engines import EngineOptions, build_engine

        # In an actor: hide GPUs it did not reserve before the engine loads; its record.
        self.placed = enter_actor(placement, KEY) if in_actor else None
        self.cfg = cfg
        options = EngineOptions(
            dtype=dtype, max_model_len=cfg.max_model_len, device=placement.device,
            tensor_parallel_size=placement.tensor_parallel_size,
        )  # fmt: skip
        self.engine = build_engine(cfg.backend, model_path, options=options)
        self._unfit = 0  # requests of the last batch too long even with the last turn alone
        self.decoding = DecodingSection(
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or 0,
            repetition_penalty=1.0, max_new_tokens=cfg.max_tokens, seed=cfg.seed,
        )  # fmt: skip

    def _messages(self, dimension: str, context: list[dict], response: str) -> list[dict]:
        """The judge request, dropping the oldest turns until it fits the model."""
        budget = self.cfg.max_model_len - self.cfg.max_tokens

        def request(turns: list[dict]) -> list[dict]:
            return judge_messages(dimension, turns, response, self.cfg.penalty)

        fitted, fits = fit_turns(context, lambda t: self.engine.count_tokens(request(t)) <= budget)
        self._unfit += not fits
        return request(fitted)

    def judge_many(self, tasks: list[tuple[str, list[dict], str]]) -> list[Verdict]:
        """Score (dimension, context, response) tasks; missing after repeated bad replies."""
        self._unfit = 0
        requests = [self._messages(*task) for task in tasks]
        if self._unfit:
            logger.warning(
                "local judge: %d of %d requests exceed eval.judge.max_model_len (%d) less "
                "max_tokens (%d) even with the last turn alone; their verdicts are made on "
                "what the engine keeps: raise eval.judge.max_model_len",
                self._unfit, len(tasks), self.cfg.max_model_len, self.cfg.max_tokens,
            )  # fmt: skip
        parsed: list[tuple[float, str | None] | None] = [None] * len(tasks)
        errors: list[str | None] = [None] * len(tasks)
        attempts = [0] * len(tasks)
        pending = list(range(len(tasks)))
        schema = VERDICT_SCHEMA if self.cfg.guided_json else None
        for attempt in range(self.cfg.parse_retries + 1):
            if not pending:
                break
            seeds = [request_seed(self.cfg.seed, requests[i], attempt) for i in pending]
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

"""Small response and pair tables in the run-directory schemas, for evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from esevo_ray.io import write_parquet
from esevo_ray.schema import EVAL_RESPONSES, PAIRS, conform


def context(*turns: str) -> list[dict]:
    """Alternating user / assistant messages, starting with the user."""
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


CONTEXTS = [
    context("I lost my job last week and I feel useless."),
    context("Hi", "Hello, how can I help?", "My best friend stopped talking to me."),
    context("Exams are next week and I cannot sleep at night."),
]
GOLDEN = [
    "Losing a job is hard. What kind of work were you doing?",
    "That must hurt. Do you know why your friend stopped talking to you?",
    "Exam stress can keep anyone awake. Have you tried a short routine before bed?",
]


def responses_table(model: str, responses: list[str]) -> pa.Table:
    rows = [
        {
            "dialogue_id": f"d{i}",
            "turn_index": 2 * i + 1,
            "model": model,
            "context": c,
            "golden": g,
            "response": r,
        }
        for i, (c, g, r) in enumerate(zip(CONTEXTS, GOLDEN, responses, strict=True))
    ]
    return conform(pa.Table.from_pylist(rows, schema=EVAL_RESPONSES), EVAL_RESPONSES)


def pairs_table(
    iteration: int, chosen: list[str], rejected: list[str], sources: list[str]
) -> pa.Table:
    rows = []
    for i, (c, r, s) in enumerate(zip(chosen, rejected, sources, strict=True)):
        ctx = CONTEXTS[i % len(CONTEXTS)]
        rows.append(
            {
                "dialogue_id": f"d{i}",
                "turn_index": 1,
                "iteration": iteration,
                "source": "esconv",
                "prompt": [
                    {"role": "system", "content": "You are an emotional support expert."},
                    *ctx,
                ],
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
                "golden": GOLDEN[i % len(GOLDEN)],
                "chosen_source": s,
                "generator_model": "m",
                "adapter_hash": "h",
                "user_profile": "",
                "user_emotion": "",
                "user_personality": "",
                "user_intention": "",
                "evaluation_score": 3.0,
                "feedback": "",
                "attempts": 1,
                "prompt_tokens": 10,
                "rejected_tokens": 10,
                "reflection_tokens": 10,
                "generation_seconds": 0.1,
            }
        )
    return conform(pa.Table.from_pylist(rows, schema=PAIRS), PAIRS)


def write_responses(path: Path, model: str, responses: list[str]) -> Path:
    return write_parquet(responses_table(model, responses), path)

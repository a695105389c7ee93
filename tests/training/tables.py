"""Tiny SFT and preference-pair tables (SFT_ROWS, PAIRS) built in memory."""

from __future__ import annotations

import pyarrow as pa

from esevo_ray import schema
from esevo_ray.prompts import task_messages

SEEKER = [
    "I feel so anxious about my job and I can't sleep at night.",
    "My partner broke up with me last week and I am very sad.",
    "I failed my exam and my parents are angry with me.",
    "Thank you for listening, it really helps to talk about it.",
]
GOOD = [
    "It sounds like you are going through a really hard time right now.",
    "I'm sorry to hear that. How are you coping with it?",
    "That must be very stressful. You are not alone in feeling this way.",
    "Have you thought about talking to a friend or a counselor?",
]
BAD = ["I hear you.", "be more specific", "Question", "a student"]


def sft_table(n: int = 8) -> pa.Table:
    rows = [
        {
            "example_id": f"d{i}:1",
            "source": "esconv",
            "prompt": task_messages([{"role": "user", "content": SEEKER[i % 4]}]),
            "completion": [{"role": "assistant", "content": GOOD[i % 4]}],
        }
        for i in range(n)
    ]
    return schema.conform(pa.Table.from_pylist(rows, schema=schema.SFT_ROWS), schema.SFT_ROWS)


def _default(kind: pa.DataType):
    if pa.types.is_integer(kind):
        return 0
    if pa.types.is_floating(kind):
        return 0.0
    return ""


def pairs_table(n: int = 8) -> pa.Table:
    rows = []
    for i in range(n):
        row = {
            f.name: _default(f.type)
            for f in schema.PAIRS
            if f.name not in ("prompt", "chosen", "rejected")
        }
        row.update(
            dialogue_id=f"d{i}",
            turn_index=1,
            source="esconv",
            prompt=task_messages([{"role": "user", "content": SEEKER[i % 4]}]),
            chosen=[{"role": "assistant", "content": GOOD[i % 4]}],
            rejected=[{"role": "assistant", "content": BAD[i % 4]}],
            chosen_source="refined",
        )
        rows.append(row)
    return schema.conform(pa.Table.from_pylist(rows, schema=schema.PAIRS), schema.PAIRS)


# Per-stage overrides for runs on the tiny model: a few short steps, no eval.
TINY_TRAIN = [
    "per_device_batch_size=2",
    "gradient_accumulation_steps=1",
    "learning_rate=0.01",
    "warmup_ratio=0.0",
    "max_steps=2",
    "eval_fraction=0.0",
    "logging_steps=1",
    "save_steps=100",
    "max_length=640",  # the task system prompt alone is ~470 tiny-tokenizer tokens
]

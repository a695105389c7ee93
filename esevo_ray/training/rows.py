"""A training stage's rows: its Parquet input read, prompts fitted to max_length, eval split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from esevo_ray.config import TrainSection
from esevo_ray.data.dialogue import DataError
from esevo_ray.schema import read_table
from esevo_ray.turns import drop_oldest_turns

if TYPE_CHECKING:
    from datasets import Dataset


def split_eval(
    table: pa.Table, fraction: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[pa.Table, pa.Table | None]:
    """Hold out up to floor(fraction * rows) rows chosen by `seed`, whole `groups` at a time
    (each row's dialogue: later turns of a dialogue hold its earlier replies in their prompt,
    so a held-out reply would be seen in training); a group that would overshoot is passed
    over. None when no group fits.
    """
    import numpy as np

    n_eval = int(table.num_rows * fraction)
    if n_eval == 0:
        return table, None
    groups = list(groups) if groups is not None else [str(i) for i in range(table.num_rows)]
    sizes = Counter(groups)
    names = sorted(sizes)
    held, count = set(), 0
    for i in np.random.default_rng(seed).permutation(len(names)):
        if count + sizes[names[i]] <= n_eval:
            held.add(names[i])
            count += sizes[names[i]]
    if not held:
        return table, None
    mask = np.array([g in held for g in groups])
    return table.filter(pa.array(~mask)), table.filter(pa.array(mask))


def dialogue_of_rows(table: pa.Table) -> list[str] | None:
    """Each row's dialogue: `dialogue_id`, else `example_id` up to its last ':' (SFT rows are
    `<dialogue>:<turn>`, Alpaca rows `alpaca:<id>`, one each); None without either column."""
    if "dialogue_id" in table.column_names:
        return table.column("dialogue_id").to_pylist()
    if "example_id" in table.column_names:
        ids = table.column("example_id").to_pylist()
        return [i if i.startswith("alpaca:") else i.rsplit(":", 1)[0] for i in ids]
    return None


def fit_prompt(
    tokenizer: Any, prompt: list[dict], answers: list[list[dict]], max_length: int
) -> list[dict]:
    """Drop the oldest dialogue turns of `prompt` until prompt + the longest answer fits.

    TRL truncates the token sequence instead, which cuts the response (and then drops the
    row) or the system prompt; dropping whole early turns keeps both. A leading system
    message and the last turn always stay.
    """

    def fits(turns: list[dict]) -> bool:
        text = tokenizer.apply_chat_template([*system, *turns, *longest], tokenize=False)
        return len(tokenizer.encode(text, add_special_tokens=False)) <= max_length

    system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    longest = max(answers, key=lambda a: sum(len(m["content"]) for m in a))
    return [*system, *drop_oldest_turns(prompt[len(system) :], fits)]


def fit_table(
    table: pa.Table, tokenizer: Any, max_length: int, answer_columns: Sequence[str]
) -> pa.Table:
    """`fit_prompt` on every row's `prompt` column."""
    prompts = [
        fit_prompt(tokenizer, row["prompt"], [row[c] for c in answer_columns], max_length)
        for row in table.select(["prompt", *answer_columns]).to_pylist()
    ]
    index = table.column_names.index("prompt")
    return table.set_column(
        index, "prompt", pa.array(prompts, type=table.schema.field("prompt").type)
    )


def load_split(
    path: str,
    schema: pa.Schema,
    columns: Sequence[str],
    section: TrainSection,
    tokenizer: Any = None,
) -> tuple[Dataset, Dataset | None]:
    """Read a stage's Parquet input, check its schema, keep `columns`, split off eval rows.

    With a tokenizer, prompts are first fitted to `section.max_length` (see `fit_prompt`).
    """
    from datasets import Dataset
    from datasets.table import InMemoryTable

    table = read_table(path, schema)
    groups = dialogue_of_rows(table)
    table = table.select(list(columns))
    if tokenizer is not None:
        table = fit_table(
            table, tokenizer, section.max_length, [c for c in columns if c != "prompt"]
        )
    train, held_out = split_eval(table, section.eval_fraction, section.seed, groups)
    if train.num_rows == 0:
        raise DataError(f"{path}: no training rows left after the eval split")
    as_dataset = lambda t: Dataset(InMemoryTable(t))  # noqa: E731
    return as_dataset(train), (as_dataset(held_out) if held_out is not None else None)

"""A training stage's rows: its Parquet input read, prompts fitted to max_length, eval split."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from esevo_ray.config import TrainSection
from esevo_ray.data.dialogue import DataError
from esevo_ray.schema import read_table
from esevo_ray.turns import fit_turns

logger = logging.getLogger(__name__)

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
) -> tuple[list[dict], bool]:
    """Drop the oldest dialogue turns of `prompt` until prompt + each answer fits.

    TRL truncates the token sequence instead, which cuts the end of a response (its EOS
    first) or, when the prompt alone fills max_length, drops the row; dropping whole early
    turns keeps the response whole. A leading system message and the last turn always stay.
    Every answer is measured in tokens: the one with the most characters need not have the
    most tokens.

    Returns:
        The fitted prompt, and whether it fits: False when even the last turn alone leaves no
        room for an answer (TRL then cuts that answer).
    """

    def tokens(turns: list[dict], answer: list[dict]) -> int:
        text = tokenizer.apply_chat_template([*system, *turns, *answer], tokenize=False)
        return len(tokenizer.encode(text, add_special_tokens=False))

    def fits(turns: list[dict]) -> bool:
        return all(tokens(turns, a) <= max_length for a in answers)

    system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    turns, ok = fit_turns(prompt[len(system) :], fits)
    return [*system, *turns], ok


def fit_table(
    table: pa.Table, tokenizer: Any, max_length: int, answer_columns: Sequence[str]
) -> tuple[pa.Table, int, int]:
    """`fit_prompt` on every row's `prompt` column; returns the table, how many rows lost
    turns, and how many still do not fit."""
    rows = table.select(["prompt", *answer_columns]).to_pylist()
    fitted = [
        fit_prompt(tokenizer, row["prompt"], [row[c] for c in answer_columns], max_length)
        for row in rows
    ]
    prompts = pa.array([p for p, _ in fitted], type=table.schema.field("prompt").type)
    shortened = sum(len(p) < len(row["prompt"]) for (p, _), row in zip(fitted, rows, strict=True))
    too_long = sum(not ok for _, ok in fitted)
    table = table.set_column(table.column_names.index("prompt"), "prompt", prompts)
    return table, shortened, too_long


def load_split(
    path: str,
    schema: pa.Schema,
    columns: Sequence[str],
    section: TrainSection,
    tokenizer: Any = None,
    where: str = "train",
) -> tuple[Dataset, Dataset | None]:
    """Read a stage's Parquet input, check its schema, keep `columns`, split off eval rows.

    With a tokenizer, prompts are first fitted to `section.max_length` (see `fit_prompt`).
    """
    from datasets import Dataset
    from datasets.table import InMemoryTable

    table = read_table(path, schema)
    if {"dialogue_id", "turn_index"} <= set(table.column_names):
        # A parts folder reads in the order of its part names, hashes of the keys each batch
        # held: in key order, the same pairs train alike however generation batched them.
        table = table.sort_by([("dialogue_id", "ascending"), ("turn_index", "ascending")])
    groups = dialogue_of_rows(table)
    table = table.select(list(columns))
    if tokenizer is not None:
        answers = [c for c in columns if c != "prompt"]
        table, shortened, too_long = fit_table(table, tokenizer, section.max_length, answers)
        if shortened:  # e.g. pairs generated from longer contexts than DPO's max_length holds
            logger.warning(
                "%s: %d of %d rows lose their oldest turns to fit %s.max_length=%d, so they "
                "train on less of the dialogue than they were made from; a larger max_length "
                "keeps them whole", where, shortened, table.num_rows, where, section.max_length,
            )  # fmt: skip
        if too_long:
            logger.warning(
                "%s: %d of %d rows do not fit %s.max_length=%d even with only their last turn: "
                "TRL cuts the end of their response",
                where, too_long, table.num_rows, where, section.max_length,
            )  # fmt: skip
    train, held_out = split_eval(table, section.eval_fraction, section.seed, groups)
    if train.num_rows == 0:
        raise DataError(f"{path}: no training rows left after the eval split")
    as_dataset = lambda t: Dataset(InMemoryTable(t))  # noqa: E731
    return as_dataset(train), (as_dataset(held_out) if held_out is not None else None)

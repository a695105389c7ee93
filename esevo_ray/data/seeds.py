"""Disjoint parts of the seed contexts, one per self-evolution iteration (App. B.1).

Appendix B.1 splits the preference data into two parts, one for each training iteration.
`seed_part` does the same for any T: whole dialogues go to one part each (no dialogue lends
contexts to two iterations), in the order of the seed file (shuffled by `data prepare`); a
dialogue goes to the part its middle context falls in when the contexts are cut into T equal
runs, so parts hold about equally many contexts, and none is left empty.

`sample_contexts` takes an iteration's `generation.max_contexts` of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from esevo_ray import schema
from esevo_ray.io import write_parquet


def part_of_rows(contexts: pa.Table, iterations: int) -> list[int]:
    """The part (0..iterations-1) of every row of a seed-contexts table.

    Raises:
        ValueError: iterations < 1, or fewer dialogues than parts (a part would be empty).
    """
    if iterations < 1:
        raise ValueError(f"seed split: iterations must be >= 1, got {iterations}")
    ids = contexts.column("dialogue_id").to_pylist()
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    if len(counts) < iterations:
        raise ValueError(
            f"seed split: {len(counts)} seed dialogues cannot fill {iterations} disjoint parts"
        )
    part: dict[str, int] = {}
    before, previous, total = 0, -1, len(ids)
    for k, (dialogue, n) in enumerate(counts.items()):
        # One part at a time, and enough dialogues left for the later parts: none is empty.
        p = min(iterations * (2 * before + n) // (2 * total), previous + 1)
        part[dialogue] = previous = max(p, iterations - (len(counts) - k))
        before += n
    return [part[i] for i in ids]


def seed_part(contexts: pa.Table, iteration: int, iterations: int) -> pa.Table:
    """The seed contexts of iteration `iteration` (1..iterations) of a disjoint split.

    Raises:
        ValueError: iteration outside 1..iterations, or see `part_of_rows`.
    """
    if not 1 <= iteration <= iterations:
        raise ValueError(f"seed split: iteration must be in 1..{iterations}, got {iteration}")
    parts = part_of_rows(contexts, iterations)
    return contexts.filter(pa.array([p == iteration - 1 for p in parts]))


def write_seed_part(
    contexts_path: str | Path, out_path: str | Path, iteration: int, iterations: int
) -> Path:
    """Write the seed contexts of `iteration` (a CONTEXTS Parquet) to `out_path`; return it."""
    contexts = schema.read_table(contexts_path, schema.CONTEXTS)
    return write_parquet(seed_part(contexts, iteration, iterations), Path(out_path))


def sample_contexts(contexts: pa.Table, n: int | None, seed: int, iteration: int) -> pa.Table:
    """`n` of the seed contexts for iteration `iteration`, drawn at random from every seed
    dialogue, in the file's order; all of them when `n` is None or not below their number.

    The draw is the first `n` of a permutation seeded by `seed` and the iteration: each
    iteration draws its own (the first `n` rows would give every iteration the same contexts,
    from the first few dialogues), and a larger `n` keeps every context of a smaller one, so
    a pairs folder made for fewer contexts is extended, not replaced.
    """
    if n is None or n >= contexts.num_rows:
        return contexts
    order = np.random.default_rng([seed, iteration]).permutation(contexts.num_rows)
    return contexts.take(np.sort(order[:n]))

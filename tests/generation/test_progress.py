"""The driver's account of a generation pass: its pace without the engines' start-up."""

import json

import pyarrow as pa
import pytest

from esevo_ray.generation.progress import Progress


def _batch(rows: int, tokens: int, pid: int = 1) -> pa.Table:
    return pa.table({
        "actor": [json.dumps({"node": "n", "pid": pid})], "rows": [rows],
        "tokens": [tokens], "startup_s": [0.0], "compute_s": [0.1], "io_s": [0.0],
    })  # fmt: skip


def test_the_pace_leaves_the_start_up_out():
    """The ETA was elapsed / done x to go, start-up counted as per-row time: after a 3 s
    start-up and 0.15 s batches, the first ETAs of 20 batches said 60 s for 2.85 s left."""
    progress = Progress()
    progress.add(_batch(8, 80), 3.0)  # engines up after 3 s, then a batch every 0.15 s
    assert progress.pace() is None  # one batch: no pace to tell yet
    for i in range(1, 4):
        progress.add(_batch(8, 80), 3.0 + 0.15 * i)
    rows_per_s, tokens_per_s = progress.pace()
    assert rows_per_s == pytest.approx(3 * 8 / 0.45)
    assert tokens_per_s == pytest.approx(3 * 80 / 0.45)
    assert (20 * 8 - progress.rows) / rows_per_s == pytest.approx(16 * 0.15)


def test_the_pace_of_several_actors_leaves_each_ones_first_batch_out():
    """Two actors up after 60 s, a batch each every 10 s: counting the second actor's first
    batch as done in the span made the first ETA 9 s for 90 s left."""
    progress = Progress()
    progress.add(_batch(8, 80, pid=1), 70.0)
    progress.add(_batch(8, 80, pid=2), 70.5)
    assert progress.pace() is None
    progress.add(_batch(8, 80, pid=1), 80.0)
    progress.add(_batch(8, 80, pid=2), 80.5)
    rows_per_s, _ = progress.pace()
    assert rows_per_s == pytest.approx(16 / 10.5)  # two actors' 8 rows per 10 s, nearly
    assert len(progress.actors) == 2

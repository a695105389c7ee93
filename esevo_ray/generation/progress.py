"""What one pass of the engine actors did: rows, tokens, batch arrivals, placement, phases."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from esevo_ray import profile
from esevo_ray.generation.placement import Placement

# Per-batch seconds each actor reports with its results (see esevo_ray.profile).
PHASE_COLUMNS = ("startup_s", "compute_s", "io_s")


@dataclass
class Progress:
    """What one `run_engine_actors` call did: wall seconds, tokens, and per-batch arrivals."""

    engine: str | None = None  # the engine kind the actors built ("auto" resolved)
    seconds: float = 0.0
    rows: int = 0
    tokens: int = 0
    # (seconds since the start, output tokens) of each batch as it reached the driver.
    batches: list[tuple[float, int]] = field(default_factory=list)
    # Where the actors ran: the resolved placement, and each actor's record (`enter_actor`).
    placement: Placement | None = None
    actors: list[dict] = field(default_factory=list)
    # Seconds the actors report: engine builds, generation, part writes (summed over actors).
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASE_COLUMNS, 0.0))
    first_batch_work: float = 0.0
    # Rows and tokens of the batches after each actor's first (for `pace`).
    paced_rows: int = 0
    paced_tokens: int = 0

    def add(self, batch: pa.Table, elapsed: float) -> None:
        """Count one batch of actor results (rows, tokens, the actors' placement records)."""
        records = [json.loads(placed) for placed in batch["actor"].to_pylist()]
        later = any(r in self.actors for r in records)  # an actor's (node, pid) batch 2, 3, ...
        for record in records:
            if record not in self.actors:
                self.actors.append(record)
        tokens = pc.sum(batch["tokens"]).as_py()
        rows = pc.sum(batch["rows"]).as_py()
        if not self.batches:
            self.first_batch_work = (
                pc.sum(batch["compute_s"]).as_py() + pc.sum(batch["io_s"]).as_py()
            )
        if later:
            self.paced_rows += rows
            self.paced_tokens += tokens
        for column in PHASE_COLUMNS:
            self.phases[column] += pc.sum(batch[column]).as_py()
        self.rows += rows
        self.tokens += tokens
        self.batches.append((elapsed, tokens))

    def pace(self) -> tuple[float, float] | None:
        """(rows/s, output tokens/s) since the first batch arrived, counting the batches after
        each actor's first: the pool's pace without the wait for its first batches, which
        holds Ray's, the actors' and the engines' start-up (a minute or two for vLLM on a
        GPU). None before an actor's second batch."""
        span = self.batches[-1][0] - self.batches[0][0] if self.batches else 0.0
        if not self.paced_rows or span <= 0:
            return None
        return self.paced_rows / span, self.paced_tokens / span

    def record_profile(self, driver_io: float) -> None:
        """The stage's start-up, compute and I/O: the actors' seconds, shared by the pool.

        Start-up is the wait for the first batch less its own work (actors and engines
        coming up); compute and I/O are what the actors measured, divided by how many
        worked side by side.
        """
        if not self.batches:
            profile.record("io", driver_io)
            return
        first_work = self.first_batch_work
        actors = max(1, len(self.actors))
        profile.record("startup", self.batches[0][0] - first_work)
        profile.record("compute", self.phases["compute_s"] / actors)
        profile.record("io", driver_io + self.phases["io_s"] / actors)

    def placement_info(self) -> dict | None:
        if self.placement is None:
            return None
        return {**self.placement.as_dict(), "actors": self.actors}

"""The Ray Data pipeline: seed contexts sharded across generation actors, pairs to Parquet.

Each actor holds one engine and writes every finished batch as its own Parquet part, named by
a hash of the batch's keys and written atomically. So:
- a rerun into the same folder skips keys already written (resume);
- a batch retried after an actor dies rewrites the same part, never a second copy;
- the driver can be stopped at any time without losing finished batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from esevo_ray import schema
from esevo_ray.config import GenerationSection, RunConfig
from esevo_ray.generation.engines import build_engine
from esevo_ray.generation.pairs import make_pairs
from esevo_ray.io import atomic_write_text, write_parquet

logger = logging.getLogger(__name__)

PART_GLOB = "part-*.parquet"


def part_name(rows: list[dict], iteration: int) -> str:
    keys = sorted(f"{r['dialogue_id']}\x00{r['turn_index']}" for r in rows)
    digest = hashlib.sha256("\n".join(keys).encode() + str(iteration).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def read_pairs(out_dir: str | Path) -> pa.Table:
    """All pair rows written so far (empty table if none)."""
    parts = sorted(Path(out_dir).glob(PART_GLOB))
    if not parts:
        return schema.PAIRS.empty_table()
    return pa.concat_tables([schema.read_table(p, schema.PAIRS) for p in parts])


class Generator:
    """A Ray Data actor: one engine, whole batches in, one Parquet part out per batch."""

    def __init__(
        self,
        cfg: GenerationSection,
        model_path: str,
        adapter: str | None,
        dtype: str,
        iteration: int,
        out_dir: str,
    ):
        import torch

        torch.set_num_threads(max(1, int(cfg.cpus_per_actor)))
        self.cfg, self.iteration, self.out_dir = cfg, iteration, Path(out_dir)
        self.engine = build_engine(
            cfg.engine, model_path, adapter, dtype=dtype, max_model_len=cfg.max_model_len,
            lora_mode=cfg.lora_mode, extra=cfg.vllm,
        )  # fmt: skip

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        path = self.out_dir / part_name(rows, self.iteration)
        if not path.exists():  # a retried batch whose part was already written
            pairs = make_pairs(self.engine, self.cfg, rows, self.iteration)
            table = pa.Table.from_pylist(pairs, schema=schema.PAIRS)
            write_parquet(schema.conform(table, schema.PAIRS), path)
        done = schema.read_table(path, schema.PAIRS)
        return done.select(["dialogue_id", "chosen_source", "rejected_tokens", "reflection_tokens"])


def _todo(contexts: pa.Table, done: pa.Table) -> pa.Table:
    if done.num_rows == 0:
        return contexts
    finished = pc.binary_join_element_wise(
        done["dialogue_id"], pc.cast(done["turn_index"], pa.string()), "\x00"
    )
    keys = pc.binary_join_element_wise(
        contexts["dialogue_id"], pc.cast(contexts["turn_index"], pa.string()), "\x00"
    )
    return contexts.filter(pc.invert(pc.is_in(keys, value_set=finished)))


def generate_pairs(
    cfg: RunConfig,
    contexts_path: str | Path,
    out_dir: str | Path,
    *,
    model_path: str | Path,
    adapter: str | Path | None = None,
    iteration: int = 1,
) -> dict:
    """Generate the pairs of one iteration with M^t = model_path (+ adapter) into `out_dir`.

    Returns the manifest written to `out_dir/manifest.json`.
    """
    import ray
    from ray.data import ActorPoolStrategy

    gen = cfg.generation
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    contexts = schema.read_table(contexts_path, schema.CONTEXTS)
    if gen.max_contexts is not None:
        contexts = contexts.slice(0, gen.max_contexts)
    written = read_pairs(out_dir)
    todo = _todo(contexts, written.filter(pc.equal(written["iteration"], iteration)))
    total, remaining = contexts.num_rows, todo.num_rows
    logger.info(
        "generation: %d contexts, %d already done, %d to go", total, total - remaining, remaining
    )

    t0 = time.perf_counter()
    if remaining:
        if not ray.is_initialized():
            ray.init()
        blocks = max(1, -(-remaining // gen.batch_size))
        ds = ray.data.from_arrow(todo).repartition(blocks).map_batches(
            Generator,
            fn_constructor_kwargs=dict(
                cfg=gen, model_path=str(model_path), adapter=str(adapter) if adapter else None,
                dtype=cfg.model.dtype, iteration=iteration, out_dir=str(out_dir.resolve()),
            ),
            batch_size=gen.batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=gen.num_actors),
            num_cpus=gen.cpus_per_actor,
        )  # fmt: skip
        done, tokens = 0, 0
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            done += batch.num_rows
            tokens += (
                pc.sum(batch["rejected_tokens"]).as_py()
                + pc.sum(batch["reflection_tokens"]).as_py()
            )
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (remaining - done)
            logger.info(
                "generation: %d/%d rows, %.1f output tok/s, ETA %.0fs",
                total - remaining + done, total, tokens / elapsed, eta,
            )  # fmt: skip
    return finalize(
        out_dir,
        cfg,
        model_path,
        adapter,
        iteration,
        expected=total,
        seconds=time.perf_counter() - t0,
    )


def finalize(
    out_dir: Path,
    cfg: RunConfig,
    model_path,
    adapter,
    iteration: int,
    expected: int,
    seconds: float,
) -> dict:
    """Check every key is present exactly once and write the manifest."""
    pairs = read_pairs(out_dir)
    keys = pc.binary_join_element_wise(
        pairs["dialogue_id"],
        pc.cast(pairs["turn_index"], pa.string()),
        pc.cast(pairs["iteration"], pa.string()),
        "\x00",
    )
    unique = len(pc.unique(keys))
    if unique != pairs.num_rows:
        raise RuntimeError(f"{out_dir}: {pairs.num_rows - unique} duplicate pair keys")
    if pairs.num_rows < expected:
        raise RuntimeError(f"{out_dir}: {pairs.num_rows} of {expected} pairs written")
    sources = pairs["chosen_source"].value_counts().to_pylist()
    manifest = {
        "iteration": iteration,
        "rows": pairs.num_rows,
        "chosen_source": {s["values"]: s["counts"] for s in sources},
        "generator_model": pairs["generator_model"][0].as_py() if pairs.num_rows else None,
        "adapter_hash": pairs["adapter_hash"][0].as_py() if pairs.num_rows else None,
        "model_path": str(model_path),
        "adapter": str(adapter) if adapter else None,
        "engine": cfg.generation.engine,
        "config_digest": cfg.digest(),
        "seconds": round(seconds, 2),
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    return manifest

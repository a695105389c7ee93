"""The Ray Data pipeline: contexts sharded across engine actors, results to Parquet parts.

Each actor holds one engine and writes every finished batch as its own Parquet part
(`esevo_ray.parts`): a rerun by the same producer skips the keys already written, a batch
retried after an actor dies rewrites the same part, and a stopped driver loses no batch.

Two actors use it: `Generator` (preference pairs) and `Responder` (evaluation responses).
Each actor reserves the GPUs of `generation.gpus_per_actor` (see `placement`) and holds its
engine only while the stage runs: when the dataset is consumed, Ray Data drops the pool and
the actor processes exit, so their devices are free before the next stage asks for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from esevo_ray import prompts, schema
from esevo_ray.config import DecodingSection, GenerationSection, RunConfig
from esevo_ray.data.seeds import sample_contexts
from esevo_ray.generation.engine_choice import generation_engine
from esevo_ray.generation.engines import (
    Completion,
    Engine,
    EngineOptions,
    TokenCounter,
    build_engine,
    model_id,
)
from esevo_ray.generation.fallback import enforce_fallbacks, fallback_entry
from esevo_ray.generation.pairs import fit_context, make_pairs, make_reference_pairs, request_seed
from esevo_ray.generation.placement import Placement, enter_actor, place
from esevo_ray.generation.progress import Progress
from esevo_ray.io import atomic_write_text, check_replaceable
from esevo_ray.models import model_fingerprint, weights_sample
from esevo_ray.parts import (
    PART_GLOB,
    PRODUCER_FILE,
    check_complete,
    claim,
    part_name,
    read_parts,
    todo,
    write_part,
)
from esevo_ray.storage import check_shared

logger = logging.getLogger(__name__)


def read_pairs(out_dir: str | Path) -> pa.Table:
    return read_parts(out_dir, schema.PAIRS)


def _prompts_digest(actor: type[EngineActor]) -> dict[str, str]:
    """{"prompts": a hash of the actor's fixed prompts}, or {} for an actor without any: a
    parts folder resumed after a prompt was edited would mix rows of two prompts."""
    texts = actor.prompt_texts()
    if not texts:
        return {}
    return {"prompts": hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]}


class EngineActor:
    """A Ray Data actor: one engine, whole batches in, one Parquet part out per batch."""

    output_schema: pa.Schema
    # The `generation` settings its rows depend on, besides model, engine and dtype: a parts
    # folder is resumed only with the same ones (`parts.claim`).
    settings = (
        "decoding", "reflection_decoding", "max_context_tokens", "max_model_len", "lora_mode",
    )  # fmt: skip

    @classmethod
    def prompt_texts(cls) -> tuple[str, ...]:
        """The fixed prompts its rows depend on (read when the folder is claimed); a prompt
        passed in, such as an eval's system prompt, is recorded as an argument instead."""
        return ()

    def __init__(
        self,
        gen: GenerationSection,
        model_path: str,
        adapter: str | None,
        dtype: str,
        out_dir: str,
        *,
        placement: Placement | None = None,
    ):
        """`placement`: set by `run_engine_actors`; None outside Ray (engine on torch's pick)."""
        t0 = time.perf_counter()
        # First, before anything touches CUDA: hide GPUs this actor did not reserve.
        self.placed = enter_actor(placement, "generation") if placement else {}
        import torch

        # The driver chose the engine (run_engine_actors); checked again in this environment.
        kind = generation_engine(gen, placement.device if placement else None)
        if kind == "hf":  # vLLM binds its own CPU threads
            torch.set_num_threads(max(1, int(gen.cpus_per_actor)))
        self.gen, self.out_dir = gen, Path(out_dir)
        options = EngineOptions(
            dtype=dtype, max_model_len=gen.max_model_len, lora_mode=gen.lora_mode,
            device=placement.device if placement else None,
            tensor_parallel_size=gen.tensor_parallel_size, extra=gen.vllm,
        )  # fmt: skip
        self.engine = build_engine(kind, model_path, adapter, options)
        self.placed["dtype"] = self.engine.dtype  # what "auto" resolved to, with the placement
        self.startup_s = time.perf_counter() - t0  # reported with the first batch

    def produce(self, rows: list[dict]) -> tuple[list[dict], int]:
        """Output rows for a batch of contexts, and the number of tokens generated."""
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        tokens, t0 = 0, time.perf_counter()
        compute = io = 0.0
        if not (self.out_dir / part_name(rows)).exists():  # else: a retried batch, written
            out, tokens = self.produce(rows)
            compute = time.perf_counter() - t0
            write_part(self.out_dir, out, self.output_schema)
            io = time.perf_counter() - t0 - compute
        startup, self.startup_s = self.startup_s, 0.0
        placed = json.dumps(self.placed, sort_keys=True)
        return pa.table(
            {"rows": [len(rows)], "tokens": [tokens], "actor": [placed],
             "startup_s": [startup], "compute_s": [compute], "io_s": [io]}
        )  # fmt: skip


class Generator(EngineActor):
    """Preference pairs of iteration `iteration` (Section 2.2.1)."""

    output_schema = schema.PAIRS
    settings = (*EngineActor.settings, "reflection_mode", "max_attempts", "guided_json",
                "length_ratio")  # fmt: skip

    def __init__(self, *args, iteration: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.iteration = iteration

    @classmethod
    def prompt_texts(cls) -> tuple[str, ...]:
        return (prompts.TASK_PROMPT, prompts.REFINE_PROMPT, prompts.REFLECT_PROMPT,
                prompts.REFINE_WITH_REFLECTION_PROMPT)  # fmt: skip

    def produce(self, rows: list[dict]) -> tuple[list[dict], int]:
        pairs = make_pairs(self.engine, self.gen, rows, self.iteration)
        return pairs, sum(p["rejected_tokens"] + p["reflection_tokens"] for p in pairs)


class ReferenceGenerator(Generator):
    """{HM, P} pairs: the rejected response only, chosen := golden (Table 5)."""

    @classmethod
    def prompt_texts(cls) -> tuple[str, ...]:
        return (prompts.TASK_PROMPT,)

    def produce(self, rows: list[dict]) -> tuple[list[dict], int]:
        pairs = make_reference_pairs(self.engine, self.gen, rows, self.iteration)
        return pairs, sum(p["rejected_tokens"] for p in pairs)


class Responder(EngineActor):
    """Responses r_n = M(P || C_n) for evaluation with the ground-truth context (P = P_task)."""

    output_schema = schema.EVAL_RESPONSES

    def __init__(self, *args, model_name: str, system_prompt: str = prompts.TASK_PROMPT, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_name, self.system_prompt = model_name, system_prompt

    def produce(self, rows: list[dict]) -> tuple[list[dict], int]:
        outs = respond(self.engine, self.gen, rows, self.system_prompt)
        out = [
            response_row(r, self.model_name, o.text.strip())
            for r, o in zip(rows, outs, strict=True)
        ]
        return out, sum(o.output_tokens for o in outs)


def respond(
    engine: Engine, gen: GenerationSection, rows: list[dict], system_prompt: str
) -> list[Completion]:
    """The engine's responses to context rows, as evaluation asks for them: each context fit
    to the task request alone, under `system_prompt`, seeded by its key (`eval_seed`)."""
    return engine.chat(
        [task_request(engine, gen, r, system_prompt) for r in rows],
        gen.decoding,
        [eval_seed(gen.decoding, r) for r in rows],
    )


def task_request(
    counter: TokenCounter, gen: GenerationSection, row: dict, system_prompt: str
) -> list[dict]:
    """The task request (`system_prompt` || C_n) of a context row, its context fit to the task
    request alone (`fit_context`), as evaluation responses are asked for.

    The dialogue is fit under P_task as well: a shorter prompt (the vanilla one of Table 2's
    baseline, Table 3 and Table 5's M0) answers the same history as the P_task rows it is
    compared with, not a longer one (its prompt's own effect, not the context's). A longer
    prompt (self-reflection's) keeps what fits beside it.
    """
    context = fit_context(
        counter, row["context"], gen, system_prompt=system_prompt, refine=False,
        fit_under=(prompts.TASK_PROMPT,),
    )  # fmt: skip
    return prompts.task_messages(context, system_prompt)


def eval_seed(decoding: DecodingSection, row: dict) -> int:
    """The seed of the response to one context: the same on every engine and endpoint."""
    return request_seed(decoding.seed, row["dialogue_id"], row["turn_index"], 0, "eval", 0)


def response_row(context_row: dict, model_name: str, text: str) -> dict:
    """One EVAL_RESPONSES row: the context's keys, context and golden, and the response."""
    keys = ("dialogue_id", "turn_index", "context", "golden")
    return {**{k: context_row[k] for k in keys}, "model": model_name, "response": text}


def run_engine_actors(
    cfg: RunConfig,
    contexts: pa.Table,
    out_dir: Path,
    actor: type[EngineActor],
    *,
    model_path: str | Path,
    adapter: str | Path | None,
    label: str,
    **actor_kwargs,
) -> Progress:
    """Map the contexts not yet in `out_dir` through a pool of engine actors."""
    import ray

    # The actors get the engine chosen here for the device they will run on, checked before
    # any of them starts.
    engine = generation_engine(cfg.generation)
    gen = cfg.generation.model_copy(update={"engine": engine})
    # Before claiming it: claiming another folder would write into it and drop its manifest.
    check_replaceable(out_dir, holds=(PRODUCER_FILE, PART_GLOB), what="generation parts")
    out_dir.mkdir(parents=True, exist_ok=True)
    claim(out_dir, {
        "stage": actor.__name__, "model": model_id(model_path, adapter), "engine": gen.engine,
        # Another base model of the same folder name is another model (the name alone
        # resumed one's rows with the other's); by content, not path: a run resumed from
        # another home or mount reads the same model elsewhere.
        "model_fingerprint": model_fingerprint(Path(model_path)),
        "model_weights": weights_sample(Path(model_path)),
        "dtype": cfg.model.dtype, "generation": gen.model_dump(include=set(actor.settings)),
        **_prompts_digest(actor), **actor_kwargs,
    })  # fmt: skip
    t_read = time.perf_counter()
    pending = todo(contexts, out_dir, actor.output_schema)
    driver_io = time.perf_counter() - t_read
    total, remaining = contexts.num_rows, pending.num_rows
    logger.info(
        "%s: %d contexts, %d already done, %d to go", label, total, total - remaining, remaining
    )
    t0 = time.perf_counter()
    progress = Progress(engine=gen.engine)
    if not remaining:
        return progress
    # A folder's manifest.json says it is complete (esevo dpo checks): not while it grows.
    (out_dir / "manifest.json").unlink(missing_ok=True)
    if not ray.is_initialized():
        ray.init()
    # Checked before any actor starts: Ray would wait forever for GPUs the cluster lacks,
    # and a worker that writes its parts on an unshared disk loses them to the driver.
    progress.placement = place(
        gen, gen.engine, gen.num_actors, "generation", cpus=gen.cpus_per_actor
    )
    check_shared(label, writes=[out_dir], reads=[model_path, adapter])
    ds = _actor_dataset(cfg, gen, pending, out_dir, actor, progress.placement, dict(
        model_path=str(model_path), adapter=str(adapter) if adapter else None, **actor_kwargs,
    ))  # fmt: skip
    for batch in finished_batches(ds):
        elapsed = time.perf_counter() - t0
        progress.add(batch, elapsed)
        done = total - remaining + progress.rows
        if (pace := progress.pace()) is None:
            logger.info("%s: %d/%d rows, the first batch after %.0fs (start-up included)",
                        label, done, total, elapsed)  # fmt: skip
        else:
            logger.info("%s: %d/%d rows, %.1f output tok/s, ETA %.0fs", label, done, total,
                        pace[1], (total - done) / pace[0])  # fmt: skip
    progress.seconds = time.perf_counter() - t0
    progress.record_profile(driver_io)
    return progress


def finished_batches(ds: Any) -> Iterator[pa.Table]:
    """Each batch of `ds` as soon as it is done. No prefetch: Ray Data would hold a finished
    batch back until the next one is done, so progress (and its ETA) came a batch late, and
    not at all before a second batch."""
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)


BATCH_RETRIES = 3


def _actor_dataset(
    cfg: RunConfig,
    gen: GenerationSection,
    pending: pa.Table,
    out_dir: Path,
    actor: type[EngineActor],
    placement: Placement,
    actor_kwargs: dict,
):
    """The Ray Data plan: `pending` in batches, through a pool of `actor`s (`gen`'s engine,
    placed as resolved)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = False
    # One block per batch, made on the driver: a repartition task would need a CPU that
    # the actors may already hold all of (e.g. one actor with every core).
    size, n = gen.batch_size, pending.num_rows
    blocks = [pending.slice(i, size) for i in range(0, n, size)]
    return ray.data.from_arrow(blocks).map_batches(
        actor,
        fn_constructor_kwargs=dict(
            gen=gen, placement=placement, dtype=cfg.model.dtype,
            out_dir=str(out_dir.resolve()), **actor_kwargs,
        ),
        batch_size=gen.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=gen.num_actors),
        num_cpus=gen.cpus_per_actor,
        # An actor that dies (a node lost, out of memory) is started again, as Ray Data does,
        # but a batch that kills its actor every time fails the stage after these retries:
        # Ray Data's default retries it forever, reloading the engine each time.
        max_task_retries=BATCH_RETRIES,
        **placement.ray_options(),
    )  # fmt: skip


def generate_pairs(
    cfg: RunConfig,
    contexts_path: str | Path,
    out_dir: str | Path,
    *,
    model_path: str | Path,
    adapter: str | Path | None = None,
    iteration: int = 1,
    chosen: str = "self_refined",
) -> dict:
    """Generate the pairs of one iteration with M^t = model_path (+ adapter) into `out_dir`.

    `chosen`: "self_refined" ({SR, P}: reflection and refinement) or "human_reference"
    ({HM, P}: the golden response, no reflection; contexts without one are left out and
    counted). Returns the manifest written to `out_dir/manifest.json`, with the placement of
    the engine actors and, for self-refined pairs, the share of golden fallbacks.

    Raises:
        FallbackError: with `generation.fallback_policy: fail`, when that share exceeds
            `generation.max_fallback_fraction` (the manifest is written first).
    """
    out_dir = Path(out_dir)
    contexts = schema.read_table(contexts_path, schema.CONTEXTS)
    contexts = sample_contexts(contexts, cfg.generation.max_contexts, cfg.data.seed, iteration)
    reference = chosen == "human_reference"
    if reference:
        golden = pc.utf8_trim_whitespace(pc.fill_null(contexts.column("golden"), ""))
        kept = contexts.filter(pc.greater(pc.utf8_length(golden), 0))
        dropped, contexts = contexts.num_rows - kept.num_rows, kept
    progress = run_engine_actors(
        cfg, contexts, out_dir, ReferenceGenerator if reference else Generator,
        model_path=model_path, adapter=adapter, label=f"pairs iteration {iteration}",
        iteration=iteration,
    )  # fmt: skip
    pairs = read_pairs(out_dir)
    check_complete(pairs, contexts, out_dir)
    sources = pairs["chosen_source"].value_counts().to_pylist()
    counts = {s["values"]: s["counts"] for s in sources}
    manifest = {
        "iteration": iteration,
        "rows": pairs.num_rows,
        "chosen_source": counts,
        **({"dropped_empty_golden": dropped} if reference else {}),
        "fallback": None if reference else fallback_entry(counts, cfg.generation),
        "generator_model": pairs["generator_model"][0].as_py() if pairs.num_rows else None,
        "adapter_hash": pairs["adapter_hash"][0].as_py() if pairs.num_rows else None,
        "model_path": str(model_path),
        "adapter": str(adapter) if adapter else None,
        "engine": progress.engine,
        "config_digest": cfg.digest(),
        "seconds": round(progress.seconds, 2),
        "placement": progress.placement_info(),
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    if not reference:
        enforce_fallbacks(manifest["fallback"], f"pairs iteration {iteration}")
    return manifest

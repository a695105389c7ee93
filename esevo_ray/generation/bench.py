"""`esevo bench generate`: output tokens/s of the same generation three ways.

(a) the Ray Data pipeline (engine actors writing Parquet parts), (b) the same engine called
directly in one process, (c) the loop a researcher would write: transformers `generate` on
one context at a time. Same contexts, model, decoding settings; medians of `repeats` runs.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from esevo_ray import prompts, schema
from esevo_ray.config import RunConfig
from esevo_ray.errors import UsageError
from esevo_ray.generation.engine_choice import generation_engine
from esevo_ray.numerics import engine_dtype, release_gpu_memory

logger = logging.getLogger(__name__)


def steady(batches: list[tuple[float, int]], paced_tokens: int | None = None) -> dict[str, float]:
    """Start-up (to the first batch) and tokens/s from the first batch to the last.

    `batches`: (seconds since the start, output tokens) of each batch, in order. Counted are
    the tokens of the batches after the first, or with several actors `paced_tokens`, those
    after each actor's first (`Progress.paced_tokens`): the other actors' first batches were
    made mostly before the first one arrived.
    """
    first, last = batches[0][0], batches[-1][0]
    later = sum(t for _, t in batches[1:]) if paced_tokens is None else paced_tokens
    return {
        "startup_s": round(first, 2),
        "tok_per_s": later / (last - first) if last > first else float("nan"),
        "total_tok_per_s": sum(t for _, t in batches) / last,
    }


Timed = tuple[list[tuple[float, int]], int | None]  # `steady`'s arguments


def _pipeline(cfg: RunConfig, rows: list[dict], model: Path) -> Timed:
    from esevo_ray.generation.pipeline import Responder, run_engine_actors

    out = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    try:
        table = pa.Table.from_pylist(rows, schema=schema.CONTEXTS)
        progress = run_engine_actors(
            cfg,
            table,
            out,
            Responder,
            model_path=model,
            adapter=None,
            label="bench",
            model_name="bench",
        )
        return progress.batches, progress.paced_tokens
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _direct(cfg: RunConfig, rows: list[dict], model: Path) -> Timed:
    """The same engine and batches, called in this process without Ray."""
    import torch

    from esevo_ray.generation.engines import EngineOptions, build_engine
    from esevo_ray.generation.pipeline import respond

    gen = cfg.generation
    kind = generation_engine(gen)  # as the pipeline chooses it
    if kind == "hf":  # vLLM binds its own CPU threads
        torch.set_num_threads(max(1, int(gen.cpus_per_actor)))
    t0 = time.perf_counter()
    options = EngineOptions(
        dtype=cfg.model.dtype, max_model_len=gen.max_model_len, extra=gen.vllm,
        tensor_parallel_size=gen.tensor_parallel_size,
        device="cpu" if gen.device == "cpu" else None,  # as the pipeline's actors run
    )  # fmt: skip
    engine = build_engine(kind, model, options=options)
    batches = []
    for i in range(0, len(rows), gen.batch_size):
        # As the pipeline's evaluation responses are asked for (Responder).
        outs = respond(engine, gen, rows[i : i + gen.batch_size], prompts.TASK_PROMPT)
        batches.append((time.perf_counter() - t0, sum(o.output_tokens for o in outs)))
    del engine
    release_gpu_memory()  # the next mode's engine runs in a Ray actor on the same GPU
    return batches, None


def _naive(cfg: RunConfig, rows: list[dict], model: Path) -> Timed:
    """One context at a time through `model.generate`, as a first script would, on the
    contexts the engines answer (each fit to the task request alone, as `respond` does). Its
    first context, as the engines' first batch, counts as start-up."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esevo_ray.generation.engines import GREEDY_BELOW, LOWEST_TEMPERATURE, TokenizerCounter
    from esevo_ray.generation.pipeline import task_request

    torch.set_num_threads(os.cpu_count() or 1)
    d = cfg.generation.decoding
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model)
    dtype = getattr(torch, engine_dtype(cfg.model.dtype))
    # Where the engines run too: generation.device, "auto" being the GPU this process sees.
    on_gpu = torch.cuda.is_available() and cfg.generation.device != "cpu"
    device = "cuda" if on_gpu else "cpu"
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device)
    counter, batches = TokenizerCounter(tok), []
    for r in rows:
        messages = task_request(counter, cfg.generation, r, prompts.TASK_PROMPT)
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).to(device)
        sample = d.temperature >= GREEDY_BELOW  # as the engines: else greedy
        temperature = max(d.temperature, LOWEST_TEMPERATURE)
        sampling = dict(temperature=temperature, top_p=d.top_p, top_k=d.top_k) if sample else {}
        out = lm.generate(
            **ids, do_sample=sample, **sampling, repetition_penalty=d.repetition_penalty,
            max_new_tokens=d.max_new_tokens, pad_token_id=tok.pad_token_id or tok.eos_token_id,
        )  # fmt: skip
        batches.append((time.perf_counter() - t0, out.shape[1] - ids["input_ids"].shape[1]))
    del lm
    release_gpu_memory()
    return batches, None


def bench_generate(
    cfg: RunConfig, contexts: Path, model: Path, *, n: int = 128, naive_n: int = 8, repeats: int = 3
) -> dict:
    """Median steady-state tokens/s of (a) pipeline, (b) engine alone, (c) naive loop.

    Steady state excludes start-up (engine or model load, and the first batch: for (a) each
    actor's first, for (c) the first context, with Ray worker start for (a)), which is
    reported separately as seconds to the first batch.

    Raises:
        UsageError: fewer than two batches of contexts per actor, or fewer than two naive
            contexts (no batch after the first to time).
    """
    rows = schema.read_table(contexts, schema.CONTEXTS).slice(0, n).to_pylist()
    batch, actors = cfg.generation.batch_size, cfg.generation.num_actors
    if len(rows) < 2 * batch * actors:
        each = f" for each of generation.num_actors={actors}" if actors > 1 else ""
        raise UsageError(
            f"{len(rows)} contexts (-n {n}, {contexts}) make fewer than two batches of "
            f"generation.batch_size={batch}{each}: the steady state is timed over the "
            f"batches after each actor's first; use -n {2 * batch * actors} or more, or a "
            "smaller generation.batch_size"
        )
    if min(naive_n, len(rows)) < 2:
        raise UsageError(
            f"--naive-n {naive_n}: the naive loop times the contexts after its first (the first "
            "is its start-up, as the engines' first batch is theirs); use --naive-n 2 or more"
        )
    modes = {
        "pipeline": lambda: _pipeline(cfg, rows, model),
        "engine": lambda: _direct(cfg, rows, model),
        "naive": lambda: _naive(cfg, rows[:naive_n], model),
    }
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for r in range(repeats):
        for name, fn in modes.items():  # side by side in each repeat: same machine state
            result = steady(*fn())
            runs[name].append(result)
            logger.info("bench run %d %s: %s", r + 1, name, result)
    med = {
        name: {k: round(statistics.median(x[k] for x in results), 2) for k in results[0]}
        for name, results in runs.items()
    }
    tps = {name: m["tok_per_s"] for name, m in med.items()}
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "model": str(model.name),
        "engine": generation_engine(cfg.generation),
        "dtype": engine_dtype(cfg.model.dtype),
        "contexts": len(rows),
        "naive_contexts": min(naive_n, len(rows)),
        "batch_size": cfg.generation.batch_size,
        "actors": cfg.generation.num_actors,
        "cpus_per_actor": cfg.generation.cpus_per_actor,
        "decoding": cfg.generation.decoding.model_dump(),
        "repeats": repeats,
        "median": med,
        "runs": runs,
        "pipeline_over_naive": round(tps["pipeline"] / tps["naive"], 2),
        "pipeline_over_engine": round(tps["pipeline"] / tps["engine"], 3),
    }

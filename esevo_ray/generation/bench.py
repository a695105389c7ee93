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

logger = logging.getLogger(__name__)


def _pipeline(cfg: RunConfig, rows: list[dict], model: Path) -> tuple[float, int]:
    from esevo_ray.generation.pipeline import Responder, run_engine_actors

    out = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    try:
        table = pa.Table.from_pylist(rows, schema=schema.CONTEXTS)
        return run_engine_actors(
            cfg,
            table,
            out,
            Responder,
            model_path=model,
            adapter=None,
            label="bench",
            model_name="bench",
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _direct(cfg: RunConfig, rows: list[dict], model: Path) -> tuple[float, int]:
    import torch

    from esevo_ray.generation.engines import build_engine
    from esevo_ray.generation.pairs import fit_context

    gen = cfg.generation
    if gen.engine == "hf":  # vLLM binds its own CPU threads
        torch.set_num_threads(max(1, int(gen.cpus_per_actor)))
    t0 = time.perf_counter()
    engine = build_engine(
        gen.engine, model, dtype=cfg.model.dtype, max_model_len=gen.max_model_len, extra=gen.vllm
    )
    tokens = 0
    for i in range(0, len(rows), gen.batch_size):
        batch = rows[i : i + gen.batch_size]
        convs = [prompts.task_messages(fit_context(engine, r["context"], gen)) for r in batch]
        outs = engine.chat(convs, gen.decoding, [gen.decoding.seed + j for j in range(len(batch))])
        tokens += sum(o.output_tokens for o in outs)
    seconds = time.perf_counter() - t0
    del engine
    return seconds, tokens


def _naive(cfg: RunConfig, rows: list[dict], model: Path) -> tuple[float, int]:
    """One context at a time through `model.generate`, as a first script would."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, int(cfg.generation.cpus_per_actor)))
    d = cfg.generation.decoding
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, cfg.model.dtype))
    tokens = 0
    for r in rows:
        messages = prompts.task_messages(r["context"])
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        out = lm.generate(
            **ids, do_sample=True, temperature=d.temperature, top_p=d.top_p, top_k=d.top_k,
            repetition_penalty=d.repetition_penalty, max_new_tokens=d.max_new_tokens,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
        )  # fmt: skip
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    return time.perf_counter() - t0, tokens


def bench_generate(
    cfg: RunConfig, contexts: Path, model: Path, *, n: int = 64, naive_n: int = 8, repeats: int = 3
) -> dict:
    """Median tokens/s of (a) pipeline, (b) engine alone, (c) naive loop, and their ratios."""
    rows = schema.read_table(contexts, schema.CONTEXTS).slice(0, n).to_pylist()
    runs: dict[str, list[float]] = {"pipeline": [], "engine": [], "naive": []}
    for r in range(repeats):
        for name, fn in (
            ("pipeline", lambda: _pipeline(cfg, rows, model)),
            ("engine", lambda: _direct(cfg, rows, model)),
            ("naive", lambda: _naive(cfg, rows[:naive_n], model)),
        ):
            seconds, tokens = fn()
            runs[name].append(tokens / seconds)
            logger.info(
                "bench run %d %s: %d tokens in %.1fs = %.1f tok/s",
                r + 1,
                name,
                tokens,
                seconds,
                tokens / seconds,
            )
    med = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "model": str(model.name),
        "engine": cfg.generation.engine,
        "contexts": n,
        "naive_contexts": naive_n,
        "batch_size": cfg.generation.batch_size,
        "decoding": cfg.generation.decoding.model_dump(),
        "runs_tok_per_s": runs,
        "median_tok_per_s": med,
        "pipeline_over_naive": round(med["pipeline"] / med["naive"], 2),
        "pipeline_over_engine": round(med["pipeline"] / med["engine"], 3),
    }

"""{HM, P} pairs (Table 5, Appendix B.1): M^t's direct answer rejected, the golden response chosen.

Only the rejected side is generated, exactly as `generation.pairs.make_pairs` generates it
(the same fitted context, P_task prompt, decoding and per-context seed), so {HM, P} and
{SR, P} pairs of the same contexts and generator share their rejected responses and differ
only in the chosen side. The reflection and refinement calls, which take most of the tokens
of a self-refined pair, are skipped: their output would be thrown away.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.compute as pc

from esevo_ray import prompts, schema
from esevo_ray.config import RunConfig
from esevo_ray.evaluation.ablation import HUMAN_REFERENCE
from esevo_ray.generation.pairs import fit_context, request_seed
from esevo_ray.generation.pipeline import EngineActor, read_pairs, run_engine_actors
from esevo_ray.io import atomic_write_text
from esevo_ray.parts import check_complete


class ReferencePairs(EngineActor):
    """Ray Data actor: contexts -> PAIRS rows with chosen := golden."""

    output_schema = schema.PAIRS

    def __init__(self, *args, iteration: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.iteration = iteration

    def produce(self, rows: list[dict]) -> tuple[list[dict], int]:
        t0, gen = time.perf_counter(), self.gen
        task = [prompts.task_messages(fit_context(self.engine, r["context"], gen)) for r in rows]
        seeds = [
            request_seed(
                gen.decoding.seed, r["dialogue_id"], r["turn_index"], self.iteration, "rejected", 0
            )
            for r in rows
        ]
        outs = self.engine.chat(task, gen.decoding, seeds)
        seconds = (time.perf_counter() - t0) / max(len(rows), 1)
        pairs = [
            {
                **{k: row[k] for k in ("dialogue_id", "turn_index", "source", "golden")},
                "iteration": self.iteration,
                "prompt": messages,
                "chosen": [{"role": "assistant", "content": row["golden"]}],
                "rejected": [{"role": "assistant", "content": out.text.strip()}],
                "chosen_source": HUMAN_REFERENCE,
                "generator_model": self.engine.model_id,
                "adapter_hash": self.engine.adapter_hash,
                **{k: "" for k in prompts.REFLECTION_KEYS},
                "feedback": "",
                "attempts": 0,
                "prompt_tokens": out.prompt_tokens,
                "rejected_tokens": out.output_tokens,
                "reflection_tokens": 0,
                "generation_seconds": seconds,
            }
            for row, messages, out in zip(rows, task, outs, strict=True)
        ]
        return pairs, sum(o.output_tokens for o in outs)


def generate_reference_pairs(
    cfg: RunConfig,
    contexts_path: str | Path,
    out_dir: str | Path,
    *,
    model_path: str | Path,
    adapter: str | Path | None = None,
    iteration: int = 1,
) -> dict:
    """{HM, P} pairs of one iteration with M^t = model_path (+ adapter) into `out_dir`.

    The contexts are those `generation.pipeline.generate_pairs` would use (the first
    `generation.max_contexts`), less any without a golden response (counted).

    Returns:
        The manifest written to `out_dir/manifest.json`.
    """
    out_dir = Path(out_dir)
    contexts = schema.read_table(contexts_path, schema.CONTEXTS)
    if cfg.generation.max_contexts is not None:
        contexts = contexts.slice(0, cfg.generation.max_contexts)
    golden = pc.utf8_trim_whitespace(pc.fill_null(contexts.column("golden"), ""))
    kept = contexts.filter(pc.greater(pc.utf8_length(golden), 0))
    progress = run_engine_actors(
        cfg, kept, out_dir, ReferencePairs, model_path=model_path, adapter=adapter,
        label=f"{{HM, P}} pairs iteration {iteration}", iteration=iteration,
    )  # fmt: skip
    pairs = read_pairs(out_dir)
    check_complete(pairs, kept.num_rows, out_dir)
    manifest = {
        "iteration": iteration,
        "rows": pairs.num_rows,
        "chosen_source": {HUMAN_REFERENCE: pairs.num_rows},
        "dropped_empty_golden": contexts.num_rows - kept.num_rows,
        "generator_model": pairs["generator_model"][0].as_py() if pairs.num_rows else None,
        "adapter_hash": pairs["adapter_hash"][0].as_py() if pairs.num_rows else None,
        "model_path": str(model_path),
        "adapter": str(adapter) if adapter else None,
        "engine": cfg.generation.engine,
        "config_digest": cfg.digest(),
        "seconds": round(progress.seconds, 2),
        "placement": progress.placement_info(),
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    return manifest

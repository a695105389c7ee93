"""Responses of a local model to the evaluation contexts: responses.parquet of an eval folder.

r_n = M(P || C_n) with the ground-truth context C_n and P = P_task (for the untrained
backbone, the prompt of `eval.base_prompt`: `eval_prompt`), answered by the Ray Data
engine actors (`Responder`), one Parquet part per batch (resumable, see `esevo_ray.parts`).
The HTTP twin for a served model is `esevo_ray.evaluation.endpoint.endpoint_responses`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from esevo_ray import prompts, schema
from esevo_ray.config import RunConfig
from esevo_ray.generation.pipeline import Responder, run_engine_actors
from esevo_ray.io import write_parquet
from esevo_ray.parts import check_complete, read_parts

PARTS = "parts"  # inside an eval folder: the resumable parts of responses.parquet


def generate_responses(
    cfg: RunConfig,
    contexts_path: str | Path,
    out_dir: str | Path,
    *,
    model_path: str | Path,
    adapter: str | Path | None = None,
    model_name: str,
    system_prompt: str | None = None,
) -> Path:
    """Responses of one model to the evaluation contexts; returns `out_dir/responses.parquet`.

    `system_prompt`: the prompt ablation's (Table 3); None: `eval_prompt`.
    """
    out_dir = Path(out_dir)
    system_prompt = system_prompt or eval_prompt(cfg, adapter)
    contexts = eval_contexts(cfg, contexts_path)
    run_engine_actors(
        cfg, contexts, out_dir / PARTS, Responder, model_path=model_path, adapter=adapter,
        label=f"eval responses {model_name}", model_name=model_name, system_prompt=system_prompt,
    )  # fmt: skip
    return collect_responses(out_dir, contexts)


def eval_prompt(cfg: RunConfig, adapter: str | Path | None) -> str:
    """The system prompt a model answers the evaluation contexts under: P_task, or for a
    model without adapter (the backbone itself) the one `eval.base_prompt` names."""
    vanilla = adapter is None and cfg.eval.base_prompt == "vanilla"
    return prompts.VANILLA_PROMPT if vanilla else prompts.TASK_PROMPT


def eval_contexts(cfg: RunConfig, path: str | Path) -> pa.Table:
    """The evaluation contexts, the first `eval.max_examples` of them when set."""
    contexts = schema.read_table(path, schema.CONTEXTS)
    if cfg.eval.max_examples is not None:
        contexts = contexts.slice(0, cfg.eval.max_examples)
    return contexts


def collect_responses(out_dir: Path, contexts: pa.Table) -> Path:
    """Check that the parts hold every context once and write `out_dir/responses.parquet`."""
    table = read_parts(out_dir / PARTS, schema.EVAL_RESPONSES)
    check_complete(table, contexts, out_dir / PARTS)
    return write_parquet(table, out_dir / "responses.parquet")

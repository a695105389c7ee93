"""The self-evolution loop (Figure 2) as one resumable job.

    data -> SFT -> M0 -> eval(M0)
    for t in 1..T: pairs(M^{t-1}) -> DPO -> M^t -> eval(M^t)
    -> report
Each eval(M^t) is followed by LLM-as-a-judge (stage judge_m<t>) when eval.judge is set.
Every path comes from `RunLayout` (esevo_ray/layout.py), and every stage is named after the
model it makes or scores: sft_m0, eval_m0, judge_m0, pairs_m1, dpo_m1, eval_m1, ...

The `evolve` section varies the loop for Table 5: `init: base` makes M0 the base model
(stage base_m0 writes its marker instead of sft_m0 training an adapter), `chosen:
human_reference` makes {HM, P} (or on Syn-ESC seeds {HL, P}) pairs instead of self-refined
ones, and `seed_split` gives each iteration its own part of the seed contexts
(m<t>/seed_contexts.parquet).

Stages hand each other paths. A stage whose outputs exist, whose manifest entry is "done" and
whose inputs are unchanged is skipped (`runner.Runner`), so rerunning the same command after a
stop continues at the first unfinished one, and a model trained again is evaluated again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from esevo_ray import profile, schema
from esevo_ray.config import ConfigError, RunConfig
from esevo_ray.io import atomic_write_text, remove_leftovers
from esevo_ray.layout import RunLayout, model_name
from esevo_ray.models import resolve_model
from esevo_ray.pipeline.manifest import Manifest, run_lock
from esevo_ray.pipeline.runner import Runner

logger = logging.getLogger(__name__)


def _adapter(run: RunLayout, t: int) -> Path | None:
    """The adapter of M^t, or None when M^t is the base model itself."""
    return None if run.is_base(t) else run.adapter(t)


def _evaluate(
    cfg: RunConfig, run: RunLayout, base: Path, t: int, adapter: Path | None, runner: Runner
) -> None:
    from esevo_ray.evaluation.metrics import score_responses
    from esevo_ray.evaluation.responses import generate_responses

    name, out = model_name(t), run.eval(t)

    def score() -> dict:
        responses = generate_responses(
            cfg, run.eval_contexts, out, model_path=base, adapter=adapter, model_name=name
        )
        metrics = score_responses(responses, out, cfg)
        return {"scores": metrics.get("scores", {})}

    runner.stage(
        f"eval_{name}",
        inputs={"contexts": run.eval_contexts, "model": adapter or base},
        outputs={"responses": out / "responses.parquet", "metrics": out / "metrics.json"},
        fn=score,
        folder=out,
    )
    _judge(cfg, run, t, base, runner)


def _judge(cfg: RunConfig, run: RunLayout, t: int, base: Path, runner: Runner) -> None:
    """LLM-as-a-judge of one model's eval responses (Table 7), when eval.judge is set."""
    judge, name = cfg.eval.judge, model_name(t)
    if judge.backend == "endpoint" and not (judge.base_url and judge.model):
        logger.info("eval.judge.base_url/model not set: LLM-as-a-judge of %s skipped", name)
        return
    from esevo_ray.evaluation.endpoint import shown_url

    where = (
        f"{judge.model} at {shown_url(judge.base_url)}"
        if judge.backend == "endpoint"
        else (f"local {judge.backend} judge {judge.local_model or base}")
    )
    responses = run.eval(t) / "responses.parquet"

    def score() -> dict:
        from esevo_ray.evaluation.judge import judge_file
        from esevo_ray.evaluation.judge_scores import summarize

        n = cfg.eval.judge_samples if cfg.eval.judge_samples > 0 else None
        scores = judge_file(
            responses, run.judge_scores(t), judge, n_samples=n, local_model=base,
            dtype=cfg.model.dtype,
        )  # fmt: skip
        missing = scores.column("score").null_count
        if scores.num_rows and missing == scores.num_rows:
            raise RuntimeError(f"judge {where}: every verdict missing")
        return {
            "judge": where,
            "verdicts": scores.num_rows,
            "missing": missing,
            "summary": summarize(scores),
        }

    from esevo_ray.evaluation.judge import verdict_settings

    runner.stage(
        f"judge_{name}",
        inputs={"responses": responses},
        outputs={"judge_scores": run.judge_scores(t)},
        fn=score,
        current=lambda: judged_as_configured(cfg, run.judge_scores(t), responses),
        reconciles=True,  # judge_file keeps the verdicts still valid (more judge_samples)
        settings={
            **{f"eval.judge.{k}": v for k, v in verdict_settings(judge).items()},
            "eval.judge_samples": cfg.eval.judge_samples,
        },
    )


def judged_as_configured(cfg: RunConfig, scores: Path, responses: Path) -> bool:
    """Whether the judge file `scores` holds the verdicts this config's judge makes: False
    when `esevo judge` rewrote it under other judge settings, another endpoint model
    (--model) or another sample of contexts (--samples), or stopped part-way rewriting it;
    a setting the file does not record is taken as the same."""
    import pyarrow.parquet as pq

    from esevo_ray.evaluation.judge import (
        differing_settings,
        is_partial,
        judged_under,
        sample_keys,
        verdict_settings,
    )

    if is_partial(scores):  # the report leaves it out until a judging runs to the end
        return False
    judge = cfg.eval.judge
    expected = verdict_settings(judge)
    if judge.backend == "endpoint":
        expected["judge_model"] = judge.model
    if differing_settings([judged_under(scores), expected], asked=True):
        return False
    n = cfg.eval.judge_samples if cfg.eval.judge_samples > 0 else None
    table = pq.read_table(scores, columns=["dialogue_id", "turn_index"])
    judged = set(zip(*(table[c].to_pylist() for c in table.column_names), strict=True))
    asked = schema.read_table(responses, schema.EVAL_RESPONSES)
    return judged == set(sample_keys(asked, n, judge.seed))


def evolve(cfg: RunConfig) -> RunLayout:
    """Run (or continue) the whole loop for `cfg`; returns the run's layout.

    Raises:
        RunConflict: the run was made by another config, or another driver runs it now.
        ConfigError: generation.vllm holds an option vLLM does not take, or a setting found
            unfit before any stage (the BERTScore encoder's layer, the seed split).
    """
    from esevo_ray.evaluation.backbones import resolve_backbone
    from esevo_ray.generation.engine_choice import check_vllm_options

    run = RunLayout.of(cfg)
    warn_unused_dpo_lora(cfg)
    warn_cut_dpo_contexts(cfg)
    check_vllm_options(cfg.generation.vllm, "generation.vllm")  # not after SFT
    resolve_model(cfg.model.path)  # a mistyped path, before the run records its config
    # The BERTScore encoder's settings, now rather than at M0's evaluation after SFT.
    resolve_backbone(cfg.eval.bertscore_model, cfg.eval.bertscore_num_layers)
    with run_lock(run.root):  # before migrate(), which rewrites the manifest
        run.migrate()
        if removed := remove_leftovers(run.root):
            logger.warning(
                "removed %d temporary file(s) of writes a stopped driver left unfinished: %s",
                len(removed), ", ".join(str(p.relative_to(run.root)) for p in removed[:5]),
            )  # fmt: skip
        _loop(cfg, run, Runner(Manifest.open(run.root, cfg)))
    return run


def _loop(cfg: RunConfig, run: RunLayout, runner: Runner) -> None:
    """Every stage of the loop, in order; finished ones are reused."""
    from esevo_ray.data.prepare import prepare_data, source_files

    base = resolve_model(cfg.model.path)

    runner.stage(
        "data",
        inputs=source_files(cfg.data),
        outputs={"data": run.data / "manifest.json"},
        fn=lambda: {"rows": _timed("io", prepare_data, cfg.data, run.data)["rows"]},
        folder=run.data,
    )
    _check_seed_split(cfg, run)  # now, not at pairs_m1 after SFT and M0's evaluation
    _initial(cfg, run, base, runner)
    _evaluate(cfg, run, base, 0, _adapter(run, 0), runner)
    for t in range(1, cfg.evolve.iterations + 1):
        _iteration(cfg, run, base, t, runner)
        _evaluate(cfg, run, base, t, run.adapter(t), runner)

    # What the report reads: every model's metrics and verdicts (missing ones are None).
    scored = range(cfg.evolve.iterations + 1)
    inputs = {f"metrics_{model_name(t)}": run.eval(t) / "metrics.json" for t in scored}
    inputs |= {f"judge_{model_name(t)}": run.judge_scores(t) for t in scored}
    inputs["human_eval"] = run.human_db_at(cfg.serve.human_eval.db_path)  # Table 7's p row
    runner.stage(
        "report", inputs=inputs, outputs={"report": run.report},
        fn=lambda: _report(run.root), folder=run.report_dir,
        # more iterations add inputs, which a finished stage would take as they are
        settings={"evolve.iterations": cfg.evolve.iterations},
    )  # fmt: skip


def _initial(cfg: RunConfig, run: RunLayout, base: Path, runner: Runner) -> None:
    """M0: LoRA SFT of the base model, or (evolve.init: base) the base model itself."""
    from esevo_ray.training.raytrain import trained_as
    from esevo_ray.training.sft import sft_job, train_sft

    name = model_name(0)
    if cfg.evolve.init == "sft":
        runner.stage(
            f"sft_{name}", inputs={"sft": run.sft_data, "base": base},
            outputs={"adapter": run.adapter(0)}, folder=run.adapter(0),
            fn=lambda: _trained(train_sft(cfg, run.data, run.adapter(0), reuse=True)),
            current=lambda: trained_as(run.adapter(0), cfg, sft_job(cfg, run.data)),
        )  # fmt: skip
        return

    def mark() -> dict:
        note = {"model": str(base), "why": "evolve.init: base, M0 is the base model"}
        atomic_write_text(run.base_marker(0), json.dumps(note, indent=2))
        return note

    runner.stage(
        f"base_{name}", inputs={"base": base}, outputs={"marker": run.base_marker(0)}, fn=mark
    )


def iteration_seeds(cfg: RunConfig, run: RunLayout, t: int) -> Path:
    """The seed contexts of iteration t: with `evolve.seed_split` its own part of the run's
    seed dialogues, written to m<t>/seed_contexts.parquet, else all of them.

    Raises:
        ConfigError: with seed_split, t beyond evolve.iterations or too few seed dialogues.
    """
    from esevo_ray.data.seeds import write_seed_part

    if not cfg.evolve.seed_split:
        return run.seed_contexts
    try:
        return write_seed_part(run.seed_contexts, run.seeds(t), t, cfg.evolve.iterations)
    except ValueError as e:
        raise ConfigError(f"evolve.seed_split: {e}") from None


def warn_unused_dpo_lora(cfg: RunConfig) -> None:
    """Under evolve.init: sft every DPO continues M^t's adapter, whose LoRA is sft.lora's: a
    dpo.lora of its own is recorded and never used (said at once, not at the first DPO)."""
    if cfg.evolve.init == "sft" and cfg.evolve.iterations and cfg.dpo.lora != cfg.sft.lora:
        differ = [k for k, v in cfg.dpo.lora if v != getattr(cfg.sft.lora, k)]
        logger.warning(
            "dpo.lora (%s) is not used: under evolve.init: sft each DPO continues the adapter "
            "of M^t, trained with sft.lora; set sft.lora to change the LoRA",
            ", ".join(f"{k}={getattr(cfg.dpo.lora, k)}" for k in differ),
        )


def cut_dpo_contexts(cfg: RunConfig) -> str | None:
    """Why DPO would score pairs on less context than their rejected responses were
    generated from (a context of generation.max_context_tokens and a response at its token
    limit are longer than dpo.max_length, so `rows.fit_prompt` drops their oldest turns);
    None when they fit, or when the loop trains no DPO."""
    gen, limit = cfg.generation, cfg.dpo.max_length
    need = gen.max_context_tokens + gen.decoding.max_new_tokens
    if not cfg.evolve.iterations or need <= limit:
        return None
    return (
        f"generation.max_context_tokens ({gen.max_context_tokens}) + generation.decoding."
        f"max_new_tokens ({gen.decoding.max_new_tokens}) exceed dpo.max_length ({limit}): DPO "
        "drops the oldest turns of longer prompts, scoring those pairs on less context than "
        f"their rejected responses were generated from; raise dpo.max_length to {need}, or "
        f"lower generation.max_context_tokens to {limit - gen.decoding.max_new_tokens}"
    )


def warn_cut_dpo_contexts(cfg: RunConfig) -> None:
    """Said at the loop's start, not after SFT at the first DPO."""
    if (why := cut_dpo_contexts(cfg)) is not None:
        logger.warning(why)


def _check_seed_split(cfg: RunConfig, run: RunLayout) -> None:
    """Raises ConfigError when, with evolve.seed_split, the seed dialogues cannot fill one
    part per iteration (a run without iterations splits nothing: esevo baselines' runs)."""
    from esevo_ray.data.seeds import part_of_rows

    if not (cfg.evolve.seed_split and cfg.evolve.iterations):
        return
    try:
        part_of_rows(schema.read_table(run.seed_contexts, schema.CONTEXTS), cfg.evolve.iterations)
    except ValueError as e:
        raise ConfigError(
            f"evolve.seed_split: {e}; raise data.max_seed_dialogues or lower evolve.iterations"
        ) from None


def _iteration(cfg: RunConfig, run: RunLayout, base: Path, t: int, runner: Runner) -> None:
    """Pairs generated by M^{t-1}, then DPO from it: M^t."""
    from esevo_ray.generation.pipeline import generate_pairs

    name, prev, pairs = model_name(t), _adapter(run, t - 1), run.pairs(t)

    def make_pairs() -> dict:
        return generate_pairs(
            cfg, iteration_seeds(cfg, run, t), pairs, model_path=base, adapter=prev,
            iteration=t, chosen=cfg.evolve.chosen,
        )  # fmt: skip

    # The seeds as read: iteration t's part follows from them and the number of parts.
    runner.stage(
        f"pairs_{name}", inputs={"seeds": run.seed_contexts, "generator": prev or base},
        outputs={"pairs": pairs / "manifest.json"}, fn=make_pairs, folder=pairs,
        settings={"evolve.iterations": cfg.evolve.iterations} if cfg.evolve.seed_split else None,
    )  # fmt: skip
    _dpo(cfg, run, t, prev, base, runner)


def _dpo(
    cfg: RunConfig, run: RunLayout, t: int, prev: Path | None, base: Path, runner: Runner
) -> None:
    """M^t: DPO from M^{t-1} (a fresh adapter against the base when M^{t-1} is the base)."""
    from esevo_ray.generation.inspect import pairs_summary
    from esevo_ray.training.dpo import dpo_job, train_dpo
    from esevo_ray.training.raytrain import trained_as

    pairs = run.pairs(t)

    def dpo() -> dict:
        summary = pairs_summary(pairs, samples=0)
        summary.pop("samples")
        adapter = train_dpo(cfg, pairs, prev, run.adapter(t), reuse=True)
        return {**_trained(adapter), "pairs": summary}

    runner.stage(
        f"dpo_{model_name(t)}", inputs={"pairs": pairs, "init": prev or base},
        outputs={"adapter": run.adapter(t)}, fn=dpo, folder=run.adapter(t),
        current=lambda: trained_as(run.adapter(t), cfg, dpo_job(cfg, pairs, prev)),
    )  # fmt: skip


def _trained(adapter: Path) -> dict:
    """A training stage's manifest entry: the adapter and the numerics its workers chose."""
    from esevo_ray.training.raytrain import read_summary

    return {"adapter": str(adapter), "numerics": read_summary(adapter).get("numerics")}


def _report(root: Path) -> dict:
    from esevo_ray.evaluation.report import write_report

    return {"report": str(_timed("compute", write_report, root))}


def _timed(phase: str, fn: Callable, *args):
    with profile.timed(phase):
        return fn(*args)

"""The self-evolution loop (Figure 2) as one resumable job.

    data -> SFT -> M0 -> eval(M0)
    for t in 1..T: pairs(M^{t-1}) -> DPO -> M^t -> eval(M^t)
    -> report
Each eval(M^t) is followed by LLM-as-a-judge (stage judge_m<t>) when eval.judge is set.

Run directory:
    runs/<name>/manifest.json         config, versions, stage status, times, row counts
    runs/<name>/data/                 prepared datasets
    runs/<name>/m0/{adapter,eval}/
    runs/<name>/iter_<t>/{pairs,adapter,eval}/
    runs/<name>/report/

Stages hand each other paths. A stage whose outputs exist and whose manifest entry is "done"
is skipped, so rerunning the same command after a stop continues at the first unfinished one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from esevo_ray.config import RunConfig
from esevo_ray.models import resolve_model
from esevo_ray.pipeline.manifest import Manifest

logger = logging.getLogger(__name__)


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def model_dir(root: Path, t: int) -> Path:
    """Folder of M^t: m0 for the SFT model, iter_<t> for the DPO iterations."""
    return root / ("m0" if t == 0 else f"iter_{t}")


class Runner:
    """Runs stages in order, recording each in the manifest and skipping finished ones."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.timings: dict[str, float] = {}

    def stage(
        self,
        name: str,
        *,
        inputs: dict[str, Path],
        outputs: dict[str, Path],
        fn: Callable[[], dict | None],
    ) -> None:
        if self.manifest.done(name):
            logger.info("stage %s: done, reusing %s", name, ", ".join(map(str, outputs.values())))
            return
        logger.info("stage %s: start", name)
        self.manifest.start(name, {k: str(v) for k, v in inputs.items()})
        t0 = time.perf_counter()
        try:
            info = fn() or {}
        except BaseException as e:
            self.manifest.fail(name, f"{type(e).__name__}: {e}")
            raise
        seconds = round(time.perf_counter() - t0, 1)
        self.timings[name] = seconds
        outputs_ = {k: str(v) for k, v in outputs.items()}
        self.manifest.finish(name, outputs_, {**info, "seconds": seconds})
        logger.info("stage %s: done in %.1fs", name, seconds)


def _evaluate(
    cfg: RunConfig, root: Path, base: Path, t: int, adapter: Path | None, runner: Runner
) -> None:
    from esevo_ray.evaluation.metrics import score_responses
    from esevo_ray.generation.pipeline import generate_responses

    out = model_dir(root, t) / "eval"
    name = f"m{t}"

    def run() -> dict:
        responses = generate_responses(
            cfg,
            root / "data" / "eval_contexts.parquet",
            out,
            model_path=base,
            adapter=adapter,
            model_name=name,
        )
        metrics = score_responses(responses, out, cfg)
        return {"scores": metrics.get("scores", {})}

    runner.stage(
        f"eval_{name}",
        inputs={"contexts": root / "data" / "eval_contexts.parquet", "adapter": adapter or base},
        outputs={"responses": out / "responses.parquet", "metrics": out / "metrics.json"},
        fn=run,
    )
    _judge(cfg, out, name, base, runner)


def _judge(cfg: RunConfig, out: Path, name: str, base: Path, runner: Runner) -> None:
    """LLM-as-a-judge of one model's eval responses (Table 7), when eval.judge is set."""
    judge = cfg.eval.judge
    if judge.backend == "endpoint" and not (judge.base_url and judge.model):
        logger.info("eval.judge.base_url/model not set: LLM-as-a-judge of %s skipped", name)
        return
    where = (
        f"{judge.model} at {judge.base_url}"
        if judge.backend == "endpoint"
        else (f"local {judge.backend} judge {judge.local_model or base}")
    )

    def run() -> dict:
        from esevo_ray.evaluation.judge import judge_file
        from esevo_ray.evaluation.judge_scores import summarize

        n = cfg.eval.judge_samples if cfg.eval.judge_samples > 0 else None
        scores = judge_file(
            out / "responses.parquet", out / "judge_scores.parquet", judge, n_samples=n,
            local_model=base,
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

    runner.stage(
        f"judge_{name}",
        inputs={"responses": out / "responses.parquet"},
        outputs={"judge_scores": out / "judge_scores.parquet"},
        fn=run,
    )


def evolve(cfg: RunConfig) -> Path:
    """Run (or continue) the whole loop for `cfg`; returns the run directory."""
    from esevo_ray.data.prepare import prepare_data
    from esevo_ray.training.sft import train_sft

    root = run_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    runner = Runner(Manifest.open(root, cfg))
    base = resolve_model(cfg.model.path)
    data = root / "data"

    runner.stage(
        "data",
        inputs={"data_dir": Path(cfg.data.data_dir or "default")},
        outputs={"data": data / "manifest.json"},
        fn=lambda: {"rows": prepare_data(cfg.data, data)["rows"]},
    )
    adapter = model_dir(root, 0) / "adapter"
    runner.stage(
        "sft_m0",
        inputs={"sft": data / "sft.parquet", "base": base},
        outputs={"adapter": adapter},
        fn=lambda: {"adapter": str(train_sft(cfg, data, adapter))},
    )
    _evaluate(cfg, root, base, 0, adapter, runner)
    for t in range(1, cfg.evolve.iterations + 1):
        adapter = _iteration(cfg, root, base, t, adapter, runner)
        _evaluate(cfg, root, base, t, adapter, runner)

    runner.stage(
        "report",
        inputs={"run": root},
        outputs={"report": root / "report" / "report.md"},
        fn=lambda: _report(root),
    )
    return root


def _iteration(cfg: RunConfig, root: Path, base: Path, t: int, prev: Path, runner: Runner) -> Path:
    """Pairs generated by M^{t-1} (adapter `prev`), then DPO from it: returns M^t's adapter."""
    from esevo_ray.generation.inspect import pairs_summary
    from esevo_ray.generation.pipeline import generate_pairs
    from esevo_ray.training.dpo import train_dpo

    contexts = root / "data" / "seed_contexts.parquet"
    pairs, adapter = model_dir(root, t) / "pairs", model_dir(root, t) / "adapter"
    runner.stage(
        f"pairs_{t}",
        inputs={"contexts": contexts, "generator": prev},
        outputs={"pairs": pairs / "manifest.json"},
        fn=lambda: generate_pairs(cfg, contexts, pairs, model_path=base, adapter=prev, iteration=t),
    )

    def dpo() -> dict:
        summary = pairs_summary(pairs, samples=0)
        summary.pop("samples")
        return {"adapter": str(train_dpo(cfg, pairs, prev, adapter)), "pairs": summary}

    runner.stage(
        f"dpo_m{t}", inputs={"pairs": pairs, "init": prev}, outputs={"adapter": adapter}, fn=dpo
    )
    return adapter


def _report(root: Path) -> dict:
    from esevo_ray.evaluation.report import write_report

    return {"report": str(write_report(root))}

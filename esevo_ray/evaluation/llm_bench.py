"""General-ability benchmarks (paper Table 4) with lm-evaluation-harness against a served model.

Optional: needs the `lm_eval` package (`pip install -c constraints.txt "lm-eval[api]"`)
and, offline, each task's data already in the Hugging Face datasets cache. Without either,
the command stops with a message that says what is missing. Generative tasks (gsm8k,
ifeval, mmlu_pro) run over chat completions; multiple-choice tasks (truthfulqa_mc2,
openbookqa) need log-probabilities, i.e. `api="completions"` against a server with
`/v1/completions` (e.g. `vllm serve`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from esevo_ray.errors import BenchUnavailable, UsageError
from esevo_ray.evaluation.endpoint import base_url
from esevo_ray.evaluation.tables import markdown_table
from esevo_ray.io import atomic_write_text, check_replaceable

logger = logging.getLogger(__name__)

PAPER_TASKS = ("gsm8k", "ifeval", "truthfulqa_mc2", "openbookqa", "mmlu_pro")
# Scored by log-likelihood: they need log-probabilities, which only a completions API gives.
LOGLIKELIHOOD_TASKS = ("truthfulqa_mc2", "openbookqa")


def default_tasks(api: str) -> list[str]:
    """The paper's tasks that `api` can run: the generative ones over chat, all five over
    completions."""
    return [t for t in PAPER_TASKS if api == "completions" or t not in LOGLIKELIHOOD_TASKS]


# The metric reported per task (others stay in results.json).
PRIMARY_METRIC = {
    "gsm8k": "exact_match,strict-match",
    "ifeval": "prompt_level_strict_acc,none",
    "truthfulqa_mc2": "acc,none",
    "openbookqa": "acc_norm,none",
    "mmlu_pro": "exact_match,custom-extract",
}
INSTALL_HINT = (
    'install it with `.venv/bin/python -m pip install -c constraints.txt "lm-eval[api]"` '
    "(the constraints keep the pinned stack); "
    "offline runs also need each task's dataset in the Hugging Face datasets cache "
    "(HF_DATASETS_OFFLINE=1 here), fetched once on a machine with internet access"
)


def require_lm_eval() -> None:
    """Raises BenchUnavailable, naming the package and what else is needed, when it is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise BenchUnavailable(
            "lm-evaluation-harness is not installed (no Python module 'lm_eval'): " + INSTALL_HINT
        )


def primary_score(task: str, metrics: dict) -> float | None:
    """The task's reported metric x100 (or its first numeric metric)."""
    key = PRIMARY_METRIC.get(task)
    if key is None or not isinstance(metrics.get(key), int | float):
        key = next(
            (k for k, v in metrics.items() if isinstance(v, int | float) and "stderr" not in k),
            None,
        )
    return None if key is None else 100.0 * float(metrics[key])


def run_lm_eval(
    endpoint: str,
    tasks: Sequence[str],
    out: str | Path,
    *,
    served_model: str,
    api: str = "chat",
    tokenizer: str | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    concurrency: int = 4,
) -> dict:
    """Run lm-eval `tasks` against `endpoint`; write `out/results.json` and `out/table.md`.

    Raises:
        BenchUnavailable: lm_eval is not installed, or a task's data cannot be loaded.
        UsageError: an unknown task name or `api`.
    """
    if api not in ("chat", "completions"):
        raise UsageError(f"api must be 'chat' or 'completions', got {api!r}")
    # results.json and table.md are replaced: in an earlier run's folder only.
    check_replaceable(out, holds="results.json", what="benchmark results")
    if api == "chat" and (scored := [t for t in tasks if t in LOGLIKELIHOOD_TASKS]):
        raise UsageError(
            f"tasks {scored} are scored by log-likelihood, which chat completions do not give: "
            "run them with --api completions --tokenizer <folder> against a server with "
            "/v1/completions, or leave them out of --tasks"
        )
    require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    unknown = [t for t in tasks if t not in TaskManager().all_tasks]
    if unknown:
        raise UsageError(f"lm-eval has no tasks {unknown} (see `lm-eval ls tasks`)")
    route = "chat/completions" if api == "chat" else "completions"
    model_args = {
        "model": served_model,
        "base_url": f"{base_url(endpoint)}/{route}",
        "num_concurrent": concurrency,
        "max_retries": 3,
        "tokenized_requests": False,
    }
    if tokenizer:
        model_args["tokenizer"] = tokenizer
    try:
        results = lm_eval.simple_evaluate(
            model="local-chat-completions" if api == "chat" else "local-completions",
            model_args=model_args,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            apply_chat_template=api == "chat",
        )
    except OSError as e:  # datasets' offline / not-found errors and connection errors
        raise BenchUnavailable(
            f"lm-eval could not run {list(tasks)} against {endpoint}: {e}. Check that the "
            "endpoint answers and that the task data is in the Hugging Face datasets cache"
        ) from e
    return _write_results(results, tasks, served_model, Path(out))


def _write_results(results: dict, tasks: Sequence[str], served_model: str, out: Path) -> dict:
    """`out/results.json` and the Table 4 row in `out/table.md`."""
    scores = {t: primary_score(t, results["results"].get(t, {})) for t in tasks}
    keep = {k: results.get(k) for k in ("results", "versions", "n-shot", "config")}
    atomic_write_text(out / "results.json", json.dumps(keep, indent=2, default=str))
    values = [v for v in scores.values() if v is not None]
    row = [served_model, *("–" if v is None else f"{v:.2f}" for v in scores.values())]
    # An average over fewer tasks is not the paper's Avg.: none unless every task scored.
    row.append(f"{sum(values) / len(values):.2f}" if values and len(values) == len(tasks) else "–")
    table = markdown_table(["Model", *tasks, "Avg."], [row])
    atomic_write_text(out / "table.md", f"# LLM benchmarks (Table 4 layout)\n\n{table}\n")
    return {"model": served_model, "scores": scores, "out": str(out)}

"""The loop's eval stage judges each model's responses when eval.judge is configured."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from esevo_ray.cli import main
from esevo_ray.config import JUDGE_DIMENSIONS, load_config
from esevo_ray.evaluation.report import write_report
from esevo_ray.layout import RunLayout
from esevo_ray.pipeline.evolve import _evaluate, _judge
from esevo_ray.pipeline.manifest import Manifest
from esevo_ray.pipeline.runner import Runner
from esevo_ray.schema import JUDGE_SCORES, read_table
from tests.evaluation.chat_server import JUDGE_SCORE
from tests.evaluation.conftest import write_config, write_contexts


def test_eval_stage_judges_responses_and_report_shows_table_7(
    ray_local, tiny_model, chat_server, tmp_path
):
    judge = {"base_url": f"{chat_server.url}/v1", "model": "judge", "concurrency": 2,
             "requests_per_second": 1000}  # fmt: skip
    path = write_config(
        tmp_path / "c.yaml", tmp_path / "runs", tiny_model,
        eval={"max_examples": 2, "judge_samples": 0, "judge": judge},
    )  # fmt: skip
    cfg = load_config(path)
    root = tmp_path / "runs" / cfg.name
    write_contexts(root / "data" / "eval_contexts.parquet", 3)
    runner = Runner(Manifest.open(root, cfg))

    _evaluate(cfg, RunLayout(root), tiny_model, 0, None, runner)

    scores = read_table(root / "m0" / "eval" / "judge_scores.parquet", JUDGE_SCORES)
    assert scores.num_rows == 2 * len(JUDGE_DIMENSIONS)
    assert set(scores.column("score").to_pylist()) == {JUDGE_SCORE}
    assert set(scores.column("model").to_pylist()) == {"m0"}
    assert {b["model"] for b in chat_server.bodies} == {"judge"}
    assert len(chat_server.bodies) == 2 * len(JUDGE_DIMENSIONS)
    stages = json.loads((root / "manifest.json").read_text())["stages"]
    assert stages["eval_m0"]["status"] == "done"
    assert stages["judge_m0"]["status"] == "done" and stages["judge_m0"]["missing"] == 0
    assert stages["judge_m0"]["summary"]["m0"]["empathy"]["mean"] == JUDGE_SCORE

    report = write_report(root).read_text()
    assert "## LLM-as-a-judge (Table 7 layout)" in report
    assert (
        "| M0 | " + " | ".join([f"{JUDGE_SCORE:.2f}"] * len(JUDGE_DIMENSIONS)) + " | 0 |" in report
    )

    # Done stages are not rerun: no new judge requests.
    _evaluate(cfg, RunLayout(root), tiny_model, 0, None, Runner(Manifest.open(root, cfg)))
    assert len(chat_server.bodies) == 2 * len(JUDGE_DIMENSIONS)


def test_judge_skipped_with_one_log_line_when_not_configured(tmp_path, caplog):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    root = tmp_path / cfg.name
    root.mkdir()
    runner = Runner(Manifest.open(root, cfg))
    with caplog.at_level(logging.INFO, logger="esevo_ray.pipeline.evolve"):
        _judge(cfg, RunLayout(root), 0, Path("unused"), runner)
    lines = [r.getMessage() for r in caplog.records if r.name == "esevo_ray.pipeline.evolve"]
    assert lines == ["eval.judge.base_url/model not set: LLM-as-a-judge of m0 skipped"]
    assert "judge_m0" not in json.loads((root / "manifest.json").read_text())["stages"]
    assert not (root / "m0").exists()


def _responses(tmp_path):
    import pyarrow as pa

    from esevo_ray.schema import EVAL_RESPONSES

    ctx = [{"role": "user", "content": "I lost my job and I feel useless."}]
    rows = [
        {"dialogue_id": f"d{i}", "turn_index": 1, "model": "m0", "context": ctx,
         "golden": "That sounds hard.", "response": f"I am sorry, tell me more ({i})."}
        for i in range(2)
    ]  # fmt: skip
    path = tmp_path / "responses.parquet"
    pa.parquet.write_table(pa.Table.from_pylist(rows, schema=EVAL_RESPONSES), path)
    return path


@pytest.mark.parametrize("backend, guided", [("hf", True), ("vllm", True), ("hf", False)])
def test_local_engine_judge_scores_or_records_missing(tmp_path, tiny_model, backend, guided):
    from esevo_ray.evaluation.judge import judge_file

    cfg = load_config(
        None,
        [f"eval.judge.backend={backend}", "eval.judge.max_tokens=400", "eval.judge.parse_retries=1",
         "eval.judge.dimensions=[empathy,coherence]", f"eval.judge.guided_json={guided}"],
    ).eval.judge  # fmt: skip
    scores = judge_file(
        _responses(tmp_path),
        tmp_path / "judge.parquet",
        cfg,
        n_samples=None,
        local_model=tiny_model,
    )
    assert scores.num_rows == 2 * 2
    assert set(scores.column("judge_model").to_pylist()) == {tiny_model.name}
    values = scores.column("score").to_pylist()
    if guided:
        # Decoding constrained to the verdict schema (both engines): every score is 1 to 5.
        assert all(v in {1, 2, 3, 4, 5} for v in values), values
        assert all(a == 1 for a in scores.column("attempts").to_pylist())
    else:
        # A random model writes no JSON: each verdict is asked twice, then recorded as missing.
        assert values == [None] * 4
        assert scores.column("attempts").to_pylist() == [2] * 4
        assert all("unparseable" in e for e in scores.column("error").to_pylist())


def test_judge_cli_uses_the_run_model_when_no_judge_model_is_named(tmp_path, tiny_model, capsys):
    # eval.judge.local_model unset: the local judge is the run's model.path, as in the loop.
    code = main(
        ["judge", "--responses", str(_responses(tmp_path)), "--out", str(tmp_path / "j.parquet"),
         f"model.path={tiny_model}", "eval.judge.backend=hf", "eval.judge.max_tokens=400",
         "eval.judge.dimensions=[empathy]"]
    )  # fmt: skip
    assert code == 0
    scores = read_table(tmp_path / "j.parquet", JUDGE_SCORES)
    assert scores.column("judge_model").to_pylist() == [tiny_model.name] * 2
    assert json.loads(capsys.readouterr().out)["verdicts"] == 2


def _local_judge(tiny_model, backend: str, *overrides: str):
    from esevo_ray.evaluation.local_judge import LocalJudge

    cfg = load_config(
        None, [f"eval.judge.backend={backend}", "eval.judge.max_tokens=400", *overrides]
    ).eval.judge
    return LocalJudge(cfg, tiny_model, dtype="float32")


def test_a_local_verdict_is_sampled_the_same_in_any_batch(tiny_model):
    """A rerun asks only for the missing verdicts, in a smaller batch: on vLLM, which seeds
    each request, each is sampled as in the whole run, not by its place in the batch."""
    judge = _local_judge(tiny_model, "vllm")
    ctx = [{"role": "user", "content": "I lost my job and I feel useless."}]
    tasks = [("empathy", ctx, f"I am sorry, tell me more ({i}).") for i in range(3)]
    whole = judge.judge_many(tasks)
    assert judge.judge_many(tasks[2:]) == whole[2:]
    assert len({(v.score, v.explanation) for v in whole}) > 1  # sampled, not one fixed reply


def test_a_long_context_is_cut_to_fit_the_local_judge(tiny_model):
    """The oldest exchanges go until the request and its answer fit max_model_len."""
    judge = _local_judge(tiny_model, "hf", "eval.judge.max_model_len=1200")
    engine = judge._local
    turns = ["I keep going over what happened at work and I cannot sleep at all."] * 40
    ctx = [{"role": ("user", "assistant")[i % 2], "content": f"{i}: {t}"}
           for i, t in enumerate(turns)]  # fmt: skip
    ctx.append({"role": "user", "content": "And now my sister is angry with me too."})
    request = engine._messages("empathy", ctx, "That sounds hard.")
    assert engine.engine.count_tokens(request) <= 1200 - 400
    text = request[-1]["content"]
    assert "And now my sister is angry with me too." in text and "0: I keep" not in text


def test_a_request_too_long_even_with_its_last_turn_is_named(tiny_model, caplog):
    """The last turn always stays: when even it does not fit, the verdict is made on what the
    engine keeps, and the judge says how many requests that was and what to raise."""
    judge = _local_judge(tiny_model, "hf", "eval.judge.max_model_len=1200")
    long = [{"role": "user", "content": "I cannot sleep. " * 300}]
    short = [{"role": "user", "content": "I cannot sleep."}]
    tasks = [("empathy", ctx, "That sounds hard.") for ctx in (long, short, long)]
    with caplog.at_level("WARNING", logger="esevo_ray.evaluation.local_judge"):
        judge.judge_many(tasks)
    assert "2 of 3 requests exceed eval.judge.max_model_len (1200)" in caplog.text

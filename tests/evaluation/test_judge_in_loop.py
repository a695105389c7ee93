"""The loop's eval stage judges each model's responses when eval.judge is configured."""

from __future__ import annotations

import json
import logging

from esevo_ray.config import JUDGE_DIMENSIONS, load_config
from esevo_ray.evaluation.report import write_report
from esevo_ray.pipeline.evolve import Runner, _evaluate, _judge
from esevo_ray.pipeline.manifest import Manifest
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

    _evaluate(cfg, root, tiny_model, 0, None, runner)

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
    _evaluate(cfg, root, tiny_model, 0, None, Runner(Manifest.open(root, cfg)))
    assert len(chat_server.bodies) == 2 * len(JUDGE_DIMENSIONS)


def test_judge_skipped_with_one_log_line_when_not_configured(tmp_path, caplog):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    root = tmp_path / cfg.name
    root.mkdir()
    runner = Runner(Manifest.open(root, cfg))
    with caplog.at_level(logging.INFO, logger="esevo_ray.pipeline.evolve"):
        _judge(cfg, root / "m0" / "eval", "m0", runner)
    lines = [r.getMessage() for r in caplog.records if r.name == "esevo_ray.pipeline.evolve"]
    assert lines == ["eval.judge.base_url/model not set: LLM-as-a-judge of m0 skipped"]
    assert "judge_m0" not in json.loads((root / "manifest.json").read_text())["stages"]
    assert not (root / "m0").exists()

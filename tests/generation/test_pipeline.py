"""The generation pipeline end to end on the tiny model: both engines, resume, a killed actor."""

import os
import signal
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from esevo_ray import schema
from esevo_ray.data import load_extes
from esevo_ray.data.dialogue import context_rows, normalised
from esevo_ray.errors import UsageError
from esevo_ray.generation.engines import HfEngine
from esevo_ray.generation.pairs import make_pairs
from esevo_ray.generation.pipeline import generate_pairs
from esevo_ray.models import adapter_hash, build_tiny_adapter
from esevo_ray.parts import PART_GLOB, PartsConflict

from ..conftest import ASSETS
from .conftest import gen_cfg


def _cfg(engine="hf", **extra):
    return gen_cfg(**{
        "generation.engine": engine, "generation.batch_size": 2,
        "generation.max_model_len": 2048, "generation.max_attempts": 2, **extra,
    })  # fmt: skip


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    rows = []
    for copy in range(3):
        for d in load_extes(ASSETS / "extes_sample.json").items:
            d = normalised(d)
            d.dialogue_id = f"{d.dialogue_id}-{copy}"
            rows += context_rows(d, drop_greetings=False)
    path = tmp_path_factory.mktemp("ctx") / "seed_contexts.parquet"
    pa.parquet.write_table(
        schema.conform(pa.Table.from_pylist(rows, schema=schema.CONTEXTS), schema.CONTEXTS), path
    )
    return path, len(rows)


def _check_pairs(out, n):
    df = pl.read_parquet(out / PART_GLOB)
    assert df.height == n
    assert df.select("dialogue_id", "turn_index", "iteration").unique().height == n
    assert set(df["chosen_source"]) <= set(schema.CHOSEN_SOURCES)
    assert schema.read_table(out, schema.PAIRS).num_rows == n
    return df


def test_hf_engine_pipeline_writes_valid_pairs(ray_local, tiny_model, contexts, tmp_path):
    path, n = contexts
    manifest = generate_pairs(_cfg(), path, tmp_path / "pairs", model_path=tiny_model, iteration=1)
    df = _check_pairs(tmp_path / "pairs", n)
    assert manifest["rows"] == n and sum(manifest["chosen_source"].values()) == n
    row = df.row(0, named=True)
    assert row["prompt"][0]["role"] == "system" and row["prompt"][-1]["role"] == "user"
    assert row["rejected"][0]["role"] == "assistant" and row["rejected_tokens"] > 0
    # A random model never emits valid JSON: every row must record the golden fallback.
    assert (df["chosen_source"] == "golden_parse_failure").all()
    assert (df["attempts"] == 2).all()
    golden = [c[0]["content"] for c in df["chosen"]]
    assert golden == df["golden"].to_list()


def test_vllm_engine_pipeline_writes_valid_pairs(ray_local, tiny_model, contexts, tmp_path):
    path, n = contexts
    manifest = generate_pairs(
        _cfg("vllm", **{"generation.max_contexts": 6}),
        path,
        tmp_path / "pairs",
        model_path=tiny_model,
    )
    df = _check_pairs(tmp_path / "pairs", 6)
    assert manifest["engine"] == "vllm"
    assert (df["prompt_tokens"] > 20).all() and (df["reflection_tokens"] > 0).all()


def test_rerun_skips_finished_work_and_fills_gaps(ray_local, tiny_model, contexts, tmp_path):
    path, n = contexts
    out = tmp_path / "pairs"
    generate_pairs(_cfg(), path, out, model_path=tiny_model)
    parts = sorted(out.glob(PART_GLOB))
    victim, kept = parts[0], parts[1:]
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    victim.unlink()
    generate_pairs(_cfg(), path, out, model_path=tiny_model)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in kept), "finished parts were rewritten"
    _check_pairs(out, n)


def test_a_folder_of_another_generator_is_not_resumed(
    ray_local, tiny_model, contexts, tmp_path, monkeypatch
):
    """Resuming by key alone would keep M_a's pairs and label them as M_b's."""
    path, _ = contexts
    cfg, out = _cfg(**{"generation.max_contexts": 2}), tmp_path / "pairs"
    a = build_tiny_adapter(tiny_model, tmp_path / "a", 1)
    b = build_tiny_adapter(tiny_model, tmp_path / "b", 2)
    generate_pairs(cfg, path, out, model_path=tiny_model, adapter=a)
    parts = {p: p.stat().st_mtime_ns for p in out.glob(PART_GLOB)}
    with pytest.raises(PartsConflict, match=rf"model: '{tiny_model.name}\+{adapter_hash(a)}'"):
        generate_pairs(cfg, path, out, model_path=tiny_model, adapter=b)
    with pytest.raises(PartsConflict, match="generation.reflection_decoding.max_new_tokens: 12"):
        generate_pairs(
            _cfg(**{"generation.max_contexts": 2,
                    "generation.reflection_decoding.max_new_tokens": 20}),
            path, out, model_path=tiny_model, adapter=a,
        )  # fmt: skip
    # Another base model of the same folder name and shape: the name alone resumed one's rows.
    from esevo_ray.models import build_tiny_model

    other = build_tiny_model(tmp_path / "elsewhere" / tiny_model.name, seed=7)
    with pytest.raises(PartsConflict, match=r"model_weights: '[0-9a-f]{16}' -> '[0-9a-f]{16}'"):
        generate_pairs(cfg, path, out, model_path=other, adapter=a)
    # The same model read from elsewhere (another home, another mount) resumes.
    import shutil

    same = shutil.copytree(tiny_model, tmp_path / "mount" / tiny_model.name)
    assert generate_pairs(cfg, path, out, model_path=same, adapter=a)["rows"] == 2
    # An edited refinement prompt is another generator too.
    from esevo_ray import prompts

    refine = prompts.REFINE_PROMPT
    monkeypatch.setattr(prompts, "REFINE_PROMPT", refine.replace("short!!!", "short!"))
    with pytest.raises(PartsConflict, match="prompts: '[0-9a-f]{16}' -> '[0-9a-f]{16}'"):
        generate_pairs(cfg, path, out, model_path=tiny_model, adapter=a)
    monkeypatch.setattr(prompts, "REFINE_PROMPT", refine)
    assert {p: p.stat().st_mtime_ns for p in out.glob(PART_GLOB)} == parts
    # The same generator resumes, and more contexts are added to the same folder.
    more = _cfg(**{"generation.max_contexts": 4, "generation.num_actors": 1})
    manifest = generate_pairs(more, path, out, model_path=tiny_model, adapter=a)
    assert manifest["rows"] == 4 and manifest["adapter_hash"] == adapter_hash(a)
    # Fewer contexts than the folder holds: DPO would read the other two rows as well.
    with pytest.raises(PartsConflict, match="holds rows of 2 contexts not asked for"):
        generate_pairs(cfg, path, out, model_path=tiny_model, adapter=a)
    assert (out / "manifest.json").exists(), "a refused resume lost the finished folder's record"
    # Stopped while adding contexts, the folder is no longer complete: DPO must not take it.
    from esevo_ray.data.dialogue import DataError
    from esevo_ray.generation import pipeline
    from esevo_ray.training.dpo import dpo_job

    def stopped(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_actor_dataset", stopped)
    with pytest.raises(KeyboardInterrupt):
        generate_pairs(_cfg(**{"generation.max_contexts": 6}), path, out, model_path=tiny_model,
                       adapter=a)  # fmt: skip
    with pytest.raises(DataError, match="its generation has not finished"):
        dpo_job(more, out, a)


def test_an_unrelated_folder_is_refused_before_anything_is_written(tiny_model, contexts, tmp_path):
    """--out naming a run root or any other folder: claiming it would drop its manifest.json."""
    path, _ = contexts
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"stages": {}}')
    with pytest.raises(UsageError, match="is not a generation parts folder"):
        generate_pairs(_cfg(), path, run, model_path=tiny_model)
    assert [p.name for p in run.iterdir()] == ["manifest.json"]


def _kill_one_generator_actor(out, killed):
    """SIGKILL one generation actor process once the first batch has been written."""
    import psutil

    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(PART_GLOB)):
        time.sleep(0.1)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if "MapBatches(Generator)" in " ".join(proc.info["cmdline"] or []):
            os.kill(proc.info["pid"], signal.SIGKILL)
            killed.append(proc.info["pid"])
            return


def test_killed_actor_loses_and_duplicates_nothing(ray_local, tiny_model, contexts, tmp_path):
    path, n = contexts
    out = tmp_path / "pairs"
    out.mkdir()
    killed = []
    watcher = threading.Thread(target=_kill_one_generator_actor, args=(out, killed))
    watcher.start()
    generate_pairs(_cfg(**{"generation.batch_size": 1}), path, out, model_path=tiny_model)
    watcher.join()
    assert killed, "no generation actor was killed"
    _check_pairs(out, n)


@pytest.mark.timeout(300)
def test_a_batch_that_kills_its_actor_every_time_fails_the_stage(tiny_model, contexts, tmp_path):
    """Ray Data retries an actor task forever by default: a batch whose every attempt kills
    the actor (out of memory, a native crash) reloaded the engine until Ray's 30-minute
    no-progress guard. Now it fails after BATCH_RETRIES retries. In its own process and Ray
    instance (see fatal_batch.py)."""
    from tests.ray_processes import result_line

    path, _ = contexts
    script = Path(__file__).with_name("fatal_batch.py")
    result = result_line(script, tiny_model, path, tmp_path / "out", cwd=tmp_path)
    assert result != "RESULT none", "the stage did not fail"


def test_generation_uses_exactly_m_t(tiny_model, contexts, tmp_path):
    path, _ = contexts
    rows = pa.parquet.read_table(path).slice(0, 3).to_pylist()
    cfg = _cfg().generation
    results = {}
    for name, seed in [("a", 1), ("b", 2)]:
        adapter = build_tiny_adapter(tiny_model, tmp_path / name, seed)
        pairs = make_pairs(HfEngine(tiny_model, adapter), cfg, rows, iteration=1)
        assert {p["adapter_hash"] for p in pairs} == {adapter_hash(adapter)}
        assert {p["generator_model"] for p in pairs} == {
            f"{tiny_model.name}+{adapter_hash(adapter)}"
        }
        results[name] = [p["rejected"][0]["content"] for p in pairs]
    base = [
        p["rejected"][0]["content"]
        for p in make_pairs(HfEngine(tiny_model), cfg, rows, iteration=1)
    ]
    assert results["a"] != results["b"] and results["a"] != base
    # Same model and seeds: the same pairs again.
    again = make_pairs(HfEngine(tiny_model, tmp_path / "a"), cfg, rows, iteration=1)
    assert [p["rejected"][0]["content"] for p in again] == results["a"]


def test_eval_responses_cover_every_context_once(ray_local, tiny_model, contexts, tmp_path):
    from esevo_ray.evaluation.responses import generate_responses

    path, n = contexts
    # One actor holding every CPU of the cluster must not starve the pipeline of tasks.
    cfg = _cfg(**{"eval.max_examples": 5, "generation.cpus_per_actor": 2})
    out = generate_responses(cfg, path, tmp_path / "eval", model_path=tiny_model, model_name="m0")
    table = schema.read_table(out, schema.EVAL_RESPONSES)
    assert table.num_rows == 5 and set(table["model"].to_pylist()) == {"m0"}
    expected = pa.parquet.read_table(path).slice(0, 5)

    def keys(t):
        return sorted(zip(t["dialogue_id"].to_pylist(), t["turn_index"].to_pylist(), strict=True))  # noqa: E731

    assert keys(table) == keys(expected)
    assert table["golden"].to_pylist() != table["response"].to_pylist()


def test_each_batch_reaches_the_driver_as_soon_as_it_is_done(ray_local, tmp_path):
    """Ray Data's prefetch held a finished batch back until the next one was done: progress
    came a batch late, and a stage of two batches logged nothing until it ended. Here the
    second batch waits (20 s at most) for the driver to have the first."""
    import time

    import ray

    from esevo_ray.generation.pipeline import finished_batches

    seen = tmp_path / "first-batch-seen"

    def work(batch: dict) -> dict:
        waited = True
        if batch["i"][0] == 1:
            deadline = time.monotonic() + 20
            while not seen.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            waited = seen.exists()
        return {**batch, "driver_had_the_first": [waited]}

    items = ray.data.from_items([{"i": 0}, {"i": 1}], override_num_blocks=2)
    batches = []
    for batch in finished_batches(items.map_batches(work, batch_size=None)):
        seen.touch()
        batches.append(batch)
    assert sorted(b["i"][0].as_py() for b in batches) == [0, 1]
    assert all(b["driver_had_the_first"][0].as_py() for b in batches)

"""The stage runner: finished stages are reused only while their inputs are unchanged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from esevo_ray.config import load_config
from esevo_ray.models import build_tiny_adapter
from esevo_ray.pipeline.manifest import Manifest
from esevo_ray.pipeline.runner import Runner, fingerprint


def _loop(root, calls: list[str], source: str) -> None:
    """A small graph: `made` <- `scored` <- `summary`, and `other` on its own input."""
    runner = Runner(Manifest.open(root, load_config(None, ["name=t"])))
    made, scored, other = root / "made.txt", root / "scored", root / "other.txt"

    def write(name, path, text):
        def fn():
            calls.append(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

        return fn

    (root / "source.txt").write_text(source)
    runner.stage("made", inputs={"src": root / "source.txt"}, outputs={"out": made},
                 fn=write("made", made, source.upper()))  # fmt: skip
    runner.stage("other", inputs={"src": root / "fixed.txt"}, outputs={"out": other},
                 fn=write("other", other, "x"))  # fmt: skip
    # `scored` resumes from parts in its folder, as the generation stages do.
    runner.stage("scored", inputs={"made": made}, outputs={"out": scored / "manifest.json"},
                 fn=write("scored", scored / "manifest.json", made.read_text()),
                 folder=scored)  # fmt: skip
    runner.stage("summary", inputs={"scored": scored, "other": other},
                 outputs={"out": root / "summary.txt"},
                 fn=write("summary", root / "summary.txt", "s"))  # fmt: skip


def test_a_changed_input_reruns_what_depends_on_it_and_keeps_the_old_outputs(tmp_path, caplog):
    (tmp_path / "fixed.txt").write_text("fixed")
    calls: list[str] = []
    _loop(tmp_path, calls, "first")
    assert calls == ["made", "other", "scored", "summary"]

    calls.clear()
    _loop(tmp_path, calls, "first")
    assert calls == [], "a rerun with the same inputs redid finished stages"

    # `made` is redone on another source (as `esevo dpo` retrains an adapter in place).
    calls.clear()
    (tmp_path / "made.txt").unlink()
    with caplog.at_level(logging.WARNING, logger="esevo_ray.pipeline.runner"):
        _loop(tmp_path, calls, "second")
    assert calls == ["made", "scored", "summary"], "the independent stage was redone"
    assert (tmp_path / "scored" / "manifest.json").read_text() == "SECOND"
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("scored.stale-")]
    assert len(stale) == 1 and (stale[0] / "manifest.json").read_text() == "FIRST"
    assert [p.name.startswith("summary.txt.stale-") for p in tmp_path.iterdir()].count(True) == 1
    assert "stage scored: its input made changed since it ran" in caplog.text

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [r["stage"] for r in manifest["retired"]] == ["scored", "summary"]
    assert manifest["retired"][0]["moved_to"] == [str(stale[0])]
    assert all(s["status"] == "done" for s in manifest["stages"].values())


def test_while_a_stage_runs_again_what_is_built_on_it_is_marked_outdated(tmp_path):
    """A redo stopped part-way leaves the stages that read its old outputs marked, not
    "done" as if current; a redo whose outputs come out the same clears the marks."""
    (tmp_path / "fixed.txt").write_text("fixed")
    _loop(tmp_path, [], "first")
    stages = lambda: json.loads((tmp_path / "manifest.json").read_text())["stages"]  # noqa: E731

    (tmp_path / "made.txt").unlink()  # `made` runs again, and is stopped part-way
    runner = Runner(Manifest.open(tmp_path, load_config(None, ["name=t"])))
    with pytest.raises(KeyboardInterrupt):
        runner.stage("made", inputs={"src": tmp_path / "source.txt"},
                     outputs={"out": tmp_path / "made.txt"}, fn=_interrupt)  # fmt: skip
    marks = {name: s.get("outdated_by") for name, s in stages().items()}
    assert marks == {"made": None, "other": None, "scored": "made", "summary": "made"}
    assert stages()["scored"]["status"] == "done", "the runner decides by fingerprints"

    calls: list[str] = []
    _loop(tmp_path, calls, "first")  # the same source: `made` writes what it wrote before
    assert calls == ["made"], "a stage was redone on unchanged inputs"
    assert all("outdated_by" not in s and s["status"] == "done" for s in stages().values())


def test_a_stage_runs_again_when_the_settings_it_reads_change(tmp_path, caplog):
    runner = Runner(Manifest.open(tmp_path, load_config(None, ["name=t"])))
    (tmp_path / "in.txt").write_text("x")
    calls: list[dict] = []

    def judge(settings: dict) -> None:
        def fn():
            calls.append(settings)
            (tmp_path / "scores.txt").write_text(str(settings))

        runner.stage("judge", inputs={"in": tmp_path / "in.txt"},
                     outputs={"out": tmp_path / "scores.txt"}, fn=fn, settings=settings)  # fmt: skip

    judge({"eval.judge.top_k": 50})
    judge({"eval.judge.top_k": 50})
    assert calls == [{"eval.judge.top_k": 50}], "a stage was redone under the same settings"
    with caplog.at_level(logging.WARNING, logger="esevo_ray.pipeline.runner"):
        judge({"eval.judge.top_k": None})
    assert calls == [{"eval.judge.top_k": 50}, {"eval.judge.top_k": None}]
    assert "stage judge: its input settings changed since it ran" in caplog.text
    (aside,) = tmp_path.glob("scores.txt.stale-*")
    assert aside.read_text() == "{'eval.judge.top_k': 50}"


def test_a_stage_recorded_before_it_had_settings_runs_again_when_one_changed(tmp_path):
    """Its record has no settings to compare: the keys changed as the run was opened say."""
    calls: list[str] = []

    def judge(root, cfg_overrides: list[str], settings: dict | None) -> None:
        (root / "in.txt").write_text("x")
        runner = Runner(Manifest.open(root, load_config(None, ["name=t", *cfg_overrides])))

        def fn():
            calls.append(f"{root.name}: {settings}")
            (root / "scores.txt").write_text(str(settings))

        runner.stage("judge", inputs={"in": root / "in.txt"},
                     outputs={"out": root / "scores.txt"}, fn=fn, settings=settings)  # fmt: skip

    for name, changed in (("other_keys", "eval.judge.concurrency=8"),
                          ("its_key", "eval.judge.model=other")):  # fmt: skip
        (tmp_path / name).mkdir()
        judge(tmp_path / name, [], None)  # as the stage was recorded before it had settings
        judge(tmp_path / name, [changed, "evolve.iterations=3"], {"eval.judge.model": "m"})
    assert calls == ["other_keys: None", "its_key: None", "its_key: {'eval.judge.model': 'm'}"]

    # The run that changed the key stopped before the stage came round: the next run, which
    # changes nothing, still runs it again (the change is in the manifest's config_changes).
    (tmp_path / "stopped").mkdir()
    judge(tmp_path / "stopped", [], None)
    Manifest.open(tmp_path / "stopped", load_config(None, ["name=t", "eval.judge.model=other"]))
    judge(tmp_path / "stopped", ["eval.judge.model=other"], {"eval.judge.model": "m"})
    assert calls[-1] == "stopped: {'eval.judge.model': 'm'}"


def _interrupt():
    raise KeyboardInterrupt


def test_a_stage_stopped_part_way_does_not_resume_on_changed_inputs(tmp_path, caplog):
    """Parts written from the old input would be kept and mixed with the new input's."""
    runner = Runner(Manifest.open(tmp_path, load_config(None, ["name=t"])))
    source, folder = tmp_path / "source.txt", tmp_path / "parts"

    def stopped():
        folder.mkdir()
        (folder / "part-1").write_text(source.read_text())
        raise KeyboardInterrupt

    source.write_text("v1")
    inputs, outputs = {"src": source}, {"out": folder / "manifest.json"}
    with pytest.raises(KeyboardInterrupt):
        runner.stage("gen", inputs=inputs, outputs=outputs, fn=stopped, folder=folder)
    resumed = lambda: sorted(p.read_text() for p in folder.iterdir())  # noqa: E731
    source.write_text("v2")

    def finished():
        folder.mkdir()
        (folder / "manifest.json").write_text(source.read_text())

    with caplog.at_level(logging.WARNING, logger="esevo_ray.pipeline.runner"):
        runner.stage("gen", inputs=inputs, outputs=outputs, fn=finished, folder=folder)
    assert resumed() == ["v2"], "the new run kept a part made from the old input"
    assert "stage gen: its input src changed since it started" in caplog.text
    (stale,) = tmp_path.glob("parts.stale-*")
    assert (stale / "part-1").read_text() == "v1", "the old part was not kept aside"


def test_an_adapter_is_fingerprinted_by_its_weights(tiny_model, tmp_path):
    a = build_tiny_adapter(tiny_model, tmp_path / "a", 1)
    assert fingerprint(a) == fingerprint(a)
    (a / "README.md").write_text("notes do not change the model")
    before = fingerprint(a)
    assert before == fingerprint(build_tiny_adapter(tiny_model, tmp_path / "a2", 1))
    assert before != fingerprint(build_tiny_adapter(tiny_model, tmp_path / "a", 2))
    assert fingerprint(tmp_path / "missing") is None


def test_a_model_folder_changed_in_place_runs_its_stages_again(tiny_model, tmp_path, caplog):
    """A base model had no fingerprint: converted again with another tokenizer (as `esevo
    model prepare` does after a conversion fix), every stage built on it was reused. A
    record made before is taken as the folder is now, with a warning."""
    import shutil

    base = Path(shutil.copytree(tiny_model, tmp_path / "base"))
    calls: list[str] = []

    def sft() -> None:
        runner = Runner(Manifest.open(tmp_path, load_config(None, ["name=t"])))
        out = tmp_path / "adapter.txt"

        def train() -> None:
            calls.append("sft")
            out.write_text("a")

        runner.stage("sft_m0", inputs={"base": base}, outputs={"out": out}, fn=train)

    sft()
    sft()
    assert calls == ["sft"]
    tokenizer = base / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"Digits"', '"Digits" ', 1) + " ")
    sft()
    assert calls == ["sft", "sft"], "a tokenizer changed in place went unseen"

    manifest = tmp_path / "manifest.json"  # as recorded before model folders had fingerprints
    data = json.loads(manifest.read_text())
    data["stages"]["sft_m0"]["input_fingerprints"]["base"] = None
    manifest.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="esevo_ray.pipeline.runner"):
        sft()
    assert (
        calls == ["sft", "sft"] and "recorded before model folders had fingerprints" in caplog.text
    )
    recorded = json.loads(manifest.read_text())["stages"]["sft_m0"]["input_fingerprints"]
    assert recorded["base"] == fingerprint(base)
    (base / "config.json").write_text((base / "config.json").read_text() + "\n")
    sft()
    assert calls == ["sft", "sft", "sft"]


def test_a_run_continued_under_another_spelling_of_output_dir_reuses_its_stages(
    tmp_path, monkeypatch
):
    """A run begun with output_dir=runs and continued with its absolute path (a Ray job runs
    in another directory) must not train its finished stages again."""
    monkeypatch.chdir(tmp_path)
    calls: list[str] = []

    def run(output_dir: str) -> None:
        cfg = load_config(None, ["name=t", f"output_dir={output_dir}"])
        root = Path(cfg.output_dir) / cfg.name
        root.mkdir(parents=True, exist_ok=True)
        out = root / "m0" / "adapter.txt"
        (tmp_path / "src.txt").write_text("same")

        def train():
            calls.append(output_dir)
            out.parent.mkdir(exist_ok=True)
            out.write_text("weights")

        Runner(Manifest.open(root, cfg)).stage(
            "sft_m0", inputs={"src": tmp_path / "src.txt"}, outputs={"adapter": out}, fn=train
        )

    run("runs")
    monkeypatch.chdir(tmp_path / "runs")  # elsewhere: the recorded relative path is wrong here
    run(str(tmp_path / "runs"))
    assert calls == ["runs"], "a finished stage ran again"


def test_a_folder_is_its_data_not_its_manifest_and_older_records_still_match(tmp_path):
    """A pairs folder written again with the same parts (`esevo generate` on a finished
    folder rewrites its manifest's seconds and placement) must not retrain what read it; a
    record made when folders were fingerprinted by their manifest still matches."""
    from esevo_ray.pipeline.runner import legacy_fingerprint

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "part-1.parquet").write_bytes(b"rows")
    (pairs / "manifest.json").write_text('{"rows": 1, "seconds": 12.5}')
    calls: list[str] = []

    def dpo():
        runner = Runner(Manifest.open(tmp_path, load_config(None, ["name=t"])))
        out = tmp_path / "adapter.txt"

        def train():
            calls.append("dpo")
            out.write_text("a")

        runner.stage("dpo", inputs={"pairs": pairs}, outputs={"out": out}, fn=train)

    dpo()
    (pairs / "manifest.json").write_text('{"rows": 1, "seconds": 0.0}')
    dpo()
    assert calls == ["dpo"], "a rewritten manifest retrained the stage"
    (pairs / "part-2.parquet").write_bytes(b"more rows")
    dpo()
    assert calls == ["dpo", "dpo"]

    record = json.loads((tmp_path / "manifest.json").read_text())
    record["stages"]["dpo"]["input_fingerprints"]["pairs"] = legacy_fingerprint(pairs)
    (tmp_path / "manifest.json").write_text(json.dumps(record))
    dpo()
    assert calls == ["dpo", "dpo"], "an older record of the same folder retrained the stage"


def test_an_input_added_to_a_stage_since_it_ran_is_watched_from_then_on(tmp_path):
    """A run made before the data stage read its raw files: reused as it is, and a raw file
    changed afterwards prepares the data again."""
    raw, out = tmp_path / "esconv.json", tmp_path / "data.txt"
    raw.write_text("v1")
    calls: list[str] = []

    def data(inputs: dict) -> None:
        runner = Runner(Manifest.open(tmp_path, load_config(None, ["name=t"])))

        def prepare():
            calls.append("data")
            out.write_text("prepared")

        runner.stage("data", inputs=inputs, outputs={"out": out}, fn=prepare)

    data({"data_dir": tmp_path / "raw-dir"})  # as older versions recorded it
    data({"data_dir": tmp_path / "raw-dir", "esconv": raw})
    assert calls == ["data"], "a run of the older version was prepared again"
    raw.write_text("v2")
    data({"data_dir": tmp_path / "raw-dir", "esconv": raw})
    assert calls == ["data", "data"], "a raw file changed after the upgrade went unseen"


def test_an_input_changed_while_the_stage_ran_is_seen_by_the_next_run(tmp_path):
    """M0 retrained in another shell while M1's pairs are made from the old M0: the record
    must say what the stage read, so the next run makes the pairs again."""
    source = tmp_path / "m0.txt"
    source.write_text("old")
    calls: list[str] = []

    def pairs(during=None):
        runner = Runner(Manifest.open(tmp_path, load_config(None, ["name=t"])))
        out = tmp_path / "pairs.txt"

        def fn():
            calls.append(source.read_text())
            out.write_text(source.read_text())
            if during:
                source.write_text(during)

        runner.stage("pairs", inputs={"m0": source}, outputs={"out": out}, fn=fn)

    pairs(during="new")
    pairs()
    assert calls == ["old", "new"]


def test_a_file_input_is_fingerprinted_as_manifests_have_always_recorded_it(tmp_path):
    """A run recorded by an earlier version must not redo its stages: a file's fingerprint
    stays the hash of its bytes."""
    import hashlib

    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"bleu_2": 1.0}')
    assert fingerprint(metrics) == hashlib.sha256(metrics.read_bytes()).hexdigest()[:16]


def test_a_database_is_read_with_its_write_ahead_log(tmp_path):
    db = tmp_path / "db.sqlite"
    db.write_bytes(b"pages")
    before = fingerprint(db)
    (tmp_path / "db.sqlite-wal").write_bytes(b"a rating not yet checkpointed")
    assert fingerprint(db) != before


def test_outputs_rewritten_by_other_means_run_the_stage_again(tmp_path, caplog):
    """`esevo judge` with other settings rewrote a run's judge file, and the loop reused it
    as its own judge's verdicts."""
    calls: list[str] = []
    out = tmp_path / "scores.txt"
    (tmp_path / "in.txt").write_text("responses")

    def judge(current=None) -> None:
        runner = Runner(Manifest.open(tmp_path, load_config(None, ["name=t"])))

        def fn() -> None:
            calls.append("judge")
            out.write_text("temperature 0.8")

        runner.stage("judge_m0", inputs={"responses": tmp_path / "in.txt"},
                     outputs={"out": out}, fn=fn, current=current)  # fmt: skip

    as_configured = lambda: out.read_text() == "temperature 0.8"  # noqa: E731
    judge(as_configured)
    judge(as_configured)
    assert calls == ["judge"]
    out.write_text("temperature 0.1")  # rewritten by `esevo judge` with other settings
    with caplog.at_level(logging.WARNING, logger="esevo_ray.pipeline.runner"):
        judge(as_configured)
    assert calls == ["judge", "judge"] and "rewritten since it ran" in caplog.text
    assert out.read_text() == "temperature 0.8"


def test_a_stage_that_reconciles_its_outputs_finds_them_in_place(tmp_path):
    """The judge keeps the verdicts still valid when its settings change (more samples): the
    runner moved its file aside first, and every verdict was asked for again."""
    calls: list[str] = []
    out = tmp_path / "scores.txt"
    (tmp_path / "in.txt").write_text("responses")

    def judge(samples: int) -> None:
        runner = Runner(Manifest.open(tmp_path, load_config(None, ["name=t"])))

        def fn() -> None:
            calls.append(out.read_text() if out.exists() else "")
            out.write_text(f"{samples} verdicts")

        runner.stage("judge_m0", inputs={"responses": tmp_path / "in.txt"},
                     outputs={"out": out}, fn=fn, settings={"eval.judge_samples": samples},
                     reconciles=True)  # fmt: skip

    judge(2)
    judge(4)
    assert calls == ["", "2 verdicts"] and out.read_text() == "4 verdicts"
    assert not [p for p in tmp_path.iterdir() if ".stale-" in p.name]


def test_a_dpo_lora_the_loop_never_uses_is_named_at_its_start(caplog):
    """Under evolve.init: sft each DPO continues M^t's adapter: dpo.lora.r=64 was recorded
    and ignored, said (for r and alpha only) after SFT and the first pairs."""
    from esevo_ray.pipeline.evolve import warn_unused_dpo_lora

    with caplog.at_level(logging.WARNING):
        warn_unused_dpo_lora(load_config(None, ["dpo.lora.r=64", "dpo.lora.dropout=0.2"]))
        warn_unused_dpo_lora(load_config(None, ["evolve.init=base", "dpo.lora.r=64"]))
        warn_unused_dpo_lora(load_config(None, []))
    assert caplog.text.count("is not used") == 1
    assert "dpo.lora (r=64, dropout=0.2) is not used: under evolve.init: sft" in caplog.text


def test_contexts_longer_than_dpo_holds_are_named_at_the_loops_start():
    """cpu-demo made pairs from contexts of 768 tokens and trained DPO at 512: 6 of its 16
    pairs lost the turns their rejected response was generated from, and nothing said so."""
    from esevo_ray.pipeline.evolve import cut_dpo_contexts

    why = cut_dpo_contexts(load_config(None, ["generation.max_context_tokens=768",
                                              "generation.decoding.max_new_tokens=48",
                                              "dpo.max_length=512"]))  # fmt: skip
    assert why is not None and "exceed dpo.max_length (512)" in why
    assert "raise dpo.max_length to 816, or lower generation.max_context_tokens to 464" in why
    assert (
        cut_dpo_contexts(load_config(None, ["dpo.max_length=512", "evolve.iterations=0"])) is None
    )
    assert cut_dpo_contexts(load_config(None, [])) is None  # the defaults hold a pair whole
    for path in sorted(Path(__file__).parents[2].glob("configs/*.yaml")):
        assert cut_dpo_contexts(load_config(path)) is None, path.name


def test_a_bertscore_layer_the_encoder_lacks_stops_the_loop_before_any_stage(tmp_path):
    """Said at M0's evaluation, after data preparation and SFT."""
    from esevo_ray.config import ConfigError
    from esevo_ray.pipeline.evolve import evolve

    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}", "eval.bertscore_num_layers=9"])
    with pytest.raises(ConfigError, match="bertscore_num_layers is 9, and the encoder"):
        evolve(cfg)
    assert not (tmp_path / "runs").exists()

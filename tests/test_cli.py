"""The `esevo` command line: paths checked before any work, user errors as one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esevo_ray import schema
from esevo_ray.cli import main
from esevo_ray.schema import EVAL_RESPONSES


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\n")
    return str(path)


def test_eval_refuses_a_folder_without_adapter_files(tmp_path, config, capsys):
    (tmp_path / "not-an-adapter").mkdir()
    (tmp_path / "contexts.parquet").write_bytes(b"")
    argv = ["eval", "--config", config, "--adapter", str(tmp_path / "not-an-adapter")]
    argv += ["--contexts", str(tmp_path / "contexts.parquet")]
    assert main(argv) == 2
    assert "not a LoRA adapter folder" in _error(capsys)


def test_missing_inputs_name_the_flag_and_what_to_run(config, capsys):
    assert main(["generate", "--config", config]) == 2
    err = _error(capsys)
    assert err.startswith("esevo: error: --contexts") and "esevo data prepare" in err
    assert main(["dpo", "--config", config, "--iteration", "2"]) == 2
    assert "--pairs" in (err := _error(capsys)) and "--iteration 2" in err


def test_the_command_to_run_keeps_the_overrides_and_a_given_path_gets_none(
    tmp_path, config, capsys
):
    """The hint makes the input where this command looks: same config, same overrides."""
    elsewhere = f"output_dir={tmp_path / 'other runs'}"
    assert main(["sft", "--config", config, elsewhere, "dpo.beta=0.2"]) == 2
    err = _error(capsys)
    assert f"--data {tmp_path / 'other runs'}/t/data: no prepared data folder" in err
    assert f"run `esevo data prepare --config {config} '{elsewhere}' dpo.beta=0.2`" in err
    # A path the user gave is theirs: no command would write it.
    assert main(["eval", "--config", config, "--contexts", str(tmp_path / "no.parquet")]) == 2
    assert _error(capsys).endswith("no.parquet: no evaluation contexts there")


def test_inspect_pairs_says_what_is_wrong_with_the_path(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["inspect", "pairs", str(tmp_path / "empty")]) == 2
    assert "no Parquet files in" in _error(capsys)
    (tmp_path / "notes.txt").write_text("not parquet")
    assert main(["inspect", "pairs", str(tmp_path / "notes.txt")]) == 2
    assert "not a Parquet file" in _error(capsys)
    assert main(["inspect", "pairs", str(tmp_path / "absent")]) == 2
    assert "no pairs folder or file there" in _error(capsys)


def test_a_bug_keeps_its_traceback(monkeypatch):
    # A plain ValueError from inside the library is not a user error: it must not be
    # reduced to one line.
    def broken(**_):
        raise ValueError("internal invariant broken")

    monkeypatch.setattr("esevo_ray.models.prepare_default_model", broken)
    with pytest.raises(ValueError, match="internal invariant broken"):
        main(["model", "prepare"])


@pytest.mark.parametrize(
    "argv, says",
    [
        (["eval", "--model", "http://127.0.0.1:9", "--served-model", "m", "--concurrency", "0"],
         "--concurrency: must be 1 or more, got 0"),
        (["bench", "train", "--pairs", "p", "--repeats", "0"], "--repeats: must be 1 or more"),
        (["bench", "train", "--pairs", "p", "--steps", "-1"], "--steps: must be 1 or more"),
        (["bench", "generate", "--repeats", "0"], "--repeats: must be 1 or more"),
        (["bench", "serve", "--clients", "8,0"], "--clients: must be 1 or more"),
        # --warmup 0 measured one step fewer than it said; -1 trained whole epochs.
        (["bench", "train", "--pairs", "p", "--warmup", "0"], "--warmup: must be 1 or more"),
        (["bench", "serve", "--duration", "0"], "--duration: must be more than 0 seconds"),
        (["bench", "serve", "--soak", "-5"], "--soak: must be more than 0 seconds"),
    ],
)  # fmt: skip
def test_counts_below_one_are_usage_errors(config, capsys, argv, says):
    """0 requests in flight or 0 repeats ended in a traceback (ThreadPoolExecutor, median)."""
    with pytest.raises(SystemExit) as e:
        main([*argv[:2], "--config", config, *argv[2:]] if argv[0] == "bench" else
             [argv[0], "--config", config, *argv[1:]])  # fmt: skip
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_bench_serve_refuses_what_would_fail_after_the_offline_runs(config, capsys):
    """Both used to fail only after minutes of offline measurement (a host the load generator
    cannot target also left the app running); a wildcard host is reached through loopback."""
    from esevo_ray.config import load_config
    from esevo_ray.serving.bench import local_url

    argv = ["bench", "serve", "--config", config]
    assert main([*argv, "--max-tokens", "600"]) == 2
    assert "--max-tokens 600: the app refuses more than serve.max_tokens (512)" in _error(capsys)
    assert main([*argv, "serve.host=10.1.2.3"]) == 2
    assert "serve.host='10.1.2.3': the benchmark sends its load to loopback" in _error(capsys)
    assert main([*argv, "serve.host=0.0.0.0"]) == 2  # start_app would refuse it without a key
    assert "serve.host='0.0.0.0' is not a loopback address: set an API key" in _error(capsys)
    assert main(argv) == 2 and "serve: no run directory at" in _error(capsys)
    assert local_url(load_config(config, ["serve.host=0.0.0.0"])) == "http://127.0.0.1:8000"
    assert local_url(load_config(config, ['serve.host="::"'])) == "http://[::1]:8000"


def test_client_counts_leave_the_overrides_to_the_config():
    from esevo_ray.cli import build_parser

    args = build_parser().parse_args(
        ["bench", "serve", "--config", "c.yaml", "--clients", "1,8", "serve.port=9001"]
    )
    assert args.clients == (1, 8) and args.overrides == ["serve.port=9001"]


def test_bench_train_names_its_init_flag_and_a_config_not_utf8_is_named(tmp_path, config, capsys):
    assert main(["bench", "train", "--config", config, "--pairs", "p", "--init", "nowhere"]) == 2
    assert "--init nowhere: no adapter folder there" in _error(capsys)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    assert main(["eval", "--config", str(latin)]) == 2
    assert f"config {latin} is not valid YAML: 'utf-8' codec" in _error(capsys)
    assert main(["eval", "--config", config, "eval.judge_samples=-5"]) == 2
    assert "eval.judge_samples: Input should be greater than or equal to 0" in (
        capsys.readouterr().err
    )
    (tmp_path / "a.txt").write_text("x")
    assert main(["serve", "--config", config, "--run-dir", str(tmp_path / "a.txt")]) == 2
    assert "a file, not a run directory" in _error(capsys)
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "metrics.json").write_text('{"scores": {"bleu_2": 1.0}}')
    for rows in (["A=ev", "A=ev"], ["=ev"]):
        assert (
            main(["ablate", "table", *(r.replace("ev", str(tmp_path / "ev")) for r in rows)]) == 2
        )
        assert "each row needs a label of its own" in _error(capsys)


def test_an_output_dir_through_a_file_is_a_one_line_error(tmp_path, config, capsys):
    (tmp_path / "afile").write_text("x")
    argv = ["data", "prepare", "--config", config, f"output_dir={tmp_path / 'afile'}"]
    assert main(argv) == 2
    assert "Not a directory" in _error(capsys)


def test_serve_refuses_a_run_not_made_yet_before_ray_starts(config, capsys, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started for a run that is not there")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    assert main(["serve", "--config", config]) == 2
    assert "serve: no run directory at" in _error(capsys)


def test_bad_arguments_are_one_line_errors(tmp_path, config, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own usage error
        main(["generate", "--config", config, "--iteration", "0"])
    assert e.value.code == 2 and "--iteration: must be 1 or more" in capsys.readouterr().err
    responses = tmp_path / "responses.parquet"
    row = {"dialogue_id": "d", "turn_index": 1, "golden": "g", "model": "m", "response": "r",
           "context": [{"role": "user", "content": "hi"}]}  # fmt: skip
    pq.write_table(pa.Table.from_pylist([row], schema=EVAL_RESPONSES), responses)
    assert main(["judge", "--config", config, "--responses", str(responses)]) == 2
    assert "the judge needs an endpoint and a model" in _error(capsys)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "metrics.json").write_text("{}")
    assert main(["ablate", "table", f"m0={tmp_path / 'e'}", "--columns", "bleu_2,nope"]) == 2
    assert "--columns: unknown ['nope']" in _error(capsys)


def test_serve_host_is_taken_as_typed():
    import argparse

    from esevo_ray.cli.serve import _load

    args = argparse.Namespace(config=None, overrides=[], host="::", port=8001)
    cfg = _load(args)
    assert (cfg.serve.host, cfg.serve.port) == ("::", 8001)


def test_generate_makes_what_the_loop_makes(tmp_path, config, capsys, monkeypatch, tiny_model):
    """Standalone pairs of iteration t: m<t-1> must be finished, the seeds are the
    iteration's part with evolve.seed_split, and the chosen side is evolve.chosen."""
    from esevo_ray.config import load_config
    from esevo_ray.data.seeds import seed_part
    from esevo_ray.io import write_parquet
    from esevo_ray.layout import RunLayout
    from tests.data.test_seeds import contexts

    layout = RunLayout.of(load_config(config, []))
    seeds = write_parquet(contexts([2, 1, 2, 2]), layout.seed_contexts)
    assert main(["generate", "--config", config, "--iteration", "2"]) == 2
    assert "m1 in" in (err := _error(capsys)) and "esevo dpo" in err and "--adapter" in err
    calls = []
    monkeypatch.setattr(
        "esevo_ray.generation.pipeline.generate_pairs",
        lambda cfg, contexts, out, **kw: (
            calls.append((contexts, kw["chosen"], kw["adapter"])) or {}
        ),
    )
    # With evolve.init: base, M0 is the base model itself: nothing to train first.
    model = f"model.path={tiny_model}"
    assert main(["generate", "--config", config, "evolve.init=base", model]) == 0
    assert calls.pop() == (layout.seed_contexts, "self_refined", None)
    split = ["evolve.seed_split=true", "evolve.chosen=human_reference"]
    argv = ["generate", "--config", config, "--adapter", "none", *split, model]
    assert main([*argv, "--iteration", "3"]) == 2
    assert "seed_split: seed split: iteration must be in 1..2, got 3" in _error(capsys)
    assert main([*argv, "--iteration", "2"]) == 0
    ((path, chosen, _),) = calls
    assert path == layout.seeds(2) and chosen == "human_reference"
    part = schema.read_table(path, schema.CONTEXTS)
    assert part.equals(seed_part(schema.read_table(seeds, schema.CONTEXTS), 2, 2))


def test_an_out_inside_another_run_holds_to_that_runs_config(tmp_path, config, capsys):
    """Written with this config into run `other`'s data folder, its data stage would still
    read as done, and its later stages would build on data of another config."""
    from esevo_ray.config import load_config
    from esevo_ray.pipeline.manifest import Manifest

    other = tmp_path / "runs" / "other"
    Manifest.open(other, load_config(None, ["name=other", f"output_dir={tmp_path / 'runs'}"]))
    argv = ["data", "prepare", "--config", config, "--out", str(other / "data")]
    assert main(argv) == 2
    assert f"{other} was made by a different config (name changed)" in _error(capsys)
    assert not (other / "data").exists()


def test_a_ray_job_needs_an_absolute_output_dir(tmp_path, monkeypatch, capsys):
    """In `ray job submit --working-dir .` the job runs in Ray's unpacked copy of the folder:
    a relative output_dir would write the run there, to vanish with the session."""
    job_dir = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    (job_dir / "run.yaml").write_text("name: t\n")
    for command in (["data", "prepare"], ["evolve"]):
        assert main([*command, "--config", "run.yaml"]) == 2
        assert "output_dir 'runs' is relative, and this job runs in Ray's" in _error(capsys)
    assert not (job_dir / "runs").exists()
    # A relative --out was written into the copy, and lost with it.
    absolute = f"output_dir={tmp_path / 'runs'}"
    assert main(["data", "prepare", "--config", "run.yaml", "--out", "mydata", absolute]) == 2
    assert "--out 'mydata' is relative, and this job runs in Ray's" in _error(capsys)
    assert not (job_dir / "mydata").exists()
    # A relative input is read in that copy too: not "no folder there" alone, nor a
    # model folder "without config.json" that is not there at all.
    copy = "a relative path in a Ray job is read in Ray's copy of its working dir"
    runs = f"output_dir={tmp_path / 'runs'}"
    pairs = ["dpo", "--config", "run.yaml", "--iteration", "1", "--pairs", "runs/t/m1/pairs"]
    assert main([*pairs, runs]) == 2
    assert f"--pairs runs/t/m1/pairs: no preference pairs there ({copy}" in _error(capsys)
    from esevo_ray.models import resolve_model

    with pytest.raises(FileNotFoundError, match=rf"model path models/x does not exist \({copy}"):
        resolve_model("models/x")


def test_eval_of_another_runs_adapter_never_lands_in_this_runs_model_folder(
    tmp_path, config, capsys, monkeypatch, tiny_model
):
    from esevo_ray.models import build_tiny_adapter

    got = {}
    monkeypatch.setattr(
        "esevo_ray.evaluation.evaluate.evaluate_model",
        lambda cfg, model, contexts, out, **kw: got.update(out=out, name=kw["name"]) or {},
    )
    (tmp_path / "contexts.parquet").write_bytes(b"")
    runs = tmp_path / "runs"
    own = build_tiny_adapter(tiny_model, runs / "t" / "m1" / "adapter", seed=1)
    other = build_tiny_adapter(tiny_model, runs / "t-sr" / "m1" / "adapter", seed=2)
    argv = ["eval", "--config", config, "--contexts", str(tmp_path / "contexts.parquet")]
    capsys.readouterr()

    assert main([*argv, "--adapter", str(own)]) == 0
    assert (got["name"], got["out"]) == ("m1", runs / "t" / "m1" / "eval")
    assert main([*argv, "--adapter", str(other)]) == 0
    assert (got["name"], got["out"]) == ("t-sr-m1", runs / "t" / "eval" / "t-sr-m1")
    assert main([*argv, "--adapter", str(other), "--name", "m1"]) == 2
    assert "--name m1: that is this run's M1" in _error(capsys)
    # A model folder (no adapter) named m<t>, e.g. a merged copy: a traceback (Path(None)).
    merged = tmp_path / "exported" / "m2"
    shutil.copytree(tiny_model, merged)
    assert main([*argv, "--model", str(merged)]) == 0
    assert (got["name"], got["out"]) == ("exported-m2", runs / "t" / "eval" / "exported-m2")
    # With M0 the base model (evolve.init: base), only that model is the run's M0: another
    # folder named m0 took M0's evaluation folder.
    (runs / "t" / "m0").mkdir(parents=True, exist_ok=True)
    (runs / "t" / "m0" / "base_model.json").write_text(json.dumps({"model": str(tiny_model)}))
    other_m0 = shutil.copytree(tiny_model, tmp_path / "exported" / "m0")
    assert main([*argv, "--model", str(other_m0), "evolve.init=base"]) == 0
    assert got["out"] == runs / "t" / "eval" / "exported-m0"
    assert main([*argv, "--model", str(tiny_model), "--name", "m0", "evolve.init=base"]) == 0
    assert got["out"] == runs / "t" / "m0" / "eval"


def test_dpo_and_generate_agree_that_m0_is_the_base_under_evolve_init_base(
    tmp_path, config, capsys, monkeypatch
):
    got = {}
    monkeypatch.setattr(
        "esevo_ray.training.dpo.train_dpo",
        lambda cfg, pairs, init, out: got.update(init=init) or out,
    )
    monkeypatch.setattr("esevo_ray.cli.train._print_result", lambda out: None)
    pairs = tmp_path / "pairs.parquet"
    pairs.write_bytes(b"")
    argv = ["dpo", "--config", config, "--iteration", "1", "--pairs", str(pairs)]
    assert main([*argv, "evolve.init=base"]) == 0
    assert got == {"init": None}  # DPO from the base model, as `esevo generate` samples it
    assert main(argv) == 2  # evolve.init: sft wants m0's adapter
    assert "--init" in _error(capsys)


def test_baselines_refuse_a_changed_run_before_any_stage_and_take_new_run(
    config, capsys, monkeypatch
):
    from esevo_ray.config import load_config
    from esevo_ray.layout import RunLayout
    from esevo_ray.pipeline.experiments import baseline_configs
    from esevo_ray.pipeline.manifest import Manifest

    vanilla = baseline_configs(load_config(config))["Vanilla"]
    made = Manifest.open(RunLayout.of(vanilla).root, vanilla)  # a run made with dpo.beta=0.1
    made.data["stages"]["data"] = {"status": "done"}  # begun: its config holds
    made.save()
    started = []

    def evolve(cfg):
        started.append(cfg.name)
        raise RuntimeError("stop here")

    monkeypatch.setattr("esevo_ray.pipeline.experiments.evolve", evolve)
    assert main(["baselines", "--config", config, "dpo.beta=0.5"]) == 2
    err = _error(capsys)
    assert "t-vanilla was made by a different config (dpo.beta changed)" in err
    assert "--new-run" in err and started == []  # refused before any stage ran
    assert "move " in err and "t-vanilla aside to make it again" in err  # that run alone
    with pytest.raises(RuntimeError, match="stop here"):
        main(["baselines", "--config", config, "dpo.beta=0.5", "--new-run"])
    assert started[0].startswith("t-2") and started[0].endswith("-vanilla")


def test_inspect_pairs_counts_words_as_the_length_rule_does(tmp_path, capsys):
    import json

    from esevo_ray.generation.pairs import words
    from esevo_ray.io import write_parquet
    from tests.evaluation.helpers import pairs_table

    chosen = ["I hear you.\n\nTell me more.", "Sure  thing", ""]
    table = pairs_table(1, chosen, ["a b", "c", "d e f"], ["refined"] * 3)
    write_parquet(table, tmp_path / "pairs" / "part-0.parquet")
    assert main(["inspect", "pairs", str(tmp_path / "pairs"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    lengths = summary["length_words"]
    assert lengths["chosen"]["max"] == max(words(c) for c in chosen) == 6
    assert lengths["chosen"]["mean"] == round(sum(words(c) for c in chosen) / 3, 2)
    assert summary["rejected_at_token_limit"] is None  # no producer.json: no limit known
    # A generation folder names its limit: rejected answers that reached it were cut.
    (tmp_path / "pairs" / "producer.json").write_text('{"generation.decoding.max_new_tokens": 10}')
    assert main(["inspect", "pairs", str(tmp_path / "pairs")]) == 0  # every row: 10 tokens
    assert "rejected at the token limit (generation.decoding.max_new_tokens=10): 3 (100.0%)" in (
        capsys.readouterr().out
    )


def test_a_stage_command_writes_into_a_run_only_with_its_config(tmp_path, config, capsys):
    """`esevo data prepare data.max_train_dialogues=100` into a run made with all of them
    would pass for the run's data, and `esevo evolve` would retrain M0 on it."""
    from esevo_ray.config import load_config
    from esevo_ray.layout import RunLayout
    from esevo_ray.pipeline.manifest import Manifest

    cfg = load_config(config)
    Manifest.open(RunLayout.of(cfg).root, cfg)
    for argv in (["data", "prepare"], ["sft"], ["dpo"], ["generate"], ["eval"]):
        assert main([*argv, "--config", config, "data.max_train_dialogues=100"]) == 2, argv
        err = _error(capsys)
        assert "made by a different config (data.max_train_dialogues changed)" in err, argv
        assert "pass --out to write elsewhere" in err
    out = tmp_path / "small-data"
    assert main(["data", "prepare", "--config", config, "data.max_train_dialogues=2",
                 "--out", str(out)]) == 0  # fmt: skip
    assert (out / "manifest.json").exists()
    # An --out inside the run is the run's as much as its default folder.
    inside = str(RunLayout.of(cfg).root / "data")
    argv = ["data", "prepare", "--config", config, "data.max_train_dialogues=2", "--out", inside]
    assert main(argv) == 2 and "data.max_train_dialogues changed" in _error(capsys)


def test_a_run_in_use_is_refused_to_a_second_writer(config, capsys):
    from esevo_ray.config import load_config
    from esevo_ray.layout import RunLayout
    from esevo_ray.pipeline.evolve import evolve
    from esevo_ray.pipeline.manifest import RunConflict, run_lock

    cfg = load_config(config)
    root = RunLayout.of(cfg).root
    root.mkdir(parents=True)
    with run_lock(root):  # another driver runs the loop
        assert main(["sft", "--config", config]) == 2
        assert f"{root} is in use by `" in _error(capsys)
        with pytest.raises(RunConflict, match="is in use by"):
            evolve(cfg)
    # Released: the command goes on to its own checks (here: no data prepared yet).
    assert main(["sft", "--config", config]) == 2 and "--data" in _error(capsys)


def test_a_command_refused_on_a_new_run_leaves_no_run_folder(config, capsys):
    """A mistyped run name: the command is refused, and no empty run folder stays behind to
    be taken for a run; a run folder that was there stays."""
    from esevo_ray.config import load_config
    from esevo_ray.layout import RunLayout

    typo = RunLayout.of(load_config(config, ["name=tpyo"])).root
    assert main(["sft", "--config", config, "name=tpyo"]) == 2 and "--data" in _error(capsys)
    assert not typo.exists()
    typo.mkdir(parents=True)
    assert main(["sft", "--config", config, "name=tpyo"]) == 2
    assert typo.is_dir()


def test_ctrl_c_ends_a_command_with_one_line_and_status_130(config, capsys, monkeypatch):
    import esevo_ray.data.prepare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(esevo_ray.data.prepare, "prepare_data", interrupted)
    assert main(["data", "prepare", "--config", config]) == 130
    assert "interrupted; what had finished is kept" in _error(capsys)


def test_a_new_run_stopped_by_ctrl_c_says_how_to_go_on_with_it(config, capsys, monkeypatch):
    """ "Run the same command again" with --new-run started yet another run, from the data."""
    import importlib

    names = []

    def interrupted(cfg):
        names.append(cfg.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("esevo_ray.pipeline.evolve"), "evolve", interrupted)
    assert main(["evolve", "--config", config, "--new-run"]) == 130
    err = _error(capsys)
    assert f"without --new-run, with name={names[0]}," in err and names[0].startswith("t-2")


def test_eval_of_an_endpoint_needs_the_name_of_its_model(tmp_path, config, capsys):
    contexts = tmp_path / "contexts.parquet"
    contexts.write_bytes(b"")
    argv = ["eval", "--config", config, "--model", "http://127.0.0.1:9/v1"]
    assert main([*argv, "--contexts", str(contexts)]) == 2
    assert "--served-model" in _error(capsys)


def test_a_job_script_takes_the_verbose_flag_anywhere():
    from esevo_ray.cli import build_parser, job_argv

    argv = job_argv(["evolve"], ["--config", "c.yaml", "-v", "output_dir=/runs"])
    args = build_parser().parse_args(argv)
    assert args.verbose and args.command == "evolve" and args.overrides == ["output_dir=/runs"]


def test_overrides_may_follow_a_later_flag(tmp_path, capsys):
    """A flag appended to a documented job line, then another override, used to end in
    "unrecognized arguments"; a stray word is still one."""
    config = tmp_path / "run.yaml"
    config.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\n")
    argv = ["data", "prepare", "--config", str(config), "data.max_train_dialogues=2",
            "--out", str(tmp_path / "d"), "data.max_eval_dialogues=1", "data.alpaca_samples=0"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["settings"]["max_eval_dialogues"] == 1
    assert manifest["settings"]["max_train_dialogues"] == 2
    with pytest.raises(SystemExit) as e:
        main([*argv, "stray"])
    assert e.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err


def test_the_train_job_takes_sft_or_dpo_only():
    job = Path(__file__).parents[1] / "jobs" / "train.py"
    proc = subprocess.run([sys.executable, str(job), "-v", "data", "stats"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "{sft,dpo}" in proc.stderr and "got 'data'" in proc.stderr
    proc = subprocess.run([sys.executable, str(job), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: esevo" in proc.stdout


def test_the_run_report_refuses_the_options_of_the_human_report(tmp_path, config, capsys):
    (tmp_path / "run").mkdir()
    assert main(["report", str(tmp_path / "run"), "--config", config]) == 2
    assert "--config: options of `esevo report human`" in _error(capsys)


def test_a_seed_split_the_seeds_cannot_fill_stops_before_sft(config, capsys, data_root, tiny_model):
    """It used to stop at pairs_m1, after SFT and M0's evaluation had run."""
    overrides = [f"model.path={tiny_model}", "data.max_train_dialogues=2", "data.max_seed_dialogues=1", "data.alpaca_samples=1",
                 "data.max_eval_dialogues=1", "evolve.seed_split=true", "evolve.iterations=2"]  # fmt: skip
    assert main(["evolve", "--config", config, *overrides]) == 2
    assert re.search(
        r"evolve.seed_split: seed split: 1 seed dialogues cannot fill 2 disjoint parts; raise "
        r"data.max_seed_dialogues or lower evolve.iterations",
        _error(capsys),
    )
    run = Path(config).parent / "runs" / "t"
    assert (run / "data" / "seed_contexts.parquet").is_file() and not (run / "m0").exists()
    # With no iteration there is nothing to split (esevo baselines' runs): no error.
    from esevo_ray.config import ConfigError, load_config
    from esevo_ray.layout import RunLayout
    from esevo_ray.pipeline.evolve import _check_seed_split

    for iterations, fails in ((0, False), (1, False), (2, True)):
        cfg = load_config(config, [*overrides, f"evolve.iterations={iterations}"])
        if fails:
            with pytest.raises(ConfigError, match="cannot fill 2 disjoint parts"):
                _check_seed_split(cfg, RunLayout.of(cfg))
        else:
            _check_seed_split(cfg, RunLayout.of(cfg))


def test_the_run_report_of_a_file_says_so(tmp_path, config, capsys):
    """A config file given where the run folder goes ended in FileExistsError's traceback."""
    assert main(["report", config]) == 2
    assert f"run_dir {config}: a file, not a run directory" in _error(capsys)


def test_endpoint_options_without_an_endpoint_are_refused(tmp_path, config, capsys):
    """--served-model with --model forgotten evaluated the local base model instead."""
    (tmp_path / "contexts.parquet").write_bytes(b"")
    argv = ["eval", "--config", config, "--contexts", str(tmp_path / "contexts.parquet")]
    assert main([*argv, "--served-model", "m2"]) == 2
    assert "--served-model: for an endpoint, and --model is no http(s) URL" in _error(capsys)


def test_ctrl_c_ends_serving_with_its_line_and_130(config, capsys, monkeypatch):
    """Serving ended on Ctrl-C with exit status 0 and no word, where every other command
    says it stopped and exits 130 (as the README has it)."""
    from ray import serve

    import esevo_ray.cli.serve as serve_cli

    stopped = []
    monkeypatch.setattr("esevo_ray.serving.deploy.start_app", lambda cfg, run: "http://h:1")
    monkeypatch.setattr(serve, "shutdown", lambda: stopped.append(True))

    def ctrl_c(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_cli.time, "sleep", ctrl_c)
    assert main(["serve", "--config", config]) == 130
    assert stopped == [True] and "esevo: stopped; Serve shut down" in _error(capsys)


def test_a_report_file_is_checked_before_the_benchmark_runs(tmp_path, config, capsys):
    """`esevo bench ... --out` was first looked at after minutes of work: a folder lost the
    result, and any file (BENCHMARKS.md, which `esevo bench --help` names) was replaced."""
    notes = tmp_path / "BENCHMARKS.md"
    notes.write_text("# Benchmarks\n")
    folder = tmp_path / "results"
    folder.mkdir()
    for bench in (["train", "--pairs", "p"], ["memory"], ["generate"], ["serve"]):
        for out, why in ((notes, "is not an earlier report"), (folder, "is a folder")):
            argv = ["bench", *bench, "--config", config, "--out", str(out)]
            assert main(argv) == 2, argv
            assert f"--out {out} " in (err := _error(capsys)) and why in err, (argv, err)
    assert notes.read_text() == "# Benchmarks\n"
    # An earlier report of the command (a JSON object) is replaced.
    earlier = tmp_path / "train.json"
    earlier.write_text('{"tok_per_s": 1}')
    from esevo_ray.io import check_report_file

    check_report_file(earlier)
    # `ablate table` writes Markdown: an earlier table, not any file.
    evals = []
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "metrics.json").write_text('{"scores": {}, "settings": {}}')
        evals.append(f"{label}={tmp_path / label}")
    assert main(["ablate", "table", *evals, "--out", str(notes)]) == 2
    assert "is not an earlier report" in _error(capsys) and notes.read_text() == "# Benchmarks\n"
    table = tmp_path / "table.md"
    assert main(["ablate", "table", *evals, "--out", str(table)]) == 0
    assert main(["ablate", "table", *evals, "--out", str(table)]) == 0  # its own, again
    assert table.read_text().startswith("| Model |")


def test_a_prompt_ablation_writes_only_into_an_earlier_ones_folder(tmp_path):
    from esevo_ray.config import load_config
    from esevo_ray.errors import UsageError
    from esevo_ray.evaluation.ablation import ablate_prompts

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "table.md").write_text("my notes")
    (mine / "other.txt").write_text("x")
    with pytest.raises(UsageError, match=r"mine exists and is not a prompt ablation folder"):
        ablate_prompts(load_config(None), tmp_path / "c.parquet", mine, model_path=tmp_path,
                       names=("vanilla",), bertscore=False)  # fmt: skip
    assert (mine / "table.md").read_text() == "my notes"


def test_an_arm_without_its_seed_file_stops_the_table_before_any_arm_runs(
    tmp_path, config, capsys, monkeypatch
):
    """{HM,P} seeds from ESConv and ran its whole loop (hours on 8B) before {HL,P} and {SR,P}
    found no ExTES file in their data stage."""
    started = []
    monkeypatch.setattr(
        "esevo_ray.pipeline.experiments.evolve", lambda cfg: started.append(cfg.name)
    )
    argv = ["ablate", "pairs-table", "--config", config, "data.seed_sources=[extes]",
            f"data.extes_path={tmp_path / 'none.json'}"]  # fmt: skip
    assert main(argv) == 2
    err = _error(capsys)
    assert "t-hl: data.seed_sources has 'extes' but no file at data.extes_path=" in err
    assert started == []

import json
import os

import pytest

from esevo_ray.config import load_config
from esevo_ray.pipeline.manifest import Manifest, RunConflict


def test_manifest_records_stages_and_refuses_a_changed_config(tmp_path):
    cfg = load_config(None, ["name=t"])
    m = Manifest.open(tmp_path, cfg)
    out = tmp_path / "out.txt"
    m.start("data", {"src": "x"})
    assert not m.done("data")
    out.write_text("ok")
    m.finish("data", {"out": str(out)}, {"rows": 3})
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["stages"]["data"]["status"] == "done" and saved["stages"]["data"]["rows"] == 3
    assert saved["config_digest"] == cfg.digest() and "ray" in saved["versions"]

    again = Manifest.open(tmp_path, cfg)
    assert again.done("data") and again.data["resumed"] == 1
    out.unlink()
    assert not again.done("data"), "a stage whose output vanished is not done"

    with pytest.raises(RunConflict, match=r"dpo\.beta changed.*--new-run"):
        Manifest.open(tmp_path, load_config(None, ["name=t", "dpo.beta=0.3"]))


def _begun(run_dir, cfg) -> Manifest:
    """A run of `cfg` whose data stage finished: other settings than FREE_KEYS are refused."""
    run = Manifest.open(run_dir, cfg)
    run.data["stages"]["data"] = {"status": "done"}
    run.save()
    return run


def _record(tmp_path, edit) -> None:
    """Rewrite the manifest's recorded config as an older version of the code would have."""
    path = tmp_path / "manifest.json"
    data = json.loads(path.read_text())
    edit(data["config"])
    data["config_digest"] = "from-an-older-version"
    path.write_text(json.dumps(data))


def test_settings_added_since_the_run_began_do_not_break_resume(tmp_path):
    cfg = load_config(None, ["name=t"])
    _begun(tmp_path, cfg)
    # The run was made before generation.device existed, and with a since-removed key.
    _record(tmp_path, lambda c: (c["generation"].pop("device"), c["sft"].update(old_key=1)))
    again = Manifest.open(tmp_path, cfg)
    assert again.data["config_digest"] == cfg.digest() and again.data["resumed"] == 1
    # Serving settings do not change what the loop wrote.
    Manifest.open(tmp_path, load_config(None, ["name=t", "serve.port=9000"]))


def test_a_new_setting_away_from_its_default_is_a_change(tmp_path):
    _begun(tmp_path, load_config(None, ["name=t"]))
    _record(tmp_path, lambda c: c["generation"].pop("device"))
    with pytest.raises(RunConflict, match=r"generation\.device changed"):
        Manifest.open(tmp_path, load_config(None, ["name=t", "generation.device=cpu"]))


def test_a_run_continues_under_the_fallback_errors_own_advice(tmp_path):
    """The fallback error says to change the policy; a run that stopped on it continues under
    the new policy (and other settings that write nothing different), but not another beta."""
    _begun(tmp_path, load_config(None, ["name=t", "generation.fallback_policy=fail"]))
    free = ["generation.fallback_policy=warn", "generation.max_fallback_fraction=0.9",
            "generation.num_actors=2", "eval.judge.concurrency=8", f"output_dir={tmp_path}",
            # the judge moved to another host: its verdicts are kept (judge._TRANSPORT)
            "eval.judge.base_url=http://10.0.0.9:8000/v1", "eval.judge.api_key_env=OTHER_KEY",
            # a training stage that failed past max_failures continues with more retries
            "dpo.scaling.max_failures=3", "sft.scaling.cpus_per_worker=2", "sft.logging_steps=5"]  # fmt: skip
    again = Manifest.open(tmp_path, load_config(None, ["name=t", *free]))
    assert again.data["config"]["generation"]["fallback_policy"] == "warn"
    with pytest.raises(RunConflict, match=r"\(generation\.batch_size changed\)"):
        Manifest.open(tmp_path, load_config(None, ["name=t", *free, "generation.batch_size=3"]))


def test_a_run_takes_the_judge_errors_advice_and_more_iterations(tmp_path):
    """The judge error says to set eval.judge.top_k=null; the judge stages run again under it
    (pipeline.runner settings), as they do for another judge or sample, and a finished run
    goes on to more iterations."""
    _begun(tmp_path, load_config(None, ["name=t"]))
    changed = ["eval.judge.top_k=null", "eval.judge.model=other", "eval.judge_samples=50",
               "evolve.iterations=3"]  # fmt: skip
    again = Manifest.open(tmp_path, load_config(None, ["name=t", *changed]))
    assert again.data["config"]["evolve"]["iterations"] == 3
    assert set(again.changed) == {
        "eval.judge.top_k",
        "eval.judge.model",
        "eval.judge_samples",
        "evolve.iterations",
    }
    assert again.data["config_changes"][-1]["changed"] == again.changed
    # Back to two before M3 began (raised, then stopped at once): nothing would be left
    # past it, and refusing left no way on (the advice to lower iterations was refused).
    fewer = load_config(None, ["name=t", *changed[:3], "evolve.iterations=2"])
    assert Manifest.open(tmp_path, fewer).data["config"]["evolve"]["iterations"] == 2
    # Once M3 has begun, fewer would leave it beside a run of two, in the report and server.
    again = Manifest.open(tmp_path, load_config(None, ["name=t", *changed]))
    again.data["stages"]["pairs_m3"] = {"status": "running"}
    again.save()
    with pytest.raises(RunConflict, match=r"holds m3, past evolve.iterations=2"):
        Manifest.open(tmp_path, fewer)
    (tmp_path / "m4").mkdir()
    with pytest.raises(RunConflict, match=r"holds m3, m4, past evolve.iterations=2"):
        Manifest.open(tmp_path, fewer)
    # A run of two beside an m3 that a stage command made: a free setting changes nothing.
    two = load_config(None, ["name=t2", "evolve.iterations=2"])
    Manifest.open(tmp_path / "two", two)
    (tmp_path / "two" / "m3").mkdir()
    free = load_config(None, ["name=t2", "evolve.iterations=2", "generation.num_actors=2"])
    assert Manifest.open(tmp_path / "two", free).data["config"]["generation"]["num_actors"] == 2


def test_a_home_folder_written_as_tilde_is_the_same_setting(tmp_path, monkeypatch):
    """A run recorded "~/models/x" (read as a path where it was used); the config now
    expands it when it loads."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _begun(tmp_path, load_config(None, ["name=t"]))
    _record(tmp_path, lambda c: c["model"].update(path="~/models/x"))
    Manifest.open(tmp_path, load_config(None, ["name=t", "model.path=~/models/x"]))


def test_an_option_removed_from_a_free_form_mapping_is_a_change(tmp_path):
    """`trl` and `vllm` pass options through as they are: one the run was made with and the
    config no longer sets changes what the loop writes."""
    _begun(tmp_path, load_config(None, ["name=t", "sft.trl={neftune_noise_alpha: 5}"]))
    with pytest.raises(RunConflict, match=r"sft\.trl\.neftune_noise_alpha changed"):
        Manifest.open(tmp_path, load_config(None, ["name=t"]))
    # ... and one removed from a mapping inside it
    nested = "dpo.trl={model_init_kwargs: {attn_implementation: eager, low_cpu_mem_usage: true}}"
    _begun(tmp_path / "n", load_config(None, ["name=t", nested]))
    fewer = "dpo.trl={model_init_kwargs: {attn_implementation: eager}}"
    with pytest.raises(RunConflict, match=r"model_init_kwargs\.low_cpu_mem_usage changed"):
        Manifest.open(tmp_path / "n", load_config(None, ["name=t", fewer]))
    # ... and one added, even as null (passed through as None, not left at a default)
    more = "dpo.trl={model_init_kwargs: {attn_implementation: eager, low_cpu_mem_usage: true, x: null}}"
    with pytest.raises(RunConflict, match=r"model_init_kwargs\.x changed"):
        Manifest.open(tmp_path / "n", load_config(None, ["name=t", more]))


@pytest.mark.parametrize(
    "content, why",
    [
        (b'{"name": "t", "stages": {', "not JSON"),
        (b"\xff\xfe binary", "not JSON"),
        (b"[1, 2]", "not an object with a 'stages' object"),
        (b'{"name": "t", "stages": []}', "not an object with a 'stages' object"),
        (b'{"name": "t", "stages": {"sft_m0": "done"}}', "stage 'sft_m0' is not an object"),
        (b'{"name": "t", "stages": {}, "config": [1]}', "its 'config' is not an object"),
    ],
)
def test_a_manifest_that_is_not_one_is_named(tmp_path, content, why, capsys):
    from esevo_ray.cli import main
    from esevo_ray.errors import UsageError

    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(UsageError, match=rf"manifest\.json is not a run manifest \({why}"):
        Manifest.open(tmp_path, load_config(None, ["name=t"]))
    # Every command that reads the run says so in one line (its old-layout migration too).
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run manifest" in capsys.readouterr().err
    assert (tmp_path / "manifest.json").read_bytes() == content


def test_a_run_is_held_by_one_driver_at_a_time_and_freed_by_a_crash(tmp_path):
    import subprocess
    import sys

    from esevo_ray.pipeline.manifest import run_lock

    with run_lock(tmp_path):
        with pytest.raises(RunConflict, match=r"in use by `.*` \(pid \d+ on .*, since "):
            with run_lock(tmp_path):
                pass
    # A driver killed while it holds the run leaves no stale lock behind.
    killed = subprocess.run(
        [sys.executable, "-c", "import os, pathlib; from esevo_ray.pipeline.manifest import "
         f"run_lock\nwith run_lock(pathlib.Path({str(tmp_path)!r})): os.kill(os.getpid(), 9)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    with run_lock(tmp_path):
        pass
    # The folders made by the lock go with it when nothing was written there.
    with run_lock(tmp_path / "runs" / "new"):
        pass
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()
    with run_lock(tmp_path / "runs" / "new"):
        (tmp_path / "runs" / "other").mkdir()  # another run made meanwhile: kept
    assert not (tmp_path / "runs" / "new").exists() and (tmp_path / "runs" / "other").is_dir()
    with run_lock(tmp_path / "runs" / "new"):
        (tmp_path / "runs" / "new" / "manifest.json").write_text("{}")
    assert (tmp_path / "runs" / "new" / "manifest.json").exists()


def test_a_lock_file_removed_by_its_holder_after_it_was_opened_is_not_held(tmp_path, monkeypatch):
    """A holder that made the run's folder removes it with its lock file when it wrote
    nothing else; a process that opened that file just before holds nothing with it, so it
    takes the new one: two holders never coexist."""
    from esevo_ray.pipeline import manifest

    path, real_open, opened = tmp_path / "run" / ".lock", os.open, []

    def opened_then_removed(file, flags, mode=0o777):
        fd = real_open(file, flags, mode)
        if not opened:
            os.unlink(file)  # its holder, done, removes it just after this process opened it
        opened.append(fd)
        return fd

    monkeypatch.setattr(manifest.os, "open", opened_then_removed)
    fd = manifest._hold(path)
    monkeypatch.undo()
    try:
        assert len(opened) == 2 and fd == opened[1]
        assert os.path.samestat(os.fstat(fd), os.stat(path))
    finally:
        os.close(fd)


def test_a_run_with_no_stage_finished_continues_under_a_corrected_config(tmp_path):
    """A first run stopped by a setting (a missing seed source, say, whose error names the
    setting to change) recorded it: the corrected setting was refused, and the way out was to
    remove the run, on a cluster's shared volume. Once a stage has finished, it is refused."""
    from esevo_ray.config import load_config

    Manifest.open(tmp_path, load_config(None, ["name=t", "data.seed_sources=[extes]"]))
    fixed = load_config(None, ["name=t", "data.seed_sources=[esconv]"])
    run = Manifest.open(tmp_path, fixed)
    assert run.data["config"]["data"]["seed_sources"] == ["esconv"]
    assert run.data["config_changes"][-1]["changed"] == ["data.seed_sources"]
    run.data["stages"]["data"] = {"status": "done"}
    run.save()
    with pytest.raises(RunConflict, match=r"\(data\.seed_sources changed\); rerun with --new-run"):
        Manifest.open(tmp_path, load_config(None, ["name=t", "data.seed_sources=[extes]"]))


def test_memory_and_placement_settings_change_in_a_run_that_ran_out_of_memory(tmp_path):
    """A vLLM engine is sized by its memory options, an actor by its GPUs: a run with SFT
    done continued under none of them."""
    from esevo_ray.config import load_config

    _begun(tmp_path, load_config(None, ["name=t"]))
    free = ["generation.gpus_per_actor=1",
            "generation.vllm={gpu_memory_utilization: 0.8, max_num_seqs: 8, enforce_eager: true}"]  # fmt: skip
    again = Manifest.open(tmp_path, load_config(None, ["name=t", *free]))
    assert again.data["config"]["generation"]["vllm"]["max_num_seqs"] == 8
    with pytest.raises(RunConflict, match=r"generation\.vllm\.quantization changed"):
        Manifest.open(
            tmp_path, load_config(None, ["name=t", "generation.vllm={quantization: fp8}"])
        )


def test_a_mistyped_model_path_stops_the_loop_before_the_run_records_its_config(tmp_path):
    from esevo_ray.config import load_config
    from esevo_ray.pipeline.evolve import evolve

    cfg = load_config(None, ["name=t", f"output_dir={tmp_path}", f"model.path={tmp_path}/nope"])
    with pytest.raises(FileNotFoundError, match=r"model path .*/nope does not exist"):
        evolve(cfg)
    assert not (tmp_path / "t").exists()  # so the path corrected is no other config's run

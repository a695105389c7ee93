"""RunLayout: one owner for every path of a run, and the migration of old run folders."""

from __future__ import annotations

import json

import pytest

from esevo_ray.config import load_config
from esevo_ray.errors import UsageError
from esevo_ray.layout import RunLayout, model_index, model_name


def _adapter(folder, weights: bool = True):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"w")


def test_paths_follow_one_model_name(tmp_path):
    run = RunLayout.of(load_config(None, [f"output_dir={tmp_path}", "name=demo"]))
    assert run.root == tmp_path / "demo"
    assert run.adapter(0) == run.root / "m0" / "adapter"
    assert run.pairs(2) == run.root / "m2" / "pairs"
    # m<t> given as a number or as its served name lands in the same eval folder.
    assert run.eval(1) == run.eval("m1") == run.root / "m1" / "eval"
    assert run.eval("vanilla") == run.root / "eval" / "vanilla"
    assert run.judge_scores("m1") == run.root / "m1" / "eval" / "judge_scores.parquet"
    assert run.human_db == run.root / "human_eval" / "db.sqlite"
    assert (model_name(3), model_index("m3"), model_index("mx"), model_index("m")) == (
        "m3", 3, None, None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="t >= 1"):
        run.pairs(0)


def test_a_model_label_is_one_folder_inside_the_run(tmp_path):
    """vLLM serves models by names like org/model; `..` would put the evaluation outside."""
    run = RunLayout.of(load_config(None, [f"output_dir={tmp_path}", "name=demo"]))
    assert run.served_eval("HuggingFaceTB/SmolLM2") == run.root / "eval" / "HuggingFaceTB_SmolLM2"
    assert run.eval("../../escape") == run.root / "eval" / ".._.._escape"
    for label in ("..", "."):
        with pytest.raises(UsageError, match="is no folder name"):
            run.served_eval(label)


def test_finished_lists_only_adapters_with_weights(tmp_path):
    run = RunLayout(tmp_path)
    _adapter(run.adapter(0))
    _adapter(run.adapter(2))
    _adapter(run.adapter(10))
    _adapter(run.adapter(3), weights=False)  # still training
    _adapter(tmp_path / "eval" / "adapter")  # an eval folder is no model
    assert run.model_indices() == [0, 2, 3, 10]
    assert list(run.finished()) == [0, 2, 10]


def test_old_iter_folders_are_migrated_with_their_manifest(tmp_path):
    _adapter(tmp_path / "m0" / "adapter")
    _adapter(tmp_path / "iter_1" / "adapter")
    (tmp_path / "iter_1" / "pairs").mkdir()
    manifest = {
        "stages": {
            "pairs_1": {"status": "done", "outputs": {"pairs": str(tmp_path / "iter_1/pairs")}},
            "dpo_m1": {"status": "done", "outputs": {"adapter": str(tmp_path / "iter_1/adapter")}},
        }
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    run = RunLayout(tmp_path)
    assert run.migrate() == ["iter_1 -> m1"]
    assert list(run.finished()) == [0, 1] and not (tmp_path / "iter_1").exists()
    stages = json.loads(run.manifest.read_text())["stages"]
    assert set(stages) == {"pairs_m1", "dpo_m1"}
    assert stages["pairs_m1"]["outputs"]["pairs"] == str(run.pairs(1))
    assert stages["dpo_m1"]["outputs"]["adapter"] == str(run.adapter(1))
    assert run.migrate() == []  # nothing left to do


def test_a_migration_cut_short_finishes_later_and_leaves_other_paths_alone(tmp_path):
    """A crash after the manifest was rewritten leaves the folders for the next call; a path
    of another folder that holds an iter_<t> (a dataset's, say) is not this run's."""
    _adapter(tmp_path / "iter_1" / "adapter")
    other = "/data/iter_2/ExTES.json"
    # A run whose name ends with this run's (cpu-demo beside demo) is another run.
    longer = str(tmp_path.parent / f"cpu-{tmp_path.name}" / "iter_2" / "merged")
    manifest = {
        "config": {"data": {"extes_path": other}, "model": {"path": longer}},
        "stages": {"pairs_1": {"outputs": {"pairs": str(tmp_path / "iter_1/pairs")}}},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    run = RunLayout(tmp_path)
    run._migrate_manifest()  # the process dies here, before the folders move
    assert run.migrate() == ["iter_1 -> m1"]
    data = json.loads(run.manifest.read_text())
    assert data["stages"]["pairs_m1"]["outputs"]["pairs"] == str(run.pairs(1))
    assert data["config"]["data"]["extes_path"] == other
    assert data["config"]["model"]["path"] == longer
    # Folders moved by an earlier version that died before its manifest step: still done.
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert run.migrate() == []
    assert "pairs_m1" in json.loads(run.manifest.read_text())["stages"]


def test_migration_refuses_to_merge_two_copies(tmp_path):
    _adapter(tmp_path / "iter_1" / "adapter")
    _adapter(tmp_path / "m1" / "adapter")
    with pytest.raises(UsageError, match="both exist"):
        RunLayout(tmp_path).migrate()

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from esevo_ray import prompts, schema
from esevo_ray.config import load_config
from esevo_ray.data.dialogue import DataError
from esevo_ray.data.prepare import prepare_data, source_files
from esevo_ray.errors import UsageError

from ..conftest import ASSETS


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_root):
    cfg = load_config(
        None,
        [
            "data.max_train_dialogues=12", "data.max_seed_dialogues=4", "data.max_eval_dialogues=5",
            "data.alpaca_samples=7", "data.seed_sources=[esconv,extes,serveforemo]",
            f"data.extes_path={ASSETS / 'extes_sample.json'}",
            f"data.serveforemo_path={ASSETS / 'serveforemo_sample.json'}",
        ],
    )  # fmt: skip
    out = tmp_path_factory.mktemp("prep") / "data"
    return out, prepare_data(cfg.data, out), cfg


def test_prepare_writes_every_dataset_with_its_schema(prepared):
    out, report, _ = prepared
    for name, sch in [
        ("train_contexts", schema.CONTEXTS), ("eval_contexts", schema.CONTEXTS),
        ("seed_contexts", schema.CONTEXTS), ("sft", schema.SFT_ROWS), ("dialogues", schema.DIALOGUES),
    ]:  # fmt: skip
        table = schema.read_table(out / f"{name}.parquet", sch)
        assert table.num_rows == report["rows"][name] > 0
    assert not list(out.parent.glob(".data.*")), "temporary folder left behind"


def test_splits_are_disjoint_and_recorded(prepared):
    out, report, _ = prepared
    ids = report["dialogue_ids"]
    assert len(ids["sft"]) == 12 and len(ids["eval"]) == 5
    assert all(i.startswith("test-") for i in ids["eval"])
    assert not set(ids["sft"]) & set(ids["seed"]), "demo seeds overlap the SFT subset"
    seed = pl.read_parquet(out / "seed_contexts.parquet")
    assert set(seed["source"].unique()) <= {"esconv", "extes", "serveforemo"}
    assert json.loads((out / "manifest.json").read_text())["rows"] == report["rows"]


def test_greeting_filter_applies_to_seed_contexts_only(prepared, data_root):
    from esevo_ray.data.dialogue import SUPPORTER, normalised
    from esevo_ray.data.prepare import load_esconv_splits

    out, report, _ = prepared
    assert report["greeting_filter"] == {
        "applied_to": ["seed_contexts"], "first_exchanges": 1, "last_exchanges": 2,
    }  # fmt: skip
    # Table 2 scores every supporter turn of the test split: none is dropped from eval.
    test = {d.dialogue_id: normalised(d) for d in load_esconv_splits(data_root)["test"].items}
    expected = {
        (i, t)
        for i in report["dialogue_ids"]["eval"]
        for t, turn in enumerate(test[i].turns)
        if turn.role == SUPPORTER
    }
    eval_ctx = pl.read_parquet(out / "eval_contexts.parquet")
    assert set(zip(eval_ctx["dialogue_id"], eval_ctx["turn_index"], strict=True)) == expected
    # Every SFT dialogue's first supporter reply is a target; no seed's first reply is.
    train = pl.read_parquet(out / "train_contexts.parquet")
    firsts = train.group_by("dialogue_id").agg(pl.col("turn_index").min())
    assert (firsts["turn_index"] == 1).all()
    seed = pl.read_parquet(out / "seed_contexts.parquet").filter(pl.col("source") == "esconv")
    assert seed.height and (seed["turn_index"] > 1).all()


def test_prepare_is_deterministic_by_seed(prepared, tmp_path):
    out, report, cfg = prepared
    again = prepare_data(cfg.data, tmp_path / "again")
    assert again["dialogue_ids"] == report["dialogue_ids"]
    assert again["alpaca_ids"] == report["alpaca_ids"]


def test_sft_rows_are_prompt_completion_with_task_prompt_and_replay(prepared):
    out, _, _ = prepared
    sft = pl.read_parquet(out / "sft.parquet")
    assert (sft["source"] == "alpaca").sum() == 7
    row = sft.filter(pl.col("source") == "esconv").row(0, named=True)
    assert (
        row["prompt"][0]["role"] == "system"
        and "emotional support expert" in row["prompt"][0]["content"]
    )
    assert row["prompt"][-1]["role"] == "user"
    assert [m["role"] for m in row["completion"]] == ["assistant"]
    assert row["prompt"][0]["content"] == prompts.TASK_PROMPT == prompts.task_prompt("paper")


def test_task_prompt_is_the_papers_with_short_style_as_an_option():
    paper = prompts.task_prompt("paper")
    assert paper.startswith(
        "You are an emotional support expert. You can use the following strategies to engage "
        "with users:\n1. Question: Asking for information related to the problem"
    )
    assert paper.endswith("8. Others: Exchanging pleasantries or offering other emotional support.")
    assert "short" not in paper.lower()
    short = prompts.task_prompt("short")
    assert short.startswith(paper) and "one short" in short
    with pytest.raises(ValueError, match=r"one of \['paper', 'short'\], got 'brief'"):
        prompts.task_prompt("brief")


def test_stats_cli_matches_paper_counting(capsys):
    proc = subprocess.run(
        [sys.executable, "-m", "esevo_ray.cli", "data", "stats", "--dataset", "esconv", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stats = json.loads(proc.stdout)
    assert stats["sessions"] == 1105
    assert stats["avg_session_len"] == pytest.approx(22.60, abs=0.01)
    assert stats["avg_utterance_len"] == pytest.approx(21.11, abs=0.01)
    for key in ("avg_seeker_utterance_len", "avg_supporter_utterance_len"):
        assert 15 < stats[key] < 30
    from esevo_ray.cli import main

    assert main(["data", "stats", "--splits", "test,test,train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == stats  # a split named twice counts once


def _data_with_a_bad_record(root: Path, data_root: Path) -> Path:
    """A data folder: 6 ESConv dialogues per split, the 4th train record not JSON."""
    (root / "esconv").mkdir(parents=True)
    (root / "alpaca").mkdir()
    good = (data_root / "esconv" / "test.json").read_text().splitlines()[:6]
    (root / "esconv" / "train.json").write_text("\n".join([*good[:3], "{oops", *good[3:]]) + "\n")
    (root / "esconv" / "test.json").write_text("\n".join(good) + "\n")
    (root / "alpaca" / "alpaca_data.json").write_text(
        json.dumps([{"instruction": "a", "input": "", "output": "b"}])
    )
    return root


def test_cli_bad_record_reports_and_skip_mode(tmp_path, data_root):
    root = _data_with_a_bad_record(tmp_path / "data", data_root)
    env = {"ESEVO_DATA_DIR": str(root), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "esevo_ray.cli", "data", "prepare", "--out", str(tmp_path / "out")]
    cmd += ["--config", str(tmp_path / "c.yaml")]
    (tmp_path / "c.yaml").write_text("name: t\ndata: {alpaca_samples: 1}\n")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "train.json: record 4: not valid JSON" in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing may be written on error"
    proc = subprocess.run(
        [*cmd, "--on-bad-record", "skip"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["skipped"]["esconv_train"] == 1


def test_stats_reads_the_configs_data_dir_and_counts_skipped_records(tmp_path, data_root, capsys):
    """`data stats` read $ESEVO_DATA_DIR or ../shared/data only, and said nothing of what it
    skipped."""
    from esevo_ray.cli import main

    root = _data_with_a_bad_record(tmp_path / "data", data_root)
    args = ["data", "stats", "--json", f"data.data_dir={root}", "--on-bad-record", "skip"]
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["sessions"] == 12 and stats["skipped_records"] == {"train": 1, "test": 0}


def test_the_evaluation_subset_does_not_move_with_other_selections(data_root, tmp_path):
    def prepared_ids(*overrides):
        cfg = load_config(None, ["data.max_eval_dialogues=5", "data.alpaca_samples=3", *overrides])
        out = tmp_path / "-".join(overrides or ["default"])
        return prepare_data(cfg.data, out)

    a = prepared_ids("data.max_train_dialogues=5")
    b = prepared_ids("data.max_train_dialogues=50", "data.max_seed_dialogues=2")
    assert a["dialogue_ids"]["eval"] == b["dialogue_ids"]["eval"]
    assert a["alpaca_ids"] == b["alpaca_ids"]
    assert a["dialogue_ids"]["sft"] == b["dialogue_ids"]["sft"][:5]


def test_prepare_refuses_to_replace_a_folder_that_holds_something_else(tmp_path, data_root):
    run = tmp_path / "run"
    (run / "m0" / "adapter").mkdir(parents=True)
    (run / "m0" / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    cfg = load_config(None, ["data.max_train_dialogues=3", "data.max_eval_dialogues=2"])
    with pytest.raises(
        UsageError, match=r"is not a prepared data folder \(it has no sft.parquet\)"
    ):
        prepare_data(cfg.data, run)
    assert (run / "m0" / "adapter" / "adapter_model.safetensors").read_bytes() == b"weights"
    prepare_data(cfg.data, run / "data")
    prepare_data(cfg.data, run / "data")  # an earlier prepare is replaced


def test_an_esconv_split_without_dialogues_is_an_error(tmp_path, data_root):
    root = tmp_path / "data"
    (root / "esconv").mkdir(parents=True)
    (root / "esconv" / "train.json").write_text("")
    (root / "esconv" / "test.json").write_text((data_root / "esconv" / "test.json").read_text())
    (root / "alpaca").mkdir()
    (root / "alpaca" / "alpaca_data.json").write_text(
        json.dumps([{"instruction": "a", "input": "", "output": "b"}])
    )
    cfg = load_config(None, [f"data.data_dir={root}"])
    with pytest.raises(DataError, match=r"train.json: no usable dialogue \(0 record"):
        prepare_data(cfg.data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_data_stats_of_a_split_without_dialogues_is_the_same_error(tmp_path, data_root, capsys):
    """`esevo data stats`, make demo's first step, printed zeros for it and exited 0."""
    from esevo_ray.cli import main

    root = tmp_path / "data"
    (root / "esconv").mkdir(parents=True)
    (root / "esconv" / "train.json").write_text('{"dialog": "not a list"}\n')
    (root / "esconv" / "test.json").write_text((data_root / "esconv" / "test.json").read_text())
    argv = ["data", "stats", "--splits", "test", f"data.data_dir={root}"]
    assert main([*argv, "--on-bad-record", "skip"]) == 2
    assert "train.json: no usable dialogue (1 record(s) skipped)" in capsys.readouterr().err


def test_seed_ids_are_named_by_source_and_must_be_unique(tmp_path, data_root):
    """Rows are keyed by (dialogue_id, turn_index): two dialogues under one id would merge."""
    records = json.loads((ASSETS / "extes_sample.json").read_text())
    # Named like ESConv's own file, so that its default ids are ESConv's (train-0, ...).
    extes = tmp_path / "train.json"
    extes.write_text(json.dumps(records))
    cfg = load_config(None, ["data.seed_sources=[esconv,extes]", f"data.extes_path={extes}",
                             "data.max_train_dialogues=3", "data.alpaca_samples=0"])  # fmt: skip
    report = prepare_data(cfg.data, tmp_path / "ok")
    seeds = report["dialogue_ids"]["seed"]
    assert "extes/train-0" in seeds and len(seeds) == len(set(seeds))
    extes.write_text(json.dumps([{**r, "id": "same"} for r in records]))
    with pytest.raises(
        DataError, match=r"seed dialogues .*1 dialogue ids occur more than once \(e.g. extes/same\)"
    ):
        prepare_data(cfg.data, tmp_path / "dup")
    assert not (tmp_path / "dup").exists()


def test_a_missing_seed_source_file_says_how_to_seed_from_esconv(tmp_path, data_root):
    """The L40 configs seed from ExTES and ServeForEmo, as the paper; where their files are
    not, the error names the key and the way out, and nothing is written."""
    cfg = load_config(
        None, ["data.seed_sources=[extes]", f"data.extes_path={tmp_path / 'no.json'}"]
    )
    with pytest.raises(
        FileNotFoundError, match=r"no file at data.extes_path=.*seed_sources=\[esconv\]"
    ):
        prepare_data(cfg.data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_source_files_are_all_that_preparing_reads(prepared, data_root, tmp_path):
    """The run manifest fingerprints `source_files` to know when the raw data changed: a data
    folder holding only those files prepares the same data, and a missing one is left out."""
    _, report, cfg = prepared
    files = source_files(cfg.data)
    assert set(files) == {"esconv_train", "esconv_test", "alpaca", "extes", "serveforemo"}
    copy = tmp_path / "raw"
    for path in files.values():
        if path.is_relative_to(data_root):
            link = copy / path.relative_to(data_root)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    only = cfg.data.model_copy(update={"data_dir": str(copy)})
    again = prepare_data(only, tmp_path / "out")
    assert again["rows"] == report["rows"] and again["dialogue_ids"] == report["dialogue_ids"]
    (copy / "alpaca" / "alpaca_data.json").unlink()
    assert "alpaca" not in source_files(only) and "esconv_train" in source_files(only)


def test_a_greeting_filter_that_leaves_no_seed_context_is_an_error(tmp_path, data_root):
    """Else the data stage finished with 0 seed contexts and the loop failed after SFT."""
    from esevo_ray.config import ConfigError

    cfg = load_config(None, ["data.max_train_dialogues=4", "data.max_seed_dialogues=2",
                             "data.max_eval_dialogues=2", "data.greeting_first=100"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"data.greeting_first \(100\)"):
        prepare_data(cfg.data, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def _small_data(tmp_path, data_root, *, train: int, alpaca: list[dict] | None = None):
    """A data folder with the first `train` ESConv training dialogues, the first 3 test ones
    and `alpaca` (none: no Alpaca file)."""
    root = tmp_path / "raw"
    (root / "esconv").mkdir(parents=True)
    for split, n in (("train", train), ("test", 3)):
        with (data_root / "esconv" / f"{split}.json").open() as f:
            (root / "esconv" / f"{split}.json").write_text("".join(next(f) for _ in range(n)))
    if alpaca is not None:
        (root / "alpaca").mkdir()
        (root / "alpaca" / "alpaca_data.json").write_text(json.dumps(alpaca))
    return root


def test_seeds_not_in_sft_are_topped_up_to_the_number_asked_for(tmp_path, data_root):
    """Seeds come from the dialogues SFT leaves out; with fewer left than
    data.max_seed_dialogues, SFT's make up the rest (counted in the manifest). The number
    asked for used to give 1 seed dialogue with 9 of 10 in SFT, and 10 (all SFT's) with 10."""
    root = _small_data(tmp_path, data_root, train=10)
    common = [f"data.data_dir={root}", "data.alpaca_samples=0", "data.max_seed_dialogues=4"]
    for n_sft, in_sft in ((6, 0), (9, 3), (10, 4)):
        cfg = load_config(None, [*common, f"data.max_train_dialogues={n_sft}"])
        report = prepare_data(cfg.data, tmp_path / f"out-{n_sft}")
        ids = report["dialogue_ids"]
        assert len(ids["seed"]) == 4 and report["seeds_in_sft"] == in_sft
        assert len(set(ids["seed"]) & set(ids["sft"])) == in_sft
    everything = load_config(None, [f"data.data_dir={root}", "data.alpaca_samples=0"])
    report = prepare_data(everything.data, tmp_path / "all")  # no limits: SFT's are seeds
    assert sorted(report["dialogue_ids"]["seed"]) == sorted(report["dialogue_ids"]["sft"])
    assert report["seeds_in_sft"] == 10 and report["settings"]["alpaca_samples"] == 0


def test_alpaca_replay_is_all_asked_for_or_an_error(tmp_path, data_root):
    """Fewer usable Alpaca examples than data.alpaca_samples used to train on fewer with no
    word; with alpaca_samples=0 the file is neither read nor needed."""
    alpaca = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(3)]
    alpaca.append({"instruction": "q", "input": "", "output": "<nooutput>"})
    root = _small_data(tmp_path, data_root, train=4, alpaca=alpaca)
    cfg = load_config(None, [f"data.data_dir={root}", "data.alpaca_samples=4"])
    with pytest.raises(
        DataError, match=r"alpaca_data.json: data.alpaca_samples asks for 4 .* has 3 usable"
    ):
        prepare_data(cfg.data, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (root / "alpaca" / "alpaca_data.json").unlink()
    cfg = load_config(None, [f"data.data_dir={root}", "data.alpaca_samples=0"])
    assert "alpaca" not in source_files(cfg.data)
    assert prepare_data(cfg.data, tmp_path / "out")["alpaca_ids"] == []


@pytest.mark.parametrize(
    "sources, message",
    [("[]", "seed_sources.*at least 1 item"), ("[esconv,esconv]", "names a source twice")],
)
def test_seed_sources_name_each_source_once(sources, message):
    from esevo_ray.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"data.seed_sources={sources}"])


def test_skipped_alpaca_records_are_reported_and_no_output_is_caught_in_any_case(
    tmp_path, data_root
):
    """Alpaca records skipped as bad vanished from the manifest; "<NoOutput>" (record 35241
    of the real file) passed the "<nooutput>" filter and could be drawn as a replay target."""
    alpaca = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(2)]
    alpaca += [
        {"instruction": "logo", "input": "", "output": "<NoOutput>"},
        {"instruction": "q", "output": "a"},  # no input: a bad record
    ]
    root = _small_data(tmp_path, data_root, train=4, alpaca=alpaca)
    cfg = load_config(None, [f"data.data_dir={root}", "data.alpaca_samples=2",
                             "data.on_bad_record=skip"])  # fmt: skip
    report = prepare_data(cfg.data, tmp_path / "out")
    assert report["skipped"]["alpaca"] == 1
    assert any("alpaca_data.json: record 3: field 'input'" in p for p in report["problems"])
    assert report["alpaca_unusable"] == 1
    assert sorted(report["alpaca_ids"]) == ["alpaca_data-0", "alpaca_data-1"]

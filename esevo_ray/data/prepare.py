"""Read the raw corpora, normalise, split, and write the Parquet datasets of a run.

Outputs (one folder, written atomically):
    dialogues.parquet        every normalised ESConv dialogue, train and test (DIALOGUES)
    train_contexts.parquet   every supporter turn of the SFT dialogues (CONTEXTS)
    eval_contexts.parquet    ESConv test split, every supporter turn (CONTEXTS)
    seed_contexts.parquet    seed contexts for preference data, greeting-filtered (CONTEXTS)
    sft.parquet              SFT rows: ESConv + Alpaca replay (SFT_ROWS)
    manifest.json            the data settings, counts, chosen ids, skipped records

A supporter turn is one of the normalised dialogue (Appendix A): consecutive utterances of a
speaker are one turn, and a dialogue opens with the seeker. ESConv's test split has 2,895
supporter utterances and 2,295 such turns: 101 opening utterances are dropped and 452 runs
joined (its targets average 21.3 words where utterances average 17.0).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from esevo_ray import prompts, schema
from esevo_ray.config import ConfigError, DataSection
from esevo_ray.data.dialogue import (
    SEEKER,
    SUPPORTER,
    DataError,
    Dialogue,
    context_rows,
    merge_runs,
    normalised,
)
from esevo_ray.data.loaders import Loaded, load_alpaca, load_esconv, load_extes, load_serveforemo
from esevo_ray.io import atomic_dir, atomic_write_text, check_replaceable, write_parquet

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(cfg: DataSection | None = None) -> Path:
    """config `data.data_dir`, else `$ESEVO_DATA_DIR`, else `../shared/data` beside the repo."""
    if cfg is not None and cfg.data_dir:
        return Path(cfg.data_dir)
    if os.environ.get("ESEVO_DATA_DIR"):
        return Path(os.environ["ESEVO_DATA_DIR"])
    for candidate in (Path.cwd() / "../shared/data", REPO_ROOT / "../shared/data"):
        if candidate.exists():
            return candidate.resolve()
    raise FileNotFoundError("no data directory: set ESEVO_DATA_DIR or data.data_dir in the config")


ESCONV_SPLITS = ("train", "test")


def source_files(cfg: DataSection) -> dict[str, Path]:
    """The raw files `prepare_data` reads for `cfg` that are there, by name: ESConv's splits,
    Alpaca, and each seed source's file. The run manifest fingerprints them, so data prepared
    from an older copy is prepared again. A file that is missing is left out: preparing says
    so when it runs, and a finished run resumed where the raw data is not is not redone."""
    try:
        root = data_dir(cfg)
    except FileNotFoundError:
        return {}
    files = {f"esconv_{split}": _esconv_file(root, split) for split in ESCONV_SPLITS}
    if cfg.alpaca_samples:
        files["alpaca"] = _alpaca_file(root)
    for source in cfg.seed_sources:
        if source != "esconv" and (path := _seed_source_path(cfg, source)):
            files[source] = Path(path)
    return {name: path for name, path in files.items() if path.is_file()}


def _esconv_file(root: Path, split: str) -> Path:
    return root / "esconv" / f"{split}.json"


def _alpaca_file(root: Path) -> Path:
    return root / "alpaca" / "alpaca_data.json"


def _seed_source_path(cfg: DataSection, source: str) -> str | None:
    return cfg.extes_path if source == "extes" else cfg.serveforemo_path


def load_esconv_splits(root: Path, on_bad: str = "error") -> dict[str, Loaded]:
    """ESConv's splits under `root`.

    Raises:
        DataError: a split holds no usable dialogue (an empty file, or every record skipped):
            `data stats` printed zeros for it, and `data prepare` had nothing to split.
    """
    splits = {}
    for split in ESCONV_SPLITS:
        splits[split] = loaded = load_esconv(_esconv_file(root, split), split, on_bad)
        if not loaded.items:
            raise DataError(
                f"{_esconv_file(root, split)}: no usable dialogue "
                f"({loaded.skipped} record(s) skipped)"
            )
    return splits


def esconv_stats(dialogues: list[Dialogue]) -> dict:
    """Table 1 statistics: utterances after merging same-speaker runs and trimming to
    seeker-first / supporter-last; words are whitespace tokens."""
    sessions = [normalised(d).turns for d in dialogues]
    utts = [t for s in sessions for t in s]

    def avg_words(turns: list) -> float:
        return round(sum(len(t.text.split()) for t in turns) / max(len(turns), 1), 2)

    raw = [t for d in dialogues for t in d.turns]
    return {
        "sessions": len(sessions),
        "avg_session_len": round(len(utts) / max(len(sessions), 1), 2),
        "avg_utterance_len": avg_words(utts),
        "avg_seeker_utterance_len": avg_words([t for t in utts if t.role == SEEKER]),
        "avg_supporter_utterance_len": avg_words([t for t in utts if t.role == SUPPORTER]),
        "raw_utterances_per_session": round(len(raw) / max(len(dialogues), 1), 2),
        "merged_utterances_per_session": round(
            sum(len(merge_runs(d.turns)) for d in dialogues) / max(len(dialogues), 1), 2
        ),
    }


def _subset(items: list, n: int | None, rng: random.Random) -> list:
    items = list(items)
    rng.shuffle(items)
    return items if n is None else items[:n]


def _rng(cfg: DataSection, selection: str) -> random.Random:
    """One generator per selection, so that e.g. the evaluation subset does not change with
    the number of training dialogues or the seed sources."""
    return random.Random(f"{cfg.seed}:{selection}")


def _context_table(dialogues: list[Dialogue], cfg: DataSection | None = None) -> pa.Table:
    """Every supporter turn of `dialogues`, or (with `cfg`) the greeting-filtered ones."""
    drop = cfg is not None and cfg.drop_greetings
    greetings = (cfg.greeting_first, cfg.greeting_last) if cfg is not None else (0, 0)
    rows = [r for d in dialogues for r in context_rows(d, drop_greetings=drop, greetings=greetings)]
    return schema.conform(pa.Table.from_pylist(rows, schema=schema.CONTEXTS), schema.CONTEXTS)


def sft_rows(
    contexts: pa.Table, alpaca: list[dict], task_prompt: str = prompts.TASK_PROMPT
) -> pa.Table:
    """ESConv examples as (P_task || C_n -> golden) plus Alpaca instructions as replay."""
    rows = [
        {
            "example_id": f"{r['dialogue_id']}:{r['turn_index']}",
            "source": r["source"],
            "prompt": prompts.task_messages(r["context"], task_prompt),
            "completion": [{"role": "assistant", "content": r["golden"]}],
        }
        for r in contexts.to_pylist()
    ]
    for a in alpaca:
        user = a["instruction"] if not a["input"] else f"{a['instruction']}\n\n{a['input']}"
        rows.append(
            {
                "example_id": f"alpaca:{a['example_id']}",
                "source": "alpaca",
                "prompt": [{"role": "user", "content": user}],
                "completion": [{"role": "assistant", "content": a["output"]}],
            }
        )
    return schema.conform(pa.Table.from_pylist(rows, schema=schema.SFT_ROWS), schema.SFT_ROWS)


def _no_output(output: str) -> bool:
    """Alpaca marks examples with no possible text answer "<nooutput>", in any case."""
    return "<nooutput>" in output.lower()


def _alpaca_replay(cfg: DataSection, root: Path, report: dict) -> list[dict]:
    """`data.alpaca_samples` usable Alpaca examples, drawn by seed.

    Raises:
        DataError: the file has fewer usable examples than asked for.
    """
    if not cfg.alpaca_samples:
        report["alpaca_unusable"] = 0
        return []
    path = _alpaca_file(root)
    alpaca = load_alpaca(path, cfg.on_bad_record)
    report["skipped"]["alpaca"] = alpaca.skipped
    report["problems"] += alpaca.problems[:20]
    usable = [a for a in alpaca.items if a["output"].strip() and not _no_output(a["output"])]
    report["alpaca_unusable"] = len(alpaca.items) - len(usable)
    if len(usable) < cfg.alpaca_samples:
        raise DataError(
            f"{path}: data.alpaca_samples asks for {cfg.alpaca_samples} replay examples but "
            f"the file has {len(usable)} usable ({report['alpaca_unusable']} with no output, "
            f"{alpaca.skipped} record(s) skipped); lower data.alpaca_samples"
        )
    return _rng(cfg, "alpaca").sample(usable, cfg.alpaca_samples)


def _esconv_seeds(
    cfg: DataSection, pool: list[Dialogue], n_sft: int, others: int, report: dict
) -> list[Dialogue]:
    """ESConv's seed dialogues: those of `pool` (shuffled) that SFT does not train on, so
    that pairs are not made for contexts M0 learnt; when they are fewer than
    `data.max_seed_dialogues` (with `others` from other sources), SFT's dialogues make up
    the rest, and when SFT took every dialogue (no limit on either), all of them are seeds.
    The manifest counts the seeds SFT also trained on (`seeds_in_sft`)."""
    untrained, trained = pool[n_sft:], pool[:n_sft]
    if cfg.max_seed_dialogues is None:
        taken = trained if not untrained else []
    else:
        taken = trained[: max(0, cfg.max_seed_dialogues - others - len(untrained))]
    report["seeds_in_sft"] = len(taken)
    if taken and untrained:
        logger.warning(
            "data.max_seed_dialogues=%d: %d ESConv dialogue(s) are not in SFT's %d; %d seed "
            "dialogue(s) are SFT dialogues too", cfg.max_seed_dialogues, len(untrained),
            n_sft, len(taken),
        )  # fmt: skip
    return untrained + taken


def check_seed_sources(cfg: DataSection) -> None:
    """Raise FileNotFoundError unless every seed source but ESConv has its file, naming the
    setting and the way round it (ESConv's training pool)."""
    for source in cfg.seed_sources:
        if source == "esconv":
            continue
        path = _seed_source_path(cfg, source)
        if not path or not Path(path).exists():
            where = (
                f"no file at data.{source}_path={path}"
                if path
                else f"data.{source}_path is not set"
            )
            raise FileNotFoundError(
                f"data.seed_sources has {source!r} but {where}: put the {source} release there, "
                "or seed from ESConv's training pool with data.seed_sources=[esconv]"
            )


def _seed_dialogues(
    cfg: DataSection, root: Path, pool: list[Dialogue], n_sft: int, report: dict
) -> list[Dialogue]:
    """The seed dialogues of every source in `data.seed_sources`; ESConv's come from `pool`,
    the training split shuffled, whose first `n_sft` are SFT's (see `_esconv_seeds`)."""
    check_seed_sources(cfg)
    by_source: dict[str, list[Dialogue]] = {}
    for source in cfg.seed_sources:
        if source == "esconv":
            continue
        path = _seed_source_path(cfg, source)
        loader = load_extes if source == "extes" else load_serveforemo
        loaded = loader(Path(path), cfg.on_bad_record)
        report["skipped"][source] = loaded.skipped
        report["problems"] += loaded.problems[:20]
        if not loaded.items:
            raise DataError(f"{path}: no usable dialogue ({loaded.skipped} record(s) skipped)")
        # Named by source: ids from another corpus (or its file name) may be ESConv's.
        by_source[source] = [
            replace(d, dialogue_id=f"{source}/{d.dialogue_id}") for d in loaded.items
        ]
    if "esconv" in cfg.seed_sources:
        others = sum(len(v) for v in by_source.values())
        by_source["esconv"] = _esconv_seeds(cfg, pool, n_sft, others, report)
    seeds = [d for source in cfg.seed_sources for d in by_source[source]]
    return _unique(seeds, "the seed dialogues (data.seed_sources)")


def _unique(dialogues: list[Dialogue], what: str) -> list[Dialogue]:
    """`dialogues`, whose ids must differ: rows are keyed by (dialogue_id, turn_index).

    Raises:
        DataError: an id occurs twice; the message names some.
    """
    counts = Counter(d.dialogue_id for d in dialogues)
    if repeated := [i for i, n in counts.items() if n > 1]:
        raise DataError(
            f"{what}: {len(repeated)} dialogue ids occur more than once (e.g. "
            f"{', '.join(repeated[:3])}); give each record its own id"
        )
    return dialogues


def _greeting_filter(cfg: DataSection) -> dict:
    """What the greeting filter removed, for the manifest."""
    return {
        "applied_to": ["seed_contexts"] if cfg.drop_greetings else [],
        "first_exchanges": cfg.greeting_first,
        "last_exchanges": cfg.greeting_last,
    }


def prepare_data(
    cfg: DataSection, out_dir: str | Path, *, task_prompt: str = prompts.TASK_PROMPT
) -> dict:
    """Write the run's datasets into `out_dir` (atomically) and return its manifest.

    Only seed contexts (preference data) are greeting-filtered; SFT rows use `task_prompt`.

    Raises:
        UsageError: `out_dir` holds files but no earlier prepared data (checked first).
    """
    check_replaceable(out_dir, holds="sft.parquet", what="prepared data")
    root = data_dir(cfg)
    report: dict = {
        "data_dir": str(root), "seed": cfg.seed, "settings": cfg.model_dump(mode="json"),
        "skipped": {}, "problems": [],
    }  # fmt: skip

    splits = load_esconv_splits(root, cfg.on_bad_record)
    for split, loaded in splits.items():
        report["skipped"][f"esconv_{split}"] = loaded.skipped
        report["problems"] += loaded.problems[:20]
    train_pool = [normalised(d) for d in splits["train"].items]
    test = [normalised(d) for d in splits["test"].items]
    _unique(train_pool + test, f"ESConv in {root / 'esconv'}")

    shuffled = _subset(train_pool, None, _rng(cfg, "train"))
    n_sft = len(shuffled) if cfg.max_train_dialogues is None else cfg.max_train_dialogues
    sft_dialogues = shuffled[:n_sft]
    seed_pool = [normalised(d) for d in _seed_dialogues(cfg, root, shuffled, n_sft, report)]
    seed_dialogues = _subset(seed_pool, cfg.max_seed_dialogues, _rng(cfg, "seed"))
    eval_dialogues = _subset(test, cfg.max_eval_dialogues, _rng(cfg, "eval"))
    replay = _alpaca_replay(cfg, root, report)

    train_ctx = _context_table(sft_dialogues)
    tables = {
        "dialogues": pa.Table.from_pylist(
            [d.to_row() for d in train_pool + test], schema=schema.DIALOGUES
        ),
        "train_contexts": train_ctx,
        "eval_contexts": _context_table(eval_dialogues),
        "seed_contexts": _context_table(seed_dialogues, cfg),
        "sft": sft_rows(train_ctx, replay, task_prompt),
    }
    if seed_dialogues and not tables["seed_contexts"].num_rows:
        raise ConfigError(
            f"the greeting filter leaves no seed context of {len(seed_dialogues)} seed "
            f"dialogue(s): data.greeting_first ({cfg.greeting_first}) and data.greeting_last "
            f"({cfg.greeting_last}) exchanges drop every supporter turn; lower them, or set "
            "data.drop_greetings=false"
        )
    report["rows"] = {name: t.num_rows for name, t in tables.items()}
    report["greeting_filter"] = _greeting_filter(cfg)
    report["dialogue_ids"] = {
        "sft": [d.dialogue_id for d in sft_dialogues],
        "seed": [d.dialogue_id for d in seed_dialogues],
        "eval": [d.dialogue_id for d in eval_dialogues],
    }
    report["alpaca_ids"] = [a["example_id"] for a in replay]
    with atomic_dir(out_dir) as tmp:
        for name, table in tables.items():
            write_parquet(table, tmp / f"{name}.parquet")
        atomic_write_text(tmp / "manifest.json", json.dumps(report, indent=2))
    logger.info("prepared data in %s: %s", out_dir, report["rows"])
    return report

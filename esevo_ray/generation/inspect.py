"""Summaries of a pairs dataset, computed with polars from the Parquet files alone."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from esevo_ray import schema
from esevo_ray.parts import recorded_producer


def load_pairs(path: str | Path) -> pl.DataFrame:
    """A pairs folder (part files) or a single Parquet file, schema-checked."""
    return pl.from_arrow(schema.read_table(path, schema.PAIRS))


def _length_stats(words: pl.Series) -> dict:
    return {
        "mean": round(float(words.mean() or 0), 2),
        "median": float(words.median() or 0),
        "max": int(words.max() or 0),
    }


def at_token_limit(path: str | Path, df: pl.DataFrame) -> dict | None:
    """Rejected responses that reached generation.decoding.max_new_tokens, most likely cut
    mid-sentence (the DPO rejected side, and the length rule's yardstick); the limit is read
    from a generation folder's producer.json, None without one."""
    limit = recorded_producer(path).get("generation.decoding.max_new_tokens")
    if not limit:
        return None
    rows = int((df["rejected_tokens"] >= limit).sum())
    return {
        "max_new_tokens": limit,
        "rows": rows,
        "rate": round(rows / df.height, 4) if df.height else 0.0,
    }


def pairs_summary(path: str | Path, samples: int = 3) -> dict:
    """Row count, key uniqueness, chosen-source rates, lengths, score histogram, samples."""
    df = load_pairs(path).with_columns(
        rejected_text=pl.col("rejected").list.first().struct.field("content"),
        chosen_text=pl.col("chosen").list.first().struct.field("content"),
    )
    n = df.height
    counts = df["chosen_source"].value_counts(sort=True).rows()
    scores = df["evaluation_score"].drop_nulls().round(0).cast(pl.Int32).value_counts(sort=True)
    lengths = {
        # words as the length rule counts them (pairs.words: whitespace-separated)
        col: _length_stats(df[col].str.count_matches(r"\S+"))
        for col in ("rejected_text", "chosen_text", "golden")
    }
    return {
        "path": str(path),
        "rows": n,
        "unique_keys": df.select(schema.PAIR_KEY).unique().height,
        "iterations": sorted(df["iteration"].unique().to_list()),
        "chosen_source": {src: c for src, c in counts},
        "chosen_source_rate": {src: round(c / n, 4) for src, c in counts} if n else {},
        "length_words": {k.removesuffix("_text"): v for k, v in lengths.items()},
        "rejected_at_token_limit": at_token_limit(path, df),
        "evaluation_score_histogram": {
            int(s): c for s, c in scores.sort("evaluation_score").rows()
        },
        "evaluation_score_missing": int(df["evaluation_score"].null_count()),
        "generator_models": sorted(df["generator_model"].unique().to_list()),
        "samples": [
            {
                "dialogue_id": r["dialogue_id"],
                "turn_index": r["turn_index"],
                "last_user": r["prompt"][-1]["content"],
                "rejected": r["rejected_text"],
                "chosen": r["chosen_text"],
                "chosen_source": r["chosen_source"],
            }
            for r in df.head(samples).iter_rows(named=True)
        ],
    }


def format_summary(s: dict) -> str:
    rate = s["chosen_source_rate"]
    lines = [
        f"pairs: {s['path']}",
        f"rows {s['rows']}, unique keys {s['unique_keys']}, iterations {s['iterations']}",
        f"generator: {', '.join(s['generator_models'])}",
        "chosen source:",
        *(f"  {k:22s} {v:6d}  ({rate[k]:.1%})" for k, v in s["chosen_source"].items()),
        "length (words):",
        *(
            f"  {k:9s} mean {v['mean']:6.1f}  median {v['median']:5.0f}  max {v['max']}"
            for k, v in s["length_words"].items()
        ),
        *(
            [
                "rejected at the token limit (generation.decoding.max_new_tokens="
                f"{cut['max_new_tokens']}): {cut['rows']} ({cut['rate']:.1%})"
            ]
            if (cut := s.get("rejected_at_token_limit"))
            else []
        ),  # fmt: skip
        f"evaluation_score: {s['evaluation_score_histogram']} "
        f"(missing {s['evaluation_score_missing']})",
        "samples:",
    ]
    for x in s["samples"]:
        lines += [
            f"  [{x['dialogue_id']}:{x['turn_index']}] user: {x['last_user'][:100]}",
            f"    rejected: {x['rejected'][:100]}",
            f"    chosen ({x['chosen_source']}): {x['chosen'][:100]}",
        ]
    return "\n".join(lines)
